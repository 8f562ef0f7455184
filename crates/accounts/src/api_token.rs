//! Tokens for the JSON API (`Authorization: Bearer ps_...`), stored as
//! hashes. The `ps_` prefix lets secret scanners recognize a leaked one.

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;

use crate::{Error, Result, User, random_token, token_hash, user::user_columns};

pub const PREFIX: &str = "ps_";

/// Create a token for `user_id`; the returned text is shown once and never
/// stored.
pub async fn create(conn: &mut PgConnection, user_id: i64, name: &str) -> Result<(i64, String)> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Error::invalid(
            "name",
            "give the token a name of up to 100 characters",
        ));
    }
    let token = random_token(PREFIX);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO api_tokens (user_id, name, token_hash) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(user_id)
    .bind(name)
    .bind(token_hash(&token))
    .fetch_one(conn)
    .await?;
    Ok((id, token))
}

/// The user a token belongs to, if it is valid and not revoked.
pub async fn user(pool: &PgPool, token: &str) -> Result<Option<User>> {
    if !token.starts_with(PREFIX) {
        return Ok(None);
    }
    let hash = token_hash(token);
    let row = sqlx::query(concat!(
        "SELECT ",
        user_columns!(),
        ", api_tokens.id AS token_id, \
                api_tokens.last_used_at < now() - interval '1 minute' \
                    OR api_tokens.last_used_at IS NULL AS stale \
         FROM api_tokens JOIN users ON users.id = api_tokens.user_id \
         WHERE api_tokens.token_hash = $1 AND api_tokens.revoked_at IS NULL"
    ))
    .bind(&hash)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    // Last use is for people reviewing their tokens; to the minute is
    // enough, and saves a write per request.
    if row.try_get::<bool, _>("stale")? {
        sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
            .bind(row.try_get::<i64, _>("token_id")?)
            .execute(pool)
            .await?;
    }
    Ok(Some(User::from_row(&row)?))
}

/// Revoke one of the user's tokens; false when it has no such token.
pub async fn revoke(pool: &PgPool, user_id: i64, token_id: i64) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() \
         WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(token_id)
    .bind(user_id)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// A token as its owner sees it in a list: never the token itself.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

/// The user's tokens that are not revoked, newest first.
pub async fn list(pool: &PgPool, user_id: i64) -> Result<Vec<TokenInfo>> {
    let rows = sqlx::query(
        "SELECT id, name, created_at, last_used_at FROM api_tokens \
         WHERE user_id = $1 AND revoked_at IS NULL ORDER BY id DESC",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(TokenInfo {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                created_at: row.try_get("created_at")?,
                last_used_at: row.try_get("last_used_at")?,
            })
        })
        .collect()
}
