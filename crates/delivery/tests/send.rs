//! The senders against the project's fake SMTP server and webhook
//! receiver, over real SMTP and HTTP.

use std::time::Duration;

use catalog::reading::Card;
use delivery::{
    channel::TargetPolicy,
    render::Notice,
    send::{HttpSender, Mailer, SendError, SmtpConfig, SmtpSecurity},
};
use fakes::{
    smtp::{FakeSmtp, SmtpBehaviour},
    webhook::{FakeWebhooks, HookKind, WebhookBehaviour, decode_secret},
};

fn card() -> Card {
    Card {
        arxiv_id: "2611.00001".into(),
        version: 1,
        title: "Backpressure for streams".into(),
        abstract_text: "Abstract.".into(),
        authors: vec!["Ada Lovelace".into()],
        categories: vec!["cs.DC".into()],
        primary_category: "cs.DC".into(),
        published_at: None,
        abs_url: "https://arxiv.org/abs/2611.00001v1".into(),
        pdf_url: None,
        summary: Some("Refuse writes instead of trimming.".into()),
        summary_provider: Some("ollama".into()),
    }
}

fn notice(cards: &[Card]) -> Notice<'_> {
    Notice {
        cards,
        subscriptions: vec!["streams".into()],
        date: None,
        unsubscribe_url: "http://127.0.0.1:8080/unsubscribe/TOKEN".into(),
        manage_url: "http://127.0.0.1:8080/subscriptions".into(),
    }
}

fn mailer(port: u16, timeout_s: u64) -> Mailer {
    Mailer::new(&SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::None,
        username: None,
        password: None,
        from: "paperstream <papers@paperstream.test>".into(),
        timeout_s,
    })
    .expect("mailer")
}

#[tokio::test]
async fn email_carries_one_click_unsubscribe_and_a_stable_id() {
    let smtp = FakeSmtp::start(SmtpBehaviour::default(), 0)
        .await
        .expect("smtp");
    let mailer = mailer(smtp.port(), 5);
    let cards = [card()];
    let email = notice(&cards).email().expect("renders");
    mailer
        .send(
            "ada@example.org",
            "paperstream.u1c2p2611.00001@paperstream.test",
            &email,
            "http://127.0.0.1:8080/unsubscribe/TOKEN",
        )
        .await
        .expect("sent");
    let mails = smtp.wait_for(1, Duration::from_secs(5)).await;
    let mail = &mails[0];
    assert_eq!(mail.to, ["ada@example.org"]);
    assert_eq!(
        mail.message_id.as_deref(),
        Some("paperstream.u1c2p2611.00001@paperstream.test")
    );
    assert_eq!(
        mail.header("List-Unsubscribe"),
        Some("<http://127.0.0.1:8080/unsubscribe/TOKEN>")
    );
    assert_eq!(
        mail.header("List-Unsubscribe-Post"),
        Some("List-Unsubscribe=One-Click")
    );
    assert!(
        mail.text_body
            .as_deref()
            .is_some_and(|b| b.contains("Refuse writes"))
    );
    assert!(
        mail.html_body
            .as_deref()
            .is_some_and(|b| b.contains("Backpressure"))
    );
}

#[tokio::test]
async fn smtp_failures_are_told_apart() {
    let smtp = FakeSmtp::start(
        SmtpBehaviour {
            reject_recipients: vec!["gone@example.org".into()],
            ..SmtpBehaviour::default()
        },
        0,
    )
    .await
    .expect("smtp");
    let mailer = mailer(smtp.port(), 1);
    let cards = [card()];
    let email = notice(&cards).email().expect("renders");
    let send = |to: &'static str| {
        let mailer = mailer.clone();
        let email = email.clone();
        async move {
            mailer
                .send(to, "id@paperstream.test", &email, "http://x/u")
                .await
        }
    };
    assert!(matches!(
        send("gone@example.org").await,
        Err(SendError::Permanent(_))
    ));
    smtp.set(SmtpBehaviour {
        temporary_failure: true,
        ..SmtpBehaviour::default()
    });
    assert!(matches!(
        send("ada@example.org").await,
        Err(SendError::Transient(_))
    ));
    smtp.set(SmtpBehaviour {
        refuse_connections: true,
        ..SmtpBehaviour::default()
    });
    assert!(
        matches!(send("ada@example.org").await, Err(SendError::Transient(_))),
        "a relay refusing service is not the address's fault"
    );
    smtp.set(SmtpBehaviour {
        hang: true,
        ..SmtpBehaviour::default()
    });
    let started = std::time::Instant::now();
    assert!(matches!(
        send("ada@example.org").await,
        Err(SendError::Transient(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the timeout"
    );
}

#[tokio::test]
async fn webhooks_are_signed_and_refusals_are_permanent() {
    let hooks = FakeWebhooks::start(WebhookBehaviour::default(), 0)
        .await
        .expect("webhooks");
    let http = HttpSender::new(Duration::from_secs(2), TargetPolicy::default()).expect("client");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let cards = [card()];
    let payload = notice(&cards).webhook_payload(time::OffsetDateTime::now_utc());
    http.webhook(&hooks.url("ada"), secret, "msg_u1c2p1", &payload)
        .await
        .expect("delivered");
    let received = hooks.wait_for(1, Duration::from_secs(5)).await;
    let key = decode_secret(secret).expect("base64");
    assert!(received[0].verify(&key, Duration::from_secs(60)));
    assert!(!received[0].verify(b"another key", Duration::from_secs(60)));
    assert_eq!(received[0].header("webhook-id"), Some("msg_u1c2p1"));
    assert_eq!(
        received[0].json().expect("json")["data"]["paper"]["arxiv_id"],
        "2611.00001"
    );

    for (status, permanent) in [(410, true), (400, true), (429, false), (503, false)] {
        hooks.set(WebhookBehaviour {
            status: Some(status),
            ..WebhookBehaviour::default()
        });
        let result = http
            .webhook(&hooks.url("ada"), secret, "msg_2", &payload)
            .await;
        assert_eq!(
            result.as_ref().map_err(SendError::is_permanent),
            Err(permanent),
            "{status}"
        );
    }
    hooks.set(WebhookBehaviour {
        hang: true,
        ..WebhookBehaviour::default()
    });
    assert!(matches!(
        http.webhook(&hooks.url("ada"), secret, "msg_3", &payload)
            .await,
        Err(SendError::Transient(_))
    ));
}

#[tokio::test]
async fn slack_messages_and_dead_webhooks() {
    let hooks = FakeWebhooks::start(WebhookBehaviour::default(), 0)
        .await
        .expect("webhooks");
    let http = HttpSender::new(Duration::from_secs(2), TargetPolicy::default()).expect("client");
    let cards = [card()];
    let payload = notice(&cards).slack_payload();
    http.slack(&hooks.slack_url("team"), &payload)
        .await
        .expect("accepted");
    let received = hooks.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(received[0].kind, HookKind::Slack);
    assert!(received[0].success);
    assert!(matches!(
        http.slack(&hooks.slack_url("gone"), &payload).await,
        Err(SendError::Permanent(_))
    ));
}

/// A name that resolves inside the network is not connected to, whatever
/// the URL looked like when the channel was made: the refusal is permanent
/// (the channel is turned off with the reason). The demo's policy allows it.
#[tokio::test]
async fn names_that_resolve_to_private_addresses_are_refused() {
    let hooks = FakeWebhooks::start(WebhookBehaviour::default(), 0)
        .await
        .expect("webhooks");
    let by_name = hooks.url("ada").replace("127.0.0.1", "localhost");
    assert!(by_name.contains("localhost"), "{by_name}");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let cards = [card()];
    let payload = notice(&cards).webhook_payload(time::OffsetDateTime::now_utc());

    let strict = HttpSender::new(Duration::from_secs(2), TargetPolicy::default()).expect("client");
    match strict
        .webhook(&by_name, secret, "msg_private", &payload)
        .await
    {
        Err(SendError::Permanent(reason)) => {
            assert!(reason.contains("no public address"), "{reason}");
        }
        other => panic!("expected a permanent refusal, got {other:?}"),
    }
    let slack_by_name = hooks.slack_url("team").replace("127.0.0.1", "localhost");
    assert!(matches!(
        strict
            .slack(&slack_by_name, &notice(&cards).slack_payload())
            .await,
        Err(SendError::Permanent(_))
    ));

    let demo = HttpSender::new(
        Duration::from_secs(2),
        TargetPolicy {
            allow_private: true,
        },
    )
    .expect("client");
    demo.webhook(&by_name, secret, "msg_private", &payload)
        .await
        .expect("delivered under the demo's policy");
    assert_eq!(hooks.wait_for(1, Duration::from_secs(5)).await.len(), 1);
}
