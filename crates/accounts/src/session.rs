//! Browser sessions: a random token in the (signed) cookie, its hash in
//! Postgres, an idle expiry pushed forward as the session is used and an
//! absolute one it never passes.

use std::time::Duration;

use sqlx::{PgPool, Row};
use time::OffsetDateTime;

use crate::{Result, User, random_token, token_hash, user::user_columns};

#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// A session unused this long ends.
    pub idle: Duration,
    /// No session lasts longer than this.
    pub absolute: Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(7 * 24 * 3600),
            absolute: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Extending the idle expiry is a write; once an hour per session is
/// enough, so that reading pages does not write on every request.
const EXTEND_EVERY: Duration = Duration::from_secs(3600);

/// Start a session for `user_id`; returns the token for the cookie.
pub async fn start(pool: &PgPool, user_id: i64, policy: SessionPolicy) -> Result<String> {
    let token = random_token("");
    let now = OffsetDateTime::now_utc();
    let absolute = now + policy.absolute;
    sqlx::query(
        "INSERT INTO sessions (token_hash, user_id, expires_at, absolute_expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(token_hash(&token))
    .bind(user_id)
    .bind(absolute.min(now + policy.idle))
    .bind(absolute)
    .execute(pool)
    .await?;
    Ok(token)
}

/// The user a session token belongs to, if the session is live.
pub async fn user(pool: &PgPool, token: &str, policy: SessionPolicy) -> Result<Option<User>> {
    let hash = token_hash(token);
    let row = sqlx::query(concat!(
        "SELECT ",
        user_columns!(),
        ", sessions.expires_at, sessions.absolute_expires_at \
         FROM sessions JOIN users ON users.id = sessions.user_id \
         WHERE sessions.token_hash = $1 AND sessions.expires_at > now()"
    ))
    .bind(&hash)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let expires_at: OffsetDateTime = row.try_get("expires_at")?;
    let absolute: OffsetDateTime = row.try_get("absolute_expires_at")?;
    let now = OffsetDateTime::now_utc();
    let wanted = absolute.min(now + policy.idle);
    if wanted - expires_at > EXTEND_EVERY {
        sqlx::query("UPDATE sessions SET expires_at = $2 WHERE token_hash = $1")
            .bind(&hash)
            .bind(wanted)
            .execute(pool)
            .await?;
    }
    Ok(Some(User::from_row(&row)?))
}

/// End one session (log out).
pub async fn end(pool: &PgPool, token: &str) -> Result<()> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
        .bind(token_hash(token))
        .execute(pool)
        .await?;
    Ok(())
}

/// End a session now without deleting it, as time would.
pub async fn expire(pool: &PgPool, token: &str) -> Result<()> {
    sqlx::query(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
    )
    .bind(token_hash(token))
    .execute(pool)
    .await?;
    Ok(())
}

/// Delete sessions that ended; returns how many.
pub async fn prune(pool: &PgPool) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM sessions WHERE expires_at < now()")
        .execute(pool)
        .await?
        .rows_affected())
}
