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

#[tokio::test]
async fn readers_get_the_newest_version_with_its_newest_summary() {
    let db = database().await;
    let mut paper = paper_titled_zero();
    paper.title = "Sparse attention for graph transformers".into();
    paper.abstract_text = "We study sparse attention in graph transformers.".into();
    store(&db, &paper).await;
    let mut second = paper.clone();
    second.version = Some(2);
    second.abstract_text = "We study sparse attention in graph transformers, again.".into();
    store(&db, &second).await;
    for (prompt_version, text) in [(1, "old prompt"), (2, "new prompt")] {
        let mut tx = db.pool.begin().await.expect("begin");
        catalog::store_summary(
            &mut tx,
            &NewSummary {
                arxiv_id: "2104.12255",
                version: 2,
                prompt_version,
                provider: "ollama",
                model: "gemma3",
                text,
                extractive: false,
                input_tokens: 0,
                output_tokens: 0,
                cost_micro_usd: 0,
            },
        )
        .await
        .expect("summary");
        tx.commit().await.expect("commit");
    }
    let recent = catalog::reading::recent(&db.pool, 7, 10)
        .await
        .expect("recent");
    assert_eq!(recent.len(), 1, "one card per paper");
    assert_eq!(recent[0].version, 2);
    assert_eq!(recent[0].summary.as_deref(), Some("new prompt"));
    let found = catalog::reading::search(&db.pool, "\"graph transformers\" -quantum", 10, 0)
        .await
        .expect("search");
    assert_eq!(found.iter().map(|c| c.version).collect::<Vec<_>>(), [2]);
    assert!(
        catalog::reading::search(&db.pool, "quantum", 10, 0)
            .await
            .expect("search")
            .is_empty()
    );
    let first = catalog::reading::card(&db.pool, "2104.12255", 1)
        .await
        .expect("card")
        .expect("exists");
    assert_eq!(first.summary, None);
    let both = catalog::reading::cards(
        &db.pool,
        &[
            ("2104.12255".into(), 2),
            ("2104.12255".into(), 1),
            ("9999.99999".into(), 1),
        ],
    )
    .await
    .expect("cards");
    assert_eq!(both.iter().map(|c| c.version).collect::<Vec<_>>(), [2, 1]);
}
