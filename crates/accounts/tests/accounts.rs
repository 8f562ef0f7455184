//! Accounts against a real Postgres.

use std::time::Duration;

use accounts::{
    NewUser, Role,
    idempotency::{self, Claim},
    password,
    session::{self, SessionPolicy},
};
use test_support::TestDatabase;

async fn database() -> TestDatabase {
    test_support::init_tracing();
    let db = TestDatabase::create().await.expect("test database");
    accounts::migrate(&db.pool).await.expect("migrate");
    db
}

async fn sign_up(db: &TestDatabase, email: &str) -> Result<accounts::User, accounts::Error> {
    let new = NewUser::parse(email, "a long enough password", "Europe/Berlin").expect("valid");
    let hash = password::hash(new.password.expose()).await?;
    let mut tx = db.pool.begin().await?;
    let user = accounts::create_user(&mut tx, &new, &hash, Role::User).await?;
    tx.commit().await?;
    Ok(user)
}

#[tokio::test]
async fn sign_up_and_log_in() {
    let db = database().await;
    let user = sign_up(&db, "Ada@Example.org").await.expect("sign up");
    assert_eq!(user.role, Role::User);
    assert!(matches!(
        sign_up(&db, "ada@example.ORG").await,
        Err(accounts::Error::EmailTaken)
    ));
    let found = accounts::authenticate(&db.pool, "ADA@example.org", "a long enough password")
        .await
        .expect("authenticate");
    assert_eq!(found.map(|u| u.id), Some(user.id));
    for (email, password) in [
        ("ada@example.org", "a wrong password!"),
        ("nobody@example.org", "a long enough password"),
    ] {
        assert!(
            accounts::authenticate(&db.pool, email, password)
                .await
                .expect("authenticate")
                .is_none()
        );
    }
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&db.pool)
        .await
        .expect("row");
    assert!(stored.starts_with("$argon2id$") && !stored.contains("a long enough password"));
}

#[tokio::test]
async fn sessions_expire_and_end() {
    let db = database().await;
    let user = sign_up(&db, "grace@example.org").await.expect("sign up");
    let policy = SessionPolicy::default();
    let token = session::start(&db.pool, user.id, policy)
        .await
        .expect("start");
    let found = session::user(&db.pool, &token, policy)
        .await
        .expect("lookup");
    assert_eq!(found.map(|u| u.id), Some(user.id));
    assert!(
        session::user(&db.pool, "forged-token", policy)
            .await
            .expect("lookup")
            .is_none()
    );
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM sessions")
        .fetch_one(&db.pool)
        .await
        .expect("row");
    assert_ne!(stored, token.as_bytes(), "only the hash is stored");

    session::expire(&db.pool, &token).await.expect("expire");
    assert!(
        session::user(&db.pool, &token, policy)
            .await
            .expect("lookup")
            .is_none()
    );
    assert_eq!(session::prune(&db.pool).await.expect("prune"), 1);

    let short = SessionPolicy {
        idle: Duration::from_secs(1),
        absolute: Duration::from_secs(3600),
    };
    let token = session::start(&db.pool, user.id, short)
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(
        session::user(&db.pool, &token, short)
            .await
            .expect("lookup")
            .is_none(),
        "idle too long"
    );
    let token = session::start(&db.pool, user.id, policy)
        .await
        .expect("start");
    session::end(&db.pool, &token).await.expect("end");
    assert!(
        session::user(&db.pool, &token, policy)
            .await
            .expect("lookup")
            .is_none()
    );
}

#[tokio::test]
async fn api_tokens_authenticate_until_revoked() {
    let db = database().await;
    let user = sign_up(&db, "alan@example.org").await.expect("sign up");
    let mut conn = db.pool.acquire().await.expect("connection");
    let (id, token) = accounts::api_token::create(&mut conn, user.id, "laptop")
        .await
        .expect("create");
    assert!(token.starts_with("ps_"));
    let found = accounts::api_token::user(&db.pool, &token)
        .await
        .expect("lookup");
    assert_eq!(found.map(|u| u.id), Some(user.id));
    assert!(
        accounts::api_token::user(&db.pool, "ps_guess")
            .await
            .expect("lookup")
            .is_none()
    );
    assert!(
        !accounts::api_token::revoke(&db.pool, user.id + 1, id)
            .await
            .expect("revoke"),
        "not someone else's token"
    );
    assert!(
        accounts::api_token::revoke(&db.pool, user.id, id)
            .await
            .expect("revoke")
    );
    assert!(
        accounts::api_token::user(&db.pool, &token)
            .await
            .expect("lookup")
            .is_none()
    );
}

#[tokio::test]
async fn a_key_claimed_concurrently_runs_the_effect_once() {
    let db = database().await;
    sqlx::query("CREATE TABLE effects (n serial)")
        .execute(&db.pool)
        .await
        .expect("table");
    let hash = idempotency::request_hash("POST", "/api/v1/things", b"{}");
    let attempt = |pool: sqlx::PgPool, hash: Vec<u8>| async move {
        let mut tx = pool.begin().await.expect("begin");
        let claim = idempotency::claim(&mut tx, "user:1", "key-1", &hash)
            .await
            .expect("claim");
        if claim == Claim::Fresh {
            // Hold the claim a while, so that the others queue behind it.
            tokio::time::sleep(Duration::from_millis(200)).await;
            sqlx::query("INSERT INTO effects DEFAULT VALUES")
                .execute(&mut *tx)
                .await
                .expect("effect");
            idempotency::finish(
                &mut tx,
                "user:1",
                "key-1",
                201,
                &serde_json::json!({"id": 1}),
            )
            .await
            .expect("finish");
        }
        tx.commit().await.expect("commit");
        claim
    };
    let claims = futures_util::future::join_all(
        (0..8).map(|_| tokio::spawn(attempt(db.pool.clone(), hash.clone()))),
    )
    .await;
    let claims: Vec<Claim> = claims.into_iter().map(|c| c.expect("join")).collect();
    assert_eq!(claims.iter().filter(|c| **c == Claim::Fresh).count(), 1);
    assert_eq!(
        claims
            .iter()
            .filter(|c| matches!(c, Claim::Replay { status: 201, body } if body["id"] == 1))
            .count(),
        7
    );
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(effects, 1);

    let other = idempotency::request_hash("POST", "/api/v1/things", b"{\"other\":1}");
    let mut tx = db.pool.begin().await.expect("begin");
    assert_eq!(
        idempotency::claim(&mut tx, "user:1", "key-1", &other)
            .await
            .expect("claim"),
        Claim::Mismatch
    );
    assert!(
        idempotency::claim(&mut tx, "user:1", "", &other)
            .await
            .is_err()
    );
}
