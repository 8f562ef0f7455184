//! Users: validated input, creation and login.

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row, postgres::PgRow};
use time::OffsetDateTime;

use crate::{Error, Result, password};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub role: Role,
    pub time_zone: String,
    pub digest_hour: i16,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub(crate) fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        let role: String = row.try_get("role")?;
        Ok(Self {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            role: if role == "admin" {
                Role::Admin
            } else {
                Role::User
            },
            time_zone: row.try_get("time_zone")?,
            digest_hour: row.try_get("digest_hour")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// The columns [`User::from_row`] reads, for queries that join `users`.
macro_rules! user_columns {
    () => {
        "users.id, users.email, users.role, users.time_zone, users.digest_hour, users.created_at"
    };
}
pub(crate) use user_columns;

/// An email address as far as a form can tell: one `@`, a dotted domain,
/// no spaces, within the lengths SMTP allows. Whether it receives mail is
/// for the mail server to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(text: &str) -> Result<Self> {
        let email = text.trim();
        let invalid = |message: &str| Err(Error::invalid("email", message));
        if email.is_empty() {
            return invalid("enter your email address");
        }
        if email.len() > 254 {
            return invalid("an email address has at most 254 characters");
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return invalid("an email address has no spaces");
        }
        let Some((local, domain)) = email.rsplit_once('@') else {
            return invalid("an email address has an @");
        };
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return invalid("the part before the @ is not valid");
        }
        if !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
            || domain
                .chars()
                .any(|c| !(c.is_alphanumeric() || c == '.' || c == '-'))
        {
            return invalid("the domain after the @ is not valid");
        }
        Ok(Self(email.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password within the policy: 10 to 256 characters (NIST SP 800-63B:
/// length, not composition rules).
#[derive(Clone)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Password {
    pub const MIN: usize = 10;
    pub const MAX: usize = 256;

    pub fn parse(text: &str) -> Result<Self> {
        let length = text.chars().count();
        if length < Self::MIN {
            return Err(Error::invalid(
                "password",
                format!("use at least {} characters", Self::MIN),
            ));
        }
        if length > Self::MAX {
            return Err(Error::invalid(
                "password",
                format!("use at most {} characters", Self::MAX),
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// An IANA time zone name the time zone database knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeZoneName(String);

impl TimeZoneName {
    pub fn parse(text: &str) -> Result<Self> {
        let name = text.trim();
        if name.is_empty() || name.len() > 64 || jiff::tz::TimeZone::get(name).is_err() {
            return Err(Error::invalid(
                "time_zone",
                "choose a time zone such as Europe/Berlin or America/New_York",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: Email,
    pub password: Password,
    pub time_zone: TimeZoneName,
}

impl NewUser {
    /// Validate every field, reporting each one that is wrong.
    pub fn parse(email: &str, password: &str, time_zone: &str) -> Result<Self, Vec<Error>> {
        let email = Email::parse(email);
        let password = Password::parse(password);
        let time_zone = TimeZoneName::parse(time_zone);
        match (email, password, time_zone) {
            (Ok(email), Ok(password), Ok(time_zone)) => Ok(Self {
                email,
                password,
                time_zone,
            }),
            (email, password, time_zone) => Err([email.err(), password.err(), time_zone.err()]
                .into_iter()
                .flatten()
                .collect()),
        }
    }
}

/// Create a user in the caller's transaction. Hash the password first
/// (with [`password::hash`]), outside the transaction: it is slow on
/// purpose.
pub async fn create_user(
    conn: &mut PgConnection,
    user: &NewUser,
    password_hash: &str,
    role: Role,
) -> Result<User> {
    let row = sqlx::query(
        "INSERT INTO users (email, password_hash, time_zone, role) VALUES ($1, $2, $3, $4) \
         RETURNING id, email, role, time_zone, digest_hour, created_at",
    )
    .bind(user.email.as_str())
    .bind(password_hash)
    .bind(user.time_zone.as_str())
    .bind(match role {
        Role::User => "user",
        Role::Admin => "admin",
    })
    .fetch_one(conn)
    .await
    .map_err(|err| match &err {
        sqlx::Error::Database(db) if db.constraint() == Some("users_email") => Error::EmailTaken,
        _ => Error::Database(err),
    })?;
    Ok(User::from_row(&row)?)
}

pub async fn user(pool: &PgPool, id: i64) -> Result<Option<User>> {
    let row = sqlx::query(
        "SELECT id, email, role, time_zone, digest_hour, created_at FROM users WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(User::from_row).transpose()?)
}

/// Change where a person lives and when their digests go out; `digest_hour`
/// is a local hour, 0 to 23.
pub async fn set_profile(
    pool: &PgPool,
    user_id: i64,
    time_zone: &TimeZoneName,
    digest_hour: i16,
) -> Result<()> {
    if !(0..24).contains(&digest_hour) {
        return Err(Error::invalid("digest_hour", "choose an hour from 0 to 23"));
    }
    sqlx::query("UPDATE users SET time_zone = $2, digest_hour = $3 WHERE id = $1")
        .bind(user_id)
        .bind(time_zone.as_str())
        .bind(digest_hour)
        .execute(pool)
        .await?;
    Ok(())
}

/// The user with this email and password. Unknown emails take as long as
/// wrong passwords, so that timing does not tell which emails have
/// accounts.
pub async fn authenticate(pool: &PgPool, email: &str, password: &str) -> Result<Option<User>> {
    let row = sqlx::query(
        "SELECT id, email, role, time_zone, digest_hour, created_at, password_hash \
         FROM users WHERE lower(email) = lower($1)",
    )
    .bind(email.trim())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        password::verify_nothing(password).await;
        return Ok(None);
    };
    let hash: String = row.try_get("password_hash")?;
    if password::verify(password, &hash).await? {
        Ok(Some(User::from_row(&row)?))
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(Email::parse(" ada@example.org ").is_ok());
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.org",
            "ada@example",
            "ada@exa mple.org",
            "ada@.org",
            "ada@example..org",
            "a@b@example.org",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.org", "a".repeat(65))).is_err());
    }

    #[test]
    fn passwords_and_time_zones() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse("long enough now").is_ok());
        assert!(Password::parse(&"x".repeat(257)).is_err());
        assert!(format!("{:?}", Password::parse("long enough now")).contains(".."));
        assert!(TimeZoneName::parse("Europe/Berlin").is_ok());
        assert!(TimeZoneName::parse("Mars/Olympus").is_err());
        let errors = NewUser::parse("nope", "short", "Mars/Olympus").expect_err("all invalid");
        assert_eq!(errors.len(), 3);
    }
}
