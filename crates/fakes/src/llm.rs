//! Fake Ollama (`POST /api/chat`) and fake OpenAI (`POST
//! /v1/chat/completions`) on one server, with faults: a share of failing
//! calls, latency, hangs, a forced status (429, 503), and a concurrency
//! limit like a local Ollama's (a few run, a few queue, the rest get 503).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::Semaphore};

/// How the fake behaves; change it while it runs with [`FakeLlm::set`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    /// Share of calls answered 500, decided by a seeded sequence.
    pub error_rate: f64,
    pub latency: Duration,
    /// Never answer.
    pub hang: bool,
    /// Answer every call with this status.
    pub status: Option<u16>,
    /// Calls served at once; more wait in a queue of `max_queue`, the rest
    /// are refused with 503 as Ollama does.
    pub max_parallel: usize,
    pub max_queue: usize,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            latency: Duration::ZERO,
            hang: false,
            status: None,
            max_parallel: 64,
            max_queue: 512,
        }
    }
}

#[derive(Debug)]
struct Fake {
    behaviour: Mutex<Behaviour>,
    parallel: Mutex<Arc<Semaphore>>,
    waiting: AtomicUsize,
    calls: AtomicUsize,
    served: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    sequence: AtomicUsize,
    tokens: AtomicUsize,
}

/// A running fake LLM server. Stops when dropped.
#[derive(Debug)]
pub struct FakeLlm {
    addr: SocketAddr,
    fake: Arc<Fake>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeLlm {
    pub async fn start(behaviour: Behaviour, port: u16) -> std::io::Result<Self> {
        let fake = Arc::new(Fake {
            parallel: Mutex::new(Arc::new(Semaphore::new(behaviour.max_parallel.max(1)))),
            behaviour: Mutex::new(behaviour),
            waiting: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            sequence: AtomicUsize::new(0),
            tokens: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/api/chat", post(ollama_chat))
            .route("/v1/chat/completions", post(openai_chat))
            .with_state(fake.clone());
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "fake LLM stopped");
            }
        });
        Ok(Self { addr, fake, server })
    }

    /// For an Ollama client: `http://127.0.0.1:<port>`.
    pub fn ollama_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// For an OpenAI client: `http://127.0.0.1:<port>/v1`.
    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *lock(&self.fake.behaviour) = behaviour;
        *lock(&self.fake.parallel) = Arc::new(Semaphore::new(behaviour.max_parallel.max(1)));
    }

    /// Calls received.
    pub fn calls(&self) -> usize {
        self.fake.calls.load(Ordering::SeqCst)
    }

    /// Calls answered with a summary.
    pub fn served(&self) -> usize {
        self.fake.served.load(Ordering::SeqCst)
    }

    /// The most calls it has worked on at once.
    pub fn max_in_flight(&self) -> usize {
        self.fake.max_in_flight.load(Ordering::SeqCst)
    }

    /// Tokens it reported as used in successful answers.
    pub fn tokens_billed(&self) -> usize {
        self.fake.tokens.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The prompt's title line, for a recognisable answer.
fn title_of(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .and_then(|c| c.lines().next())
        .map(|l| l.trim_start_matches("Title: ").to_owned())
        .unwrap_or_default()
}

/// Run one call through the faults; `Ok((title, input_tokens))` to answer.
async fn admit(fake: &Fake, body: &Value) -> Result<(String, usize), Response> {
    fake.calls.fetch_add(1, Ordering::SeqCst);
    let behaviour = *lock(&fake.behaviour);
    if fake.waiting.load(Ordering::SeqCst) >= behaviour.max_queue {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "server busy, please try again",
        )
            .into_response());
    }
    let semaphore = lock(&fake.parallel).clone();
    fake.waiting.fetch_add(1, Ordering::SeqCst);
    let permit = semaphore.acquire_owned().await;
    fake.waiting.fetch_sub(1, Ordering::SeqCst);
    let Ok(_permit) = permit else {
        return Err(StatusCode::SERVICE_UNAVAILABLE.into_response());
    };
    let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    fake.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let outcome = async {
        if behaviour.hang {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(behaviour.latency).await;
        if let Some(status) = behaviour.status {
            return Err((
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "forced",
            )
                .into_response());
        }
        // A fixed sequence, so a run's failures can be repeated exactly.
        let n = fake.sequence.fetch_add(1, Ordering::SeqCst);
        let roll = ((n as u64).wrapping_mul(2_654_435_761) % 10_000) as f64 / 10_000.0;
        if roll < behaviour.error_rate {
            return Err((StatusCode::INTERNAL_SERVER_ERROR, "model failed").into_response());
        }
        let prompt: usize = body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| m["content"].as_str())
                    .map(str::len)
                    .sum()
            })
            .unwrap_or(0);
        Ok((title_of(body), prompt / 4))
    }
    .await;
    fake.in_flight.fetch_sub(1, Ordering::SeqCst);
    outcome
}

fn answer_text(title: &str) -> String {
    format!(
        "This paper, \"{title}\", addresses its problem with a new method and reports better results."
    )
}

async fn ollama_chat(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> Response {
    match admit(&fake, &body).await {
        Err(refusal) => refusal,
        Ok((title, input)) => {
            let text = answer_text(&title);
            let output = text.len() / 4;
            fake.served.fetch_add(1, Ordering::SeqCst);
            fake.tokens.fetch_add(input + output, Ordering::SeqCst);
            Json(json!({
                "model": body["model"],
                "message": {"role": "assistant", "content": text},
                "done": true,
                "prompt_eval_count": input,
                "eval_count": output,
            }))
            .into_response()
        }
    }
}

async fn openai_chat(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ") && v.len() > "Bearer ".len());
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "missing API key"}})),
        )
            .into_response();
    }
    match admit(&fake, &body).await {
        Err(refusal) => refusal,
        Ok((title, input)) => {
            let max = body["max_tokens"].as_u64().unwrap_or(256) as usize;
            let text = answer_text(&title);
            let output = (text.len() / 4).min(max);
            fake.served.fetch_add(1, Ordering::SeqCst);
            fake.tokens.fetch_add(input + output, Ordering::SeqCst);
            Json(json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
            }))
            .into_response()
        }
    }
}
