//! The fallback chain against fake Ollama and OpenAI servers, with the
//! spend cap in the real Redis Cluster.

use std::time::Duration;

use fakes::llm::{Behaviour, FakeLlm};
use llm::{
    LlmError, SummaryRequest,
    breaker::{BreakerState, Guard, Guarded},
    budget::SpendCap,
    chain::{Chain, Provider},
    extractive::Extractive,
    ollama::Ollama,
    openai::{OpenAi, OpenAiConfig},
};

fn request(n: usize) -> SummaryRequest {
    SummaryRequest {
        arxiv_id: format!("2611.{n:05}"),
        version: 1,
        title: format!("Paper {n}"),
        abstract_text: "We study streams. We propose a method. It works well in practice.".into(),
    }
}

fn guard() -> Guard {
    Guard {
        timeout: Duration::from_millis(300),
        max_in_flight: 4,
        queue_wait: Duration::from_millis(500),
        failures_to_open: 3,
        open_for: Duration::from_millis(400),
    }
}

async fn cap(daily_tokens: u64) -> SpendCap<redis::cluster_async::ClusterConnection> {
    let connection = redis::cluster::ClusterClient::new(test_support::shared_redis_urls())
        .expect("client")
        .get_async_connection()
        .await
        .expect("connection");
    SpendCap::new(
        connection,
        &test_support::unique_name("openai"),
        daily_tokens,
    )
}

struct Setup {
    ollama: FakeLlm,
    openai: FakeLlm,
    chain: Chain,
}

async fn setup(daily_tokens: u64) -> Setup {
    test_support::init_tracing();
    let ollama = FakeLlm::start(Behaviour::default(), 0)
        .await
        .expect("fake ollama");
    let openai = FakeLlm::start(Behaviour::default(), 0)
        .await
        .expect("fake openai");
    let chain = Chain::new(vec![
        Provider::Ollama(Guarded::new(
            Ollama::new(&ollama.ollama_url(), "gemma3", Duration::from_secs(5)).expect("ollama"),
            guard(),
        )),
        Provider::OpenAi(
            Guarded::new(
                OpenAi::new(OpenAiConfig {
                    base_url: openai.openai_url(),
                    api_key: "sk-test".into(),
                    model: "gpt-4o-mini".into(),
                    max_output_tokens: 200,
                    input_price_per_1k_micro_usd: 150,
                    output_price_per_1k_micro_usd: 600,
                    timeout: Duration::from_secs(5),
                })
                .expect("openai"),
                guard(),
            ),
            cap(daily_tokens).await,
        ),
        Provider::Extractive(Extractive::default()),
    ]);
    Setup {
        ollama,
        openai,
        chain,
    }
}

fn ollama_breaker(chain: &Chain) -> BreakerState {
    match &chain.providers()[0] {
        Provider::Ollama(guarded) => guarded.breaker().state(),
        _ => unreachable!("the chain starts with Ollama"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_ollama_serves_everything() {
    let s = setup(1_000_000).await;
    for n in 0..10 {
        let summary = s.chain.summarize(&request(n)).await.expect("summary");
        assert_eq!(summary.provider, "ollama");
        assert!(summary.text.contains(&format!("Paper {n}")));
    }
    assert_eq!(s.openai.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_or_hanging_ollama_opens_the_breaker_and_openai_serves() {
    let s = setup(1_000_000).await;
    s.ollama.set(Behaviour {
        error_rate: 1.0,
        ..Behaviour::default()
    });
    for n in 0..6 {
        assert_eq!(
            s.chain
                .summarize(&request(n))
                .await
                .expect("summary")
                .provider,
            "openai"
        );
    }
    assert_eq!(ollama_breaker(&s.chain), BreakerState::Open);
    assert_eq!(
        s.ollama.calls(),
        3,
        "after three failures the breaker spares Ollama"
    );

    // Hanging: each call times out (300 ms) until the breaker opens again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    s.ollama.set(Behaviour {
        hang: true,
        ..Behaviour::default()
    });
    let started = std::time::Instant::now();
    for n in 0..6 {
        assert_eq!(
            s.chain
                .summarize(&request(n))
                .await
                .expect("summary")
                .provider,
            "openai"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "hangs cost one timeout, not six"
    );
    assert_eq!(ollama_breaker(&s.chain), BreakerState::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_lets_one_probe_through_and_recovers() {
    let s = setup(1_000_000).await;
    s.ollama.set(Behaviour {
        error_rate: 1.0,
        ..Behaviour::default()
    });
    for n in 0..3 {
        s.chain.summarize(&request(n)).await.expect("summary");
    }
    assert_eq!(ollama_breaker(&s.chain), BreakerState::Open);
    // Ollama heals, slowly; after the open period, ten calls at once: one
    // probes Ollama, the rest go to OpenAI meanwhile.
    s.ollama.set(Behaviour {
        latency: Duration::from_millis(150),
        ..Behaviour::default()
    });
    tokio::time::sleep(Duration::from_millis(450)).await;
    let calls_before = s.ollama.calls();
    let results = futures_join(&s.chain, 10).await;
    assert_eq!(s.ollama.calls() - calls_before, 1, "exactly one probe");
    assert_eq!(results.iter().filter(|p| p.as_str() == "ollama").count(), 1);
    assert_eq!(ollama_breaker(&s.chain), BreakerState::Closed);
    assert_eq!(
        s.chain
            .summarize(&request(99))
            .await
            .expect("summary")
            .provider,
        "ollama"
    );
}

async fn futures_join(chain: &Chain, n: usize) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let chain = chain.clone();
        set.spawn(async move { chain.summarize(&request(100 + i)).await.map(|s| s.provider) });
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        out.push(done.expect("join").expect("summary"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_down_extractive_summaries_keep_flowing() {
    let s = setup(1_000_000).await;
    let down = Behaviour {
        status: Some(503),
        ..Behaviour::default()
    };
    s.ollama.set(down);
    s.openai.set(down);
    for n in 0..5 {
        let summary = s.chain.summarize(&request(n)).await.expect("summary");
        assert_eq!(summary.provider, "extractive");
        assert!(summary.extractive);
    }
}

/// A hundred concurrent workers against a budget of a few calls: OpenAI is
/// used while the budget lasts and the cap is never exceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spend_cap_holds_under_concurrent_load() {
    let budget = 1_500;
    let s = setup(budget).await;
    s.ollama.set(Behaviour {
        status: Some(500),
        ..Behaviour::default()
    });
    let providers = futures_join(&s.chain, 100).await;
    let openai_served = providers.iter().filter(|p| p.as_str() == "openai").count();
    assert!(openai_served > 0, "OpenAI served while the budget lasted");
    assert!(
        providers.iter().any(|p| p.as_str() == "extractive"),
        "then the chain skipped it"
    );
    let spent = match &s.chain.providers()[1] {
        Provider::OpenAi(_, cap) => cap.spent_today().await.expect("spent"),
        _ => unreachable!("OpenAI is second"),
    };
    assert!(spent <= budget, "spent {spent} of {budget}");
    assert!(
        s.openai.tokens_billed() as u64 <= budget,
        "billed {}",
        s.openai.tokens_billed()
    );
    assert_eq!(s.openai.served(), openai_served);
}

#[tokio::test]
async fn an_empty_abstract_is_an_error_not_a_blank_summary() {
    let empty = SummaryRequest {
        abstract_text: String::new(),
        ..request(0)
    };
    let chain = Chain::new(vec![Provider::Extractive(Extractive::default())]);
    assert!(matches!(
        chain.summarize(&empty).await,
        Err(LlmError::Exhausted(_))
    ));
}
