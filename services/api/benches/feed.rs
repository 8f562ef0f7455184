//! Feed page throughput and latency under `wrk`, against the same server's
//! `/health` as the reference.
//!
//! A reader with 50 subscriptions and 2,000 matched, summarized papers asks
//! for their feed page (25 cards, session checked, unread count, one
//! query for the page) over 100 connections. `/health` on the same server,
//! measured in the same run, is what the machine and HTTP stack alone
//! allow; the ratio is the figure to compare across machines.
//!
//! Needs the local infrastructure (`eval "$(scripts/infra env)"`) and
//! `wrk`. Run: `cargo bench -p api --bench feed`. Writes
//! `target/bench/feed.json`.

use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use serde_json::json;
use test_support::TestDatabase;
use tokio_util::sync::CancellationToken;

const SUBSCRIPTIONS: usize = 50;
const PAPERS: usize = 2_000;
const SECONDS: u32 = 10;
const CONNECTIONS: u32 = 100;

#[derive(Debug)]
struct Run {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

fn wrk(url: &str, cookie: &str) -> Run {
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{SECONDS}s"),
            "--latency",
            "-H",
            &format!("Cookie: {cookie}"),
            url,
        ])
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let value_after = |label: &str| -> Option<&str> {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.trim_start()[label.len()..].split_whitespace().next())
    };
    let millis = |v: &str| -> f64 {
        let (number, unit) =
            v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = number.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => f64::NAN,
        }
    };
    let non_2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses:"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let run = Run {
        requests_per_second: value_after("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN),
        p50_ms: value_after("50%").map_or(f64::NAN, millis),
        p99_ms: value_after("99%").map_or(f64::NAN, millis),
        non_2xx,
    };
    assert!(
        run.requests_per_second.is_finite(),
        "could not read wrk's output:\n{text}"
    );
    run
}

async fn seed(db: &TestDatabase, user_id: i64) {
    let mut tx = db.pool.begin().await.expect("begin");
    let mut subscription_ids = Vec::new();
    for n in 0..SUBSCRIPTIONS {
        let spec = subscriptions::spec::Spec::parse(
            &format!("Topic {n}"),
            "cs.LG",
            &format!("topic{n} OR \"phrase {n}\""),
            "",
        )
        .expect("spec");
        let stored = subscriptions::store::create(&mut tx, user_id, &spec)
            .await
            .expect("subscription");
        subscription_ids.push(stored.id);
    }
    sqlx::query(
        "INSERT INTO papers (arxiv_id, version, title, abstract, authors, categories, \
                             primary_category, abs_url, published_at) \
         SELECT '2611.' || lpad(n::text, 5, '0'), 1, 'A paper about topic ' || (n % 50), \
                repeat('An abstract sentence about learning. ', 30), \
                '[{\"name\": \"Ada Lovelace\", \"affiliations\": []}, {\"name\": \"Alan Turing\", \"affiliations\": []}]', \
                '{cs.LG}', 'cs.LG', 'https://arxiv.org/abs/2611.' || lpad(n::text, 5, '0'), \
                now() - n * interval '1 minute' \
         FROM generate_series(1, $1) n",
    )
    .bind(PAPERS as i32)
    .execute(&mut *tx)
    .await
    .expect("papers");
    sqlx::query(
        "INSERT INTO summaries (arxiv_id, version, prompt_version, provider, model, text, \
                                extractive, input_tokens, output_tokens, cost_micro_usd) \
         SELECT arxiv_id, 1, 1, 'ollama', 'gemma3', repeat('It finds things. ', 10), false, 500, 80, 0 \
         FROM papers",
    )
    .execute(&mut *tx)
    .await
    .expect("summaries");
    sqlx::query(
        "INSERT INTO matches (user_id, arxiv_id, version, subscription_ids, matched_at) \
         SELECT $1, arxiv_id, 1, ARRAY[$2[1 + (row_number() OVER ())::int % 50]], published_at \
         FROM papers",
    )
    .bind(user_id)
    .bind(&subscription_ids)
    .execute(&mut *tx)
    .await
    .expect("matches");
    tx.commit().await.expect("commit");
    sqlx::query("ANALYZE")
        .execute(&db.pool)
        .await
        .expect("analyze");
}

/// Log in through the form, as a browser would, and return the cookies.
async fn log_in(site: &str, email: &str, password: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let cookies_of = |response: &reqwest::Response| -> Vec<String> {
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .map(str::to_owned)
            .collect()
    };
    let page = http
        .get(format!("{site}/login"))
        .send()
        .await
        .expect("login page");
    let mut cookies = cookies_of(&page);
    let html = page.text().await.expect("html");
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("csrf field") + marker.len();
    let csrf = &html[start..start + html[start..].find('"').expect("end of value")];
    let response = http
        .post(format!("{site}/login"))
        .header("cookie", cookies.join("; "))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([("csrf", csrf), ("email", email), ("password", password)])
                .finish(),
        )
        .send()
        .await
        .expect("log in");
    assert_eq!(
        response.status(),
        reqwest::StatusCode::SEE_OTHER,
        "logged in"
    );
    cookies.extend(cookies_of(&response));
    cookies.join("; ")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let db = TestDatabase::create().await.expect("database (scripts/infra up?)");
        let config = api::Config {
            database_url: db.url.clone(),
            redis_urls: test_support::shared_redis_urls(),
            topic_prefix: format!("{}.", test_support::unique_name("bench")),
            secret: Some("a benchmark secret, long enough to sign".into()),
            listen: ([127, 0, 0, 1], 0).into(),
            ..api::Config::default()
        };
        let state = api::AppState::connect(&config).await.expect("api");
        let new_user = accounts::NewUser::parse("bench@example.org", "a long enough password", "UTC")
            .expect("user");
        let user = api::web::auth::create_account(&state, &new_user, accounts::Role::User)
            .await
            .expect("account");
        seed(&db, user.id).await;
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                api::serve(state, config.listen, shutdown, |a| {
                    let _ = tx.send(a);
                })
                .await
            }
        });
        let site = format!("http://{}", rx.await.expect("bound"));
        let cookie = log_in(&site, "bench@example.org", "a long enough password").await;
        let feed = reqwest::Client::new()
            .get(format!("{site}/feed"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("feed");
        assert_eq!(feed.status(), reqwest::StatusCode::OK);
        let html = feed.text().await.expect("html");
        assert_eq!(html.matches("class=\"card\"").count(), 25, "a full page");

        let (health, page) = tokio::task::spawn_blocking(move || {
            let health = wrk(&format!("{site}/health"), &cookie);
            std::thread::sleep(Duration::from_secs(1));
            let page = wrk(&format!("{site}/feed"), &cookie);
            (health, page)
        })
        .await
        .expect("wrk");
        shutdown.cancel();
        assert_eq!(page.non_2xx, 0, "every feed request answered 200");

        let report = json!({
            "benchmark": "feed page under wrk",
            "connections": CONNECTIONS,
            "seconds": SECONDS,
            "subscriptions": SUBSCRIPTIONS,
            "matched_papers": PAPERS,
            "feed": {"requests_per_second": page.requests_per_second, "p50_ms": page.p50_ms, "p99_ms": page.p99_ms},
            "health": {"requests_per_second": health.requests_per_second, "p50_ms": health.p50_ms, "p99_ms": health.p99_ms},
            "feed_to_health_throughput": page.requests_per_second / health.requests_per_second,
            "cores": std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        });
        println!("{}", serde_json::to_string_pretty(&report).expect("json"));
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
        std::fs::create_dir_all(&dir).expect("target/bench");
        std::fs::write(dir.join("feed.json"), serde_json::to_vec_pretty(&report).expect("json"))
            .expect("write");
    });
}
