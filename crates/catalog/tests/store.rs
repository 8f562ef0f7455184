//! The catalog against a real Postgres.

use arxiv::Paper;
use catalog::{NewSummary, Stored};
use test_support::TestDatabase;

async fn database() -> TestDatabase {
    test_support::init_tracing();
    let db = TestDatabase::create().await.expect("test database");
    catalog::migrate(&db.pool).await.expect("migrate");
    db
}

fn paper_titled_zero() -> Paper {
    let xml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../arxiv/tests/fixtures/arxiv-api/id_2104.12255v1_s0_m100_6ae69987ffe1.xml"
    ))
    .expect("fixture");
    arxiv::query::parse(&xml).expect("parses").papers.remove(0)
}

async fn store(db: &TestDatabase, paper: &Paper) -> Stored {
    let mut tx = db.pool.begin().await.expect("begin");
    let stored = catalog::store_paper(&mut tx, paper).await.expect("store");
    tx.commit().await.expect("commit");
    stored
}

#[tokio::test]
async fn a_version_is_stored_once_and_cross_listings_merge() {
    let db = database().await;
    let paper = paper_titled_zero();
    assert_eq!(store(&db, &paper).await, Stored::New);
    assert_eq!(
        store(&db, &paper).await,
        Stored::Unchanged,
        "a repeat changes nothing"
    );

    let mut cross_listed = paper.clone();
    cross_listed.categories = vec!["math.NT".into()];
    assert_eq!(
        store(&db, &cross_listed).await,
        Stored::Updated,
        "the same version in another listing"
    );
    let stored = catalog::paper(&db.pool, "2104.12255", 1)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(stored.categories.len(), 2);
    assert!(
        stored.categories.contains(&"cs.CR".to_owned())
            && stored.categories.contains(&"math.NT".to_owned())
    );
    assert_eq!(stored.title, "0");
    assert_eq!(stored.primary_category, "cs.CR");

    let mut with_doi = paper.clone();
    with_doi.doi = Some("10.5555/zero".into());
    assert_eq!(
        store(&db, &with_doi).await,
        Stored::Updated,
        "a DOI added later"
    );
    assert_eq!(
        store(&db, &paper).await,
        Stored::Unchanged,
        "a record without the DOI keeps it"
    );
    let stored = catalog::paper(&db.pool, "2104.12255", 1)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(stored.doi.as_deref(), Some("10.5555/zero"));

    let mut v2 = paper.clone();
    v2.version = Some(2);
    assert_eq!(
        store(&db, &v2).await,
        Stored::New,
        "a new version is a new row"
    );
    let mut unversioned = paper.clone();
    unversioned.version = None;
    let mut tx = db.pool.begin().await.expect("begin");
    assert!(matches!(
        catalog::store_paper(&mut tx, &unversioned).await,
        Err(catalog::Error::NoVersion(_))
    ));
}

#[tokio::test]
async fn one_summary_per_version_and_prompt() {
    let db = database().await;
    store(&db, &paper_titled_zero()).await;
    let summary = NewSummary {
        arxiv_id: "2104.12255",
        version: 1,
        prompt_version: 1,
        provider: "ollama",
        model: "gemma3",
        text: "Zero breaks signatures.",
        extractive: false,
        input_tokens: 120,
        output_tokens: 12,
        cost_micro_usd: 0,
    };
    let mut tx = db.pool.begin().await.expect("begin");
    assert!(
        catalog::store_summary(&mut tx, &summary)
            .await
            .expect("store")
    );
    assert!(
        !catalog::store_summary(&mut tx, &summary)
            .await
            .expect("store again")
    );
    let next_prompt = NewSummary {
        prompt_version: 2,
        ..summary.clone()
    };
    assert!(
        catalog::store_summary(&mut tx, &next_prompt)
            .await
            .expect("store")
    );
    tx.commit().await.expect("commit");
    assert!(
        catalog::has_summary(&db.pool, "2104.12255", 1, 2)
            .await
            .expect("query")
    );
    assert!(
        !catalog::has_summary(&db.pool, "2104.12255", 1, 3)
            .await
            .expect("query")
    );
}

#[tokio::test]
async fn checkpoints_round_trip() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Harvest {
        token: Option<String>,
        pages: u32,
    }
    let db = database().await;
    assert_eq!(
        catalog::checkpoint::<Harvest>(&db.pool, "backfill")
            .await
            .expect("read"),
        None
    );
    for pages in [1, 2] {
        let state = Harvest {
            token: Some(format!("t{pages}")),
            pages,
        };
        let mut tx = db.pool.begin().await.expect("begin");
        catalog::save_checkpoint(&mut tx, "backfill", &state)
            .await
            .expect("save");
        tx.commit().await.expect("commit");
    }
    let read: Harvest = catalog::checkpoint(&db.pool, "backfill")
        .await
        .expect("read")
        .expect("saved");
    assert_eq!(
        read,
        Harvest {
            token: Some("t2".into()),
            pages: 2
        }
    );
}
