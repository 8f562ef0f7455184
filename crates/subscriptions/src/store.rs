//! Subscriptions in Postgres, and the change feed that keeps matchers'
//! indexes current.

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row, postgres::PgRow};
use time::OffsetDateTime;

use crate::{index, query::Query, spec::Spec};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("a person may keep at most {MAX_PER_USER} subscriptions")]
    TooMany,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Most subscriptions one person may keep.
pub const MAX_PER_USER: i64 = 100;

/// The subscription migrations (they need the accounts' `users` table).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

/// A stored subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stored {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub categories: Vec<String>,
    pub query: Option<String>,
    pub authors: Vec<String>,
    pub paused: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Stored {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            name: row.try_get("name")?,
            categories: row.try_get("categories")?,
            query: row.try_get("query")?,
            authors: row.try_get("authors")?,
            paused: row.try_get("paused")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    /// What the matcher indexes. A stored query that no longer parses
    /// (the language got stricter) leaves the subscription out, with a
    /// warning, rather than matching something else.
    pub fn to_index(&self) -> Option<index::Subscription> {
        let query = match self.query.as_deref().map(Query::parse) {
            None => None,
            Some(Ok(query)) => Some(query),
            Some(Err(err)) => {
                tracing::warn!(subscription = self.id, %err, "stored query does not parse");
                return None;
            }
        };
        Some(index::Subscription {
            id: self.id,
            user_id: self.user_id,
            categories: self.categories.clone(),
            query,
            authors: self.authors.clone(),
        })
    }
}

pub async fn create(conn: &mut PgConnection, user_id: i64, spec: &Spec) -> Result<Stored> {
    // Locking the user serializes a person's concurrent creations, so the
    // count below cannot be raced past the limit.
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&mut *conn)
        .await?;
    if count >= MAX_PER_USER {
        return Err(Error::TooMany);
    }
    let row = sqlx::query(
        "INSERT INTO subscriptions (user_id, name, categories, query, authors) \
         VALUES ($1, $2, $3, $4, $5) \
         RETURNING id, user_id, name, categories, query, authors, paused, created_at, updated_at",
    )
    .bind(user_id)
    .bind(&spec.name)
    .bind(&spec.categories)
    .bind(spec.query_text())
    .bind(&spec.authors)
    .fetch_one(conn)
    .await?;
    Ok(Stored::from_row(&row)?)
}

/// Replace a subscription's content; `None` if the user has no such one.
pub async fn update(
    conn: &mut PgConnection,
    user_id: i64,
    id: i64,
    spec: &Spec,
) -> Result<Option<Stored>> {
    let row = sqlx::query(
        "UPDATE subscriptions SET name = $3, categories = $4, query = $5, authors = $6, \
                updated_at = now() \
         WHERE id = $1 AND user_id = $2 \
         RETURNING id, user_id, name, categories, query, authors, paused, created_at, updated_at",
    )
    .bind(id)
    .bind(user_id)
    .bind(&spec.name)
    .bind(&spec.categories)
    .bind(spec.query_text())
    .bind(&spec.authors)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(Stored::from_row).transpose()?)
}

pub async fn set_paused(
    conn: &mut PgConnection,
    user_id: i64,
    id: i64,
    paused: bool,
) -> Result<Option<Stored>> {
    let row = sqlx::query(
        "UPDATE subscriptions SET paused = $3, updated_at = now() \
         WHERE id = $1 AND user_id = $2 \
         RETURNING id, user_id, name, categories, query, authors, paused, created_at, updated_at",
    )
    .bind(id)
    .bind(user_id)
    .bind(paused)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(Stored::from_row).transpose()?)
}

pub async fn delete(conn: &mut PgConnection, user_id: i64, id: i64) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM subscriptions WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(conn)
            .await?
            .rows_affected()
            == 1,
    )
}

pub async fn get(pool: &PgPool, user_id: i64, id: i64) -> Result<Option<Stored>> {
    let row = sqlx::query(
        "SELECT id, user_id, name, categories, query, authors, paused, created_at, updated_at \
         FROM subscriptions WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(Stored::from_row).transpose()?)
}

/// A subscription by id alone, for links signed for it (feeds).
pub async fn by_id(pool: &PgPool, id: i64) -> Result<Option<Stored>> {
    let row = sqlx::query(
        "SELECT id, user_id, name, categories, query, authors, paused, created_at, updated_at \
         FROM subscriptions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(Stored::from_row).transpose()?)
}

pub async fn list(pool: &PgPool, user_id: i64) -> Result<Vec<Stored>> {
    let rows = sqlx::query(
        "SELECT id, user_id, name, categories, query, authors, paused, created_at, updated_at \
         FROM subscriptions WHERE user_id = $1 ORDER BY created_at, id",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(Stored::from_row)
        .collect::<Result<_, _>>()?)
}

/// Where a follower of the change feed stands: the oldest transaction that
/// was still running when it last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(i64);

/// One change for the matcher's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Added or edited, and active.
    Upsert(index::Subscription),
    /// Deleted, or paused.
    Remove(i64),
}

/// Every active subscription, and the cursor to follow changes from.
pub async fn load_active(pool: &PgPool) -> Result<(Vec<index::Subscription>, Cursor)> {
    let mut tx = pool.begin().await?;
    // One snapshot for the cursor and the rows, so that every change not
    // in the rows has a transaction at or after the cursor.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let cursor = snapshot_xmin(&mut tx).await?;
    let rows = sqlx::query(
        "SELECT id, user_id, name, categories, query, authors, paused, created_at, updated_at \
         FROM subscriptions WHERE NOT paused",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let active = rows
        .iter()
        .map(Stored::from_row)
        .filter_map(|row| row.map(|s| s.to_index()).transpose())
        .collect::<Result<_, _>>()?;
    Ok((active, cursor))
}

/// The changes since `cursor`, and the cursor to read from next. A change
/// may be reported more than once; applying one is idempotent.
pub async fn changes_since(pool: &PgPool, cursor: Cursor) -> Result<(Vec<Change>, Cursor)> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let next = snapshot_xmin(&mut tx).await?;
    let changed: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT subscription_id FROM subscription_changes \
         WHERE xid >= $1::text::xid8",
    )
    .bind(cursor.0.to_string())
    .fetch_all(&mut *tx)
    .await?;
    let rows = sqlx::query(
        "SELECT id, user_id, name, categories, query, authors, paused, created_at, updated_at \
         FROM subscriptions WHERE id = ANY($1)",
    )
    .bind(&changed)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut changes = Vec::with_capacity(changed.len());
    let mut present = std::collections::HashSet::new();
    for row in &rows {
        let stored = Stored::from_row(row)?;
        present.insert(stored.id);
        match stored.to_index() {
            Some(subscription) if !stored.paused => changes.push(Change::Upsert(subscription)),
            _ => changes.push(Change::Remove(stored.id)),
        }
    }
    changes.extend(
        changed
            .into_iter()
            .filter(|id| !present.contains(id))
            .map(Change::Remove),
    );
    Ok((changes, next))
}

async fn snapshot_xmin(conn: &mut PgConnection) -> Result<Cursor> {
    let xmin: String = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        .fetch_one(conn)
        .await?;
    // xid8 is a 64-bit counter that never wraps; it fits an i64 for
    // longer than any database lives.
    xmin.parse::<i64>()
        .map(Cursor)
        .map_err(|err| Error::Database(sqlx::Error::Decode(Box::new(err))))
}

/// Forget changes older than `days` days; a follower further behind than
/// that must reload.
pub async fn prune_changes(pool: &PgPool, days: i32) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM subscription_changes WHERE changed_at < now() - make_interval(days => $1)",
    )
    .bind(days)
    .execute(pool)
    .await?
    .rows_affected())
}

/// The names of subscriptions, in the order of `ids` (missing ones left
/// out), for telling people what matched.
pub async fn names(pool: &PgPool, ids: &[i64]) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT s.name FROM unnest($1::bigint[]) WITH ORDINALITY AS k(id, n) \
         JOIN subscriptions s ON s.id = k.id ORDER BY k.n",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get("name"))
        .collect::<Result<_, _>>()?)
}
