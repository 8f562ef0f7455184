use std::{fmt, future::Future};

use crate::envelope::Message;

/// Messages of one partition, in stream order, for one handler call.
#[derive(Debug)]
pub struct Batch<T> {
    pub partition: u16,
    /// The lease this batch is handled under. A handler that writes its
    /// effects to a database passes it along (see
    /// [`crate::idempotency`]), so that a write made after the lease passed
    /// to another consumer is refused there too.
    pub fence: Fence,
    pub messages: Vec<Message<T>>,
}

/// Which lease a batch was handled under: the partition of a topic, the
/// group, and the fencing token Redis issued when the lease was taken.
/// Tokens of one partition and group only grow, so a store that keeps the
/// highest token it saw can refuse the writes of a consumer that lost its
/// lease (paused, cut off) once its successor has written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub topic: String,
    pub group: String,
    pub partition: u16,
    pub token: u64,
}

impl<T> Batch<T> {
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Outcomes that acknowledge every message.
    pub fn ack_all(&self) -> Outcomes {
        Outcomes(vec![Outcome::Ack; self.len()])
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    /// A failure that may pass: deliver again after a backoff, up to the
    /// topic's `max_attempts`, then dead-letter.
    Retry(String),
    /// A failure that will not pass: dead-letter now.
    Reject(String),
}

/// One outcome per message of a batch, by position. Messages without an
/// outcome (a vector that is too short) count as failed, never as done.
///
/// Ordering contract: once a message of a key gets `Retry` or `Reject`, the
/// runtime holds back every later message of that key (in this batch and
/// after) until the failed one succeeds or is written to the DLQ, then
/// delivers them again, even those this batch reported as `Ack`. A handler
/// that stops working on a key after its first failure avoids that repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcomes(pub Vec<Outcome>);

impl Outcomes {
    pub fn retry(&mut self, index: usize, error: impl fmt::Display) {
        self.set(index, Outcome::Retry(error.to_string()));
    }

    pub fn reject(&mut self, index: usize, reason: impl fmt::Display) {
        self.set(index, Outcome::Reject(reason.to_string()));
    }

    /// Retry every message, e.g. when the handler's database is down.
    pub fn retry_all(len: usize, error: impl fmt::Display) -> Self {
        Self(vec![Outcome::Retry(error.to_string()); len])
    }

    fn set(&mut self, index: usize, outcome: Outcome) {
        if let Some(slot) = self.0.get_mut(index) {
            *slot = outcome;
        }
    }
}

/// Processes batches of one partition. Batches of different partitions may
/// run concurrently (up to the consumer's limit); batches of one partition
/// never do.
pub trait Handler<T>: Send + Sync + 'static {
    fn handle(&self, batch: Batch<T>) -> impl Future<Output = Outcomes> + Send;
}

impl<T, F, Fut> Handler<T> for F
where
    T: Send + 'static,
    F: Fn(Batch<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcomes> + Send,
{
    fn handle(&self, batch: Batch<T>) -> impl Future<Output = Outcomes> + Send {
        self(batch)
    }
}

/// Why a message failed, for [`per_message`] handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// May pass: retry with backoff.
    Retry(String),
    /// Will not pass: dead-letter now.
    Reject(String),
}

/// A batch handler built from a function of one message. Messages run one
/// after another in stream order; once a message of a key fails (either
/// way), the later messages of that key in the batch are not run: the
/// runtime delivers them again after the failed one succeeded or reached
/// the DLQ. So every key's messages take effect in order, none runs twice
/// because of a neighbour's failure, and none runs before its rejected
/// predecessor is safely in the DLQ.
pub fn per_message<T, F, Fut>(f: F) -> impl Handler<T>
where
    T: Send + 'static,
    F: Fn(Message<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send,
{
    PerMessage(f)
}

struct PerMessage<F>(F);

impl<T, F, Fut> Handler<T> for PerMessage<F>
where
    T: Send + 'static,
    F: Fn(Message<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send,
{
    async fn handle(&self, batch: Batch<T>) -> Outcomes {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut failed_keys: Vec<String> = Vec::new();
        for message in batch.messages {
            if failed_keys.contains(&message.key) {
                outcomes.push(Outcome::Retry(
                    "held behind an earlier failure of its key".into(),
                ));
                continue;
            }
            let key = message.key.clone();
            outcomes.push(match (self.0)(message).await {
                Ok(()) => Outcome::Ack,
                Err(Failure::Reject(reason)) => {
                    failed_keys.push(key);
                    Outcome::Reject(reason)
                }
                Err(Failure::Retry(error)) => {
                    failed_keys.push(key);
                    Outcome::Retry(error)
                }
            });
        }
        Outcomes(outcomes)
    }
}
