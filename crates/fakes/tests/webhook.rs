//! The webhook receiver over real HTTP: signatures checked against the
//! Standard Webhooks test vector and a signer written here, the faults,
//! and Slack's answers.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use fakes::webhook::{
    FakeWebhooks, HookKind, ReceivedHook, WebhookBehaviour, decode_secret, verify_signature,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(5);
const TOLERANCE: Duration = Duration::from_secs(300);

async fn fake(behaviour: WebhookBehaviour) -> FakeWebhooks {
    FakeWebhooks::start(behaviour, 0)
        .await
        .expect("fake webhooks start")
}

/// What a Standard Webhooks sender puts in `Webhook-Signature`.
fn sign(secret: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

fn now() -> String {
    time::OffsetDateTime::now_utc().unix_timestamp().to_string()
}

async fn post(url: &str, body: &'static str) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("answered")
}

fn statuses(hooks: &[ReceivedHook]) -> Vec<Option<u16>> {
    hooks.iter().map(|h| h.status).collect()
}

#[test]
fn the_standard_webhooks_test_vector_verifies() {
    // Published with the specification: a signature our sender's consumers'
    // libraries compute, not one computed by the code under test.
    let secret = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("base64");
    let (id, timestamp) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330");
    let body = br#"{"test": 2432232314}"#;
    let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    assert!(verify_signature(&secret, id, timestamp, body, signature));
    assert_eq!(sign(&secret, id, timestamp, body), signature);
    // Several signatures while a secret rotates; one valid is enough.
    let rotating = format!("v1,bm9wZQ== v1a,whatever {signature}");
    assert!(verify_signature(&secret, id, timestamp, body, &rotating));

    assert!(!verify_signature(
        &secret,
        id,
        timestamp,
        br#"{"test": 2432232315}"#,
        signature
    ));
    assert!(!verify_signature(
        &secret,
        id,
        "1614265331",
        body,
        signature
    ));
    assert!(!verify_signature(
        &secret,
        "msg_other",
        timestamp,
        body,
        signature
    ));
    assert!(!verify_signature(
        b"another key",
        id,
        timestamp,
        body,
        signature
    ));
    assert!(!verify_signature(
        &secret,
        id,
        timestamp,
        body,
        &signature.replace("v1,", "v2,")
    ));
    assert!(!verify_signature(
        &secret,
        id,
        timestamp,
        body,
        "v1,not base64!"
    ));
    assert!(!verify_signature(&secret, id, timestamp, body, ""));
}

#[test]
fn a_timestamp_must_be_whole_seconds() {
    let key = b"key";
    let signature = sign(key, "msg_1", "1614265330.5", b"{}");
    assert!(!verify_signature(
        key,
        "msg_1",
        "1614265330.5",
        b"{}",
        &signature
    ));
    let signature = sign(key, "msg_1", "", b"{}");
    assert!(!verify_signature(key, "msg_1", "", b"{}", &signature));
}

#[tokio::test]
async fn a_signed_call_is_recorded_and_verifies_until_tampered_with() {
    let hooks = fake(WebhookBehaviour::default()).await;
    let secret = b"0123456789abcdef0123456789abcdef";
    let body = r#"{"type":"paper.matched","paper":"2611.00042"}"#;
    let timestamp = now();
    let response = reqwest::Client::new()
        .post(hooks.url("ada"))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", &timestamp)
        .header(
            "webhook-signature",
            sign(secret, "msg_1", &timestamp, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);

    let received = hooks.wait_for(1, WAIT).await;
    let [hook] = received.as_slice() else {
        panic!("one call expected: {received:#?}");
    };
    assert_eq!(hook.kind, HookKind::Generic);
    assert_eq!(hook.name, "ada");
    assert_eq!(hook.method, "POST");
    assert_eq!(hook.path, "/hooks/ada");
    assert_eq!(hook.header("Webhook-Id"), Some("msg_1"));
    assert_eq!(hook.header("content-type"), Some("application/json"));
    assert_eq!(hook.text(), body);
    assert_eq!(hook.json().expect("json")["paper"], "2611.00042");
    assert_eq!((hook.status, hook.success), (Some(200), true));
    assert!(hook.verify(secret, TOLERANCE));

    assert!(!hook.verify(b"the wrong secret", TOLERANCE));
    let mut tampered = hook.clone();
    tampered.body = body.replace("00042", "00043").into_bytes();
    assert!(!tampered.verify(secret, TOLERANCE));
    let mut unsigned = hook.clone();
    unsigned
        .headers
        .retain(|(name, _)| name != "webhook-signature");
    assert!(!unsigned.verify(secret, TOLERANCE));
}

#[tokio::test]
async fn an_old_timestamp_fails_verification_even_when_signed() {
    let hooks = fake(WebhookBehaviour::default()).await;
    let secret = b"secret";
    let body = "{}";
    let old = (time::OffsetDateTime::now_utc().unix_timestamp() - 3600).to_string();
    let signature = sign(secret, "msg_2", &old, body.as_bytes());
    reqwest::Client::new()
        .post(hooks.url("replayed"))
        .header("webhook-id", "msg_2")
        .header("webhook-timestamp", &old)
        .header("webhook-signature", &signature)
        .body(body)
        .send()
        .await
        .expect("answered");
    let hook = hooks.wait_for(1, WAIT).await.remove(0);
    assert!(verify_signature(
        secret,
        "msg_2",
        &old,
        body.as_bytes(),
        &signature
    ));
    assert!(!hook.verify(secret, TOLERANCE));
    assert!(hook.verify(secret, Duration::from_secs(7200)));
}

#[tokio::test]
async fn a_forced_status_answers_every_call() {
    let hooks = fake(WebhookBehaviour {
        status: Some(429),
        ..WebhookBehaviour::default()
    })
    .await;
    let response = post(&hooks.url("ada"), "{}").await;
    assert_eq!(response.status(), 429);
    assert_eq!(
        response.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(
        post(&hooks.slack_url("team"), r#"{"text":"hi"}"#)
            .await
            .status(),
        429
    );

    hooks.set(WebhookBehaviour::default());
    assert_eq!(post(&hooks.url("ada"), "{}").await.status(), 200);
    let received = hooks.received();
    assert_eq!(statuses(&received), [Some(429), Some(429), Some(200)]);
    assert_eq!(
        received.iter().map(|h| h.success).collect::<Vec<_>>(),
        [false, false, true]
    );
}

#[tokio::test]
async fn the_first_calls_fail_then_the_rest_succeed() {
    let hooks = fake(WebhookBehaviour {
        fail_first: 2,
        ..WebhookBehaviour::default()
    })
    .await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(post(&hooks.url("ada"), "{}").await.status().as_u16());
    }
    assert_eq!(answers, [503, 503, 200, 200]);
    assert_eq!(
        statuses(&hooks.received()),
        [Some(503), Some(503), Some(200), Some(200)]
    );
    assert_eq!(hooks.calls(), 4);
}

#[tokio::test]
async fn the_error_rate_fails_the_same_calls_every_run() {
    let behaviour = WebhookBehaviour {
        error_rate: 0.5,
        ..WebhookBehaviour::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let hooks = fake(behaviour).await;
        let mut answers = Vec::new();
        for _ in 0..20 {
            answers.push(post(&hooks.url("ada"), "{}").await.status().as_u16());
        }
        runs.push(answers);
    }
    let failed = runs[0].iter().filter(|&&s| s == 500).count();
    assert!((5..=15).contains(&failed), "{:?}", runs[0]);
    assert!(runs[0].iter().all(|&s| s == 500 || s == 200));
    assert_eq!(runs[0], runs[1]);
}

#[tokio::test]
async fn a_hanging_receiver_times_the_sender_out() {
    let hooks = fake(WebhookBehaviour {
        hang: true,
        ..WebhookBehaviour::default()
    })
    .await;
    let err = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client")
        .post(hooks.url("ada"))
        .body("{}")
        .send()
        .await
        .expect_err("no answer");
    assert!(err.is_timeout(), "{err:?}");
    let received = hooks.received();
    assert_eq!(statuses(&received), [None]);
    assert!(!received[0].success);
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let hooks = fake(WebhookBehaviour {
        latency: Duration::from_millis(200),
        ..WebhookBehaviour::default()
    })
    .await;
    let started = std::time::Instant::now();
    assert_eq!(post(&hooks.url("ada"), "{}").await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn slack_answers_as_slack_does() {
    let hooks = fake(WebhookBehaviour::default()).await;
    let team = hooks.slack_url("team");
    for (url, body, status, answer) in [
        (&team, r#"{"text":"3 new papers"}"#, 200, "ok"),
        (&team, r#"{"blocks":[{"type":"section"}]}"#, 200, "ok"),
        (&team, r#"{"text":""}"#, 400, "invalid_payload"),
        (&team, r#"{"username":"bot"}"#, 400, "invalid_payload"),
        (&team, "text=hello", 400, "invalid_payload"),
        (&team, "", 400, "invalid_payload"),
        (
            &hooks.slack_url("gone"),
            r#"{"text":"hi"}"#,
            404,
            "no_service",
        ),
    ] {
        let response = post(url, body).await;
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(response.text().await.expect("body"), answer, "{body}");
    }
    let received = hooks.received();
    assert_eq!(received.len(), 7);
    assert!(received.iter().all(|h| h.kind == HookKind::Slack));
    assert_eq!(received[0].json().expect("json")["text"], "3 new papers");
    assert_eq!(received[6].name, "gone");
    assert_eq!(
        received.iter().map(|h| h.success).collect::<Vec<_>>(),
        [true, true, false, false, false, false, false]
    );
}

#[tokio::test]
async fn both_kinds_share_one_log_also_served_as_json() {
    let hooks = fake(WebhookBehaviour::default()).await;
    post(&hooks.url("ada"), r#"{"n":1}"#).await;
    post(&hooks.slack_url("team"), r#"{"text":"two"}"#).await;
    let wrong_method = reqwest::Client::new()
        .get(hooks.url("ada"))
        .send()
        .await
        .expect("answered");
    assert_eq!(wrong_method.status(), 405);

    let json: serde_json::Value = reqwest::get(format!("http://{}/api/hooks", hooks.addr()))
        .await
        .expect("log")
        .json()
        .await
        .expect("json");
    assert_eq!(json[0]["kind"], "generic");
    assert_eq!(json[0]["body"], r#"{"n":1}"#);
    assert_eq!(json[1]["kind"], "slack");
    assert_eq!(json[1]["path"], "/slack/team");
    assert_eq!(json[2]["method"], "GET");
    assert_eq!(json[2]["status"], 405);
}
