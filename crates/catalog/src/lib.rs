//! # catalog: papers and summaries in Postgres
//!
//! This crate owns the tables of what paperstream knows about papers: one
//! row per paper version (cross-listings share it), one summary per paper
//! version and prompt version, and the checkpoints of long crawls. It owns
//! their migrations too. Writes take the caller's transaction, so that a
//! paper and the event announcing it (see the `outbox` crate) commit
//! together.

pub mod reading;

use arxiv::{Author, Paper};
use serde::{Serialize, de::DeserializeOwned};
use sqlx::{PgConnection, PgPool, Row, postgres::PgPoolOptions, types::Json};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("paper {0} has no version; only interfaces that tell versions can be stored")]
    NoVersion(String),
    #[error("checkpoint {name} does not decode: {source}")]
    Checkpoint {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The catalog's migrations. They record themselves in the shared
/// `_sqlx_migrations` table next to other crates' migrations, so each crate
/// ignores versions it does not know.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

/// A pool with the settings every service uses.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await?)
}

/// Whether the database answers, for readiness checks.
pub async fn ping(pool: PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// What storing a paper version did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A version seen for the first time.
    New,
    /// A known version whose metadata changed (a DOI or journal reference
    /// added later, a corrected title).
    Updated,
    /// Nothing new: a repeat, or the same version in another category.
    Unchanged,
}

/// Store one paper version inside the caller's transaction.
pub async fn store_paper(tx: &mut PgConnection, paper: &Paper) -> Result<Stored> {
    let version = paper
        .version
        .ok_or_else(|| Error::NoVersion(paper.id.to_string()))?;
    let version = i32::try_from(version).map_err(|_| Error::NoVersion(paper.id.to_string()))?;
    // xmax = 0 tells an inserted row from an updated one; the WHERE makes an
    // identical repeat touch nothing.
    let row = sqlx::query(
        "INSERT INTO papers (arxiv_id, version, title, abstract, authors, categories, primary_category,
                             published_at, updated_at, doi, journal_ref, comment, license, abs_url, pdf_url)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (arxiv_id, version) DO UPDATE SET
             title = EXCLUDED.title, abstract = EXCLUDED.abstract, authors = EXCLUDED.authors,
             categories = (SELECT array_agg(DISTINCT c) FROM unnest(papers.categories || EXCLUDED.categories) c),
             doi = coalesce(EXCLUDED.doi, papers.doi),
             journal_ref = coalesce(EXCLUDED.journal_ref, papers.journal_ref),
             comment = coalesce(EXCLUDED.comment, papers.comment),
             license = coalesce(EXCLUDED.license, papers.license),
             changed_at = now()
         WHERE (papers.title, papers.abstract, papers.authors) IS DISTINCT FROM
                   (EXCLUDED.title, EXCLUDED.abstract, EXCLUDED.authors)
            OR NOT papers.categories @> EXCLUDED.categories
            OR (EXCLUDED.doi IS NOT NULL AND papers.doi IS DISTINCT FROM EXCLUDED.doi)
            OR (EXCLUDED.journal_ref IS NOT NULL AND papers.journal_ref IS DISTINCT FROM EXCLUDED.journal_ref)
            OR (EXCLUDED.comment IS NOT NULL AND papers.comment IS DISTINCT FROM EXCLUDED.comment)
            OR (EXCLUDED.license IS NOT NULL AND papers.license IS DISTINCT FROM EXCLUDED.license)
         RETURNING (xmax = 0) AS inserted",
    )
    .bind(paper.id.as_str())
    .bind(version)
    .bind(&paper.title)
    .bind(&paper.abstract_text)
    .bind(Json(&paper.authors))
    .bind(&paper.categories)
    .bind(&paper.primary_category)
    .bind(paper.published)
    .bind(paper.updated)
    .bind(&paper.doi)
    .bind(&paper.journal_ref)
    .bind(&paper.comment)
    .bind(&paper.license)
    .bind(&paper.abs_url)
    .bind(&paper.pdf_url)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(match row {
        None => Stored::Unchanged,
        Some(row) if row.try_get::<bool, _>("inserted")? => Stored::New,
        Some(_) => Stored::Updated,
    })
}

/// A stored paper version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredPaper {
    pub arxiv_id: String,
    pub version: i32,
    pub title: String,
    pub abstract_text: String,
    pub authors: Vec<Author>,
    pub categories: Vec<String>,
    pub primary_category: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub published_at: Option<OffsetDateTime>,
    pub doi: Option<String>,
    pub abs_url: String,
    pub pdf_url: Option<String>,
}

pub async fn paper(pool: &PgPool, arxiv_id: &str, version: i32) -> Result<Option<StoredPaper>> {
    let row = sqlx::query(
        "SELECT arxiv_id, version, title, abstract, authors, categories, primary_category,
                published_at, doi, abs_url, pdf_url
         FROM papers WHERE arxiv_id = $1 AND version = $2",
    )
    .bind(arxiv_id)
    .bind(version)
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(StoredPaper {
            arxiv_id: row.try_get("arxiv_id")?,
            version: row.try_get("version")?,
            title: row.try_get("title")?,
            abstract_text: row.try_get("abstract")?,
            authors: row.try_get::<Json<Vec<Author>>, _>("authors")?.0,
            categories: row.try_get("categories")?,
            primary_category: row.try_get("primary_category")?,
            published_at: row.try_get("published_at")?,
            doi: row.try_get("doi")?,
            abs_url: row.try_get("abs_url")?,
            pdf_url: row.try_get("pdf_url")?,
        })
    })
    .transpose()
}

/// A summary to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSummary<'a> {
    pub arxiv_id: &'a str,
    pub version: i32,
    pub prompt_version: i32,
    pub provider: &'a str,
    pub model: &'a str,
    pub text: &'a str,
    pub extractive: bool,
    pub input_tokens: i32,
    pub output_tokens: i32,
    pub cost_micro_usd: i64,
}

/// Store a summary unless one exists for its paper and prompt version.
/// Returns whether this call stored it.
pub async fn store_summary(tx: &mut PgConnection, summary: &NewSummary<'_>) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO summaries (arxiv_id, version, prompt_version, provider, model, text, extractive,
                                input_tokens, output_tokens, cost_micro_usd)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT DO NOTHING",
    )
    .bind(summary.arxiv_id)
    .bind(summary.version)
    .bind(summary.prompt_version)
    .bind(summary.provider)
    .bind(summary.model)
    .bind(summary.text)
    .bind(summary.extractive)
    .bind(summary.input_tokens)
    .bind(summary.output_tokens)
    .bind(summary.cost_micro_usd)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn has_summary(
    pool: &PgPool,
    arxiv_id: &str,
    version: i32,
    prompt_version: i32,
) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM summaries WHERE arxiv_id = $1 AND version = $2 AND prompt_version = $3)",
    )
    .bind(arxiv_id)
    .bind(version)
    .bind(prompt_version)
    .fetch_one(pool)
    .await?)
}

/// The saved state of crawl `name`, if any.
pub async fn checkpoint<S: DeserializeOwned>(pool: &PgPool, name: &str) -> Result<Option<S>> {
    let state: Option<Json<serde_json::Value>> =
        sqlx::query_scalar("SELECT state FROM crawl_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    state
        .map(|Json(value)| {
            serde_json::from_value(value).map_err(|source| Error::Checkpoint {
                name: name.to_owned(),
                source,
            })
        })
        .transpose()
}

/// Save crawl `name`'s state in the caller's transaction, with the papers
/// it covers.
pub async fn save_checkpoint<S: Serialize + Sync>(
    tx: &mut PgConnection,
    name: &str,
    state: &S,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO crawl_checkpoints (name, state) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
    )
    .bind(name)
    .bind(Json(state))
    .execute(&mut *tx)
    .await?;
    Ok(())
}
