//! Idempotency keys for POSTs (the IETF `Idempotency-Key` header).
//!
//! The key is claimed in the same transaction as the request's effect, by
//! inserting it: a concurrent repeat blocks on the key's primary key until
//! the first transaction ends, then finds the stored answer (or, if the
//! first rolled back, claims the key itself). So a repeat never runs the
//! effect twice and never needs a "still in progress" error.

use sha2::{Digest as _, Sha256};
use sqlx::{PgConnection, PgPool, Row};

use crate::{Error, Result};

/// Longest key accepted.
pub const MAX_KEY_LENGTH: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use of the key: run the request, then [`finish`].
    Fresh,
    /// The key was used for this same request: answer as then.
    Replay {
        status: u16,
        body: serde_json::Value,
    },
    /// The key was used for a different request.
    Mismatch,
}

/// Check a key's form: printable ASCII, 1 to 255 characters.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty()
        || key.len() > MAX_KEY_LENGTH
        || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(Error::invalid(
            "Idempotency-Key",
            format!("use 1 to {MAX_KEY_LENGTH} printable ASCII characters"),
        ));
    }
    Ok(())
}

/// A fingerprint of a request, to tell a repeat from a different request
/// under the same key.
pub fn request_hash(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update([0]);
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hasher.finalize().to_vec()
}

/// The scope for requests without a user (sign-up): the request's own
/// fingerprint, so that only someone who can repeat the request exactly
/// (password included) gets its answer.
pub fn anonymous_scope(request_hash: &[u8]) -> String {
    use std::fmt::Write as _;
    request_hash
        .iter()
        .fold(String::from("anon:"), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Claim `key` in `scope` within the caller's transaction.
pub async fn claim(
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
    request_hash: &[u8],
) -> Result<Claim> {
    validate_key(key)?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(request_hash)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Fresh);
    }
    let row = sqlx::query(
        "SELECT request_hash, status, response FROM idempotency_keys \
         WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    let stored_hash: Vec<u8> = row.try_get("request_hash")?;
    if stored_hash != request_hash {
        return Ok(Claim::Mismatch);
    }
    let status: Option<i16> = row.try_get("status")?;
    let body: Option<serde_json::Value> = row.try_get("response")?;
    Ok(Claim::Replay {
        status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(200),
        body: body.unwrap_or(serde_json::Value::Null),
    })
}

/// Store the answer to a fresh claim, in the same transaction.
pub async fn finish(
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
    status: u16,
    body: &serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $3, response = $4 WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .bind(status as i16)
    .bind(body)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forget keys older than a day (the IETF draft's suggested minimum).
pub async fn prune(pool: &PgPool) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '1 day'")
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
