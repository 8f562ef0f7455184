//! Effectively-once handling on top of at-least-once delivery.
//!
//! The runtime delivers every message at least once. A message is delivered
//! again when:
//! 1. its consumer died (or lost its lease) after handling it but before
//!    the acknowledgement reached Redis: at most the batches in flight;
//! 2. its producer sent it twice (a send that timed out and was retried, an
//!    outbox relay that crashed after sending): same message id, new entry;
//! 3. it was redriven from the DLQ after all.
//!
//! Two tools remove the repeats, with different reach:
//!
//! * **Dedupe markers in Redis** ([`crate::ConsumerConfig::dedupe_ttl`]): when
//!   a batch is acknowledged, a marker `{partition}:dedupe:<group>:<message
//!   id>` with a TTL is set in the same script as the `XACK`, in the
//!   partition's slot. Before handling, messages with a marker are
//!   acknowledged and skipped. This removes repeats of kinds 2 and 3 that
//!   arrive within the TTL. It cannot remove kind 1: the crash happened
//!   before the marker was written.
//! * **The handler's own transaction** (`postgres::first_delivery`, feature
//!   `postgres`): the
//!   handler records the message id in the same database transaction as its
//!   effects. A repeat finds the row and changes nothing. This removes all
//!   three kinds, for effects that live in that database; it is the only
//!   way to be exactly-once for effects.
//!
//! Effects outside any transaction (an email, a webhook) can only be made
//! at-most-once-per-crash by recording the intent before acting; see the
//! notifier's delivery records.
//!
//! # Fencing
//! A consumer can lose its partition while it works: paused (a stop
//! signal, a VM pause, a stuck disk) past its lease, or cut off from Redis.
//! The next owner then handles the same keys. The runtime refuses the old
//! owner's acknowledgements, dead letters, retries and reads in Redis, but
//! it cannot stop a handler that is already running; its effects are the
//! handler's to guard. Every batch carries a [`Fence`](crate::Fence): the
//! lease's token, which Redis raises with every acquisition.
//! `postgres::fence` records the highest token per partition in the
//! handler's transaction and refuses an older one, so once the new owner
//! has written, nothing the old one writes afterwards lands. Its row lock
//! also orders the two: a write of the old owner that is under way commits
//! before the new owner's first write or not at all.
//!
//! Without the fence, at-least-once still holds and `first_delivery`
//! still removes repeats, but a paused owner's late write can land after
//! the new owner's writes of later messages of the same key.

/// Postgres-backed idempotency: record a message id in the handler's own
/// transaction.
#[cfg(feature = "postgres")]
pub mod postgres {
    use sqlx::PgConnection;

    use crate::Fence;

    /// The table [`first_delivery`] writes to. Services include it in their
    /// migrations; tests may call [`ensure_table`].
    pub const TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS stream_processed (
        consumer_group text NOT NULL,
        message_id text NOT NULL,
        processed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer_group, message_id)
    )";

    /// The table [`fence`] writes to, for the services' migrations too.
    pub const FENCES_DDL: &str = "CREATE TABLE IF NOT EXISTS stream_fences (
        consumer_group text NOT NULL,
        topic text NOT NULL,
        partition integer NOT NULL,
        token bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer_group, topic, partition)
    )";

    /// Create both tables of this module if they do not exist.
    pub async fn ensure_table(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(TABLE_DDL).execute(&mut *conn).await?;
        sqlx::query(FENCES_DDL).execute(conn).await.map(|_| ())
    }

    /// Admit the caller's transaction under `fence`: record its token as
    /// the partition's highest, unless a higher one is recorded already.
    /// Returns `false` when it is: the lease passed to another consumer,
    /// which has written since, and the caller must roll back.
    ///
    /// Call it first in the transaction: the row stays locked until the
    /// transaction ends, so the partition's transactions run one at a time,
    /// and an old owner's transaction that waited for the lock finds the
    /// new token when it gets it.
    pub async fn fence(tx: &mut PgConnection, fence: &Fence) -> Result<bool, sqlx::Error> {
        let admitted = sqlx::query(
            "INSERT INTO stream_fences (consumer_group, topic, partition, token)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (consumer_group, topic, partition) DO UPDATE
                SET token = EXCLUDED.token, updated_at = now()
                WHERE stream_fences.token <= EXCLUDED.token
             RETURNING token",
        )
        .bind(&fence.group)
        .bind(&fence.topic)
        .bind(i32::from(fence.partition))
        .bind(i64::try_from(fence.token).unwrap_or(i64::MAX))
        .fetch_optional(tx)
        .await?;
        Ok(admitted.is_some())
    }

    /// Record `message_id` as processed by `group`, inside the caller's
    /// transaction. Returns `false` when it already was: the caller then
    /// skips its effects (and may still commit or roll back; nothing
    /// changed). If the transaction rolls back, so does the record, and the
    /// redelivery will process the message.
    pub async fn first_delivery(
        tx: &mut PgConnection,
        group: &str,
        message_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO stream_processed (consumer_group, message_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(message_id)
        .execute(tx)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Forget records older than `days`, once redeliveries that old cannot
    /// happen any more (past the streams' retention and DLQ handling).
    pub async fn forget_older_than(conn: &mut PgConnection, days: i32) -> Result<u64, sqlx::Error> {
        let deleted = sqlx::query(
            "DELETE FROM stream_processed WHERE processed_at < now() - make_interval(days => $1)",
        )
        .bind(days)
        .execute(conn)
        .await?;
        Ok(deleted.rows_affected())
    }
}
