//! The notifier between real Postgres, the Redis Cluster, and the fake
//! SMTP server and webhook receiver.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use delivery::channel::{self, ChannelSpec, Kind, TargetPolicy};
use events::{PaperSummarized, Topics};
use fakes::{
    smtp::{FakeSmtp, SmtpBehaviour},
    webhook::{FakeWebhooks, WebhookBehaviour},
};
use notifier::Config;
use streams::{Inspector, Outgoing, Producer, ProducerConfig, StreamsClient, inspect::Log};
use subscriptions::spec::Spec;
use test_support::TestDatabase;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "a test secret that is long enough to sign links";

struct World {
    db: TestDatabase,
    client: StreamsClient,
    topics: Topics,
    smtp: FakeSmtp,
    hooks: FakeWebhooks,
    config: Config,
}

async fn world() -> World {
    test_support::init_tracing();
    let db = TestDatabase::create().await.expect("database");
    catalog::migrate(&db.pool).await.expect("migrate");
    outbox::migrate(&db.pool).await.expect("migrate");
    accounts::migrate(&db.pool).await.expect("migrate");
    subscriptions::store::migrate(&db.pool)
        .await
        .expect("migrate");
    delivery::migrate(&db.pool).await.expect("migrate");
    let smtp = FakeSmtp::start(SmtpBehaviour::default(), 0)
        .await
        .expect("fake smtp");
    let hooks = FakeWebhooks::start(WebhookBehaviour::default(), 0)
        .await
        .expect("fake webhooks");
    let prefix = format!("{}.", test_support::unique_name("n"));
    let defaults = Config::default();
    let config = Config {
        database_url: db.url.clone(),
        redis_urls: test_support::shared_redis_urls(),
        topic_prefix: prefix.clone(),
        secret: Some(SECRET.into()),
        smtp: delivery::send::SmtpConfig {
            port: smtp.port(),
            timeout_s: 5,
            ..defaults.smtp.clone()
        },
        http_timeout_s: 2,
        breaker_failures: 3,
        breaker_open_s: 1,
        change_poll_ms: 100,
        ..defaults
    };
    let client = StreamsClient::connect(streams::ClientConfig::new(config.redis_urls.clone()))
        .await
        .expect("redis");
    let topics = Topics::new(&prefix).expect("topics");
    World {
        db,
        client,
        topics,
        smtp,
        hooks,
        config,
    }
}

impl World {
    /// A person with the default channels (inbox and email), plus the
    /// given extra channels, subscribed to `cs.LG`.
    async fn person(&self, email: &str, extra: &[(&str, String)]) -> i64 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (email, password_hash, time_zone, digest_hour) \
             VALUES ($1, 'x', 'UTC', 8) RETURNING id",
        )
        .bind(email)
        .fetch_one(&self.db.pool)
        .await
        .expect("user");
        let mut conn = self.db.pool.acquire().await.expect("connection");
        channel::create_defaults(&mut conn, id, email)
            .await
            .expect("defaults");
        for (kind, target) in extra {
            let spec = ChannelSpec::parse(
                kind,
                target,
                "instant",
                TargetPolicy {
                    allow_private: true,
                },
            )
            .expect("channel spec");
            channel::create(&mut conn, id, &spec)
                .await
                .expect("channel");
        }
        let spec = Spec::parse("Machine learning", "cs.LG", "", "").expect("spec");
        subscriptions::store::create(&mut conn, id, &spec)
            .await
            .expect("subscription");
        id
    }

    async fn channel(&self, user_id: i64, kind: Kind) -> channel::Channel {
        channel::list(&self.db.pool, user_id)
            .await
            .expect("channels")
            .into_iter()
            .find(|c| c.kind == kind)
            .expect("channel of that kind")
    }

    /// Papers in `cs.LG` with a summary, as the summarizer leaves them.
    async fn papers(&self, count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        let mut tx = self.db.pool.begin().await.expect("begin");
        for n in 0..count {
            let arxiv_id = format!("2611.{:05}", 10_000 + n);
            sqlx::query(
                "INSERT INTO papers (arxiv_id, version, title, abstract, authors, categories, \
                                     primary_category, abs_url) \
                 VALUES ($1, 1, $2, 'We study learning.', \
                         '[{\"name\": \"Ada Lovelace\", \"affiliations\": []}]', \
                         '{cs.LG}', 'cs.LG', 'https://arxiv.org/abs/' || $1)",
            )
            .bind(&arxiv_id)
            .bind(format!("Paper number {n}"))
            .execute(&mut *tx)
            .await
            .expect("paper");
            catalog::store_summary(
                &mut tx,
                &catalog::NewSummary {
                    arxiv_id: &arxiv_id,
                    version: 1,
                    prompt_version: 1,
                    provider: "ollama",
                    model: "gemma3",
                    text: "It learns.",
                    extractive: false,
                    input_tokens: 10,
                    output_tokens: 3,
                    cost_micro_usd: 0,
                },
            )
            .await
            .expect("summary");
            ids.push(arxiv_id);
        }
        tx.commit().await.expect("commit");
        ids
    }

    /// Announce papers as summarized, each under `tag` so that a second
    /// announcement is a new message (a redelivery from upstream).
    async fn announce(&self, ids: &[String], tag: &str) {
        let producer = Producer::new(self.client.clone(), ProducerConfig::default());
        let events: Vec<PaperSummarized> = ids
            .iter()
            .map(|id| PaperSummarized {
                arxiv_id: id.clone(),
                version: 1,
                prompt_version: 1,
                provider: "ollama".into(),
                extractive: false,
            })
            .collect();
        let message_ids: Vec<String> = ids.iter().map(|id| format!("{tag}:{id}")).collect();
        for (chunk, chunk_ids) in events.chunks(100).zip(message_ids.chunks(100)) {
            let results = producer
                .send_batch(
                    &self.topics.summarized,
                    chunk
                        .iter()
                        .zip(chunk_ids)
                        .map(|(e, id)| Outgoing::new(&e.arxiv_id, e).with_id(id)),
                )
                .await
                .expect("encode");
            for r in results {
                r.expect("sent");
            }
        }
    }

    fn start(
        &self,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<notifier::Result<()>>,
    ) {
        let shutdown = CancellationToken::new();
        let config = self.config.clone();
        let running = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { notifier::run(&config, shutdown).await }
        });
        (shutdown, running)
    }

    async fn dead_letters(&self, layout: &streams::TopicLayout) -> Vec<streams::RawEntry> {
        let inspector = Inspector::new(self.client.clone());
        let mut found = Vec::new();
        for p in &layout.partitions {
            let page = inspector
                .browse(
                    layout,
                    p.index,
                    Log::Dlq,
                    streams::inspect::Direction::Forward,
                    None,
                    1000,
                )
                .await
                .expect("browse");
            found.extend(page.entries);
        }
        found
    }

    async fn in_app(&self, user_id: i64) -> i64 {
        let (_, unread) = delivery::ledger::inbox(&self.db.pool, user_id, 100)
            .await
            .expect("inbox");
        unread
    }
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop(shutdown: CancellationToken, running: tokio::task::JoinHandle<notifier::Result<()>>) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("stops in time")
        .expect("joins")
        .expect("runs cleanly");
}

#[tokio::test]
async fn every_channel_gets_each_paper_once() {
    let w = world().await;
    let ada = w
        .person(
            "ada@example.org",
            &[
                ("webhook", w.hooks.url("ada")),
                ("slack", w.hooks.slack_url("ada-slack")),
            ],
        )
        .await;
    let webhook = w.channel(ada, Kind::Webhook).await;
    let (shutdown, running) = w.start();
    let papers = w.papers(3).await;
    w.announce(&papers, "first").await;

    let mails = w.smtp.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 3, "one mail per paper");
    let hooks = w.hooks.wait_for(6, Duration::from_secs(30)).await;
    assert_eq!(
        hooks.len(),
        6,
        "one webhook and one Slack message per paper"
    );
    eventually("the inbox", Duration::from_secs(10), || async {
        w.in_app(ada).await == 3
    })
    .await;

    let secret = fakes::webhook::decode_secret(webhook.secret.as_deref().expect("secret"))
        .expect("a whsec_ secret");
    let signed: Vec<_> = hooks
        .iter()
        .filter(|h| h.header("webhook-id").is_some())
        .collect();
    assert_eq!(signed.len(), 3);
    assert!(
        signed
            .iter()
            .all(|h| h.verify(&secret, Duration::from_secs(300))),
        "every webhook verifies with the channel's secret"
    );
    for mail in &mails {
        assert!(mail.to.contains(&"ada@example.org".to_owned()));
        let unsubscribe = mail.header("List-Unsubscribe").expect("List-Unsubscribe");
        assert!(unsubscribe.contains("/unsubscribe/"), "{unsubscribe}");
        assert_eq!(
            mail.header("List-Unsubscribe-Post"),
            Some("List-Unsubscribe=One-Click")
        );
    }

    // The same papers announced again (an upstream redelivery) and the
    // notifier restarted: nothing is sent twice.
    stop(shutdown, running).await;
    let (shutdown, running) = w.start();
    w.announce(&papers, "again").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.smtp.mails().len(), 3);
    assert_eq!(w.hooks.received().len(), 6);
    assert_eq!(w.in_app(ada).await, 3);
    stop(shutdown, running).await;
}

#[tokio::test]
async fn a_mail_outage_delays_mail_and_a_refused_address_is_dead_lettered() {
    let w = world().await;
    let ada = w.person("ada@example.org", &[]).await;
    let bob = w
        .person("bob@example.org", &[("slack", w.hooks.slack_url("gone"))])
        .await;
    w.smtp.set(SmtpBehaviour {
        temporary_failure: true,
        ..SmtpBehaviour::default()
    });
    let (shutdown, running) = w.start();
    let papers = w.papers(4).await;
    w.announce(&papers, "first").await;

    // Mail is refused for a while: the breaker opens, and deliveries wait
    // instead of burning their attempts.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(w.smtp.mails().is_empty());
    assert!(
        w.dead_letters(w.topics.email.layout()).await.is_empty(),
        "an outage dead-letters nothing"
    );
    let attempts: i64 =
        sqlx::query_scalar("SELECT COALESCE(max(attempts), 0)::int8 FROM deliveries")
            .fetch_one(&w.db.pool)
            .await
            .expect("attempts");
    assert!(
        attempts < 8,
        "the breaker holds deliveries back ({attempts} attempts)"
    );

    // The server comes back, but refuses Bob's mailbox.
    w.smtp.set(SmtpBehaviour {
        reject_recipients: vec!["bob@example.org".into()],
        ..SmtpBehaviour::default()
    });
    let mails = w.smtp.wait_for(4, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 4, "Ada gets every paper after the outage");
    assert!(mails.iter().all(|m| m.to == ["ada@example.org"]));

    eventually(
        "Bob's refusal in the DLQ",
        Duration::from_secs(20),
        || async { !w.dead_letters(w.topics.email.layout()).await.is_empty() },
    )
    .await;
    let dead = w.dead_letters(w.topics.email.layout()).await;
    let error = dead[0]
        .field_str("dlq.error")
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("550"), "the reason is kept: {error}");
    assert_eq!(dead[0].field_str("dlq.reason"), Some("rejected"));
    let bobs = w.channel(bob, Kind::Email).await;
    assert!(!bobs.enabled, "a refused address turns the channel off");
    assert!(
        bobs.disabled_reason
            .as_deref()
            .unwrap_or_default()
            .contains("550"),
        "{:?}",
        bobs.disabled_reason
    );
    // A Slack webhook that was deleted (404 `no_service`) is refused for
    // good too.
    eventually(
        "the 404 in the Slack DLQ",
        Duration::from_secs(20),
        || async { !w.dead_letters(w.topics.slack.layout()).await.is_empty() },
    )
    .await;
    let dead_hooks = w.dead_letters(w.topics.slack.layout()).await;
    let error = dead_hooks[0].field_str("dlq.error").unwrap_or_default();
    assert!(error.contains("404"), "{error}");
    assert!(!w.channel(bob, Kind::Slack).await.enabled);
    // Bob's other papers are not tried once the channel is off, and Ada's
    // channel is untouched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(w.dead_letters(w.topics.email.layout()).await.len() <= 4);
    assert!(w.channel(ada, Kind::Email).await.enabled);
    assert_eq!(w.in_app(bob).await, 4, "the inbox never depended on mail");
    stop(shutdown, running).await;
}

/// The notifier as a separate process, killed with SIGKILL while it sends.
struct Process(std::process::Child);

impl Process {
    fn start(config: &Config) -> Self {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
            .env("DATABASE_URL", &config.database_url)
            .env("PAPERSTREAM_REDIS_URLS", config.redis_urls.join(","))
            .env("PAPERSTREAM_TOPIC_PREFIX", &config.topic_prefix)
            .env("PAPERSTREAM_SECRET", SECRET)
            .env("PAPERSTREAM_SMTP__PORT", config.smtp.port.to_string())
            .env("PAPERSTREAM_OPS_ADDR", "127.0.0.1:0")
            .env("PAPERSTREAM_CHANGE_POLL_MS", "100")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the notifier");
        Self(child)
    }

    fn kill(&mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reaped");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn killing_the_notifier_mid_delivery_still_delivers_each_once() {
    let w = world().await;
    let people = 5;
    let papers = 40;
    let mut users = Vec::new();
    for n in 0..people {
        let name = format!("reader{n}");
        let id = w
            .person(
                &format!("{name}@example.org"),
                &[("webhook", w.hooks.url(&name))],
            )
            .await;
        users.push(id);
    }
    // Slow sinks, so that the kill lands while deliveries are in flight.
    w.smtp.set(SmtpBehaviour {
        latency: Duration::from_millis(15),
        ..SmtpBehaviour::default()
    });
    w.hooks.set(WebhookBehaviour {
        latency: Duration::from_millis(40),
        ..WebhookBehaviour::default()
    });
    let ids = w.papers(papers).await;
    let expected = people * papers;

    let mut first = Process::start(&w.config);
    w.announce(&ids, "first").await;
    w.smtp.wait_for(expected / 4, Duration::from_secs(60)).await;
    first.kill();
    let mails_at_kill = w.smtp.mails().len();
    let hooks_at_kill = w.hooks.received().len();
    assert!(
        mails_at_kill < expected || hooks_at_kill < expected,
        "the kill must land mid-delivery (mails {mails_at_kill}, webhooks {hooks_at_kill})"
    );

    let _second = Process::start(&w.config);
    let mails = w.smtp.wait_for(expected, Duration::from_secs(120)).await;
    let hooks = w.hooks.wait_for(expected, Duration::from_secs(120)).await;
    // Let anything sent twice arrive too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails_after = w.smtp.mails();
    let hooks_after = w.hooks.received();

    let mut per_identity: HashMap<String, usize> = HashMap::new();
    for m in &mails_after {
        *per_identity
            .entry(m.message_id.clone().expect("Message-ID"))
            .or_default() += 1;
    }
    let mut hook_ids: HashMap<String, usize> = HashMap::new();
    for h in &hooks_after {
        *hook_ids
            .entry(h.header("webhook-id").expect("webhook-id").to_owned())
            .or_default() += 1;
    }
    let mut expected_mail: HashSet<String> = HashSet::new();
    for user in &users {
        let email = w.channel(*user, Kind::Email).await;
        for id in &ids {
            expected_mail.insert(format!("paperstream.u{user}c{}p{id}@127.0.0.1", email.id));
        }
    }
    let delivered: HashSet<String> = per_identity.keys().cloned().collect();
    assert_eq!(
        delivered, expected_mail,
        "every (person, paper) mailed, none lost"
    );
    assert_eq!(
        hook_ids.len(),
        expected,
        "every (person, paper) posted, none lost"
    );
    let raw_mail_repeats = mails_after.len() - per_identity.len();
    let raw_hook_repeats = hooks_after.len() - hook_ids.len();
    let resumed: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE attempts > 1")
        .fetch_one(&w.db.pool)
        .await
        .expect("resumed");
    println!(
        "kill drill: {expected} mails and {expected} webhooks expected; at the kill {mails_at_kill} \
         mails and {hooks_at_kill} webhooks; after restart {} mails ({} distinct), {} webhooks \
         ({} distinct); repeats carrying the same id: mail {raw_mail_repeats}, webhook \
         {raw_hook_repeats}; deliveries resumed: {resumed}",
        mails.len().max(mails_after.len()),
        per_identity.len(),
        hooks.len().max(hooks_after.len()),
        hook_ids.len(),
    );
    // A repeat can only come from a send the kill cut off between the
    // receiver's acceptance and the ledger's `sent`; it carries the same id,
    // and there is at most one per delivery that was resumed.
    assert!(
        (raw_mail_repeats + raw_hook_repeats) as i64 <= resumed,
        "repeats ({raw_mail_repeats} + {raw_hook_repeats}) only from resumed sends ({resumed})"
    );
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE state = 'sent'")
        .fetch_one(&w.db.pool)
        .await
        .expect("sent");
    assert_eq!(
        sent as usize,
        3 * expected,
        "the ledger agrees with the sinks (mail, webhook and inbox)"
    );
}

#[tokio::test]
async fn a_daily_channel_gets_one_digest_at_the_local_hour() {
    let mut w = world().await;
    let ada = w.person("ada@example.org", &[]).await;
    let email = w.channel(ada, Kind::Email).await;
    let mut conn = w.db.pool.acquire().await.expect("connection");
    channel::set_frequency(
        &mut conn,
        ada,
        email.id,
        delivery::channel::Frequency::Daily,
    )
    .await
    .expect("daily");
    // Ada's hour has come (0 is always past) in her time zone.
    sqlx::query("UPDATE users SET digest_hour = 0, time_zone = 'Asia/Tokyo' WHERE id = $1")
        .bind(ada)
        .execute(&w.db.pool)
        .await
        .expect("profile");

    // The papers arrive while no digest scheduler runs, and wait.
    w.config.roles = ["matcher", "router", "email"].map(String::from).to_vec();
    let (shutdown, running) = w.start();
    let papers = w.papers(3).await;
    w.announce(&papers, "first").await;
    eventually(
        "three queued deliveries",
        Duration::from_secs(20),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM deliveries WHERE channel_id = $1 AND state = 'queued'",
            )
            .bind(email.id)
            .fetch_one(&w.db.pool)
            .await
            .is_ok_and(|n| n == 3)
        },
    )
    .await;
    assert!(w.smtp.mails().is_empty(), "nothing is mailed at once");
    stop(shutdown, running).await;

    // Two notifiers with schedulers: one digest, with all three papers.
    w.config.roles = notifier::config::ALL_ROLES.map(String::from).to_vec();
    w.config.digest_interval_s = 1;
    let (first, first_running) = w.start();
    let (second, second_running) = w.start();
    let mails = w.smtp.wait_for(1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.smtp.mails().len(), 1, "one digest");
    let subject = mails[0].subject.clone().unwrap_or_default();
    assert!(
        subject.starts_with("[paperstream] 3 new papers, "),
        "{subject}"
    );
    let text = mails[0].text_body.clone().unwrap_or_default();
    for n in 0..3 {
        assert!(text.contains(&format!("Paper number {n}")), "{text}");
    }
    let local_date: time::Date = sqlx::query_scalar(
        "SELECT local_date FROM digests WHERE channel_id = $1 AND state = 'sent'",
    )
    .bind(email.id)
    .fetch_one(&w.db.pool)
    .await
    .expect("a sent digest");
    let tokyo_today: time::Date =
        sqlx::query_scalar("SELECT (now() AT TIME ZONE 'Asia/Tokyo')::date")
            .fetch_one(&w.db.pool)
            .await
            .expect("date");
    assert_eq!(local_date, tokyo_today, "dated by Ada's own calendar");
    stop(first, first_running).await;
    stop(second, second_running).await;
}
