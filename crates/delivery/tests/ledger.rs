//! The delivery ledger against a real Postgres.

use delivery::{
    channel::{self, ChannelSpec, Kind, TargetPolicy},
    ledger::{self, Begin, DeliveryKey, DigestBegin},
};
use test_support::TestDatabase;

async fn database() -> TestDatabase {
    test_support::init_tracing();
    let db = TestDatabase::create().await.expect("test database");
    catalog::migrate(&db.pool).await.expect("catalog");
    accounts::migrate(&db.pool).await.expect("accounts");
    delivery::migrate(&db.pool).await.expect("delivery");
    db
}

async fn user(db: &TestDatabase, email: &str, time_zone: &str) -> i64 {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO users (email, password_hash, time_zone, digest_hour) \
         VALUES ($1, 'x', $2, 0) RETURNING id",
    )
    .bind(email)
    .bind(time_zone)
    .fetch_one(&db.pool)
    .await
    .expect("user");
    let mut conn = db.pool.acquire().await.expect("connection");
    channel::create_defaults(&mut conn, id, email)
        .await
        .expect("defaults");
    id
}

async fn paper(db: &TestDatabase, id: &str, title: &str) {
    sqlx::query(
        "INSERT INTO papers (arxiv_id, version, title, abstract, authors, categories, \
                             primary_category, abs_url) \
         VALUES ($1, 1, $2, 'An abstract.', '[{\"name\": \"Ada Lovelace\", \"affiliations\": []}]', \
                 '{cs.LG}', 'cs.LG', 'https://arxiv.org/abs/' || $1)",
    )
    .bind(id)
    .bind(title)
    .execute(&db.pool)
    .await
    .expect("paper");
}

fn key(user_id: i64, arxiv_id: &str, channel_id: i64) -> DeliveryKey {
    DeliveryKey {
        user_id,
        arxiv_id: arxiv_id.into(),
        channel_id,
    }
}

#[tokio::test]
async fn a_delivery_is_sent_once_and_an_interrupted_one_is_resumed() {
    let db = database().await;
    let ada = user(&db, "ada@example.org", "UTC").await;
    let email = channel::list(&db.pool, ada)
        .await
        .expect("channels")
        .into_iter()
        .find(|c| c.kind == Kind::Email)
        .expect("a default email channel");
    let mut conn = db.pool.acquire().await.expect("connection");
    let k = key(ada, "2611.00001", email.id);
    assert!(ledger::queue(&mut conn, &k, 1).await.expect("queue"));
    assert!(
        !ledger::queue(&mut conn, &k, 1).await.expect("queue"),
        "one per key"
    );

    let first = ledger::begin_send(&mut conn, &k).await.expect("begin");
    assert_eq!(
        first,
        Begin::Send {
            attempt: 1,
            resumed: false,
            version: 1
        }
    );
    // A crash here leaves it `sending`: the next attempt knows.
    let again = ledger::begin_send(&mut conn, &k).await.expect("begin");
    assert_eq!(
        again,
        Begin::Send {
            attempt: 2,
            resumed: true,
            version: 1
        }
    );
    ledger::mark_sent(&mut conn, &k).await.expect("sent");
    assert_eq!(
        ledger::begin_send(&mut conn, &k).await.expect("begin"),
        Begin::AlreadySent
    );
    assert_eq!(
        ledger::begin_send(&mut conn, &key(ada, "2611.00001", email.id + 100))
            .await
            .expect("begin"),
        Begin::Missing
    );

    let failing = key(ada, "2611.00002", email.id);
    ledger::queue(&mut conn, &failing, 1).await.expect("queue");
    ledger::begin_send(&mut conn, &failing)
        .await
        .expect("begin");
    ledger::mark_retry(&mut conn, &failing, "451 try later")
        .await
        .expect("retry");
    assert_eq!(
        ledger::begin_send(&mut conn, &failing)
            .await
            .expect("begin"),
        Begin::Send {
            attempt: 2,
            resumed: false,
            version: 1
        }
    );
}

#[tokio::test]
async fn feed_inbox_and_feedback() {
    let db = database().await;
    let ada = user(&db, "ada@example.org", "UTC").await;
    let in_app = channel::list(&db.pool, ada)
        .await
        .expect("channels")
        .into_iter()
        .find(|c| c.kind == Kind::InApp)
        .expect("a default inbox");
    let mut conn = db.pool.acquire().await.expect("connection");
    for (id, title) in [("2611.00001", "First"), ("2611.00002", "Second")] {
        paper(&db, id, title).await;
        assert!(
            ledger::record_match(&mut conn, ada, id, 1, &[7])
                .await
                .expect("match")
        );
        assert!(
            ledger::deliver_in_app(&mut conn, &key(ada, id, in_app.id), 1)
                .await
                .expect("inbox")
        );
    }
    assert!(
        !ledger::record_match(&mut conn, ada, "2611.00001", 1, &[7])
            .await
            .expect("match")
    );
    let feed = ledger::feed(&db.pool, ada, None, None, 10)
        .await
        .expect("feed");
    assert_eq!(feed.len(), 2);
    let page = ledger::feed(&db.pool, ada, None, None, 1)
        .await
        .expect("feed");
    let cursor = ledger::FeedCursor {
        matched_at: page[0].matched_at,
        arxiv_id: page[0].card.arxiv_id.clone(),
    };
    let next = ledger::feed(&db.pool, ada, None, Some(&cursor), 10)
        .await
        .expect("feed");
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].card.arxiv_id, page[0].card.arxiv_id);
    assert!(
        ledger::feed(&db.pool, ada, Some(8), None, 10)
            .await
            .expect("feed")
            .is_empty(),
        "filtered by subscription"
    );

    let (items, unread) = ledger::inbox(&db.pool, ada, 10).await.expect("inbox");
    assert_eq!((items.len(), unread), (2, 2));
    ledger::mark_read(&mut conn, ada, Some("2611.00001"))
        .await
        .expect("read");
    assert_eq!(ledger::inbox(&db.pool, ada, 10).await.expect("inbox").1, 1);

    ledger::set_feedback(&mut conn, ada, "2611.00002", Some(-3))
        .await
        .expect("vote");
    let feed = ledger::feed(&db.pool, ada, None, None, 10)
        .await
        .expect("feed");
    let voted = feed
        .iter()
        .find(|f| f.card.arxiv_id == "2611.00002")
        .expect("in feed");
    assert_eq!(voted.vote, Some(-1));
}

#[tokio::test]
async fn daily_channels_gather_a_digest_once_a_local_day() {
    let db = database().await;
    // Digest hour 0: due as soon as the local day has begun, in any zone.
    let ada = user(&db, "ada@example.org", "Pacific/Kiritimati").await;
    let mut conn = db.pool.acquire().await.expect("connection");
    let daily = channel::create(
        &mut conn,
        ada,
        &ChannelSpec::parse(
            "webhook",
            "http://127.0.0.1:1/hooks/x",
            "daily",
            TargetPolicy {
                allow_private: true,
            },
        )
        .expect("valid"),
    )
    .await
    .expect("channel");
    assert!(
        daily
            .secret
            .as_deref()
            .is_some_and(|s| s.starts_with("whsec_"))
    );
    assert!(ledger::due_digests(&db.pool).await.expect("due").is_empty());
    for id in ["2611.00001", "2611.00002"] {
        ledger::queue(&mut conn, &key(ada, id, daily.id), 1)
            .await
            .expect("queue");
    }
    let due = ledger::due_digests(&db.pool).await.expect("due");
    assert_eq!(due.len(), 1);
    let digest = ledger::open_digest(&mut conn, daily.id, due[0].local_date)
        .await
        .expect("open")
        .expect("papers waiting");
    assert_eq!(
        ledger::open_digest(&mut conn, daily.id, due[0].local_date)
            .await
            .expect("open"),
        None,
        "one a day"
    );
    assert!(ledger::due_digests(&db.pool).await.expect("due").is_empty());
    let DigestBegin::Send { digest: d, resumed } = ledger::begin_digest(&mut conn, digest)
        .await
        .expect("begin")
    else {
        panic!("should send");
    };
    assert!(!resumed);
    assert_eq!(d.papers.len(), 2);
    ledger::finish_digest(&mut conn, digest, None)
        .await
        .expect("finish");
    assert_eq!(
        ledger::begin_digest(&mut conn, digest)
            .await
            .expect("begin"),
        DigestBegin::AlreadySent
    );
    let sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deliveries WHERE channel_id = $1 AND state = 'sent'",
    )
    .bind(daily.id)
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert_eq!(sent, 2);
}

/// One account keeps at most `MAX_PER_USER` channels (its two defaults
/// included); the next is refused with a reason, and deleting one makes room.
#[tokio::test]
async fn a_person_keeps_a_bounded_number_of_channels() {
    let db = database().await;
    let ada = user(&db, "ada@example.org", "UTC").await;
    let lax = TargetPolicy {
        allow_private: true,
    };
    let spec = |n: i64| {
        ChannelSpec::parse(
            "webhook",
            &format!("http://127.0.0.1:1/hooks/{n}"),
            "instant",
            lax,
        )
        .expect("valid")
    };
    let mut conn = db.pool.acquire().await.expect("connection");
    let defaults = channel::list(&db.pool, ada).await.expect("list").len() as i64;
    let mut last = None;
    for n in defaults..channel::MAX_PER_USER {
        last = Some(
            channel::create(&mut conn, ada, &spec(n))
                .await
                .expect("room"),
        );
    }
    match channel::create(&mut conn, ada, &spec(999)).await {
        Err(delivery::Error::Invalid { field, message }) => {
            assert_eq!(field, "target");
            assert!(message.contains("at most"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let last = last.expect("a channel was made");
    assert!(
        channel::delete(&mut conn, ada, last.id)
            .await
            .expect("delete")
    );
    channel::create(&mut conn, ada, &spec(999))
        .await
        .expect("room again");
}
