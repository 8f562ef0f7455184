//! A fake receiver for outgoing webhooks: generic webhooks at `POST
//! /hooks/{name}`, signed the Standard Webhooks way (standardwebhooks.com,
//! as Svix does), and Slack incoming webhooks at `POST /slack/{name}`,
//! answering as Slack does. It logs every call, can inject faults (a forced
//! status, the first calls failing, a seeded share of failures, latency,
//! hangs), and checks signatures with [`verify_signature`].

use std::{
    borrow::Cow,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use serde::{Serialize, Serializer};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tokio::net::TcpListener;

/// The oldest call is forgotten past this, so a long demo run cannot grow
/// without bound.
const MAX_KEPT_CALLS: usize = 1000;

/// How the fake behaves; change it while it runs with
/// [`FakeWebhooks::set`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WebhookBehaviour {
    /// Answer every call with this status (with `Retry-After: 1` for 429).
    pub status: Option<u16>,
    pub latency: Duration,
    /// Never answer; the call is logged without a status.
    pub hang: bool,
    /// Answer the first this many calls 503, then as usual.
    pub fail_first: usize,
    /// Share of calls answered 500, decided by a seeded sequence.
    pub error_rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// `/hooks/{name}`
    Generic,
    /// `/slack/{name}`
    Slack,
}

/// One call as the fake saw it.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedHook {
    pub kind: HookKind,
    /// The `{name}` of the URL.
    pub name: String,
    pub method: String,
    pub path: String,
    /// Every header in order, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Exactly as sent, since signatures cover the bytes; see
    /// [`ReceivedHook::text`].
    #[serde(serialize_with = "lossy_text")]
    pub body: Vec<u8>,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// `None` while the fake hangs on it.
    pub status: Option<u16>,
    /// The status was 2xx.
    pub success: bool,
}

fn lossy_text<S: Serializer>(body: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(body))
}

impl ReceivedHook {
    /// The first header of this name, ignoring case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Whether the `Webhook-Id`, `Webhook-Timestamp` and
    /// `Webhook-Signature` headers sign this body with `secret`, and the
    /// timestamp is within `tolerance` of when the call arrived; the
    /// window is what stops a recorded call from being replayed later.
    pub fn verify(&self, secret: &[u8], tolerance: Duration) -> bool {
        let (Some(id), Some(timestamp), Some(signature)) = (
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            self.header("webhook-signature"),
        ) else {
            return false;
        };
        let Ok(sent) = timestamp.parse::<i64>() else {
            return false;
        };
        let skew = sent.abs_diff(self.received_at.unix_timestamp());
        skew <= tolerance.as_secs()
            && verify_signature(secret, id, timestamp, &self.body, signature)
    }
}

/// The key inside a Standard Webhooks secret: `whsec_` and base64. `None`
/// when it is not base64.
pub fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    BASE64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()
}

/// Whether `signature_header` holds a `v1` signature of the call: the
/// base64 of HMAC-SHA256 with `secret` (the decoded key, see
/// [`decode_secret`]) over `{id}.{timestamp}.{body}`. The header may carry
/// several, separated by spaces, as senders do while rotating secrets.
/// Checking the timestamp's age is the caller's part (see
/// [`ReceivedHook::verify`]).
pub fn verify_signature(
    secret: &[u8],
    id: &str,
    timestamp: &str,
    body: &[u8],
    signature_header: &str,
) -> bool {
    // The timestamp is whole seconds by the specification; anything else
    // is refused, so the dots that join the parts cannot be shifted into
    // it to make one signed call read as another.
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    // HMAC takes keys of any length; the error exists for other MACs.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        return false;
    };
    for part in [id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
        mac.update(part);
    }
    let expected = mac.finalize().into_bytes();
    signature_header
        .split_whitespace()
        .filter_map(|candidate| candidate.strip_prefix("v1,"))
        .filter_map(|encoded| BASE64.decode(encoded).ok())
        // `ct_eq` compares in time independent of where bytes differ, so
        // the answer time does not leak how much of a forgery was right.
        .fold(false, |found, given| {
            found | bool::from(given.ct_eq(&expected[..]))
        })
}

#[derive(Debug, Default)]
struct Fake {
    behaviour: Mutex<WebhookBehaviour>,
    log: Mutex<Vec<ReceivedHook>>,
    calls: AtomicUsize,
    sequence: AtomicUsize,
}

/// A running fake webhook receiver. Stops when dropped.
#[derive(Debug)]
pub struct FakeWebhooks {
    addr: SocketAddr,
    fake: Arc<Fake>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWebhooks {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeWebhooks {
    /// Listen on 127.0.0.1:`port`, any free port for 0. `GET /api/hooks`
    /// lists the calls as JSON.
    pub async fn start(behaviour: WebhookBehaviour, port: u16) -> std::io::Result<Self> {
        let fake = Arc::new(Fake {
            behaviour: Mutex::new(behaviour),
            ..Fake::default()
        });
        let app = Router::new()
            .route("/hooks/{name}", any(generic))
            .route("/slack/{name}", any(slack))
            .route("/api/hooks", get(hooks_json))
            .with_state(fake.clone());
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "fake webhooks stopped");
            }
        });
        Ok(Self { addr, fake, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port>/hooks/<name>`
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/hooks/{name}", self.addr)
    }

    /// `http://127.0.0.1:<port>/slack/<name>`; the name `gone` answers as a
    /// deleted Slack webhook does.
    pub fn slack_url(&self, name: &str) -> String {
        format!("http://{}/slack/{name}", self.addr)
    }

    pub fn set(&self, behaviour: WebhookBehaviour) {
        *lock(&self.fake.behaviour) = behaviour;
    }

    /// The calls received, oldest first (the newest 1000).
    pub fn received(&self) -> Vec<ReceivedHook> {
        lock(&self.fake.log).clone()
    }

    /// Calls received, hung ones included.
    pub fn calls(&self) -> usize {
        self.fake.calls.load(Ordering::SeqCst)
    }

    /// The calls once there are `count` of them, or whatever arrived
    /// before `timeout`.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<ReceivedHook> {
        let deadline = tokio::time::Instant::now() + timeout;
        while lock(&self.fake.log).len() < count && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.received()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One call, before the fake decides its answer.
struct Call {
    kind: HookKind,
    name: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Fake {
    fn record(&self, call: &Call, status: Option<u16>) {
        let hook = ReceivedHook {
            kind: call.kind,
            name: call.name.clone(),
            method: call.method.to_string(),
            path: call.uri.path().to_owned(),
            headers: call
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), value)
                })
                .collect(),
            body: call.body.to_vec(),
            received_at: OffsetDateTime::now_utc(),
            status,
            success: status.is_some_and(|s| (200..300).contains(&s)),
        };
        tracing::info!(kind = ?hook.kind, name = %hook.name, status, "fake webhook received a call");
        let mut log = lock(&self.log);
        if log.len() >= MAX_KEPT_CALLS {
            log.remove(0);
        }
        log.push(hook);
    }

    /// Runs the call through the faults, then `answer`, and logs it.
    async fn serve(
        &self,
        call: Call,
        answer: impl FnOnce(&Call) -> (StatusCode, &'static str),
    ) -> Response {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let behaviour = *lock(&self.behaviour);
        if behaviour.hang {
            self.record(&call, None);
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(behaviour.latency).await;
        let (status, body) = if n < behaviour.fail_first {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        } else if let Some(status) = behaviour.status {
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "forced",
            )
        } else if self.fails_by_chance(behaviour.error_rate) {
            (StatusCode::INTERNAL_SERVER_ERROR, "failed")
        } else if call.method != Method::POST {
            (StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        } else {
            answer(&call)
        };
        self.record(&call, Some(status.as_u16()));
        let mut response = (status, body).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }

    fn fails_by_chance(&self, error_rate: f64) -> bool {
        // A fixed sequence, so a run's failures can be repeated exactly.
        let n = self.sequence.fetch_add(1, Ordering::SeqCst);
        let roll = ((n as u64).wrapping_mul(2_654_435_761) % 10_000) as f64 / 10_000.0;
        roll < error_rate
    }
}

async fn generic(
    State(fake): State<Arc<Fake>>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        kind: HookKind::Generic,
        name,
        method,
        uri,
        headers,
        body,
    };
    fake.serve(call, |_| (StatusCode::OK, "ok")).await
}

async fn slack(
    State(fake): State<Arc<Fake>>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        kind: HookKind::Slack,
        name,
        method,
        uri,
        headers,
        body,
    };
    fake.serve(call, slack_answer).await
}

/// Slack's answers: plain words, not JSON.
fn slack_answer(call: &Call) -> (StatusCode, &'static str) {
    if call.name == "gone" {
        return (StatusCode::NOT_FOUND, "no_service");
    }
    let payload = serde_json::from_slice::<Value>(&call.body).ok();
    let has_text = payload
        .as_ref()
        .and_then(|p| p.get("text"))
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    let has_blocks = payload
        .as_ref()
        .and_then(|p| p.get("blocks"))
        .is_some_and(Value::is_array);
    if has_text || has_blocks {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::BAD_REQUEST, "invalid_payload")
    }
}

async fn hooks_json(State(fake): State<Arc<Fake>>) -> Json<Vec<ReceivedHook>> {
    Json(lock(&fake.log).clone())
}
