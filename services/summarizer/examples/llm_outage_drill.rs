//! Drill: Ollama fails half of its calls. How many papers are left without
//! an LLM summary, without the OpenAI fallback and with it, and how many
//! OpenAI calls did the fallback make?
//!
//! `cargo run --release -p summarizer --example llm_outage_drill` (with the
//! local infrastructure up: the spend cap lives in Redis). Prints a report
//! and writes it to `target/bench/llm_outage_drill.json`.
//!
//! * Without fallback the chain is Ollama alone; a failed paper is
//!   delivered again by the streams runtime, up to `max_attempts` times
//!   (5), then dead-lettered without a summary.
//! * With fallback the chain is Ollama, OpenAI, extractive, one delivery
//!   each. Papers that end with the extractive summary have no LLM summary.

use std::{sync::Arc, time::Duration};

use fakes::llm::{Behaviour, FakeLlm};
use llm::{
    SummaryRequest,
    breaker::{Guard, Guarded},
    budget::SpendCap,
    chain::{Chain, Provider},
    extractive::Extractive,
    ollama::Ollama,
    openai::{OpenAi, OpenAiConfig},
};
use tokio::sync::Semaphore;

const PAPERS: usize = 5_000;
const MAX_ATTEMPTS: usize = 5;
const CONCURRENCY: usize = 16;

fn guard() -> Guard {
    let defaults = summarizer::Config::default().llm;
    Guard {
        timeout: Duration::from_secs(5),
        max_in_flight: 16,
        queue_wait: Duration::from_secs(5),
        failures_to_open: defaults.breaker_failures,
        open_for: defaults.breaker_open(),
    }
}

fn request(n: usize) -> SummaryRequest {
    SummaryRequest {
        arxiv_id: format!("2611.{n:05}"),
        version: 1,
        title: format!("Paper {n}"),
        abstract_text: "We study streams. We propose a method. It works.".into(),
    }
}

/// Run every paper through `chain`, each delivered up to `attempts` times
/// until it gets a summary; returns the providers that served, or `None`.
async fn run(chain: Arc<Chain>, attempts: usize) -> Vec<Option<String>> {
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..PAPERS {
        let (chain, limit) = (chain.clone(), limit.clone());
        tasks.spawn(async move {
            let _turn = limit.acquire().await.ok()?;
            for _ in 0..attempts {
                if let Ok(summary) = chain.summarize(&request(n)).await {
                    return Some(summary.provider);
                }
            }
            None
        });
    }
    let mut out = Vec::with_capacity(PAPERS);
    while let Some(done) = tasks.join_next().await {
        out.push(done.ok().flatten());
    }
    out
}

fn ollama(fake: &FakeLlm) -> anyhow::Result<Provider> {
    Ok(Provider::Ollama(Guarded::new(
        Ollama::new(&fake.ollama_url(), "gemma3", Duration::from_secs(5))?,
        guard(),
    )))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flaky = Behaviour {
        error_rate: 0.5,
        ..Behaviour::default()
    };
    let redis_urls: Vec<String> = std::env::var("PAPERSTREAM_REDIS_URLS")
        .unwrap_or_else(|_| "redis://127.0.0.1:7101".into())
        .split(',')
        .map(str::to_owned)
        .collect();

    // Without fallback: Ollama alone, with the runtime's redeliveries.
    let ollama_only = FakeLlm::start(flaky, 0).await?;
    let alone = run(
        Arc::new(Chain::new(vec![ollama(&ollama_only)?])),
        MAX_ATTEMPTS,
    )
    .await;
    let unsummarized_alone = alone.iter().filter(|p| p.is_none()).count();

    // With fallback: Ollama, then OpenAI within a budget, then extractive.
    let ollama_flaky = FakeLlm::start(flaky, 0).await?;
    let openai = FakeLlm::start(Behaviour::default(), 0).await?;
    let connection = redis::cluster::ClusterClient::new(redis_urls)?
        .get_async_connection()
        .await?;
    let cap = SpendCap::new(
        connection,
        &format!("drill-{}", std::process::id()),
        100_000_000,
    );
    let chain = Chain::new(vec![
        ollama(&ollama_flaky)?,
        Provider::OpenAi(
            Guarded::new(
                OpenAi::new(OpenAiConfig {
                    base_url: openai.openai_url(),
                    api_key: "sk-drill".into(),
                    model: "gpt-4o-mini".into(),
                    max_output_tokens: 200,
                    input_price_per_1k_micro_usd: 150,
                    output_price_per_1k_micro_usd: 600,
                    timeout: Duration::from_secs(5),
                })?,
                guard(),
            ),
            cap,
        ),
        Provider::Extractive(Extractive::default()),
    ]);
    let with = run(Arc::new(chain), 1).await;
    let without_llm = with
        .iter()
        .filter(|p| !matches!(p.as_deref(), Some("ollama" | "openai")))
        .count();
    let ollama_failures = ollama_flaky.calls() - ollama_flaky.served();

    let report = serde_json::json!({
        "papers": PAPERS,
        "ollama_error_rate": flaky.error_rate,
        "without_fallback": {
            "deliveries_per_paper": MAX_ATTEMPTS,
            "left_without_llm_summary": unsummarized_alone,
            "share": unsummarized_alone as f64 / PAPERS as f64,
            "ollama_calls": ollama_only.calls(),
        },
        "with_fallback": {
            "left_without_llm_summary": without_llm,
            "share": without_llm as f64 / PAPERS as f64,
            "ollama_calls": ollama_flaky.calls(),
            "ollama_failures": ollama_failures,
            "openai_calls": openai.calls(),
            "openai_calls_beyond_forced": openai.calls().saturating_sub(ollama_failures),
        },
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("llm_outage_drill.json"), text)?;
    Ok(())
}
