//! What a stream entry holds, and how it becomes a typed [`Message`].
//!
//! An entry has these fields, in this order (the same field names in every
//! entry let Redis store them once per stream node):
//!
//! | field | meaning |
//! |---|---|
//! | `id` | message id (UUIDv7), stable across producer retries and redrives |
//! | `key` | ordering key; decides the partition |
//! | `ver` | schema version of `data` |
//! | `ts` | producer clock, ms since the Unix epoch |
//! | `att` | delivery attempts spent in earlier lives (a redrive carries them) |
//! | `data` | JSON payload |
//! | `grp` | only on redriven entries: the one group that should process it |

use std::{fmt, str::FromStr};

use redis::Value;
use serde::{Serialize, de::DeserializeOwned};

use crate::{DecodeError, Error};

/// A payload type with a schema version. Consumers refuse versions they do
/// not know, so a producer rolled out ahead of its consumers parks its
/// messages in the DLQ instead of having them misread.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Version written by this build.
    const SCHEMA_VERSION: u32;

    /// Decode a payload written with `version`. The default reads the
    /// current version and every older one with the same shape; override it
    /// to upgrade older shapes.
    fn decode(version: u32, data: &[u8]) -> Result<Self, DecodeError> {
        if version > Self::SCHEMA_VERSION || version == 0 {
            return Err(DecodeError::UnknownSchema {
                found: version,
                supported: Self::SCHEMA_VERSION,
            });
        }
        Ok(serde_json::from_slice(data)?)
    }
}

/// A stream entry id, `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    pub const MIN: Self = Self { ms: 0, seq: 0 };
    pub const MAX: Self = Self {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// The smallest id greater than this one.
    pub fn next(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => Self { ms: self.ms, seq },
            None => Self {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }

    /// The greatest id smaller than this one.
    pub fn prev(self) -> Self {
        match self.seq.checked_sub(1) {
            Some(seq) => Self { ms: self.ms, seq },
            None => Self {
                ms: self.ms.saturating_sub(1),
                seq: u64::MAX,
            },
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EntryId {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DecodeError::BadField {
            field: "entry id",
            detail: format!("{s:?} is not <ms>-<seq>"),
        };
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Ok(Self {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl redis::ToRedisArgs for EntryId {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(self);
    }
}

/// A decoded message, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Message<T> {
    pub id: String,
    pub key: String,
    pub schema_version: u32,
    pub produced_at_ms: u64,
    /// 1 on the first delivery; counts every delivery, including redrives.
    pub attempt: u32,
    pub entry_id: EntryId,
    pub partition: u16,
    pub payload: T,
}

/// A stream entry with its fields split out but its payload still encoded.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub entry_id: EntryId,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl RawEntry {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn field_str(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The ordering key, or empty for an entry without one (it still
    /// gets delivered, or dead-lettered, like any other).
    pub fn key(&self) -> &str {
        self.field_str(fields::KEY).unwrap_or_default()
    }

    pub fn message_id(&self) -> &str {
        self.field_str(fields::ID).unwrap_or_default()
    }

    pub fn target_group(&self) -> Option<&str> {
        self.field_str(fields::GROUP)
    }

    fn number<N: FromStr>(&self, field: &'static str) -> Result<N, DecodeError> {
        let text = self
            .field_str(field)
            .ok_or(DecodeError::MissingField(field))?;
        text.parse().map_err(|_| DecodeError::BadField {
            field,
            detail: format!("{text:?} is not a number"),
        })
    }

    /// Decode into a typed message. `deliveries` is the entry's delivery
    /// count in its consumer group.
    pub fn decode<T: Event>(
        &self,
        partition: u16,
        deliveries: u32,
    ) -> Result<Message<T>, DecodeError> {
        let id = self
            .field_str(fields::ID)
            .ok_or(DecodeError::MissingField(fields::ID))?;
        let version: u32 = self.number(fields::VERSION)?;
        let data = self
            .field(fields::DATA)
            .ok_or(DecodeError::MissingField(fields::DATA))?;
        let payload = T::decode(version, data)?;
        let earlier: u32 = self.number(fields::ATTEMPTS).unwrap_or(0);
        Ok(Message {
            id: id.to_owned(),
            key: self.key().to_owned(),
            schema_version: version,
            produced_at_ms: self.number(fields::PRODUCED_AT).unwrap_or(0),
            attempt: earlier.saturating_add(deliveries),
            entry_id: self.entry_id,
            partition,
            payload,
        })
    }

    /// Parse `[id, [field, value, ...]]`, or the `[id, fields, idle, count]`
    /// form of `XREADGROUP ... CLAIM`. Returns the entry and, when the reply
    /// carries it, its delivery count.
    pub(crate) fn from_value(value: Value) -> Result<(Self, Option<u32>), Error> {
        let Value::Array(parts) = value else {
            return Err(Error::protocol("stream entry", "entry is not an array"));
        };
        let mut parts = parts.into_iter();
        let entry_id = match parts.next() {
            Some(v) => text(v)?
                .parse()
                .map_err(|e: DecodeError| Error::protocol("stream entry", e.to_string()))?,
            None => return Err(Error::protocol("stream entry", "empty entry")),
        };
        let fields = match parts.next() {
            Some(Value::Array(flat)) => pairs(flat)?,
            // An id whose entry was deleted, as XCLAIM and XAUTOCLAIM may return.
            Some(Value::Nil) | None => Vec::new(),
            Some(other) => {
                return Err(Error::protocol(
                    "stream entry",
                    format!("fields are {other:?}"),
                ));
            }
        };
        let deliveries = parts.nth(1).and_then(|v| match v {
            Value::Int(n) => u32::try_from(n).ok(),
            _ => None,
        });
        Ok((Self { entry_id, fields }, deliveries))
    }

    /// Parse the reply of XRANGE / XREVRANGE / XCLAIM: a list of entries.
    pub(crate) fn list_from_value(value: Value) -> Result<Vec<Self>, Error> {
        match value {
            Value::Array(items) => items
                .into_iter()
                .map(|v| Self::from_value(v).map(|(e, _)| e))
                .collect(),
            Value::Nil => Ok(Vec::new()),
            other => Err(Error::protocol("stream range", format!("{other:?}"))),
        }
    }
}

/// Field names of an entry.
pub mod fields {
    pub const ID: &str = "id";
    pub const KEY: &str = "key";
    pub const VERSION: &str = "ver";
    pub const PRODUCED_AT: &str = "ts";
    pub const ATTEMPTS: &str = "att";
    pub const DATA: &str = "data";
    pub const GROUP: &str = "grp";
}

pub(crate) fn text(value: Value) -> Result<String, Error> {
    match value {
        Value::BulkString(bytes) => {
            String::from_utf8(bytes).map_err(|e| Error::protocol("reply", e.to_string()))
        }
        Value::SimpleString(s) => Ok(s),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(Error::protocol(
            "reply",
            format!("expected text, got {other:?}"),
        )),
    }
}

fn bytes(value: Value) -> Result<Vec<u8>, Error> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        other => Err(Error::protocol(
            "reply",
            format!("expected bytes, got {other:?}"),
        )),
    }
}

fn pairs(flat: Vec<Value>) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        out.push((text(name)?, bytes(value)?));
    }
    Ok(out)
}

/// Encode a message into the field list of an entry.
pub(crate) struct Encoded {
    pub message_id: String,
    pub args: Vec<Vec<u8>>,
}

pub(crate) fn encode<T: Event>(
    key: &str,
    payload: &T,
    message_id: Option<&str>,
    now_ms: u64,
) -> Result<Encoded, Error> {
    let message_id = message_id
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let data = serde_json::to_vec(payload).map_err(Error::Encode)?;
    let args = vec![
        fields::ID.into(),
        message_id.clone().into_bytes(),
        fields::KEY.into(),
        key.as_bytes().to_vec(),
        fields::VERSION.into(),
        T::SCHEMA_VERSION.to_string().into_bytes(),
        fields::PRODUCED_AT.into(),
        now_ms.to_string().into_bytes(),
        fields::ATTEMPTS.into(),
        b"0".to_vec(),
        fields::DATA.into(),
        data,
    ];
    Ok(Encoded { message_id, args })
}

/// Number of arguments [`encode`] produces per entry.
pub(crate) const ENCODED_WIDTH: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Paper {
        title: String,
    }
    impl Event for Paper {
        const SCHEMA_VERSION: u32 = 2;
    }

    fn entry(version: &str, data: &[u8]) -> RawEntry {
        RawEntry {
            entry_id: EntryId { ms: 5, seq: 1 },
            fields: vec![
                ("id".into(), b"m1".to_vec()),
                ("key".into(), b"k".to_vec()),
                ("ver".into(), version.as_bytes().to_vec()),
                ("ts".into(), b"99".to_vec()),
                ("att".into(), b"2".to_vec()),
                ("data".into(), data.to_vec()),
            ],
        }
    }

    #[test]
    fn decodes_known_versions_and_counts_earlier_attempts() {
        let m: Message<Paper> = entry("1", br#"{"title":"0"}"#)
            .decode(3, 1)
            .expect("decodes");
        assert_eq!(m.payload.title, "0");
        assert_eq!((m.attempt, m.partition, m.produced_at_ms), (3, 3, 99));
    }

    #[test]
    fn refuses_unknown_versions_and_bad_payloads() {
        let future = entry("3", br#"{"title":"x"}"#).decode::<Paper>(0, 1);
        assert!(matches!(
            future,
            Err(DecodeError::UnknownSchema {
                found: 3,
                supported: 2
            })
        ));
        let garbage = entry("2", b"{not json").decode::<Paper>(0, 1);
        assert_eq!(garbage.expect_err("bad json").dlq_reason(), "decode_error");
        let no_version = entry("x", b"{}").decode::<Paper>(0, 1);
        assert!(matches!(
            no_version,
            Err(DecodeError::BadField { field: "ver", .. })
        ));
    }

    #[test]
    fn entry_ids_order_and_step() {
        let a: EntryId = "1700000000000-5".parse().expect("valid id");
        assert_eq!(a.next().to_string(), "1700000000000-6");
        assert_eq!(
            EntryId { ms: 7, seq: 0 }.prev(),
            EntryId {
                ms: 6,
                seq: u64::MAX
            }
        );
        assert!(a < a.next());
        assert!("12-x".parse::<EntryId>().is_err());
    }

    #[test]
    fn parses_plain_and_claim_shaped_entries() {
        let plain = Value::Array(vec![
            Value::BulkString(b"1-2".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"key".to_vec()),
                Value::BulkString(b"k".to_vec()),
            ]),
        ]);
        let (e, count) = RawEntry::from_value(plain).expect("parses");
        assert_eq!(
            (e.entry_id, e.key(), count),
            (EntryId { ms: 1, seq: 2 }, "k", None)
        );
        let claimed = Value::Array(vec![
            Value::BulkString(b"1-3".to_vec()),
            Value::Array(vec![]),
            Value::Int(1500),
            Value::Int(4),
        ]);
        assert_eq!(RawEntry::from_value(claimed).expect("parses").1, Some(4));
    }
}
