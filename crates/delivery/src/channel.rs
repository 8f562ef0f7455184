//! Channels: where a person receives papers, and how often.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row, postgres::PgRow};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Email,
    Webhook,
    Slack,
    InApp,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Webhook => "webhook",
            Self::Slack => "slack",
            Self::InApp => "in_app",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "email" => Some(Self::Email),
            "webhook" => Some(Self::Webhook),
            "slack" => Some(Self::Slack),
            "in_app" => Some(Self::InApp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frequency {
    Instant,
    /// One digest a day at the person's digest hour.
    Daily,
}

impl Frequency {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Instant => "instant",
            Self::Daily => "daily",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "instant" => Some(Self::Instant),
            "daily" => Some(Self::Daily),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Channel {
    pub id: i64,
    pub user_id: i64,
    pub kind: Kind,
    pub target: String,
    /// Only for webhooks; never shown again after creation.
    #[serde(skip)]
    pub secret: Option<String>,
    pub frequency: Frequency,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
}

impl Channel {
    fn from_row(row: &PgRow) -> Result<Self> {
        let kind: String = row.try_get("kind")?;
        let frequency: String = row.try_get("frequency")?;
        Ok(Self {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            kind: Kind::parse(&kind)
                .ok_or_else(|| Error::Corrupt(format!("channel kind {kind}")))?,
            target: row.try_get("target")?,
            secret: row.try_get("secret")?,
            frequency: Frequency::parse(&frequency)
                .ok_or_else(|| Error::Corrupt(format!("frequency {frequency}")))?,
            enabled: row.try_get("enabled")?,
            disabled_reason: row.try_get("disabled_reason")?,
        })
    }
}

/// Which targets channels may point at.
#[derive(Debug, Clone, Copy, Default)]
pub struct TargetPolicy {
    /// Allow `http://` and loopback or private hosts, as the demo's and
    /// tests' fake receivers need. Off in production: webhook URLs are
    /// chosen by users, and must not reach into our network.
    pub allow_private: bool,
}

/// A channel as a person asks for it, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    pub kind: Kind,
    pub target: String,
    pub frequency: Frequency,
}

impl ChannelSpec {
    pub fn parse(kind: &str, target: &str, frequency: &str, policy: TargetPolicy) -> Result<Self> {
        let kind = Kind::parse(kind)
            .ok_or_else(|| Error::invalid("kind", "choose email, webhook, slack or in-app"))?;
        let frequency = Frequency::parse(frequency)
            .ok_or_else(|| Error::invalid("frequency", "choose instant or daily"))?;
        let target = target.trim();
        let target = match kind {
            Kind::InApp => String::new(),
            Kind::Email => accounts::Email::parse(target)
                .map_err(|_| Error::invalid("target", "enter a valid email address"))?
                .as_str()
                .to_owned(),
            Kind::Webhook => valid_url(target, policy, None)?,
            Kind::Slack => valid_url(target, policy, Some("hooks.slack.com"))?,
        };
        Ok(Self {
            kind,
            target,
            frequency,
        })
    }
}

fn valid_url(text: &str, policy: TargetPolicy, required_host: Option<&str>) -> Result<String> {
    let invalid = |message: &str| Error::invalid("target", message);
    if text.len() > 2_000 {
        return Err(invalid("a URL has at most 2000 characters"));
    }
    let url = url::Url::parse(text).map_err(|_| invalid("enter a full URL, https://..."))?;
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let private = is_private_host(&host);
    if policy.allow_private && (private || url.scheme() == "http") {
        return Ok(url.to_string());
    }
    if url.scheme() != "https" {
        return Err(invalid("use an https:// URL"));
    }
    if private {
        return Err(invalid("this host is not reachable from paperstream"));
    }
    if let Some(required) = required_host
        && host != required
    {
        return Err(invalid(&format!(
            "a Slack incoming webhook URL starts with https://{required}/"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("put no credentials in the URL"));
    }
    Ok(url.to_string())
}

fn is_private_host(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") || host.ends_with(".internal") {
        return true;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>().is_ok_and(|ip| !is_public_ip(ip))
}

/// Whether `ip` is a public unicast address, one a webhook may reach: not
/// loopback, private, shared (carrier-grade NAT), link-local, multicast,
/// reserved or documentation space, in either family, nor an IPv6 address
/// that embeds such an IPv4 one.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            !(ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || ip.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && ip.octets()[2] == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(ip) => {
            let segments = ip.segments();
            if let Some(v4) = ip.to_ipv4_mapped() {
                return is_public_ip(IpAddr::V4(v4));
            }
            // NAT64 (64:ff9b::/96) and the old IPv4-compatible form carry
            // an IPv4 address in the last 32 bits.
            let embedded = Ipv4Addr::from((u32::from(segments[6]) << 16) | u32::from(segments[7]));
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || segments[..6] == [0; 6] {
                return !ip.is_unspecified()
                    && !ip.is_loopback()
                    && is_public_ip(IpAddr::V4(embedded));
            }
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00
                || (segments[0] & 0xffc0) == 0xfe80
                || (segments[0] == 0x2001 && segments[1] == 0x0db8))
        }
    }
}

/// A new webhook signing secret, `whsec_` and base64 as Standard Webhooks
/// writes them.
fn new_secret() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 24];
    // Without the OS random source no secret is safe; nothing to fall
    // back on.
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Add a channel. Webhooks get a signing secret, returned once in the
/// channel.
/// Most channels one person may keep: every channel is a place paperstream
/// sends to, so one account must not turn it into a mass mailer.
pub const MAX_PER_USER: i64 = 20;

pub async fn create(conn: &mut PgConnection, user_id: i64, spec: &ChannelSpec) -> Result<Channel> {
    // Locking the user serializes a person's concurrent creations, so the
    // count below cannot be raced past the limit.
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM channels WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&mut *conn)
        .await?;
    if count >= MAX_PER_USER {
        return Err(Error::invalid(
            "target",
            format!("a person may keep at most {MAX_PER_USER} channels; delete one first"),
        ));
    }
    let secret = (spec.kind == Kind::Webhook).then(new_secret);
    let row = sqlx::query(
        "INSERT INTO channels (user_id, kind, target, secret, frequency) \
         VALUES ($1, $2, $3, $4, $5) \
         RETURNING id, user_id, kind, target, secret, frequency, enabled, disabled_reason",
    )
    .bind(user_id)
    .bind(spec.kind.as_str())
    .bind(&spec.target)
    .bind(secret)
    .bind(spec.frequency.as_str())
    .fetch_one(conn)
    .await
    .map_err(|err| match &err {
        sqlx::Error::Database(db) if db.constraint() == Some("channels_target") => {
            Error::invalid("target", "you already have this channel")
        }
        _ => Error::Database(err),
    })?;
    Channel::from_row(&row)
}

/// The channels every new account starts with: the inbox, and email to
/// the address signed up with.
pub async fn create_defaults(conn: &mut PgConnection, user_id: i64, email: &str) -> Result<()> {
    for (kind, target) in [(Kind::InApp, ""), (Kind::Email, email)] {
        sqlx::query(
            "INSERT INTO channels (user_id, kind, target) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(kind.as_str())
        .bind(target)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub async fn list(pool: &PgPool, user_id: i64) -> Result<Vec<Channel>> {
    let rows = sqlx::query(
        "SELECT id, user_id, kind, target, secret, frequency, enabled, disabled_reason \
         FROM channels WHERE user_id = $1 ORDER BY id",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(Channel::from_row).collect()
}

/// The enabled channels of a person, for routing a notification.
pub async fn enabled(conn: &mut PgConnection, user_id: i64) -> Result<Vec<Channel>> {
    let rows = sqlx::query(
        "SELECT id, user_id, kind, target, secret, frequency, enabled, disabled_reason \
         FROM channels WHERE user_id = $1 AND enabled ORDER BY id",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await?;
    rows.iter().map(Channel::from_row).collect()
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Channel>> {
    let row = sqlx::query(
        "SELECT id, user_id, kind, target, secret, frequency, enabled, disabled_reason \
         FROM channels WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(Channel::from_row).transpose()
}

/// Turn a person's channel on or off; false if they have no such channel.
pub async fn set_enabled(
    conn: &mut PgConnection,
    user_id: i64,
    id: i64,
    enabled: bool,
    reason: Option<&str>,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE channels SET enabled = $3, disabled_reason = CASE WHEN $3 THEN NULL ELSE $4 END \
         WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user_id)
    .bind(enabled)
    .bind(reason)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

pub async fn set_frequency(
    conn: &mut PgConnection,
    user_id: i64,
    id: i64,
    frequency: Frequency,
) -> Result<bool> {
    Ok(
        sqlx::query("UPDATE channels SET frequency = $3 WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .bind(frequency.as_str())
            .execute(conn)
            .await?
            .rows_affected()
            == 1,
    )
}

pub async fn delete(conn: &mut PgConnection, user_id: i64, id: i64) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM channels WHERE id = $1 AND user_id = $2 AND kind <> 'in_app'")
            .bind(id)
            .bind(user_id)
            .execute(conn)
            .await?
            .rows_affected()
            == 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_by_kind() {
        let strict = TargetPolicy::default();
        let lax = TargetPolicy {
            allow_private: true,
        };
        assert!(ChannelSpec::parse("email", "ada@example.org", "daily", strict).is_ok());
        assert!(ChannelSpec::parse("email", "not an address", "instant", strict).is_err());
        assert!(
            ChannelSpec::parse("webhook", "https://example.org/hook", "instant", strict).is_ok()
        );
        for refused in [
            "http://example.org/hook",
            "https://127.0.0.1/hook",
            "https://10.1.2.3/hook",
            "https://localhost/hook",
            "https://[::1]/hook",
            "https://[::ffff:127.0.0.1]/hook",
            "https://[::ffff:a00:1]/hook",
            "https://[fe80::1]/hook",
            "https://[fd00::1]/hook",
            "https://[64:ff9b::a00:1]/hook",
            "https://100.64.0.1/hook",
            "https://0.0.0.0/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://user:pw@example.org/hook",
            "ftp://example.org",
            "hook",
        ] {
            assert!(
                ChannelSpec::parse("webhook", refused, "instant", strict).is_err(),
                "{refused}"
            );
        }
        assert!(
            ChannelSpec::parse("webhook", "http://127.0.0.1:7090/hooks/a", "instant", lax).is_ok()
        );
        assert!(
            ChannelSpec::parse(
                "slack",
                "https://hooks.slack.com/services/T/B/X",
                "instant",
                strict
            )
            .is_ok()
        );
        assert!(ChannelSpec::parse("slack", "https://example.org/x", "instant", strict).is_err());
        assert!(ChannelSpec::parse("pigeon", "", "instant", strict).is_err());
        for public in [
            "https://93.184.215.14/hook",
            "https://[2606:4700::1111]/hook",
        ] {
            assert!(
                ChannelSpec::parse("webhook", public, "instant", strict).is_ok(),
                "{public}"
            );
        }
        assert!(ChannelSpec::parse("in_app", "ignored", "hourly", strict).is_err());
    }
}
