//! The JSON API over real HTTP: tokens, validation, idempotent POSTs, and
//! a burst of concurrent sign-ups with repeats.

mod support;

use std::collections::HashMap;

use futures_util::{StreamExt, stream};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{start, start_with};

async fn sign_up(
    http: &reqwest::Client,
    base: &str,
    email: &str,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = http
        .post(format!("{base}/api/v1/users"))
        .json(&json!({"email": email, "password": "a long enough password"}));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("sign up");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_api_does_what_the_pages_do() {
    let app = start().await;
    let base = app.url("");
    let http = reqwest::Client::new();

    let (status, body) = sign_up(&http, &base, "bad", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "invalid");
    assert!(
        body["error"]["fields"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    );

    let (status, body) = sign_up(&http, &base, "ada@example.org", None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    assert!(token.starts_with("ps_"));
    assert_eq!(body["user"]["email"], "ada@example.org");
    assert!(body["user"].get("password_hash").is_none());
    let (status, _) = sign_up(&http, &base, "ada@example.org", None).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let unauthorized = http
        .get(format!("{base}/api/v1/me"))
        .send()
        .await
        .expect("me");
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unauthorized.headers()["www-authenticate"], "Bearer");
    let me: Value = http
        .get(format!("{base}/api/v1/me"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(me["email"], "ada@example.org");

    let bad = http
        .post(format!("{base}/api/v1/subscriptions"))
        .bearer_auth(&token)
        .json(&json!({"name": "x", "categories": ["cs.LG"], "query": "a AND (b"}))
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let bad: Value = bad.json().await.expect("json");
    assert_eq!(bad["error"]["fields"][0]["field"], "query", "{bad}");

    let not_json = http
        .post(format!("{base}/api/v1/subscriptions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(not_json.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let created = http
        .post(format!("{base}/api/v1/subscriptions"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "sub-1")
        .json(&json!({"name": "LLMs", "categories": ["cs.CL"], "query": "\"language model\""}))
        .send()
        .await
        .expect("post");
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.expect("json");
    let again = http
        .post(format!("{base}/api/v1/subscriptions"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "sub-1")
        .json(&json!({"name": "LLMs", "categories": ["cs.CL"], "query": "\"language model\""}))
        .send()
        .await
        .expect("post");
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.expect("json"), created);
    let reused = http
        .post(format!("{base}/api/v1/subscriptions"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "sub-1")
        .json(&json!({"name": "Other", "categories": ["math"]}))
        .send()
        .await
        .expect("post");
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let list: Value = http
        .get(format!("{base}/api/v1/subscriptions"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["subscriptions"].as_array().map(Vec::len), Some(1));

    let id = created["id"].as_i64().expect("id");
    let paused: Value = http
        .post(format!("{base}/api/v1/subscriptions/{id}/pause"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("pause")
        .json()
        .await
        .expect("json");
    assert_eq!(paused["paused"], true);

    let channel = http
        .post(format!("{base}/api/v1/channels"))
        .bearer_auth(&token)
        .json(&json!({"kind": "webhook", "target": "http://127.0.0.1:9/hook"}))
        .send()
        .await
        .expect("channel");
    assert_eq!(channel.status(), StatusCode::CREATED);
    let channel: Value = channel.json().await.expect("json");
    assert!(
        channel["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_"))
    );

    let feed: Value = http
        .get(format!("{base}/api/v1/feed"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("feed")
        .json()
        .await
        .expect("json");
    assert_eq!(feed["items"], json!([]));

    let doc: Value = http
        .get(format!("{base}/api/v1/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for path in [
        "/api/v1/users",
        "/api/v1/subscriptions",
        "/api/v1/feed",
        "/api/v1/channels",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    assert!(doc["components"]["securitySchemes"].get("bearer").is_some());
}

/// Sign-ups and subscriptions in a burst, a third of them sent twice at
/// once with the same `Idempotency-Key`, the way a client retries after a
/// timeout. Every account and subscription exists once, each new token is
/// shown once (a repeat gets `token: null`, and none is kept in clear for
/// replays), and nothing answers 5xx.
#[tokio::test]
async fn a_burst_of_sign_ups_with_repeats_creates_each_once() {
    let people: usize = std::env::var("PAPERSTREAM_LOAD_PEOPLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    // All of it comes from one address: lift the per-address limit on
    // sign-ups, which would otherwise (rightly) answer 429. A thousand
    // argon2 hashes at once queue for about 40 s on two cores, longer than
    // the request timeout allows (the server would rightly answer 503).
    let app = start_with(|c| {
        c.auth_attempts_per_minute = 1_000_000;
        c.request_timeout_s = 600;
    })
    .await;
    let base = app.url("");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(200)
        .build()
        .expect("client");
    let requests: Vec<(usize, u8)> = (0..people)
        .flat_map(|n| {
            let copies = if n % 3 == 0 { 2 } else { 1 };
            (0..copies).map(move |copy| (n, copy))
        })
        .collect();
    // Sign-ups first; a repeat answers like the first, except that the
    // token is shown once: it gets `token: null`.
    let signups: Vec<(usize, StatusCode, Value)> = stream::iter(requests)
        .map(|(n, _)| {
            let http = http.clone();
            let base = base.clone();
            async move {
                let email = format!("reader{n}@example.org");
                let (status, body) =
                    sign_up(&http, &base, &email, Some(&format!("signup-{n}"))).await;
                (n, status, body)
            }
        })
        .buffer_unordered(1_000)
        .collect()
        .await;
    let server_errors: Vec<_> = signups
        .iter()
        .filter(|(_, status, _)| status.is_server_error())
        .take(5)
        .collect();
    assert!(server_errors.is_empty(), "no 5xx: {server_errors:?}");
    let mut other: Vec<_> = signups
        .iter()
        .filter(|(_, status, _)| *status != StatusCode::CREATED)
        .map(|(_, status, body)| (*status, body.clone()))
        .collect();
    other.dedup();
    assert!(
        other.is_empty(),
        "every sign-up answered 201, repeats included; others: {other:?}"
    );
    let mut tokens: HashMap<usize, Vec<String>> = HashMap::new();
    for (n, _, body) in &signups {
        let entry = tokens.entry(*n).or_default();
        if let Some(token) = body["token"].as_str() {
            entry.push(token.to_owned());
        } else {
            assert_eq!(body["withheld"], json!(["token"]), "{body}");
            assert!(body["user"]["id"].is_i64(), "{body}");
        }
    }
    assert_eq!(tokens.len(), people);
    assert!(
        tokens.values().all(|t| t.len() == 1),
        "each person's token is shown exactly once"
    );

    // Then each person subscribes, repeats again included.
    let subscribing: Vec<(usize, String)> = tokens
        .iter()
        .flat_map(|(n, t)| {
            let copies = if n % 3 == 0 { 2 } else { 1 };
            (0..copies).map(|_| (*n, t[0].clone()))
        })
        .collect();
    let subscribed: Vec<StatusCode> = stream::iter(subscribing)
        .map(|(n, token)| {
            let http = http.clone();
            let base = base.clone();
            async move {
                http.post(format!("{base}/api/v1/subscriptions"))
                    .bearer_auth(token)
                    .header("Idempotency-Key", format!("subscribe-{n}"))
                    .json(&json!({"name": "ML", "categories": ["cs.LG"]}))
                    .send()
                    .await
                    .map(|r| r.status())
                    .unwrap_or(StatusCode::BAD_GATEWAY)
            }
        })
        .buffer_unordered(1_000)
        .collect()
        .await;
    assert!(
        subscribed.iter().all(|s| *s == StatusCode::CREATED),
        "{:?}",
        subscribed
            .iter()
            .filter(|s| **s != StatusCode::CREATED)
            .take(5)
            .collect::<Vec<_>>()
    );
    let stored_tokens: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM idempotency_keys WHERE response->>'token' IS NOT NULL",
    )
    .fetch_one(&app.db.pool)
    .await
    .expect("count");
    assert_eq!(stored_tokens, 0, "no token is kept in clear for replays");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    let subscriptions: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT user_id) FROM subscriptions")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    println!(
        "load: {} sign-ups and {} subscription requests for {people} people; {users} accounts, {subscriptions} subscriptions",
        signups.len(),
        subscribed.len()
    );
    assert_eq!(users as usize, people, "no duplicate accounts");
    assert_eq!(subscriptions as usize, people, "no duplicate subscriptions");
    assert_eq!(distinct as usize, people);
}
