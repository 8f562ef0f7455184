//! Drills of the ingest pipeline with real processes: papers from the fake
//! arXiv go through the crawler (in this process) into `paper.ingested`,
//! summarizer *processes* (the release binary) summarize them through the
//! fake Ollama and OpenAI, and publish `paper.summarized`. Faults hit the
//! summarizers, the LLMs or Postgres.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;
use fakes::{
    arxiv::{FakeArxiv, corpus, day},
    llm::{Behaviour, FakeLlm},
};
use streams::{Inspector, inspect::Log};
use tokio_util::sync::CancellationToken;

use crate::{
    harness::{self, Env, LagWatch},
    report::Report,
};

/// One drill's private pipeline: its own database and topics.
struct Pipeline {
    db: test_support::TestDatabase,
    prefix: String,
    topics: events::Topics,
    arxiv: FakeArxiv,
    ollama: Option<FakeLlm>,
    ollama_port: u16,
    openai: FakeLlm,
    crawler: crawler::Crawler,
    relaying: tokio::task::JoinHandle<Result<(), outbox::Error>>,
    stop: CancellationToken,
    summarizers: Vec<Child>,
    papers: usize,
    logs: PathBuf,
}

impl Pipeline {
    async fn start(
        env: &Env,
        drill: &str,
        papers: usize,
        llm_latency: Duration,
    ) -> anyhow::Result<Self> {
        let db = test_support::TestDatabase::create().await?;
        let prefix = format!("{}.", harness::unique_topic(drill));
        let arxiv = FakeArxiv::start(corpus(papers, day(2026, 11, 2), 500), 1000, None, 0).await?;
        let behaviour = Behaviour {
            latency: llm_latency,
            ..Behaviour::default()
        };
        let ollama = FakeLlm::start(behaviour, 0).await?;
        let ollama_port = port_of(&ollama.ollama_url())?;
        let openai = FakeLlm::start(behaviour, 0).await?;
        let defaults = crawler::Config::default();
        let crawler = crawler::Crawler::connect(&crawler::Config {
            database_url: db.url.clone(),
            redis_urls: env.redis_urls.clone(),
            arxiv: crawler::config::ArxivSettings {
                query_url: arxiv.query_url(),
                oai_url: arxiv.oai_url(),
                rss_url: arxiv.rss_url(),
                pace_interval_ms: 0,
                ..defaults.arxiv.clone()
            },
            topic_prefix: prefix.clone(),
            ..defaults
        })
        .await?;
        let stop = CancellationToken::new();
        let relay = crawler.relay();
        let relaying = tokio::spawn({
            let stop = stop.clone();
            async move { relay.run(stop).await }
        });
        let logs = PathBuf::from("target/drills/logs");
        std::fs::create_dir_all(&logs)?;
        Ok(Self {
            topics: events::Topics::new(&prefix)?,
            db,
            prefix,
            arxiv,
            ollama: Some(ollama),
            ollama_port,
            openai,
            crawler,
            relaying,
            stop,
            summarizers: Vec::new(),
            papers,
            logs,
        })
    }

    /// Start one more summarizer process.
    fn spawn_summarizer(&mut self, env: &Env) -> anyhow::Result<()> {
        let binary = std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("summarizer"))
            .context("no directory for the summarizer binary")?;
        let log = std::fs::File::create(self.logs.join(format!(
            "{}summarizer-{}.log",
            self.prefix,
            self.summarizers.len()
        )))?;
        let child = Command::new(&binary)
            .env("DATABASE_URL", &self.db.url)
            .env("PAPERSTREAM_REDIS_URLS", env.redis_urls.join(","))
            .env("PAPERSTREAM_TOPIC_PREFIX", &self.prefix)
            .env("PAPERSTREAM_OPS_ADDR", "127.0.0.1:0")
            .env("PAPERSTREAM_LLM__ORDER", "ollama,openai,extractive")
            .env(
                "PAPERSTREAM_LLM__OLLAMA_URL",
                format!("http://127.0.0.1:{}", self.ollama_port),
            )
            .env("PAPERSTREAM_LLM__OLLAMA_TIMEOUT_S", "1")
            .env("PAPERSTREAM_LLM__OLLAMA_MAX_IN_FLIGHT", "8")
            .env("PAPERSTREAM_LLM__OPENAI_URL", self.openai.openai_url())
            .env("OPENAI_API_KEY", "drill")
            .env("PAPERSTREAM_LLM__BREAKER_FAILURES", "3")
            .env("PAPERSTREAM_LLM__BREAKER_OPEN_S", "2")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} (scripts/drill builds it)", binary.display()))?;
        self.summarizers.push(child);
        Ok(())
    }

    /// Harvest every paper of the fake arXiv (the rate limit is off).
    async fn crawl(&self) -> anyhow::Result<()> {
        self.crawler
            .backfill(
                day(2026, 11, 1),
                None,
                &[String::new()],
                &crawler::Progress::new(false),
                &self.stop,
            )
            .await?;
        Ok(())
    }

    /// Summaries stored, by provider.
    async fn summaries(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT provider, count(*) FROM summaries GROUP BY provider")
                .fetch_all(&self.db.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    async fn summarized(&self) -> u64 {
        self.summaries()
            .await
            .map(|s| s.values().sum::<i64>().max(0) as u64)
            .unwrap_or(0)
    }

    /// `paper.summarized` entries and distinct message ids among them.
    async fn announced(&self, env: &Env) -> anyhow::Result<(u64, u64)> {
        let inspector = Inspector::new(env.client.clone());
        let layout = self.topics.summarized.layout();
        let entries = harness::entries(&inspector, layout, Log::Stream).await?;
        let ids: HashSet<&str> = entries.iter().map(|e| e.message_id()).collect();
        Ok((entries.len() as u64, ids.len() as u64))
    }

    /// Watch the summarizers' lag on `paper.ingested`.
    fn watch_lag(&self, env: &Env) -> LagWatch {
        LagWatch::start(
            &env.client,
            self.topics.ingested.layout().clone(),
            "summarizer",
        )
    }

    /// Wait (up to two minutes) until `share` of the papers have their
    /// summary; a pipeline that stalls is caught by the final wait.
    async fn summarized_share(&self, share: f64) {
        let want = (self.papers as f64 * share) as u64;
        harness::wait_until(Duration::from_secs(120), async || {
            self.summarized().await >= want
        })
        .await;
    }

    /// Wait until every paper has its summary, for at most `within`.
    async fn all_summarized(&self, within: Duration) -> bool {
        let want = self.papers as u64;
        harness::wait_until(within, async || self.summarized().await >= want).await
    }

    /// The shared figures of a pipeline drill.
    async fn finish(mut self, env: &Env, report: &mut Report) -> anyhow::Result<()> {
        let (entries, distinct) = self.announced(env).await?;
        let inspector = Inspector::new(env.client.clone());
        report.sent = self.papers as u64;
        report.processed = distinct;
        report.duplicates = entries - distinct;
        report.lost = (self.papers as u64).saturating_sub(self.summarized().await);
        report.dead_lettered = harness::dead_letters(&inspector, self.topics.ingested.layout())
            .await?
            + harness::dead_letters(&inspector, self.topics.summarized.layout()).await?;
        report.detail("summaries_by_provider", self.summaries().await?);
        let mut reasons =
            harness::dead_letter_reasons(&inspector, self.topics.ingested.layout(), true).await?;
        reasons.extend(
            harness::dead_letter_reasons(&inspector, self.topics.summarized.layout(), true).await?,
        );
        if !reasons.is_empty() {
            report.detail("dead_letter_reasons", reasons);
        }
        report.detail("openai_calls", self.openai.calls());
        report.detail("arxiv_requests", self.arxiv.requests().len());
        for child in &mut self.summarizers {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.summarizers {
            let _ = child.wait();
        }
        self.stop.cancel();
        let _ = (&mut self.relaying).await;
        for layout in self.topics.all_layouts() {
            harness::remove_topic(env, &layout).await?;
        }
        Ok(())
    }
}

impl Drop for Pipeline {
    /// Leave no summarizer behind when a drill fails half-way.
    fn drop(&mut self) {
        for child in &mut self.summarizers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Entries delivered to the summarizer process `pid` and not acknowledged
/// (consumer names carry the pid).
async fn pending_of(env: &Env, pipeline: &Pipeline, pid: u32) -> anyhow::Result<u64> {
    let marker = format!("-{pid}-");
    Ok(Inspector::new(env.client.clone())
        .partitions(pipeline.topics.ingested.layout())
        .await?
        .iter()
        .flat_map(|p| p.groups.iter())
        .flat_map(|g| g.consumers.iter())
        .filter(|c| c.name.contains(&marker))
        .map(|c| c.pending)
        .sum())
}

/// Distinct consumers owning partitions of `paper.ingested`.
async fn owners(env: &Env, pipeline: &Pipeline) -> anyhow::Result<usize> {
    Ok(Inspector::new(env.client.clone())
        .partitions(pipeline.topics.ingested.layout())
        .await?
        .iter()
        .flat_map(|p| p.groups.iter())
        .filter_map(|g| g.owner.clone())
        .collect::<HashSet<_>>()
        .len())
}

fn port_of(url: &str) -> anyhow::Result<u16> {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .with_context(|| format!("no port in {url}"))
}

/// `kill -9` one of two summarizer processes mid-flight: its partitions
/// move to the other after the lease expires, its unacknowledged entries
/// are claimed and run again, and every paper ends with one summary and
/// one announcement.
pub async fn kill_consumer(env: &Env) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "kill-consumer",
        "after kill -9 of a summarizer mid-flight, every paper has exactly one summary and \
         one paper.summarized message",
    );
    let papers = env.scale(300, 3_000) as usize;
    // Slow enough that a summarizer always has work in flight.
    let mut pipeline = Pipeline::start(env, "kill", papers, Duration::from_millis(100)).await?;
    pipeline.spawn_summarizer(env)?;
    pipeline.spawn_summarizer(env)?;
    let lag_watch = pipeline.watch_lag(env);
    pipeline.crawl().await?;
    pipeline.summarized_share(1.0 / 3.0).await;
    // Kill a process that owns partitions and holds entries right now.
    let mut chosen = None;
    harness::wait_until(Duration::from_secs(30), async || {
        for (i, child) in pipeline.summarizers.iter().enumerate() {
            if pending_of(env, &pipeline, child.id()).await.unwrap_or(0) > 0
                && owners(env, &pipeline).await.unwrap_or(0) >= 2
            {
                chosen = Some(i);
                return true;
            }
        }
        false
    })
    .await;
    let victim_index = chosen.unwrap_or(0);
    let victim_pid = pipeline.summarizers[victim_index].id();
    let before_kill = pipeline.summarized().await;
    let in_flight = pending_of(env, &pipeline, victim_pid).await?;
    let mut victim = pipeline.summarizers.remove(victim_index);
    // SIGKILL: no shutdown, no lease release.
    let killed = victim.kill();
    let killed_at = tokio::time::Instant::now();
    victim.wait()?;
    killed?;
    let done = pipeline.all_summarized(Duration::from_secs(180)).await;
    report.recovered_after(killed_at.elapsed());
    report.peak_lag = lag_watch.finish().await;
    report.detail("summarized_when_killed", before_kill);
    report.detail("victim_pending_when_killed", in_flight);
    pipeline.finish(env, &mut report).await?;
    report.passed = done
        && in_flight > 0
        && report.lost == 0
        && report.duplicates == 0
        && report.dead_lettered == 0;
    Ok(report)
}

/// Ollama goes down, then comes back slow (answers after the summarizer's
/// timeout): the breaker opens, OpenAI serves, and no paper is left
/// without an LLM summary.
pub async fn llm_outage(env: &Env) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "llm-outage",
        "with Ollama down and then slow, every paper is summarized, by an LLM (OpenAI) rather \
         than the extractive fallback, and once",
    );
    let papers = env.scale(300, 2_000) as usize;
    // OpenAI answers in 100 ms, so the run outlasts the breaker's 2 s wait
    // and its probes meet the slow Ollama.
    let mut pipeline = Pipeline::start(env, "llm", papers, Duration::from_millis(100)).await?;
    // Down: nothing listens on Ollama's port.
    drop(pipeline.ollama.take());
    pipeline.spawn_summarizer(env)?;
    let lag_watch = pipeline.watch_lag(env);
    let started = tokio::time::Instant::now();
    pipeline.crawl().await?;
    pipeline.summarized_share(1.0 / 2.0).await;
    let during_down = pipeline.summaries().await?;
    // Slow: back, but answering after the 1 s timeout.
    pipeline.ollama = Some(
        FakeLlm::start(
            Behaviour {
                latency: Duration::from_secs(3),
                ..Behaviour::default()
            },
            pipeline.ollama_port,
        )
        .await?,
    );
    let done = pipeline.all_summarized(Duration::from_secs(180)).await;
    report.recovered_after(started.elapsed());
    report.peak_lag = lag_watch.finish().await;
    let summaries = pipeline.summaries().await?;
    let extractive = summaries.get("extractive").copied().unwrap_or(0);
    report.detail("summaries_while_ollama_down", during_down);
    let slow_calls = pipeline.ollama.as_ref().map_or(0, FakeLlm::calls);
    report.detail("slow_ollama_calls", slow_calls);
    pipeline.finish(env, &mut report).await?;
    report.passed = done
        && slow_calls > 0
        && extractive == 0
        && report.lost == 0
        && report.duplicates == 0
        && report.dead_lettered == 0;
    Ok(report)
}

/// Postgres restarts while the summarizer works: its connections are cut,
/// handlers fail and retry, and the pipeline finishes with every paper
/// summarized once; the summarizer process survives.
pub async fn postgres_restart(env: &Env) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "postgres-restart",
        "after Postgres restarts under load, every paper is summarized and announced once, \
         and the summarizer keeps running",
    );
    let papers = env.scale(300, 3_000) as usize;
    let mut pipeline = Pipeline::start(env, "pg", papers, Duration::from_millis(20)).await?;
    pipeline.spawn_summarizer(env)?;
    let lag_watch = pipeline.watch_lag(env);
    pipeline.crawl().await?;
    pipeline.summarized_share(1.0 / 3.0).await;
    let restarted_at = tokio::time::Instant::now();
    tokio::task::spawn_blocking(crate::local::restart_postgres).await??;
    let done = pipeline.all_summarized(Duration::from_secs(180)).await;
    report.recovered_after(restarted_at.elapsed());
    report.peak_lag = lag_watch.finish().await;
    let alive = pipeline
        .summarizers
        .iter_mut()
        .all(|c| matches!(c.try_wait(), Ok(None)));
    report.detail("summarizer_survived", alive);
    pipeline.finish(env, &mut report).await?;
    report.passed =
        done && alive && report.lost == 0 && report.duplicates == 0 && report.dead_lettered == 0;
    Ok(report)
}

/// What the simulated readers saw.
#[derive(Debug, Default)]
struct Readers {
    requests: u64,
    server_errors: u64,
    latencies_ms: Vec<f64>,
}

/// One reader: sign up, subscribe to cs.LG, then read the feed until told
/// to stop.
async fn reader(
    http: reqwest::Client,
    base: String,
    n: usize,
    stop: CancellationToken,
) -> anyhow::Result<Readers> {
    let mut seen = Readers::default();
    let mut call = async |request: reqwest::RequestBuilder| -> anyhow::Result<serde_json::Value> {
        let started = std::time::Instant::now();
        let response = request.send().await?;
        seen.requests += 1;
        seen.latencies_ms
            .push(started.elapsed().as_secs_f64() * 1000.0);
        if response.status().is_server_error() {
            seen.server_errors += 1;
        }
        Ok(response.json().await.unwrap_or(serde_json::Value::Null))
    };
    let account = call(
        http.post(format!("{base}/api/v1/users"))
            .json(&serde_json::json!({"email": format!("reader{n}@drill.example"), "password": "a long drill password"})),
    )
    .await?;
    let token = account["token"]
        .as_str()
        .context("sign-up gave no token")?
        .to_owned();
    call(
        http.post(format!("{base}/api/v1/subscriptions"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"name": "ML", "categories": ["cs.LG"]})),
    )
    .await?;
    while !stop.is_cancelled() {
        call(http.get(format!("{base}/api/v1/feed")).bearer_auth(&token)).await?;
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    Ok(seen)
}

/// A burst of papers through the whole pipeline (crawler, two summarizer
/// processes, the notifier matching and delivering in-app and by mail)
/// while readers sign up, subscribe and read their feeds through the API.
pub async fn load(env: &Env) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "load",
        "every paper is summarized and announced once, every reader gets each matching paper \
         in the inbox once, and the API answers every request without a server error",
    );
    let papers = env.scale(600, 5_000) as usize;
    let readers = env.scale(40, 100) as usize;
    let mut pipeline = Pipeline::start(env, "load", papers, Duration::from_millis(5)).await?;
    let smtp = fakes::smtp::FakeSmtp::start(fakes::smtp::SmtpBehaviour::default(), 0).await?;
    let secret = "drill-secret-drill-secret-drill-secret-0123";
    let api_config = api::Config {
        database_url: pipeline.db.url.clone(),
        redis_urls: env.redis_urls.clone(),
        topic_prefix: pipeline.prefix.clone(),
        secret: Some(secret.into()),
        listen: ([127, 0, 0, 1], 0).into(),
        auth_attempts_per_minute: 100_000,
        ..api::Config::default()
    };
    let state = api::AppState::connect(&api_config).await?;
    // Through the config bus: room for only a few thousand notifications
    // downstream, so the matcher meets backpressure and must wait, not
    // dead-letter (the services apply this version when they start).
    let notification_capacity = env.scale(10, 2_000);
    let mut tuned = settings::Settings::defaults(&pipeline.topics, &pipeline.prefix);
    if let Some(topic) = tuned.topics.get_mut(events::NotificationRequested::TOPIC) {
        topic.capacity = notification_capacity;
    }
    state
        .settings
        .change(settings::store::Change {
            settings: &tuned,
            author: "drill",
            reason: "a small notification.requested, to meet backpressure",
            expected_version: None,
        })
        .await?;
    let (bound_tx, bound) = tokio::sync::oneshot::channel();
    let serving = tokio::spawn(api::serve(
        state,
        api_config.listen,
        pipeline.stop.clone(),
        move |addr| {
            let _ = bound_tx.send(addr);
        },
    ));
    let base = format!("http://{}", bound.await?);
    let notifier_defaults = notifier::Config::default();
    let notifier_config = notifier::Config {
        database_url: pipeline.db.url.clone(),
        redis_urls: env.redis_urls.clone(),
        topic_prefix: pipeline.prefix.clone(),
        secret: Some(secret.into()),
        public_url: base.clone(),
        smtp: delivery::send::SmtpConfig {
            port: smtp.port(),
            ..notifier_defaults.smtp.clone()
        },
        change_poll_ms: 200,
        ..notifier_defaults
    };
    let notifying = tokio::spawn({
        let stop = pipeline.stop.clone();
        async move { notifier::run(&notifier_config, stop).await }
    });

    // Readers first, then the burst.
    let reading_stop = CancellationToken::new();
    let http = reqwest::Client::new();
    let reading: Vec<_> = (0..readers)
        .map(|n| tokio::spawn(reader(http.clone(), base.clone(), n, reading_stop.clone())))
        .collect();
    harness::wait_until(Duration::from_secs(60), async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM subscriptions")
            .fetch_one(&pipeline.db.pool)
            .await
            .is_ok_and(|n| n as usize >= readers)
    })
    .await;
    pipeline.spawn_summarizer(env)?;
    pipeline.spawn_summarizer(env)?;
    let lag_watch = pipeline.watch_lag(env);
    let started = tokio::time::Instant::now();
    pipeline.crawl().await?;
    let summarized = pipeline.all_summarized(Duration::from_secs(600)).await;
    let all_summarized_after = started.elapsed();
    let matching: i64 =
        sqlx::query_scalar("SELECT count(*) FROM papers WHERE 'cs.LG' = ANY(categories)")
            .fetch_one(&pipeline.db.pool)
            .await?;
    let expected = matching * readers as i64;
    let in_app = async || -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM deliveries d JOIN channels c ON c.id = d.channel_id \
             WHERE c.kind = 'in_app' AND d.state = 'sent'",
        )
        .fetch_one(&pipeline.db.pool)
        .await
        .unwrap_or(0)
    };
    // A dead-lettered paper's deliveries never come: stop waiting then.
    let inspector = Inspector::new(env.client.clone());
    let given_up = async || {
        harness::dead_letters(&inspector, pipeline.topics.summarized.layout())
            .await
            .is_ok_and(|n| n > 0)
    };
    harness::wait_until(Duration::from_secs(900), async || {
        in_app().await >= expected || given_up().await
    })
    .await;
    let delivered = in_app().await >= expected;
    report.recovered_after(started.elapsed());
    report.peak_lag = lag_watch.finish().await;
    reading_stop.cancel();
    let mut seen = Readers::default();
    for task in reading {
        let one = task.await??;
        seen.requests += one.requests;
        seen.server_errors += one.server_errors;
        seen.latencies_ms.extend(one.latencies_ms);
    }
    seen.latencies_ms.sort_by(f64::total_cmp);
    let percentile = |q: f64| {
        seen.latencies_ms
            .get(((seen.latencies_ms.len().saturating_sub(1)) as f64 * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let in_app_deliveries = in_app().await;
    report.detail("readers", readers);
    report.detail("notification_capacity_per_partition", notification_capacity);
    report.detail(
        "papers_per_second",
        (papers as f64 / all_summarized_after.as_secs_f64() * 10.0).round() / 10.0,
    );
    report.detail("in_app_deliveries", in_app_deliveries);
    report.detail("in_app_expected", expected);
    report.detail("mails_received", smtp.mails().len());
    report.detail("api_requests", seen.requests);
    report.detail("api_server_errors", seen.server_errors);
    report.detail("api_p50_ms", (percentile(0.5) * 10.0).round() / 10.0);
    report.detail("api_p99_ms", (percentile(0.99) * 10.0).round() / 10.0);
    pipeline.stop.cancel();
    notifying.await??;
    serving.await??;
    pipeline.finish(env, &mut report).await?;
    report.passed = summarized
        && delivered
        && in_app_deliveries == expected
        && seen.server_errors == 0
        && report.lost == 0
        && report.duplicates == 0
        && report.dead_lettered == 0;
    Ok(report)
}
