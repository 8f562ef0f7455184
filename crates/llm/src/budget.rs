//! A daily token budget shared by every summarizer instance: the "no
//! oversell" pattern of the seed documents (an atomic stock decrement),
//! applied to spending.
//!
//! Before a call, [`SpendCap::reserve`] takes the call's worst case (every
//! input byte as a token, plus the output cap) from today's budget in one
//! Lua step that refuses when it would go over. After the call,
//! [`SpendCap::settle`] gives back what was not used. Because the
//! reservation bounds the real use, the budget is never exceeded, however
//! many workers run at once.

use redis::{Script, aio::ConnectionLike};
use time::OffsetDateTime;

/// A reservation to settle after the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    key: String,
    tokens: u64,
}

#[derive(Clone)]
pub struct SpendCap<C> {
    connection: C,
    name: String,
    daily_tokens: u64,
}

impl<C> std::fmt::Debug for SpendCap<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpendCap")
            .field("name", &self.name)
            .field("daily_tokens", &self.daily_tokens)
            .finish()
    }
}

impl<C: ConnectionLike + Clone + Send + Sync> SpendCap<C> {
    pub fn new(connection: C, name: &str, daily_tokens: u64) -> Self {
        Self {
            connection,
            name: name.to_owned(),
            daily_tokens,
        }
    }

    fn key(&self) -> String {
        let day = OffsetDateTime::now_utc().date();
        format!("{{budget:{}}}:{day}", self.name)
    }

    /// Take `tokens` from today's budget, or `None` if that would exceed it.
    pub async fn reserve(&self, tokens: u64) -> Result<Option<Reservation>, redis::RedisError> {
        let key = self.key();
        let granted: i64 = Script::new(
            r#"#!lua
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return -1 end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
return used + tonumber(ARGV[1])
"#,
        )
        .key(&key)
        .arg(tokens)
        .arg(self.daily_tokens)
        .invoke_async(&mut self.connection.clone())
        .await?;
        Ok((granted >= 0).then_some(Reservation { key, tokens }))
    }

    /// The call used `used` tokens of its reservation; return the rest.
    pub async fn settle(
        &self,
        reservation: Reservation,
        used: u64,
    ) -> Result<(), redis::RedisError> {
        let unused = reservation.tokens.saturating_sub(used);
        if unused > 0 {
            let _: i64 = redis::cmd("DECRBY")
                .arg(&reservation.key)
                .arg(unused)
                .query_async(&mut self.connection.clone())
                .await?;
        }
        Ok(())
    }

    /// Tokens spent (or reserved) today.
    pub async fn spent_today(&self) -> Result<u64, redis::RedisError> {
        let used: Option<u64> = redis::cmd("GET")
            .arg(self.key())
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(used.unwrap_or(0))
    }

    pub fn daily_tokens(&self) -> u64 {
        self.daily_tokens
    }
}
