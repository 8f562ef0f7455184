//! Runtime settings through the admin page and the JSON API, with real
//! instances following them: a change is applied by every running
//! instance (through Redis Pub/Sub) and shown as converged; invalid or
//! stale changes are refused with their reasons; rollback restores; only
//! administrators may see or change anything.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use settings::bus::{Watcher, WatcherConfig};
use support::{App, start};
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "correct horse battery staple";

/// Another service's instance: its own topics, retuned by its own watcher.
/// It never checks on its own within the test, so only the announcement
/// can reach it in time.
async fn other_instance(
    app: &App,
    name: &str,
    shutdown: &CancellationToken,
) -> (
    events::Topics,
    tokio::task::JoinHandle<settings::Result<()>>,
) {
    let prefix = &app.config.topic_prefix;
    let topics = events::Topics::new(prefix).expect("topics");
    let mut config = WatcherConfig::new("summarizer", name, app.config.redis_urls.clone());
    config.check_interval = Duration::from_secs(3600);
    let (watcher, _) = Watcher::start(
        app.state.settings.clone(),
        config,
        vec![settings::topic_applier(topics.all_layouts(), prefix)],
    )
    .await
    .expect("watcher");
    (topics, tokio::spawn(watcher.run(shutdown.clone())))
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_capacity(app: &App, capacity: u64) -> settings::Settings {
    let mut settings = app.state.settings_defaults.clone();
    for topic in settings.topics.values_mut() {
        topic.capacity = capacity;
    }
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_change_settings_on_the_page_and_every_instance_applies_them() {
    let app = start().await;
    let shutdown = CancellationToken::new();
    let api_watcher = api::watch_settings(&app.state, &app.config)
        .await
        .expect("the api's watcher");
    let api_watching = tokio::spawn(api_watcher.run(shutdown.clone()));
    let (topics, other) = other_instance(&app, "summarizer-test", &shutdown).await;
    // Subscriptions are made in the background.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut user = app.browser();
    user.sign_up("ada@example.org", PASSWORD).await;
    assert_eq!(
        user.get("/admin/settings").await.status,
        StatusCode::FORBIDDEN
    );
    let csrf = user.csrf().await;
    let refused = user
        .post(
            "/admin/settings/rollback",
            &[("csrf", &csrf), ("version", "1")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    let mut admin = app.browser();
    admin.sign_up("root@example.org", PASSWORD).await;
    app.promote("root@example.org").await;
    let page = admin.get("/admin/settings").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("No change has been made yet"),
        "{}",
        page.body
    );
    assert!(page.body.contains("summarizer-test"));
    assert!(page.body.contains("api-"), "the api reports itself");

    let csrf = page.csrf();
    let document = serde_json::to_string(&with_capacity(&app, 40_000)).expect("json");
    let saved = admin
        .post(
            "/admin/settings",
            &[
                ("csrf", &csrf),
                ("document", &document),
                ("reason", "smaller partitions"),
                ("expected_version", "0"),
            ],
        )
        .await;
    assert_eq!(saved.status, StatusCode::OK);
    assert!(saved.body.contains("Version 1 saved"), "{}", saved.body);
    eventually("the other instance retunes its topics", async || {
        topics.ingested.layout().tuning().capacity == 40_000
    })
    .await;
    eventually("the api retunes its own topics", async || {
        app.state.topics.email.layout().tuning().capacity == 40_000
    })
    .await;
    eventually("the page shows every instance converged", async || {
        admin
            .get("/admin/settings")
            .await
            .body
            .contains("Every running instance has applied it.")
    })
    .await;

    // Refusals keep what was typed and say why.
    let mut invalid = with_capacity(&app, 0);
    invalid.llm.order = vec!["gpt".into()];
    let invalid = serde_json::to_string(&invalid).expect("json");
    let refused = admin
        .post(
            "/admin/settings",
            &[
                ("csrf", &csrf),
                ("document", &invalid),
                ("expected_version", "1"),
            ],
        )
        .await;
    assert!(refused.body.contains("The change was not saved"));
    assert!(
        refused
            .body
            .contains("topics.paper.ingested.capacity: must be between")
    );
    assert!(refused.body.contains("llm.order[0]: unknown provider"));
    assert!(
        refused.body.contains("&#34;gpt&#34;"),
        "the text typed stays in the form"
    );
    let not_json = admin
        .post(
            "/admin/settings",
            &[
                ("csrf", &csrf),
                ("document", "{capacity: 5"),
                ("expected_version", "1"),
            ],
        )
        .await;
    assert!(not_json.body.contains("not valid JSON"));
    let stale = admin
        .post(
            "/admin/settings",
            &[
                ("csrf", &csrf),
                ("document", &document),
                ("expected_version", "0"),
            ],
        )
        .await;
    assert!(
        stale
            .body
            .contains("someone changed the settings meanwhile")
    );
    assert_eq!(
        app.state.settings.latest_version().await.expect("latest"),
        1
    );

    // A second change, then back to the first.
    let second = serde_json::to_string(&with_capacity(&app, 60_000)).expect("json");
    admin
        .post(
            "/admin/settings",
            &[
                ("csrf", &csrf),
                ("document", &second),
                ("expected_version", "1"),
            ],
        )
        .await;
    eventually("version 2 applied", async || {
        topics.ingested.layout().tuning().capacity == 60_000
    })
    .await;
    let rolled_back = admin
        .post(
            "/admin/settings/rollback",
            &[("csrf", &csrf), ("version", "1")],
        )
        .await;
    assert!(
        rolled_back.body.contains("Version 3 restores version 1"),
        "{}",
        rolled_back.body
    );
    eventually("the rollback applied", async || {
        topics.ingested.layout().tuning().capacity == 40_000
    })
    .await;

    shutdown.cancel();
    other.await.expect("join").expect("watcher");
    api_watching.await.expect("join").expect("api watcher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_changes_and_rolls_back_settings_for_admins_only() {
    let app = start().await;
    let base = app.url("/api/v1");
    let http = reqwest::Client::new();
    let token = async |email: &str| {
        let created = http
            .post(format!("{base}/users"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .expect("sign up");
        assert_eq!(created.status(), StatusCode::CREATED);
        let body: Value = created.json().await.expect("json");
        body["token"].as_str().expect("token").to_owned()
    };
    let user = token("ada@example.org").await;
    let admin = token("root@example.org").await;
    app.promote("root@example.org").await;

    let overview = |token: String| {
        http.get(format!("{base}/admin/settings"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        overview(user.clone()).await.expect("get").status(),
        StatusCode::FORBIDDEN
    );
    let current: Value = overview(admin.clone())
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(current["version"], 0);
    let mut document = current["settings"].clone();
    document["topics"]["paper.ingested"]["max_attempts"] = json!(3);

    let post = |path: &str, token: &str, key: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let change = json!({"settings": document, "reason": "fewer retries", "expected_version": 0});
    let refused = post("/admin/settings/versions", &user, "u-1", change.clone())
        .await
        .expect("post");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let created = post(
        "/admin/settings/versions",
        &admin,
        "change-1",
        change.clone(),
    )
    .await
    .expect("post");
    assert_eq!(created.status(), StatusCode::CREATED);
    let body: Value = created.json().await.expect("json");
    assert_eq!(body["version"], 1);
    let replayed = post(
        "/admin/settings/versions",
        &admin,
        "change-1",
        change.clone(),
    )
    .await
    .expect("post");
    assert_eq!(replayed.status(), StatusCode::CREATED);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(
        app.state.settings.latest_version().await.expect("latest"),
        1
    );

    let stale = post("/admin/settings/versions", &admin, "change-2", change)
        .await
        .expect("post");
    assert_eq!(stale.status(), StatusCode::CONFLICT);

    let mut invalid = document.clone();
    invalid["topics"]["paper.ingested"]["retry_factor"] = json!(0.5);
    invalid["crawler"]["interval_s"] = json!(1);
    let refused = post(
        "/admin/settings/versions",
        &admin,
        "change-3",
        json!({"settings": invalid, "expected_version": 1}),
    )
    .await
    .expect("post");
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = refused.json().await.expect("json");
    let fields: Vec<&str> = body["error"]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter_map(|f| f["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        ["topics.paper.ingested.retry_factor", "crawler.interval_s"]
    );
    let mut typo = document.clone();
    typo["llm"]["breaker_failure"] = json!(3);
    let refused = post(
        "/admin/settings/versions",
        &admin,
        "change-4",
        json!({"settings": typo}),
    )
    .await
    .expect("post");
    assert_eq!(
        refused.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown fields are refused"
    );

    let rolled_back = post(
        "/admin/settings/rollback",
        &admin,
        "rollback-1",
        json!({"version": 1, "reason": "again"}),
    )
    .await
    .expect("post");
    assert_eq!(rolled_back.status(), StatusCode::CREATED);
    let missing = post(
        "/admin/settings/rollback",
        &admin,
        "rollback-2",
        json!({"version": 99}),
    )
    .await
    .expect("post");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let current: Value = overview(admin)
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(current["version"], 2);
    assert_eq!(current["history"][0]["restores"], 1);
    assert_eq!(current["history"][0]["author"], "root@example.org");
    assert_eq!(
        current["settings"]["topics"]["paper.ingested"]["max_attempts"],
        3
    );
}
