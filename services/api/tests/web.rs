//! The web UI over real HTTP, real Postgres and the Redis Cluster: forms,
//! CSRF, sessions, escaping, limits and the admin pages.

mod support;

use reqwest::StatusCode;
use support::{SECRET, start, start_with};

const PASSWORD: &str = "a long enough password";

#[tokio::test]
async fn signing_up_logging_in_and_out() {
    let app = start().await;
    let mut browser = app.browser();
    let csrf = browser.get("/signup").await.csrf();

    let bad = browser
        .post(
            "/signup",
            &[
                ("csrf", &csrf),
                ("email", "not an address"),
                ("password", "short"),
                ("time_zone", "Mars/Olympus"),
            ],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    for field in ["email-error", "password-error", "time_zone-error"] {
        assert!(bad.body.contains(field), "{field} explained: {}", bad.body);
    }
    assert!(
        bad.body.contains("value=\"not an address\""),
        "the form keeps what was typed"
    );

    let created = browser.sign_up("ada@example.org", PASSWORD).await;
    assert_eq!(created.location.as_deref(), Some("/subscriptions/new"));
    let session = browser.cookies.get("ps_session").cloned().expect("session");
    assert!(browser.get("/feed").await.body.contains("Your feed"));

    let again = app.browser().get("/signup").await;
    let mut other = app.browser();
    let csrf = other.get("/signup").await.csrf();
    let taken = other
        .post(
            "/signup",
            &[
                ("csrf", &csrf),
                ("email", "ADA@example.org"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(taken.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(taken.body.contains("exists"), "{}", taken.body);
    assert_eq!(again.status, StatusCode::OK);

    let csrf = browser.csrf().await;
    let out = browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(!browser.cookies.contains_key("ps_session"));
    let after = browser.get("/feed").await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.location.as_deref(), Some("/login?next=%2Ffeed"));

    // The old cookie is dead on the server too, not only in this browser.
    browser.cookies.insert("ps_session".into(), session);
    assert_eq!(browser.get("/feed").await.status, StatusCode::SEE_OTHER);

    let csrf = browser.get("/login").await.csrf();
    let wrong = browser
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("email", "ada@example.org"),
                ("password", "wrong password"),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let right = browser
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("email", "ada@example.org"),
                ("password", PASSWORD),
                ("next", "https://evil.example/"),
            ],
        )
        .await;
    assert_eq!(right.location.as_deref(), Some("/feed"), "no open redirect");
}

#[tokio::test]
async fn forms_without_their_csrf_token_are_refused() {
    let app = start().await;
    let mut browser = app.browser();
    browser.sign_up("ada@example.org", PASSWORD).await;
    let form = [("name", "ML"), ("categories", "cs.LG")];

    let missing = browser.post("/subscriptions", &form).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    let wrong = browser
        .post(
            "/subscriptions",
            &[
                ("csrf", "forged-token-forged-token-forged-token"),
                form[0],
                form[1],
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    // Another browser's valid token does not fit this browser's cookie.
    let theirs = app.browser().get("/signup").await.csrf();
    let foreign = browser
        .post("/subscriptions", &[("csrf", &theirs), form[0], form[1]])
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(none, 0, "nothing was created");

    let csrf = browser.csrf().await;
    let ok = browser
        .post("/subscriptions", &[("csrf", &csrf), form[0], form[1]])
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
}

/// A CSRF token from before a login, or from before a logout, is refused
/// after it: someone who learned or planted a browser's token while it was
/// logged out gains nothing once its owner logs in.
#[tokio::test]
async fn the_csrf_token_changes_when_a_session_starts_or_ends() {
    let app = start().await;
    let mut browser = app.browser();
    let before_signup = browser.csrf().await;
    browser.sign_up("ada@example.org", PASSWORD).await;
    let logged_in = browser.csrf().await;
    assert_ne!(before_signup, logged_in);
    let form = [("name", "ML"), ("categories", "cs.LG")];
    let stale = browser
        .post(
            "/subscriptions",
            &[("csrf", &before_signup), form[0], form[1]],
        )
        .await;
    assert_eq!(stale.status, StatusCode::FORBIDDEN);

    let out = browser.post("/logout", &[("csrf", &logged_in)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let logged_out = browser.csrf().await;
    assert_ne!(logged_out, logged_in);
    let login = [
        ("csrf", logged_in.as_str()),
        ("email", "ada@example.org"),
        ("password", PASSWORD),
    ];
    assert_eq!(
        browser.post("/login", &login).await.status,
        StatusCode::FORBIDDEN
    );
    let login = [
        ("csrf", logged_out.as_str()),
        ("email", "ada@example.org"),
        ("password", PASSWORD),
    ];
    assert_eq!(
        browser.post("/login", &login).await.status,
        StatusCode::SEE_OTHER
    );
    assert_ne!(browser.csrf().await, logged_out);
}

#[tokio::test]
async fn subscriptions_are_explained_previewed_paused_and_deleted() {
    let app = start().await;
    sqlx::query(
        "INSERT INTO papers (arxiv_id, version, title, abstract, authors, categories, \
                             primary_category, abs_url, published_at) \
         VALUES ('2611.00001', 1, 'Diffusion models for proteins', 'We fold.', '[]', \
                 '{q-bio.BM,cs.LG}', 'q-bio.BM', 'https://arxiv.org/abs/2611.00001', now()), \
                ('2611.00002', 1, 'Graph networks', 'We message-pass.', '[]', \
                 '{cs.LG}', 'cs.LG', 'https://arxiv.org/abs/2611.00002', now())",
    )
    .execute(&app.db.pool)
    .await
    .expect("papers");
    let mut browser = app.browser();
    browser.sign_up("ada@example.org", PASSWORD).await;
    let csrf = browser.csrf().await;

    let bad = browser
        .post(
            "/subscriptions",
            &[
                ("csrf", &csrf),
                ("name", "Broken"),
                ("categories", "cs.LG nonsense.XX"),
                ("query", "\"unclosed phrase AND"),
            ],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.body.contains("categories-error"), "{}", bad.body);
    assert!(bad.body.contains("query-error"), "{}", bad.body);
    assert!(
        bad.body.contains("nonsense.XX"),
        "the wrong category is named"
    );

    let preview = browser
        .get("/subscriptions/preview?categories=cs.LG&query=diffusion&authors=")
        .await;
    assert_eq!(preview.status, StatusCode::OK);
    assert!(
        preview.body.contains("1 of the last 2 papers match"),
        "{}",
        preview.body
    );
    assert!(preview.body.contains("Diffusion models for proteins"));
    let explained = browser
        .get("/subscriptions/preview?categories=&query=a+AND+(b&authors=")
        .await;
    assert!(
        explained.body.contains("class=\"error\""),
        "{}",
        explained.body
    );

    let created = browser
        .post(
            "/subscriptions",
            &[
                ("csrf", &csrf),
                ("name", "Diffusion"),
                ("categories", "cs.LG"),
                ("query", "diffusion"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::SEE_OTHER);
    let id: i64 = sqlx::query_scalar("SELECT id FROM subscriptions")
        .fetch_one(&app.db.pool)
        .await
        .expect("id");
    let list = browser.get("/subscriptions").await;
    assert!(list.body.contains("Diffusion") && list.body.contains("Active"));

    browser
        .post(&format!("/subscriptions/{id}/pause"), &[("csrf", &csrf)])
        .await;
    assert!(browser.get("/subscriptions").await.body.contains("Paused"));
    let edited = browser
        .post(
            &format!("/subscriptions/{id}"),
            &[
                ("csrf", &csrf),
                ("name", "Renamed"),
                ("categories", "q-bio.BM"),
            ],
        )
        .await;
    assert_eq!(edited.status, StatusCode::SEE_OTHER);
    assert!(browser.get("/subscriptions").await.body.contains("Renamed"));

    // Someone else's subscription is not there for them.
    let mut mallory = app.browser();
    mallory.sign_up("mallory@example.org", PASSWORD).await;
    let theirs = mallory.csrf().await;
    let stolen = mallory
        .post(&format!("/subscriptions/{id}/delete"), &[("csrf", &theirs)])
        .await;
    assert_eq!(stolen.status, StatusCode::NOT_FOUND);

    browser
        .post(&format!("/subscriptions/{id}/delete"), &[("csrf", &csrf)])
        .await;
    assert!(
        browser
            .get("/subscriptions")
            .await
            .body
            .contains("no subscriptions")
    );
}

#[tokio::test]
async fn an_expired_session_keeps_the_form_through_login() {
    let app = start().await;
    let mut browser = app.browser();
    browser.sign_up("ada@example.org", PASSWORD).await;
    let csrf = browser.csrf().await;
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 minute'")
        .execute(&app.db.pool)
        .await
        .expect("expire");

    let login = browser
        .post(
            "/subscriptions",
            &[
                ("csrf", &csrf),
                ("name", "Kept <b>name</b>"),
                ("categories", "cs.CL"),
                ("query", "translation"),
            ],
        )
        .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);
    assert!(login.body.contains("Log in again"), "{}", login.body);
    let draft = login.field("draft").expect("the form, carried");
    assert!(!draft.is_empty());
    assert_eq!(login.field("next").as_deref(), Some("/subscriptions/new"));

    let csrf = login.csrf();
    let back = browser
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("email", "ada@example.org"),
                ("password", PASSWORD),
                ("next", "/subscriptions/new"),
                ("draft", &draft),
            ],
        )
        .await;
    let location = back.location.expect("redirect");
    assert!(
        location.starts_with("/subscriptions/new?draft="),
        "{location}"
    );
    let form = browser.get(&location).await;
    assert_eq!(
        form.field("name").as_deref(),
        Some("Kept &#60;b&#62;name&#60;/b&#62;")
    );
    assert_eq!(form.field("categories").as_deref(), Some("cs.CL"));
    assert_eq!(form.field("query").as_deref(), Some("translation"));

    // A draft cannot be forged.
    let forged = browser.get("/subscriptions/new?draft=e30.AAAA").await;
    assert_eq!(forged.field("name").as_deref(), Some(""));
}

#[tokio::test]
async fn hostile_titles_render_escaped_and_big_bodies_are_refused() {
    let app = start_with(|c| c.max_body_bytes = 16 * 1024).await;
    let mut browser = app.browser();
    browser.sign_up("ada@example.org", PASSWORD).await;
    let user = app.user_id("ada@example.org").await;
    let payload = "<script>alert('xss')</script><img src=x onerror=alert(1)>";
    sqlx::query(
        "INSERT INTO papers (arxiv_id, version, title, abstract, authors, categories, \
                             primary_category, abs_url) \
         VALUES ('2611.66666', 1, $1, $1, '[{\"name\": \"<b>Eve</b>\", \"affiliations\": []}]', \
                 '{cs.CR}', 'cs.CR', 'https://arxiv.org/abs/2611.66666')",
    )
    .bind(payload)
    .execute(&app.db.pool)
    .await
    .expect("paper");
    sqlx::query(
        "INSERT INTO matches (user_id, arxiv_id, version, subscription_ids) \
         VALUES ($1, '2611.66666', 1, '{}')",
    )
    .bind(user)
    .execute(&app.db.pool)
    .await
    .expect("match");

    let feed = browser.get("/feed").await;
    assert!(feed.body.contains("2611.66666"), "{}", feed.body);
    assert!(!feed.body.contains("<script>alert"), "no live script");
    assert!(!feed.body.contains("<img src=x"), "no live markup");
    assert!(feed.body.contains("&#60;script&#62;"), "shown as text");
    assert!(!feed.body.contains("<b>Eve</b>"));
    let csp = feed
        .headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "{csp}");

    let csrf = browser.csrf().await;
    let huge = "x".repeat(20 * 1024);
    let big = browser
        .post("/subscriptions", &[("csrf", &csrf), ("name", &huge)])
        .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    let long_name = "n".repeat(1000);
    let long = browser
        .post(
            "/subscriptions",
            &[
                ("csrf", &csrf),
                ("name", &long_name),
                ("categories", "cs.LG"),
            ],
        )
        .await;
    assert_eq!(long.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(long.body.contains("name-error"));
}

#[tokio::test]
async fn admin_pages_are_for_admins() {
    let app = start().await;
    let mut user = app.browser();
    user.sign_up("ada@example.org", PASSWORD).await;
    for path in ["/admin", "/admin/dlq", "/admin/find?q=2611.00001"] {
        assert_eq!(user.get(path).await.status, StatusCode::FORBIDDEN, "{path}");
    }
    let csrf = user.csrf().await;
    let replay = user
        .post(
            "/admin/dlq/replay",
            &[("csrf", &csrf), ("topic", "x"), ("partition", "0")],
        )
        .await;
    assert_eq!(replay.status, StatusCode::FORBIDDEN);
    let anonymous = app.browser().get("/admin").await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);

    let mut admin = app.browser();
    admin.sign_up("root@example.org", PASSWORD).await;
    app.promote("root@example.org").await;
    let overview = admin.get("/admin").await;
    assert_eq!(overview.status, StatusCode::OK);
    let prefix = &app.config.topic_prefix;
    assert!(overview.body.contains(&format!("{prefix}paper.summarized")));
    assert!(overview.body.contains("Redis nodes"));
    let partition = admin
        .get(&format!("/admin/topics/{prefix}paper.summarized/0?log=dlq"))
        .await;
    assert_eq!(partition.status, StatusCode::OK);
    assert_eq!(
        admin.get("/admin/topics/nope/0").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn login_and_sign_up_are_rate_limited() {
    let app = start_with(|c| c.auth_attempts_per_minute = 5).await;
    let mut browser = app.browser();
    let csrf = browser.get("/login").await.csrf();
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let page = browser
            .post(
                "/login",
                &[
                    ("csrf", &csrf),
                    ("email", "who@example.org"),
                    ("password", "guess guess guess"),
                ],
            )
            .await;
        statuses.push(page.status);
        if page.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(page.headers.contains_key("retry-after"));
        }
    }
    assert_eq!(statuses[..5], [StatusCode::UNAUTHORIZED; 5]);
    assert_eq!(statuses[5..], [StatusCode::TOO_MANY_REQUESTS; 2]);
}

/// Guessing one account's password is limited however many addresses the
/// guesses come from; other accounts are not affected.
#[tokio::test]
async fn logins_are_rate_limited_per_account_too() {
    let app = start_with(|c| {
        c.auth_attempts_per_minute = 1_000;
        c.login_attempts_per_account_per_minute = 3;
    })
    .await;
    let mut browser = app.browser();
    let csrf = browser.get("/login").await.csrf();
    let mut attempt = async |email: &str| {
        browser
            .post(
                "/login",
                &[
                    ("csrf", &csrf),
                    ("email", email),
                    ("password", "guess guess guess"),
                ],
            )
            .await
            .status
    };
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(attempt("Ada@Example.org").await);
    }
    assert_eq!(statuses[..3], [StatusCode::UNAUTHORIZED; 3]);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        attempt("ada@example.org ").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(attempt("bob@example.org").await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unsubscribing_from_an_email_link() {
    let app = start().await;
    let mut browser = app.browser();
    browser.sign_up("ada@example.org", PASSWORD).await;
    let user = app.user_id("ada@example.org").await;
    let email = delivery::channel::list(&app.db.pool, user)
        .await
        .expect("channels")
        .into_iter()
        .find(|c| c.kind == delivery::channel::Kind::Email)
        .expect("email channel");
    let signer = accounts::signed::Signer::new(SECRET.as_bytes());
    let token = signer.sign("unsubscribe", &(user, email.id), None);

    // Mail clients and scanners follow links: a GET changes nothing.
    let mut stranger = app.browser();
    let confirm = stranger.get(&format!("/unsubscribe/{token}")).await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(confirm.body.contains("Unsubscribe?"));
    assert!(
        delivery::channel::get(&app.db.pool, email.id)
            .await
            .expect("get")
            .expect("channel")
            .enabled
    );

    // RFC 8058: a POST without cookies or CSRF token unsubscribes.
    let done = reqwest::Client::new()
        .post(app.url(&format!("/unsubscribe/{token}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .expect("post");
    assert_eq!(done.status(), StatusCode::OK);
    let channel = delivery::channel::get(&app.db.pool, email.id)
        .await
        .expect("get")
        .expect("channel");
    assert!(!channel.enabled);

    let forged = signer.sign("feed", &(user, email.id), None);
    assert_eq!(
        stranger.get(&format!("/unsubscribe/{forged}")).await.status,
        StatusCode::NOT_FOUND,
        "a token signed for another purpose does not unsubscribe"
    );
}

#[tokio::test]
async fn admins_find_a_papers_messages_and_replay_its_dead_letter() {
    use streams::{
        Consumer, ConsumerConfig, Failure, Inspector, Message, Outgoing, Producer, ProducerConfig,
    };

    let app = start().await;
    let topic = app.state.topics.summarized.clone();
    let event = events::PaperSummarized {
        arxiv_id: "2611.04242".into(),
        version: 1,
        prompt_version: 1,
        provider: "ollama".into(),
        extractive: false,
    };
    Producer::new(app.state.client.clone(), ProducerConfig::default())
        .send_batch(&topic, [Outgoing::new(&event.arxiv_id, &event)])
        .await
        .expect("encode")[0]
        .as_ref()
        .expect("sent");
    // A consumer that refuses it: it lands in the DLQ.
    let refusing = tokio_util::sync::CancellationToken::new();
    let consumer = Consumer::new(
        app.state.client.clone(),
        &topic,
        ConsumerConfig::new("matcher"),
        streams::per_message(|_: Message<events::PaperSummarized>| async {
            Err(Failure::Reject("a poison <payload>".into()))
        }),
    );
    let running = tokio::spawn(consumer.run(refusing.clone()));
    let inspector = Inspector::new(app.state.client.clone());
    let partition = topic.partition_for("2611.04242");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while inspector
        .partition(topic.layout(), partition)
        .await
        .expect("inspect")
        .dlq_length
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "dead-lettered in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    refusing.cancel();
    running.await.expect("join").expect("consumer");

    let mut admin = app.browser();
    admin.sign_up("root@example.org", PASSWORD).await;
    app.promote("root@example.org").await;
    let found = admin.get("/admin/find?q=2611.04242").await;
    assert_eq!(found.status, StatusCode::OK);
    assert!(
        found.body.contains("<td>2611.04242</td>"),
        "keyed by the paper"
    );
    assert!(
        found.body.contains("DLQ"),
        "the dead letter is found: {}",
        found.body
    );
    assert!(
        found.body.contains("a poison &#60;payload&#62;"),
        "with its reason, escaped"
    );
    let dlq = admin.get("/admin/dlq").await;
    assert!(dlq.body.contains(topic.name()), "{}", dlq.body);

    let csrf = admin.csrf().await;
    let entry = support::field_value(&found.body, "entry").expect("a replay form");
    let replayed = admin
        .post(
            "/admin/dlq/replay",
            &[
                ("csrf", &csrf),
                ("topic", topic.name()),
                ("partition", &partition.to_string()),
                ("entry", &entry),
            ],
        )
        .await;
    assert_eq!(replayed.status, StatusCode::OK);
    assert!(
        replayed.body.contains("Replayed 1 dead letter"),
        "{}",
        replayed.body
    );
    let report = inspector
        .partition(topic.layout(), partition)
        .await
        .expect("inspect");
    assert_eq!(report.dlq_length, 0);
    assert_eq!(report.length, 2, "the original and its replay");
}

#[tokio::test]
async fn each_subscription_has_an_atom_feed() {
    let app = start().await;
    let mut browser = app.browser();
    browser.sign_up("ada@example.org", PASSWORD).await;
    let csrf = browser.csrf().await;
    browser
        .post(
            "/subscriptions",
            &[
                ("csrf", &csrf),
                ("name", "Crypto & <friends>"),
                ("categories", "cs.CR"),
            ],
        )
        .await;
    let user = app.user_id("ada@example.org").await;
    let id: i64 = sqlx::query_scalar("SELECT id FROM subscriptions")
        .fetch_one(&app.db.pool)
        .await
        .expect("id");
    sqlx::query(
        "INSERT INTO papers (arxiv_id, version, title, abstract, authors, categories, \
                             primary_category, abs_url) \
         VALUES ('2611.01234', 1, 'Ciphers & <codes>', 'Abstract.', \
                 '[{\"name\": \"Alice\", \"affiliations\": []}]', '{cs.CR}', 'cs.CR', \
                 'https://arxiv.org/abs/2611.01234')",
    )
    .execute(&app.db.pool)
    .await
    .expect("paper");
    sqlx::query(
        "INSERT INTO matches (user_id, arxiv_id, version, subscription_ids) VALUES ($1, '2611.01234', 1, $2)",
    )
    .bind(user)
    .bind(vec![id])
    .execute(&app.db.pool)
    .await
    .expect("match");

    let page = browser.get(&format!("/feed?subscription={id}")).await;
    let marker = "/feeds/";
    let start = page.body.find(marker).expect("an Atom link") + marker.len();
    let token = &page.body[start..start + page.body[start..].find(".atom").expect("suffix")];
    // Feed readers have no session: the signed URL is the permission.
    let atom = reqwest::get(app.url(&format!("/feeds/{token}.atom")))
        .await
        .expect("atom");
    assert_eq!(atom.status(), StatusCode::OK);
    assert!(
        atom.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("application/atom+xml")
    );
    let xml = atom.text().await.expect("xml");
    assert!(
        xml.contains("<title>Ciphers &#38; &#60;codes&#62;</title>"),
        "{xml}"
    );
    assert!(xml.contains("<name>Alice</name>"));
    assert!(xml.contains("paperstream: Crypto &#38; &#60;friends&#62;"));
    let tampered = reqwest::get(app.url(&format!("/feeds/{}x.atom", token)))
        .await
        .expect("atom");
    assert_eq!(tampered.status(), StatusCode::NOT_FOUND);
}

/// A request stuck behind a database lock is answered 503 once the request
/// timeout passes, instead of holding its connection (and a pool
/// connection) for as long as the lock lasts; requests that need no
/// database are not held up, and the page works again once the lock goes.
#[tokio::test]
async fn a_request_stuck_on_the_database_times_out() {
    let app = start_with(|c| c.request_timeout_s = 1).await;
    let mut browser = app.browser();
    browser.sign_up("ada@example.org", PASSWORD).await;
    assert_eq!(browser.get("/feed").await.status, StatusCode::OK);

    let mut lock = app.db.pool.begin().await.expect("transaction");
    sqlx::query("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let started = std::time::Instant::now();
    let stuck = tokio::time::timeout(std::time::Duration::from_secs(10), browser.get("/feed"))
        .await
        .expect("no answer within 10 s: the request waits on the lock");
    assert_eq!(
        stuck.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        stuck.body
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "answered before the timeout"
    );
    assert_eq!(browser.get("/health").await.status, StatusCode::OK);
    lock.rollback().await.expect("unlock");
    assert_eq!(browser.get("/feed").await.status, StatusCode::OK);
}
