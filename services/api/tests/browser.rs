//! The whole product in headless Chromium: sign up, subscribe, read the
//! papers the crawler brings in (summarized), get them by mail, unsubscribe
//! from the mail's link, and get no more mail.
//!
//! Everything runs for real in this process (the api, notifier, summarizer
//! and crawler on the Redis Cluster and Postgres); only arXiv, the LLM and
//! the mail server are the project's fakes. Needs Debian's `chromium` and
//! `chromium-driver` (`.ci/run` installs them).

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fakes::{
    arxiv::{FakeArxiv, corpus},
    llm::{Behaviour, FakeLlm},
    smtp::{FakeSmtp, SmtpBehaviour},
};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use streams::{Outgoing, Producer, ProducerConfig, StreamsClient};
use test_support::TestDatabase;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "the browser test's secret, long enough to sign";
const EMAIL: &str = "reader@example.org";
const PASSWORD: &str = "a long enough password";

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {binary} ({e}): install Debian's chromium and chromium-driver")
            });
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(&status).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, url }
    }

    async fn browser(&self) -> Client {
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal")
        };
        ClientBuilder::rustls()
            .expect("TLS roots")
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn eventually<F, Fut, T>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn fill(browser: &Client, name: &str, value: &str) {
    let field = browser
        .find(Locator::Css(&format!("[name='{name}']")))
        .await
        .unwrap_or_else(|e| panic!("field {name}: {e}"));
    field.clear().await.expect("clear");
    field.send_keys(value).await.expect("type");
}

async fn submit(browser: &Client, form: &str) {
    browser
        .find(Locator::Css(&format!("{form} button[type='submit']")))
        .await
        .expect("submit button")
        .click()
        .await
        .expect("click");
}

/// Wait for the navigation a click started to land on `path`.
async fn arrive(browser: &Client, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let url = browser.current_url().await.expect("url");
        let html = browser.source().await.expect("source");
        if url.path() == path {
            return html;
        }
        assert!(
            Instant::now() < deadline,
            "expected {path}, still at {url}: {html}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn page(browser: &Client, url: &str) -> String {
    browser.goto(url).await.expect("goto");
    browser.source().await.expect("source")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_signs_up_subscribes_reads_and_unsubscribes() {
    test_support::init_tracing();
    let metrics = ops::init_metrics().expect("a Prometheus recorder");
    let db = TestDatabase::create().await.expect("database");
    let redis_urls = test_support::shared_redis_urls();
    let prefix = format!("{}.", test_support::unique_name("e2e"));
    let today = time::OffsetDateTime::now_utc().date();
    let arxiv = FakeArxiv::start(
        corpus(36, today.saturating_sub(time::Duration::days(1)), 18),
        50,
        None,
        0,
    )
    .await
    .expect("fake arXiv");
    let llm = FakeLlm::start(
        Behaviour {
            latency: Duration::from_millis(20),
            ..Behaviour::default()
        },
        0,
    )
    .await
    .expect("fake LLM");
    let smtp = FakeSmtp::start(SmtpBehaviour::default(), 0)
        .await
        .expect("fake SMTP");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();

    // The api first: the notifier's links point at it.
    let api_config = api::Config {
        database_url: db.url.clone(),
        redis_urls: redis_urls.clone(),
        topic_prefix: prefix.clone(),
        secret: Some(SECRET.into()),
        listen: ([127, 0, 0, 1], 0).into(),
        ..api::Config::default()
    };
    let state = api::AppState::connect(&api_config).await.expect("api");
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            api::serve(state, api_config.listen, shutdown, |a| {
                let _ = bound_tx.send(a);
            })
            .await
        }
    });
    let site = format!("http://{}", bound_rx.await.expect("bound"));

    let notifier_config = notifier::Config {
        database_url: db.url.clone(),
        redis_urls: redis_urls.clone(),
        topic_prefix: prefix.clone(),
        secret: Some(SECRET.into()),
        public_url: site.clone(),
        smtp: delivery::send::SmtpConfig {
            port: smtp.port(),
            ..notifier::Config::default().smtp
        },
        change_poll_ms: 200,
        ..notifier::Config::default()
    };
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move { notifier::run(&notifier_config, shutdown).await }
    });
    let summarizer_defaults = summarizer::Config::default();
    let summarizer_config = summarizer::Config {
        database_url: db.url.clone(),
        redis_urls: redis_urls.clone(),
        topic_prefix: prefix.clone(),
        llm: summarizer::config::LlmSettings {
            ollama_url: llm.ollama_url(),
            ..summarizer_defaults.llm.clone()
        },
        ..summarizer_defaults
    };
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move { summarizer::run(&summarizer_config, shutdown).await }
    });

    let driver = Driver::start().await;
    let browser = driver.browser().await;

    // 1. Sign up.
    page(&browser, &format!("{site}/signup")).await;
    fill(&browser, "email", EMAIL).await;
    fill(&browser, "password", PASSWORD).await;
    submit(&browser, "main form").await;
    arrive(&browser, "/subscriptions/new").await;

    // 2. Subscribe, with the live preview explaining a bad query first.
    fill(&browser, "name", "Learning").await;
    fill(&browser, "categories", "cs.LG").await;
    fill(&browser, "query", "learning AND (").await;
    submit(&browser, "#subscription-form").await;
    eventually("the bad query explained", Duration::from_secs(10), || {
        let browser = browser.clone();
        async move {
            let html = browser.source().await.ok()?;
            html.contains("id=\"query-error\"").then_some(())
        }
    })
    .await;
    fill(&browser, "query", "").await;
    submit(&browser, "#subscription-form").await;
    // The refused form was at /subscriptions too: wait for the list itself.
    eventually("the subscription listed", Duration::from_secs(10), || {
        let browser = browser.clone();
        async move {
            let html = browser.source().await.ok()?;
            (html.contains("<h1>Subscriptions</h1>")
                && html.contains("Learning")
                && html.contains("Active"))
            .then_some(())
        }
    })
    .await;

    // 3. The crawler brings papers; they reach the feed and the inbox
    //    with their summaries.
    let crawler_defaults = crawler::Config::default();
    let crawler_config = crawler::Config {
        database_url: db.url.clone(),
        redis_urls: redis_urls.clone(),
        topic_prefix: prefix.clone(),
        arxiv: crawler::config::ArxivSettings {
            query_url: arxiv.query_url(),
            oai_url: arxiv.oai_url(),
            rss_url: arxiv.rss_url(),
            pace_interval_ms: 10,
            pace_key: format!("{prefix}arxiv-pace"),
            ..crawler_defaults.arxiv.clone()
        },
        ..crawler_defaults
    };
    let crawler = crawler::Crawler::connect(&crawler_config)
        .await
        .expect("crawler");
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move { crawler::run_scheduled(crawler, &crawler_config, shutdown).await }
    });

    let feed = eventually(
        "summarized papers in the feed",
        Duration::from_secs(90),
        || {
            let browser = browser.clone();
            let url = format!("{site}/feed");
            async move {
                let html = page(&browser, &url).await;
                html.contains("<strong>Summary (ollama)").then_some(html)
            }
        },
    )
    .await;
    assert!(
        feed.contains("arxiv.org/abs/") || feed.contains("/abs/"),
        "links to arXiv"
    );
    let inbox = page(&browser, &format!("{site}/inbox")).await;
    assert!(
        inbox.contains("class=\"unread\""),
        "the inbox has new papers"
    );
    assert!(inbox.contains("Summary (ollama)"));

    // 4. The mail arrives, with a working unsubscribe link.
    let user_id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(EMAIL)
        .fetch_one(&db.pool)
        .await
        .expect("user");
    let settled = eventually(
        "every matched paper mailed",
        Duration::from_secs(90),
        || {
            let pool = db.pool.clone();
            let smtp = &smtp;
            async move {
                let matched: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM matches WHERE user_id = $1")
                        .bind(user_id)
                        .fetch_one(&pool)
                        .await
                        .ok()?;
                let summarized: i64 =
                    sqlx::query_scalar("SELECT count(DISTINCT arxiv_id) FROM summaries")
                        .fetch_one(&pool)
                        .await
                        .ok()?;
                let papers: i64 = sqlx::query_scalar("SELECT count(DISTINCT arxiv_id) FROM papers")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
                let mails = smtp.mails().len() as i64;
                (matched > 0 && summarized == papers && mails == matched).then_some(mails)
            }
        },
    )
    .await;
    let mails = smtp.mails();
    let mail = mails.first().expect("a mail");
    assert_eq!(mail.to, [EMAIL]);
    let text = mail.text_body.clone().unwrap_or_default();
    let link = text
        .split_whitespace()
        .find(|w| w.contains("/unsubscribe/"))
        .expect("an unsubscribe link in the text")
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    assert!(link.starts_with(&site), "{link}");

    // 5. Unsubscribe from the link: a confirmation page, then one click.
    let confirm = page(&browser, &link).await;
    assert!(confirm.contains("Unsubscribe?"), "{confirm}");
    submit(&browser, "main form").await;
    eventually("the unsubscribed page", Duration::from_secs(10), || {
        let browser = browser.clone();
        async move {
            let html = browser.source().await.ok()?;
            html.contains("<h1>Unsubscribed</h1>").then_some(())
        }
    })
    .await;

    // 6. A new paper still reaches the inbox, and no mail is sent.
    let late = "2611.99999";
    sqlx::query(
        "INSERT INTO papers (arxiv_id, version, title, abstract, authors, categories, \
                             primary_category, abs_url, published_at) \
         VALUES ($1, 1, 'A late paper on learning', 'It came after.', '[]', '{cs.LG}', 'cs.LG', \
                 'https://arxiv.org/abs/2611.99999', now())",
    )
    .bind(late)
    .execute(&db.pool)
    .await
    .expect("late paper");
    let client = StreamsClient::connect(streams::ClientConfig::new(redis_urls))
        .await
        .expect("redis");
    let topics = events::Topics::new(&prefix).expect("topics");
    let summarized = events::PaperSummarized {
        arxiv_id: late.into(),
        version: 1,
        prompt_version: 1,
        provider: "extractive".into(),
        extractive: true,
    };
    Producer::new(client, ProducerConfig::default())
        .send_batch(&topics.summarized, [Outgoing::new(late, &summarized)])
        .await
        .expect("encode")[0]
        .as_ref()
        .expect("sent");
    eventually(
        "the late paper in the inbox",
        Duration::from_secs(30),
        || {
            let browser = browser.clone();
            let url = format!("{site}/inbox");
            async move {
                page(&browser, &url)
                    .await
                    .contains("A late paper on learning")
                    .then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        smtp.mails().len() as i64,
        settled,
        "no mail after unsubscribing"
    );
    browser.close().await.expect("close"); // Every metric a dashboard or an alert rule uses is exported by the
    // services that just ran (all in this process, so one page has them).
    let client =
        StreamsClient::connect(streams::ClientConfig::new(test_support::shared_redis_urls()))
            .await
            .expect("redis");
    exporter::export_once(&streams::Inspector::new(client), &topics.all_layouts())
        .await
        .expect("export");
    let exported = exported_names(&metrics.render());
    let mut missing: Vec<String> = used_metric_names()
        .into_iter()
        .filter(|name| name != "up" && !exported.contains(name))
        .collect();
    missing.sort();
    assert!(missing.is_empty(), "used but never exported: {missing:?}");
}

/// Metric names on a Prometheus text page (histograms by their base name).
fn exported_names(page: &str) -> std::collections::HashSet<String> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

/// The metric names in every PromQL expression of the Grafana dashboards
/// and the Prometheus alert rules.
fn used_metric_names() -> std::collections::BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut exprs = Vec::new();
    let dashboards = std::fs::read_dir(root.join("grafana/dashboards")).expect("dashboards");
    for entry in dashboards {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("dashboard");
        let board: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
        for panel in board["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                exprs.push(target["expr"].as_str().expect("expr").to_owned());
            }
        }
    }
    let rules = std::fs::read_to_string(root.join("infra/prometheus/alerts.yml")).expect("rules");
    let mut lines = rules.lines();
    while let Some(line) = lines.next() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            let expr = expr.trim();
            if expr == "|" {
                exprs.push(lines.next().unwrap_or_default().trim().to_owned());
            } else {
                exprs.push(expr.to_owned());
            }
        }
    }
    assert!(exprs.len() > 40, "found the expressions ({})", exprs.len());
    exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .map_or(name.clone(), str::to_owned)
        })
        .collect()
}

/// Metric names in one PromQL expression: identifiers outside label
/// matchers, strings, ranges and grouping lists that are neither
/// functions, keywords nor duration units.
fn metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: [&str; 20] = [
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "le",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut braces = 0;
    let mut grouping = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => braces += 1,
            '}' => braces -= 1,
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += 1;
                }
            }
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
            }
            ')' => grouping = false,
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i + 1 < chars.len()
                    && (chars[i + 1].is_ascii_alphanumeric() || matches!(chars[i + 1], '_' | ':'))
                {
                    i += 1;
                }
                let word: String = chars[start..=i].iter().collect();
                let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
                let after_digit = start > 0 && chars[start - 1].is_ascii_digit();
                if word == "by" || word == "without" {
                    grouping = true;
                } else if !grouping
                    && braces == 0
                    && next != Some(&'(')
                    && !after_digit
                    && !KEYWORDS.contains(&word.as_str())
                {
                    out.push(word);
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}
