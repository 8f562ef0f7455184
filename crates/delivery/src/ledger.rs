//! The record of what matched and what was delivered.
//!
//! A delivery's state moves `queued -> sending -> sent` (or `failed`),
//! each step committed before the next action: `sending` before the send,
//! `sent` right after it. A message redelivered after a crash finds the
//! state and does not send again what was recorded as sent. One window
//! stays, and no protocol closes it: a crash after the remote accepted a
//! send and before `sent` was recorded. The delivery is then sent again
//! with the same identity (Message-ID, `webhook-id`), which receivers use
//! to drop the repeat; [`Begin::Send::resumed`] marks those sends.

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use time::{Date, OffsetDateTime};

use crate::Result;

/// One person, paper and channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct DeliveryKey {
    pub user_id: i64,
    pub arxiv_id: String,
    pub channel_id: i64,
}

/// Record that a paper matched a person's subscriptions; false if it had
/// already.
pub async fn record_match(
    conn: &mut PgConnection,
    user_id: i64,
    arxiv_id: &str,
    version: i32,
    subscription_ids: &[i64],
) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO matches (user_id, arxiv_id, version, subscription_ids) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(user_id)
    .bind(arxiv_id)
    .bind(version)
    .bind(subscription_ids)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Queue a delivery; false if this person, paper and channel has one.
pub async fn queue(conn: &mut PgConnection, key: &DeliveryKey, version: i32) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO deliveries (user_id, arxiv_id, channel_id, version) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(key.user_id)
    .bind(&key.arxiv_id)
    .bind(key.channel_id)
    .bind(version)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Deliver to the in-app inbox: recording it is the delivery.
pub async fn deliver_in_app(
    conn: &mut PgConnection,
    key: &DeliveryKey,
    version: i32,
) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO deliveries (user_id, arxiv_id, channel_id, version, state, attempts, sent_at) \
         VALUES ($1, $2, $3, $4, 'sent', 1, now()) ON CONFLICT DO NOTHING",
    )
    .bind(key.user_id)
    .bind(&key.arxiv_id)
    .bind(key.channel_id)
    .bind(version)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// What a sender should do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Send it. `resumed`: an earlier attempt was interrupted after it
    /// began, so the receiver may have it already.
    Send {
        attempt: i32,
        resumed: bool,
        version: i32,
    },
    /// It was sent; do nothing.
    AlreadySent,
    /// There is no such delivery (its channel or person was deleted).
    Missing,
}

/// Mark a delivery as being sent, and say whether to send it.
pub async fn begin_send(conn: &mut PgConnection, key: &DeliveryKey) -> Result<Begin> {
    let row = sqlx::query(
        "SELECT state, version FROM deliveries \
         WHERE user_id = $1 AND arxiv_id = $2 AND channel_id = $3 FOR UPDATE",
    )
    .bind(key.user_id)
    .bind(&key.arxiv_id)
    .bind(key.channel_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(Begin::Missing);
    };
    let state: String = row.try_get("state")?;
    let version: i32 = row.try_get("version")?;
    if state == "sent" {
        return Ok(Begin::AlreadySent);
    }
    let attempt: i32 = sqlx::query_scalar(
        "UPDATE deliveries SET state = 'sending', attempts = attempts + 1 \
         WHERE user_id = $1 AND arxiv_id = $2 AND channel_id = $3 RETURNING attempts",
    )
    .bind(key.user_id)
    .bind(&key.arxiv_id)
    .bind(key.channel_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Begin::Send {
        attempt,
        resumed: state == "sending",
        version,
    })
}

pub async fn mark_sent(conn: &mut PgConnection, key: &DeliveryKey) -> Result<()> {
    set_state(conn, key, "sent", None).await
}

/// A transient failure: queued again, with the error kept for people
/// looking into it.
pub async fn mark_retry(conn: &mut PgConnection, key: &DeliveryKey, error: &str) -> Result<()> {
    set_state(conn, key, "queued", Some(error)).await
}

/// A permanent failure.
pub async fn mark_failed(conn: &mut PgConnection, key: &DeliveryKey, error: &str) -> Result<()> {
    set_state(conn, key, "failed", Some(error)).await
}

async fn set_state(
    conn: &mut PgConnection,
    key: &DeliveryKey,
    state: &str,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE deliveries SET state = $4, last_error = coalesce($5, last_error), \
                sent_at = CASE WHEN $4 = 'sent' THEN now() ELSE sent_at END \
         WHERE user_id = $1 AND arxiv_id = $2 AND channel_id = $3",
    )
    .bind(key.user_id)
    .bind(&key.arxiv_id)
    .bind(key.channel_id)
    .bind(state)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// A paper in a person's feed.
#[derive(Debug, Clone, Serialize)]
pub struct FeedItem {
    #[serde(flatten)]
    pub card: catalog::reading::Card,
    #[serde(with = "time::serde::rfc3339")]
    pub matched_at: OffsetDateTime,
    pub subscription_ids: Vec<i64>,
    /// The person's thumbs up (1) or down (-1).
    pub vote: Option<i16>,
}

/// Where a feed page ends, to ask for the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FeedCursor {
    #[serde(with = "time::serde::rfc3339")]
    pub matched_at: OffsetDateTime,
    pub arxiv_id: String,
}

/// A page of a person's feed, newest first, optionally one subscription's.
pub async fn feed(
    pool: &PgPool,
    user_id: i64,
    subscription: Option<i64>,
    after: Option<&FeedCursor>,
    limit: i64,
) -> Result<Vec<FeedItem>> {
    let rows = sqlx::query(
        "SELECT m.arxiv_id, m.version, m.matched_at, m.subscription_ids, f.vote \
         FROM matches m \
         LEFT JOIN feedback f ON f.user_id = m.user_id AND f.arxiv_id = m.arxiv_id \
         WHERE m.user_id = $1 \
           AND ($2::bigint IS NULL OR $2 = ANY(m.subscription_ids)) \
           AND ($3::timestamptz IS NULL OR (m.matched_at, m.arxiv_id) < ($3, $4)) \
         ORDER BY m.matched_at DESC, m.arxiv_id DESC LIMIT $5",
    )
    .bind(user_id)
    .bind(subscription)
    .bind(after.map(|c| c.matched_at))
    .bind(after.map(|c| c.arxiv_id.as_str()))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let keys: Vec<(String, i32)> = rows
        .iter()
        .map(|r| Ok((r.try_get("arxiv_id")?, r.try_get("version")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    let cards = catalog::reading::cards(pool, &keys).await?;
    let mut cards = cards.into_iter().peekable();
    let mut items = Vec::with_capacity(rows.len());
    for (row, (arxiv_id, version)) in rows.iter().zip(&keys) {
        // A match whose paper is not in the catalog (deleted) is skipped.
        let Some(card) = cards.next_if(|c| &c.arxiv_id == arxiv_id && c.version == *version) else {
            continue;
        };
        items.push(FeedItem {
            card,
            matched_at: row.try_get("matched_at")?,
            subscription_ids: row.try_get("subscription_ids")?,
            vote: row.try_get("vote")?,
        });
    }
    Ok(items)
}

/// A paper in a person's in-app inbox.
#[derive(Debug, Clone, Serialize)]
pub struct InboxItem {
    #[serde(flatten)]
    pub card: catalog::reading::Card,
    #[serde(with = "time::serde::rfc3339")]
    pub delivered_at: OffsetDateTime,
    pub read: bool,
}

/// The newest of a person's inbox, and how many are unread.
pub async fn inbox(pool: &PgPool, user_id: i64, limit: i64) -> Result<(Vec<InboxItem>, i64)> {
    let rows = sqlx::query(
        "SELECT d.arxiv_id, d.version, d.sent_at, d.read_at IS NOT NULL AS read \
         FROM deliveries d JOIN channels c ON c.id = d.channel_id \
         WHERE c.user_id = $1 AND c.kind = 'in_app' AND d.state = 'sent' \
         ORDER BY d.sent_at DESC, d.arxiv_id DESC LIMIT $2",
    )
    .bind(user_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let unread: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deliveries d JOIN channels c ON c.id = d.channel_id \
         WHERE c.user_id = $1 AND c.kind = 'in_app' AND d.state = 'sent' AND d.read_at IS NULL",
    )
    .bind(user_id)
    .fetch_one(pool)
    .await?;
    let keys: Vec<(String, i32)> = rows
        .iter()
        .map(|r| Ok((r.try_get("arxiv_id")?, r.try_get("version")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    let mut cards = catalog::reading::cards(pool, &keys)
        .await?
        .into_iter()
        .peekable();
    let mut items = Vec::with_capacity(rows.len());
    for (row, (arxiv_id, version)) in rows.iter().zip(&keys) {
        let Some(card) = cards.next_if(|c| &c.arxiv_id == arxiv_id && c.version == *version) else {
            continue;
        };
        items.push(InboxItem {
            card,
            delivered_at: row.try_get("sent_at")?,
            read: row.try_get("read")?,
        });
    }
    Ok((items, unread))
}

/// Mark inbox items read: one paper, or all when `arxiv_id` is `None`.
pub async fn mark_read(
    conn: &mut PgConnection,
    user_id: i64,
    arxiv_id: Option<&str>,
) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE deliveries d SET read_at = now() FROM channels c \
         WHERE c.id = d.channel_id AND c.user_id = $1 AND c.kind = 'in_app' \
           AND d.read_at IS NULL AND ($2::text IS NULL OR d.arxiv_id = $2)",
    )
    .bind(user_id)
    .bind(arxiv_id)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Set or clear (`None`) a person's vote on a paper.
pub async fn set_feedback(
    conn: &mut PgConnection,
    user_id: i64,
    arxiv_id: &str,
    vote: Option<i16>,
) -> Result<()> {
    match vote {
        Some(vote) => {
            sqlx::query(
                "INSERT INTO feedback (user_id, arxiv_id, vote) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, arxiv_id) DO UPDATE SET vote = $3, created_at = now()",
            )
            .bind(user_id)
            .bind(arxiv_id)
            .bind(vote.signum())
            .execute(conn)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM feedback WHERE user_id = $1 AND arxiv_id = $2")
                .bind(user_id)
                .bind(arxiv_id)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

/// A daily channel whose digest is due: its person's local hour has come
/// today, no digest went out today, and papers are waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDigest {
    pub channel_id: i64,
    pub user_id: i64,
    pub local_date: Date,
}

pub async fn due_digests(pool: &PgPool) -> Result<Vec<DueDigest>> {
    // `>=` rather than `=`: a digest missed at its hour (the notifier was
    // down) goes out late the same day instead of a day late.
    let rows = sqlx::query(
        "SELECT c.id AS channel_id, c.user_id, (now() AT TIME ZONE u.time_zone)::date AS local_date \
         FROM channels c JOIN users u ON u.id = c.user_id \
         WHERE c.frequency = 'daily' AND c.enabled \
           AND extract(hour FROM now() AT TIME ZONE u.time_zone) >= u.digest_hour \
           AND EXISTS (SELECT 1 FROM deliveries d \
                       WHERE d.channel_id = c.id AND d.state = 'queued' AND d.digest_id IS NULL) \
           AND NOT EXISTS (SELECT 1 FROM digests g \
                           WHERE g.channel_id = c.id \
                             AND g.local_date = (now() AT TIME ZONE u.time_zone)::date)",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DueDigest {
                channel_id: r.try_get("channel_id")?,
                user_id: r.try_get("user_id")?,
                local_date: r.try_get("local_date")?,
            })
        })
        .collect()
}

/// Open today's digest for a channel and gather its waiting papers into
/// it; `None` if it exists already or nothing waits.
pub async fn open_digest(
    conn: &mut PgConnection,
    channel_id: i64,
    local_date: Date,
) -> Result<Option<i64>> {
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO digests (channel_id, local_date, papers) VALUES ($1, $2, 0) \
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(channel_id)
    .bind(local_date)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(id) = id else {
        return Ok(None);
    };
    let papers = sqlx::query(
        "UPDATE deliveries SET digest_id = $2 \
         WHERE channel_id = $1 AND state = 'queued' AND digest_id IS NULL",
    )
    .bind(channel_id)
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query("UPDATE digests SET papers = $2 WHERE id = $1")
        .bind(id)
        .bind(papers as i32)
        .execute(conn)
        .await?;
    Ok((papers > 0).then_some(id))
}

/// A digest to send: its channel, person and papers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub id: i64,
    pub channel_id: i64,
    pub user_id: i64,
    pub local_date: Date,
    pub papers: Vec<(String, i32)>,
}

/// What the sender of a digest should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestBegin {
    /// Send it; `resumed` as in [`Begin::Send`].
    Send {
        digest: Digest,
        resumed: bool,
    },
    AlreadySent,
    Missing,
}

/// Mark a digest as being sent, and say whether to send it.
pub async fn begin_digest(conn: &mut PgConnection, id: i64) -> Result<DigestBegin> {
    let row = sqlx::query(
        "SELECT g.state, g.channel_id, g.local_date, c.user_id FROM digests g \
         JOIN channels c ON c.id = g.channel_id WHERE g.id = $1 FOR UPDATE OF g",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(DigestBegin::Missing);
    };
    let state: String = row.try_get("state")?;
    if state == "sent" {
        return Ok(DigestBegin::AlreadySent);
    }
    let papers = sqlx::query(
        "SELECT arxiv_id, version FROM deliveries WHERE digest_id = $1 ORDER BY created_at, arxiv_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("arxiv_id")?, r.try_get("version")?)))
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    sqlx::query(
        "UPDATE deliveries SET state = 'sending', attempts = attempts + 1 WHERE digest_id = $1",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE digests SET state = 'sending' WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let digest = Digest {
        id,
        channel_id: row.try_get("channel_id")?,
        user_id: row.try_get("user_id")?,
        local_date: row.try_get("local_date")?,
        papers,
    };
    Ok(DigestBegin::Send {
        digest,
        resumed: state == "sending",
    })
}

/// Record a digest as sent, or as failed for good, with its papers.
pub async fn finish_digest(conn: &mut PgConnection, id: i64, error: Option<&str>) -> Result<()> {
    let state = if error.is_some() { "failed" } else { "sent" };
    sqlx::query(
        "UPDATE digests SET state = $2, last_error = $3, \
                sent_at = CASE WHEN $2 = 'sent' THEN now() END WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(error)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE deliveries SET state = $2, last_error = coalesce($3, last_error), \
                sent_at = CASE WHEN $2 = 'sent' THEN now() END WHERE digest_id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}
