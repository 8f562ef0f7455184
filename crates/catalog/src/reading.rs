//! Papers as readers see them: the latest version with its summary, for
//! feeds, search and subscription previews.

use arxiv::Author;
use serde::Serialize;
use sqlx::{PgPool, Row, postgres::PgRow, types::Json};
use time::OffsetDateTime;

use crate::Result;

/// A paper version with its newest summary, if it has one yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Card {
    pub arxiv_id: String,
    pub version: i32,
    pub title: String,
    pub abstract_text: String,
    pub authors: Vec<String>,
    pub categories: Vec<String>,
    pub primary_category: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub published_at: Option<OffsetDateTime>,
    pub abs_url: String,
    pub pdf_url: Option<String>,
    pub summary: Option<String>,
    /// Which model wrote the summary (`extractive` for the offline one).
    pub summary_provider: Option<String>,
}

impl Card {
    fn from_row(row: &PgRow) -> Result<Self> {
        Ok(Self {
            arxiv_id: row.try_get("arxiv_id")?,
            version: row.try_get("version")?,
            title: row.try_get("title")?,
            abstract_text: row.try_get("abstract")?,
            authors: row
                .try_get::<Json<Vec<Author>>, _>("authors")?
                .0
                .into_iter()
                .map(|a| a.name)
                .collect(),
            categories: row.try_get("categories")?,
            primary_category: row.try_get("primary_category")?,
            published_at: row.try_get("published_at")?,
            abs_url: row.try_get("abs_url")?,
            pdf_url: row.try_get("pdf_url")?,
            summary: row.try_get("summary")?,
            summary_provider: row.try_get("summary_provider")?,
        })
    }
}

macro_rules! card_select {
    () => {
        "SELECT p.arxiv_id, p.version, p.title, p.abstract, p.authors, p.categories, \
                p.primary_category, p.published_at, p.abs_url, p.pdf_url, \
                s.text AS summary, s.provider AS summary_provider \
         FROM papers p \
         LEFT JOIN LATERAL ( \
             SELECT text, provider FROM summaries \
             WHERE summaries.arxiv_id = p.arxiv_id AND summaries.version = p.version \
             ORDER BY prompt_version DESC LIMIT 1 \
         ) s ON true "
    };
}

/// One paper version with its summary.
pub async fn card(pool: &PgPool, arxiv_id: &str, version: i32) -> Result<Option<Card>> {
    let row = sqlx::query(concat!(
        card_select!(),
        "WHERE p.arxiv_id = $1 AND p.version = $2"
    ))
    .bind(arxiv_id)
    .bind(version)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(Card::from_row).transpose()
}

/// The newest version of each paper first seen in the last `days` days,
/// newest first: what a subscription preview matches against.
pub async fn recent(pool: &PgPool, days: i32, limit: i64) -> Result<Vec<Card>> {
    let rows = sqlx::query(concat!(
        card_select!(),
        "WHERE p.first_seen_at > now() - make_interval(days => $1) \
           AND NOT EXISTS (SELECT 1 FROM papers newer \
                           WHERE newer.arxiv_id = p.arxiv_id AND newer.version > p.version) \
         ORDER BY p.first_seen_at DESC, p.arxiv_id DESC LIMIT $2"
    ))
    .bind(days)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(Card::from_row).collect()
}

/// Papers matching a web-search style query (`"graph neural" -survey`),
/// best first, newest version of each.
pub async fn search(pool: &PgPool, query: &str, limit: i64, offset: i64) -> Result<Vec<Card>> {
    let rows = sqlx::query(concat!(
        card_select!(),
        "WHERE p.search @@ websearch_to_tsquery('english', $1) \
           AND NOT EXISTS (SELECT 1 FROM papers newer \
                           WHERE newer.arxiv_id = p.arxiv_id AND newer.version > p.version) \
         ORDER BY ts_rank(p.search, websearch_to_tsquery('english', $1)) DESC, \
                  p.first_seen_at DESC \
         LIMIT $2 OFFSET $3"
    ))
    .bind(query)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    rows.iter().map(Card::from_row).collect()
}

/// Several paper versions with their summaries, in the order asked.
pub async fn cards(pool: &PgPool, keys: &[(String, i32)]) -> Result<Vec<Card>> {
    let ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
    let versions: Vec<i32> = keys.iter().map(|(_, v)| *v).collect();
    let rows = sqlx::query(concat!(
        card_select!(),
        "JOIN unnest($1::text[], $2::int[]) WITH ORDINALITY AS k(arxiv_id, version, n) \
           ON k.arxiv_id = p.arxiv_id AND k.version = p.version \
         ORDER BY k.n"
    ))
    .bind(&ids)
    .bind(&versions)
    .fetch_all(pool)
    .await?;
    rows.iter().map(Card::from_row).collect()
}
