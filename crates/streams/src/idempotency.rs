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

/// Postgres-backed idempotency: record a message id in the handler's own
/// transaction.
#[cfg(feature = "postgres")]
pub mod postgres {
    use sqlx::PgConnection;

    /// The table [`first_delivery`] writes to. Services include it in their
    /// migrations; tests may call [`ensure_table`].
    pub const TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS stream_processed (
        consumer_group text NOT NULL,
        message_id text NOT NULL,
        processed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer_group, message_id)
    )";

    pub async fn ensure_table(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(TABLE_DDL).execute(conn).await.map(|_| ())
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
