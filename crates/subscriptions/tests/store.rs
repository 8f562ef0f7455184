//! Subscriptions and their change feed against a real Postgres.

use subscriptions::{
    spec::Spec,
    store::{self, Change},
};
use test_support::TestDatabase;

async fn database() -> (TestDatabase, i64) {
    test_support::init_tracing();
    let db = TestDatabase::create().await.expect("test database");
    accounts::migrate(&db.pool).await.expect("migrate accounts");
    store::migrate(&db.pool).await.expect("migrate");
    let user = user(&db, "ada@example.org").await;
    (db, user)
}

async fn user(db: &TestDatabase, email: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id")
        .bind(email)
        .fetch_one(&db.pool)
        .await
        .expect("user")
}

fn spec(query: &str) -> Spec {
    Spec::parse("", "cs.LG", query, "").expect("valid")
}

#[tokio::test]
async fn people_only_touch_their_own_subscriptions() {
    let (db, ada) = database().await;
    let grace = user(&db, "grace@example.org").await;
    let mut conn = db.pool.acquire().await.expect("connection");
    let created = store::create(&mut conn, ada, &spec("graph"))
        .await
        .expect("create");
    assert_eq!(created.categories, ["cs.LG"]);
    assert!(
        store::update(&mut conn, grace, created.id, &spec("hijack"))
            .await
            .expect("update")
            .is_none()
    );
    assert!(
        !store::delete(&mut conn, grace, created.id)
            .await
            .expect("delete")
    );
    assert!(
        store::get(&db.pool, grace, created.id)
            .await
            .expect("get")
            .is_none()
    );
    let paused = store::set_paused(&mut conn, ada, created.id, true)
        .await
        .expect("pause")
        .expect("exists");
    assert!(paused.paused);
    let edited = store::update(&mut conn, ada, created.id, &spec("graph -survey"))
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(edited.query.as_deref(), Some("graph -survey"));
    assert_eq!(store::list(&db.pool, ada).await.expect("list").len(), 1);
    assert!(
        store::delete(&mut conn, ada, created.id)
            .await
            .expect("delete")
    );
    assert!(store::list(&db.pool, ada).await.expect("list").is_empty());
}

#[tokio::test]
async fn the_limit_holds_under_concurrent_creation() {
    let (db, ada) = database().await;
    let creations = (0..store::MAX_PER_USER + 20).map(|i| {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let mut tx = pool.begin().await.expect("begin");
            let result = store::create(&mut tx, ada, &spec(&format!("term{i}"))).await;
            tx.commit().await.expect("commit");
            result.is_ok()
        })
    });
    let created = futures_util::future::join_all(creations)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(true)))
        .count();
    assert_eq!(created as i64, store::MAX_PER_USER);
}

#[tokio::test]
async fn the_change_feed_misses_no_change_even_out_of_commit_order() {
    let (db, ada) = database().await;
    let mut conn = db.pool.acquire().await.expect("connection");
    let before = store::create(&mut conn, ada, &spec("before"))
        .await
        .expect("create");
    let (active, cursor) = store::load_active(&db.pool).await.expect("load");
    assert_eq!(active.iter().map(|s| s.id).collect::<Vec<_>>(), [before.id]);

    // A slow transaction starts first and commits last. (Another person
    // creates the quick one: creations of one person are serialized.)
    let grace = user(&db, "grace@example.org").await;
    let mut slow = db.pool.begin().await.expect("begin");
    let late = store::create(&mut slow, ada, &spec("late"))
        .await
        .expect("create");
    let quick = store::create(&mut conn, grace, &spec("quick"))
        .await
        .expect("create");
    let (changes, cursor) = store::changes_since(&db.pool, cursor)
        .await
        .expect("changes");
    let ids: Vec<i64> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert(s) => Some(s.id),
            Change::Remove(_) => None,
        })
        .collect();
    assert_eq!(ids, [quick.id], "the uncommitted one is not visible yet");
    slow.commit().await.expect("commit");
    let (changes, cursor) = store::changes_since(&db.pool, cursor)
        .await
        .expect("changes");
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::Upsert(s) if s.id == late.id)),
        "the late commit is not missed: {changes:?}"
    );

    store::set_paused(&mut conn, grace, quick.id, true)
        .await
        .expect("pause");
    store::delete(&mut conn, ada, before.id)
        .await
        .expect("delete");
    let (changes, _) = store::changes_since(&db.pool, cursor)
        .await
        .expect("changes");
    assert!(
        changes.contains(&Change::Remove(quick.id)),
        "paused: {changes:?}"
    );
    assert!(
        changes.contains(&Change::Remove(before.id)),
        "deleted: {changes:?}"
    );
}
