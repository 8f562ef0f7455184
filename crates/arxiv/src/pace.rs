//! arXiv's rule: at most one request every three seconds, one at a time,
//! across all of a client's processes together. The pace is kept in Redis
//! so that every crawler instance obeys one schedule.

use std::{future::Future, time::Duration};

use redis::{Script, aio::ConnectionLike};

/// Grants turns to send a request.
pub trait Pacer: Send + Sync {
    /// Wait until this process may send one request.
    fn turn(&self) -> impl Future<Output = Result<Turn, PaceError>> + Send;
    /// The request of `turn` finished (answered or failed).
    fn done(&self, turn: Turn) -> impl Future<Output = ()> + Send;
}

/// Permission to send one request.
#[derive(Debug)]
pub struct Turn {
    token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PaceError {
    #[error("rate limiter: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no turn within {0:?}")]
    Timeout(Duration),
}

/// No pacing at all, for fake servers in benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unpaced;

impl Pacer for Unpaced {
    async fn turn(&self) -> Result<Turn, PaceError> {
        Ok(Turn {
            token: String::new(),
        })
    }

    async fn done(&self, _turn: Turn) {}
}

/// One schedule shared through Redis.
///
/// A turn is granted when no request is in flight and the last one started
/// at least `interval` ago, by server time. The in-flight marker expires
/// after `max_request`, so a crawler that dies mid-request blocks the
/// others no longer than that.
#[derive(Debug, Clone)]
pub struct RedisPacer<C> {
    connection: C,
    key: String,
    interval: Duration,
    max_request: Duration,
    give_up_after: Duration,
}

impl<C: ConnectionLike + Clone + Send + Sync> RedisPacer<C> {
    /// `key` names the schedule; its hash tag keeps both of its keys in one
    /// slot.
    pub fn new(connection: C, key: &str, interval: Duration, max_request: Duration) -> Self {
        Self {
            connection,
            key: format!("{{{key}}}"),
            interval,
            max_request,
            give_up_after: Duration::from_secs(600),
        }
    }
}

/// KEYS[1] in-flight marker, KEYS[2] earliest next start. ARGV[1] token,
/// ARGV[2] interval ms, ARGV[3] in-flight TTL ms. Returns 0 when the turn is
/// granted, else how many ms to wait.
fn acquire_script() -> Script {
    Script::new(
        r#"#!lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local busy = redis.call('PTTL', KEYS[1])
if busy > 0 then return busy end
local next_start = tonumber(redis.call('GET', KEYS[2]) or '0')
if now < next_start then return next_start - now end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], now + tonumber(ARGV[2]), 'PX', math.max(tonumber(ARGV[2]) * 10, 1))
return 0
"#,
    )
}

fn release_script() -> Script {
    Script::new(
        r#"#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
}

impl<C: ConnectionLike + Clone + Send + Sync> Pacer for RedisPacer<C> {
    async fn turn(&self) -> Result<Turn, PaceError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let started = tokio::time::Instant::now();
        loop {
            let mut conn = self.connection.clone();
            let wait_ms: u64 = acquire_script()
                .key(format!("{}:inflight", self.key))
                .key(format!("{}:next", self.key))
                .arg(&token)
                .arg(self.interval.as_millis() as u64)
                .arg(self.max_request.as_millis() as u64)
                .invoke_async(&mut conn)
                .await?;
            if wait_ms == 0 {
                return Ok(Turn { token });
            }
            if started.elapsed() > self.give_up_after {
                return Err(PaceError::Timeout(self.give_up_after));
            }
            // Wake a little after the turn opens; every waiter competes then.
            tokio::time::sleep(Duration::from_millis(wait_ms.min(1000) + 5)).await;
        }
    }

    async fn done(&self, turn: Turn) {
        let mut conn = self.connection.clone();
        let released: Result<i64, _> = release_script()
            .key(format!("{}:inflight", self.key))
            .arg(&turn.token)
            .invoke_async(&mut conn)
            .await;
        if let Err(err) = released {
            tracing::warn!(%err, "could not release the arXiv request slot; it expires by itself");
        }
    }
}
