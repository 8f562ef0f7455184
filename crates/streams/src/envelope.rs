//! What a stream entry holds, and how it becomes a typed [`Message`].
//!
//! An entry has two fields:
//!
//! | field | value |
//! |---|---|
//! | `meta` | `<message id> <schema version> <produced at, ms> <attempts> <key>` |
//! | `data` | the JSON payload |
//!
//! The message id (a UUIDv7 unless the producer gave one) is stable across
//! producer retries and redrives. Attempts counts deliveries spent in
//! earlier lives of the message (a redrive carries them over). The key comes
//! last so that it may contain spaces.
//!
//! Redriven entries add `grp`, the one group that should process them; DLQ
//! entries add `dlq.*` fields. Every Redis command's cost grows with the
//! number of fields of an entry: two fields instead of six make appends
//! about 1.6 times faster and replies smaller, and `meta` stays readable in
//! `redis-cli`.

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
    /// The fencing token of the lease it is handled under (see
    /// [`crate::Fence`]); 0 outside a consumer.
    pub fencing_token: u64,
    pub payload: T,
}

/// The parsed `meta` field of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub message_id: String,
    pub schema_version: u32,
    pub produced_at_ms: u64,
    pub attempts: u32,
    pub key: String,
}

impl Meta {
    fn parse(text: &str) -> Result<Self, DecodeError> {
        let bad = |detail: &str| DecodeError::BadField {
            field: fields::META,
            detail: format!("{detail} in {text:?}"),
        };
        let mut parts = text.splitn(5, ' ');
        let mut next = |what: &str| parts.next().ok_or_else(|| bad(&format!("no {what}")));
        let message_id = next("message id")?.to_owned();
        let schema_version = next("version")?.parse().map_err(|_| bad("bad version"))?;
        let produced_at_ms = next("timestamp")?
            .parse()
            .map_err(|_| bad("bad timestamp"))?;
        let attempts = next("attempts")?.parse().map_err(|_| bad("bad attempts"))?;
        let key = next("key")?.to_owned();
        Ok(Self {
            message_id,
            schema_version,
            produced_at_ms,
            attempts,
            key,
        })
    }
}

impl redis::ToRedisArgs for Meta {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(self);
    }
}

impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {}",
            self.message_id, self.schema_version, self.produced_at_ms, self.attempts, self.key
        )
    }
}

/// A stream entry with its fields split out but its payload still encoded.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub entry_id: EntryId,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl RawEntry {
    pub fn new(entry_id: EntryId, fields: Vec<(String, Vec<u8>)>) -> Self {
        Self { entry_id, fields }
    }

    /// The `meta` field split into its five parts, borrowed.
    fn meta_parts(&self) -> Option<[&str; 5]> {
        let mut parts = self.field_str(fields::META)?.splitn(5, ' ');
        Some([
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        ])
    }

    /// The `meta` field, parsed.
    pub fn meta(&self) -> Result<Meta, DecodeError> {
        let text = self
            .field_str(fields::META)
            .ok_or(DecodeError::MissingField(fields::META))?;
        Meta::parse(text)
    }

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
        self.meta_parts().map(|p| p[4]).unwrap_or_default()
    }

    pub fn message_id(&self) -> &str {
        self.meta_parts().map(|p| p[0]).unwrap_or_default()
    }

    /// Attempts spent in earlier lives of the message.
    pub fn earlier_attempts(&self) -> u32 {
        self.meta_parts()
            .and_then(|p| p[3].parse().ok())
            .unwrap_or(0)
    }

    pub fn target_group(&self) -> Option<&str> {
        self.field_str(fields::GROUP)
    }

    /// Decode into a typed message. `deliveries` is the entry's delivery
    /// count in its consumer group.
    pub fn decode<T: Event>(
        &self,
        partition: u16,
        deliveries: u32,
    ) -> Result<Message<T>, DecodeError> {
        let meta = self.meta()?;
        let data = self
            .field(fields::DATA)
            .ok_or(DecodeError::MissingField(fields::DATA))?;
        let payload = T::decode(meta.schema_version, data)?;
        Ok(Message {
            id: meta.message_id,
            key: meta.key,
            schema_version: meta.schema_version,
            produced_at_ms: meta.produced_at_ms,
            attempt: meta.attempts.saturating_add(deliveries),
            entry_id: self.entry_id,
            partition,
            fencing_token: 0,
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
        Ok((Self::new(entry_id, fields), deliveries))
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
    pub const META: &str = "meta";
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

/// An entry's fields. Names are decoded leniently: an entry some other
/// writer gave a name that is not UTF-8 must fail on its own (and go to the
/// DLQ as undecodable), not make the whole reply unreadable, which would
/// strand every entry read with it.
fn pairs(flat: Vec<Value>) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        let name = String::from_utf8(bytes(name)?)
            .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned());
        out.push((name, bytes(value)?));
    }
    Ok(out)
}

/// A message ready to be written: its envelope values, payload encoded.
pub(crate) struct Encoded {
    meta: Meta,
    data: Vec<u8>,
}

impl Encoded {
    pub fn new<T: Event>(
        key: &str,
        payload: &T,
        message_id: Option<&str>,
        now_ms: u64,
    ) -> Result<Self, Error> {
        let data = serde_json::to_vec(payload).map_err(Error::Encode)?;
        Self::from_json(key, T::SCHEMA_VERSION, data, message_id, now_ms)
    }

    /// A payload already encoded as JSON, with its schema version.
    pub fn from_json(
        key: &str,
        schema_version: u32,
        data: Vec<u8>,
        message_id: Option<&str>,
        now_ms: u64,
    ) -> Result<Self, Error> {
        let message_id = match message_id {
            Some(id) if id.is_empty() || id.contains(char::is_whitespace) => {
                return Err(Error::Config(format!(
                    "message id {id:?} must be non-empty and without whitespace"
                )));
            }
            Some(id) => id.to_owned(),
            None => uuid::Uuid::now_v7().simple().to_string(),
        };
        Ok(Self {
            meta: Meta {
                message_id,
                schema_version,
                produced_at_ms: now_ms,
                attempts: 0,
                key: key.to_owned(),
            },
            data,
        })
    }

    pub fn message_id(&self) -> &str {
        &self.meta.message_id
    }

    pub fn key(&self) -> &str {
        &self.meta.key
    }

    /// Append the entry's field/value arguments ([`Self::WIDTH`] of them).
    pub fn write_fields(&self, cmd: &mut redis::Cmd) {
        cmd.arg(fields::META)
            .arg(&self.meta)
            .arg(fields::DATA)
            .arg(&self.data);
    }

    /// Number of arguments [`Self::write_fields`] writes.
    pub const WIDTH: usize = 4;
}

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

    fn entry(meta: &str, data: &[u8]) -> RawEntry {
        RawEntry::new(
            EntryId { ms: 5, seq: 1 },
            vec![
                ("meta".into(), meta.as_bytes().to_vec()),
                ("data".into(), data.to_vec()),
            ],
        )
    }

    #[test]
    fn decodes_known_versions_and_counts_earlier_attempts() {
        let m: Message<Paper> = entry("m1 1 99 2 key with spaces", br#"{"title":"0"}"#)
            .decode(3, 1)
            .expect("decodes");
        assert_eq!(m.payload.title, "0");
        assert_eq!((m.attempt, m.partition, m.produced_at_ms), (3, 3, 99));
        assert_eq!((m.id.as_str(), m.key.as_str()), ("m1", "key with spaces"));
    }

    #[test]
    fn refuses_unknown_versions_and_bad_payloads() {
        let future = entry("m1 3 0 0 k", br#"{"title":"x"}"#).decode::<Paper>(0, 1);
        assert!(matches!(
            future,
            Err(DecodeError::UnknownSchema {
                found: 3,
                supported: 2
            })
        ));
        let garbage = entry("m1 2 0 0 k", b"{not json").decode::<Paper>(0, 1);
        assert_eq!(garbage.expect_err("bad json").dlq_reason(), "decode_error");
        let no_version = entry("m1 x 0 0 k", b"{}").decode::<Paper>(0, 1);
        assert!(matches!(
            no_version,
            Err(DecodeError::BadField { field: "meta", .. })
        ));
        let short = entry("m1 2 0", b"{}");
        assert_eq!(short.key(), "");
        assert!(short.decode::<Paper>(0, 1).is_err());
    }

    #[test]
    fn meta_round_trips() {
        let encoded = Encoded::new(
            "2104.12255 v2",
            &Paper { title: "t".into() },
            Some("abc"),
            7,
        )
        .expect("encodes");
        let meta = Meta::parse(&encoded.meta.to_string()).expect("parses");
        assert_eq!(meta, encoded.meta);
        assert!(Encoded::new("k", &Paper { title: "t".into() }, Some("a b"), 7).is_err());
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
                Value::BulkString(b"meta".to_vec()),
                Value::BulkString(b"m 1 0 0 k".to_vec()),
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
