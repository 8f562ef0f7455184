//! Signed tokens for links that must work without a login: unsubscribe
//! links in emails, private Atom feed URLs, a form kept across a login.
//!
//! A token is `base64url(payload).base64url(HMAC-SHA256(key, purpose NUL
//! payload))`. The purpose is part of what is signed, so that a token made
//! for one use (a feed URL, which people paste into feed readers) cannot
//! be replayed for another (unsubscribing). Payloads are JSON with an
//! optional expiry. They are readable, not secret: sign ids, not secrets.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::Sha256;
use time::OffsetDateTime;

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies tokens with one secret key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: T,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
}

impl Signer {
    /// `secret` should hold at least 32 random bytes.
    pub fn new(secret: &[u8]) -> Self {
        // A key of its own, derived from the application secret, so that
        // these signatures and the cookie signatures never share a key.
        let mut mac = mac_for(secret);
        mac.update(b"paperstream signed tokens");
        Self {
            key: mac.finalize().into_bytes().to_vec(),
        }
    }

    /// A token for `value`, valid for `purpose`, until `expires` if given.
    pub fn sign<T: Serialize>(
        &self,
        purpose: &str,
        value: &T,
        expires: Option<OffsetDateTime>,
    ) -> String {
        let envelope = Envelope {
            v: value,
            exp: expires.map(OffsetDateTime::unix_timestamp),
        };
        // Serializing plain data to JSON cannot fail; an empty payload
        // would only fail verification.
        let payload = serde_json::to_vec(&envelope).unwrap_or_default();
        let signature = self.signature(purpose, &payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    /// The value in `token`, if it was signed by this key for `purpose`
    /// and has not expired.
    pub fn verify<T: DeserializeOwned>(&self, purpose: &str, token: &str) -> Option<T> {
        let (payload, signature) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = mac_for(&self.key);
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(&payload);
        // Constant time, so that timing does not reveal a signature byte
        // by byte.
        mac.verify_slice(&signature).ok()?;
        let envelope: Envelope<T> = serde_json::from_slice(&payload).ok()?;
        if let Some(exp) = envelope.exp
            && OffsetDateTime::now_utc().unix_timestamp() >= exp
        {
            return None;
        }
        Some(envelope.v)
    }

    fn signature(&self, purpose: &str, payload: &[u8]) -> Vec<u8> {
        let mut mac = mac_for(&self.key);
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(payload);
        mac.finalize().into_bytes().to_vec()
    }
}

fn mac_for(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_for_their_purpose_and_key() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
        let token = signer.sign("unsubscribe", &(7_i64, 12_i64), None);
        assert_eq!(
            signer.verify::<(i64, i64)>("unsubscribe", &token),
            Some((7, 12))
        );
        assert_eq!(signer.verify::<(i64, i64)>("feed", &token), None);
        let other = Signer::new(b"another secret, just as long....");
        assert_eq!(other.verify::<(i64, i64)>("unsubscribe", &token), None);
        // Changing the payload breaks the signature.
        let (_, signature) = token.split_once('.').expect("two parts");
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"v":[8,12]}"#);
        let forged = format!("{forged_payload}.{signature}");
        assert_eq!(signer.verify::<(i64, i64)>("unsubscribe", &forged), None);
        assert_eq!(signer.verify::<(i64, i64)>("unsubscribe", "garbage"), None);
        assert_eq!(signer.verify::<(i64, i64)>("unsubscribe", "a.b.c"), None);
    }

    #[test]
    fn expired_tokens_fail() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
        let past = OffsetDateTime::now_utc() - time::Duration::seconds(1);
        let future = OffsetDateTime::now_utc() + time::Duration::minutes(5);
        let expired = signer.sign("draft", &"x", Some(past));
        let live = signer.sign("draft", &"x", Some(future));
        assert_eq!(signer.verify::<String>("draft", &expired), None);
        assert_eq!(
            signer.verify::<String>("draft", &live).as_deref(),
            Some("x")
        );
    }
}
