//! Senders: SMTP with lettre, webhooks and Slack with reqwest.
//!
//! Each send is given a stable identity by its caller, the same for every
//! attempt of one delivery (an email's Message-ID, a webhook's
//! `webhook-id`), so that a receiver can drop a repeat sent after a crash.

use std::{net::SocketAddr, time::Duration};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{
        MultiPart,
        header::{HeaderName, HeaderValue},
    },
    transport::smtp::{
        authentication::Credentials,
        client::{Tls, TlsParameters},
    },
};
use serde_json::Value;
use sha2::Sha256;

use crate::{
    channel::{TargetPolicy, is_public_ip},
    render::Email,
};

/// How a send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later: the receiver is down, slow, or asked us to wait.
    #[error("temporary failure: {0}")]
    Transient(String),
    /// Do not try again: the receiver refused this for good (no such
    /// mailbox, a webhook answering 4xx).
    #[error("refused: {0}")]
    Permanent(String),
}

impl SendError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }
}

/// How to reach the SMTP server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain text: only for a local relay or the demo's fake server.
    None,
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
}

#[derive(Clone, serde::Deserialize, serde::Serialize)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `paperstream <papers@example.org>`
    pub from: String,
    pub timeout_s: u64,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("from", &self.from)
            .finish()
    }
}

/// Sends email through one SMTP server, over pooled connections.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
    timeout: Duration,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from).finish()
    }
}

impl Mailer {
    pub fn new(config: &SmtpConfig) -> Result<Self, String> {
        let from = config
            .from
            .parse()
            .map_err(|err| format!("sender address {:?}: {err}", config.from))?;
        let tls = match config.security {
            SmtpSecurity::None => Tls::None,
            SmtpSecurity::StartTls | SmtpSecurity::Tls => {
                let parameters = TlsParameters::new(config.host.clone())
                    .map_err(|err| format!("TLS for {}: {err}", config.host))?;
                if config.security == SmtpSecurity::Tls {
                    Tls::Wrapper(parameters)
                } else {
                    Tls::Required(parameters)
                }
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(Duration::from_secs(config.timeout_s.max(1))));
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            timeout: Duration::from_secs(config.timeout_s.max(1)),
        })
    }

    /// Send `email` to `to` with a stable `message_id` (`id@domain`),
    /// one-click unsubscribe headers (RFC 8058) pointing at
    /// `unsubscribe_url`.
    pub async fn send(
        &self,
        to: &str,
        message_id: &str,
        email: &Email,
        unsubscribe_url: &str,
    ) -> Result<(), SendError> {
        let to = to
            .parse()
            .map_err(|err| SendError::Permanent(format!("recipient {to:?}: {err}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject.clone())
            .message_id(Some(format!("<{message_id}>")))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{unsubscribe_url}>"),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_owned(),
            ))
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(|err| SendError::Permanent(format!("building the message: {err}")))?;
        // lettre's own timeout bounds connecting only; a server that
        // stops answering mid-transaction would hold the send for ever.
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Err(_) => Err(SendError::Transient(format!(
                "no answer within {} s",
                self.timeout.as_secs()
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(classify_smtp(&err)),
        }
    }

    /// Whether the server answers (for readiness).
    pub async fn ping(&self) -> Result<(), String> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err("the SMTP server did not answer NOOP".into()),
            Err(err) => Err(err.to_string()),
        }
    }
}

/// Only replies that speak of the recipient are permanent for it: no such
/// mailbox (550, 551), not allowed (553), a malformed address (501). Other
/// 5xx replies (a 554 greeting from a relay that refuses all service, a
/// 552 over quota) are retried and count against the breaker: they say
/// the server, not the address, is the trouble.
fn classify_smtp(err: &lettre::transport::smtp::Error) -> SendError {
    let code = err.status().map(u16::from);
    match code {
        Some(501 | 550 | 551 | 553) => SendError::Permanent(err.to_string()),
        // Transient codes, other refusals, timeouts, dropped connections,
        // TLS trouble: the server may take it later. A connection dropped
        // after the message data may have delivered it; the retry carries
        // the same Message-ID.
        _ => SendError::Transient(err.to_string()),
    }
}

/// Sends webhooks and Slack messages.
#[derive(Debug, Clone)]
pub struct HttpSender {
    client: reqwest::Client,
}

/// Why a target's name was not connected to: all its addresses are inside.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves to no public address; paperstream does not send there")]
struct NoPublicAddress(String);

/// Resolves names to their public addresses only. A URL's host passed the
/// checks when the channel was made, but DNS may later (or always) point it
/// inside our network; the check that counts is the one at connection time.
struct PublicAddressesOnly;

impl reqwest::dns::Resolve for PublicAddressesOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let public: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| is_public_ip(addr.ip()))
                .collect();
            if public.is_empty() {
                return Err(Box::new(NoPublicAddress(host)) as _);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl HttpSender {
    /// `policy.allow_private` lets names resolve to private addresses (the
    /// demo's receivers); otherwise only public addresses are connected to.
    pub fn new(timeout: Duration, policy: TargetPolicy) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder();
        if !policy.allow_private {
            builder = builder.dns_resolver(PublicAddressesOnly);
        }
        let client = builder
            .timeout(timeout)
            // A webhook answering with a redirect could send us anywhere,
            // past the checks its URL passed.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("paperstream/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| err.to_string())?;
        Ok(Self { client })
    }

    /// POST a webhook signed the Standard Webhooks way: `webhook-id`,
    /// `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256
    /// of "id.timestamp.body">` with the channel's `whsec_` secret.
    pub async fn webhook(
        &self,
        url: &str,
        secret: &str,
        id: &str,
        payload: &Value,
    ) -> Result<(), SendError> {
        let body = serde_json::to_vec(payload)
            .map_err(|err| SendError::Permanent(format!("encoding the payload: {err}")))?;
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
        let signature = sign_webhook(secret, id, &timestamp, &body)
            .map_err(|err| SendError::Permanent(format!("webhook secret: {err}")))?;
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", &timestamp)
            .header("webhook-signature", format!("v1,{signature}"))
            .body(body)
            .send()
            .await;
        classify(response, |_| Ok(())).await
    }

    /// POST to a Slack incoming webhook.
    pub async fn slack(&self, url: &str, payload: &Value) -> Result<(), SendError> {
        let response = self.client.post(url).json(payload).send().await;
        classify(response, |body| {
            // Slack answers `ok`; anything else on 200 is unexpected, but
            // the message was accepted.
            if body.trim() != "ok" {
                tracing::debug!(body, "Slack answered 200 without ok");
            }
            Ok(())
        })
        .await
    }
}

/// Sort a response into success, transient or permanent failure.
async fn classify(
    response: Result<reqwest::Response, reqwest::Error>,
    on_success: impl FnOnce(&str) -> Result<(), SendError>,
) -> Result<(), SendError> {
    let response = match response {
        Ok(response) => response,
        Err(err) if caused_by::<NoPublicAddress>(&err) => {
            return Err(SendError::Permanent(error_chain(&err)));
        }
        // Timeouts, refused connections, resets: the receiver may be back
        // soon.
        Err(err) => return Err(SendError::Transient(err.to_string())),
    };
    let status = response.status();
    // The body explains refusals (Slack's `no_service`); a bounded read.
    let body = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(500)
        .collect::<String>();
    match status.as_u16() {
        200..=299 => on_success(&body),
        408 | 425 | 429 | 500..=599 => Err(SendError::Transient(format!("{status} {body}"))),
        _ => Err(SendError::Permanent(format!("{status} {body}"))),
    }
}

fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| e.is::<E>())
}

/// An error and its causes, as one line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(err), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// The base64 signature of a webhook, from a `whsec_` secret.
pub fn sign_webhook(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
) -> Result<String, String> {
    let key = webhook_key(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|err| err.to_string())?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(STANDARD.encode(mac.finalize().into_bytes()))
}

/// The signing key in a `whsec_` secret.
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|err| format!("not base64: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_signatures_follow_the_standard() {
        // The example from the Standard Webhooks specification.
        let signature = sign_webhook(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        )
        .expect("valid secret");
        assert_eq!(signature, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(sign_webhook("whsec_!!!", "id", "1", b"").is_err());
    }
}
