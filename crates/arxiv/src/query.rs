//! The query API (`export.arxiv.org/api/query`): an Atom feed with
//! OpenSearch paging. Bad ids or arguments come back as a feed whose only
//! entry describes the error (with HTTP 400); that becomes
//! [`ParseError::Api`].

use serde::Deserialize;

use crate::{
    ParseError, VersionedId,
    paper::{Author, Paper, categories, non_blank, normalize, parse_date},
};

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPage {
    pub total_results: u64,
    pub start_index: u64,
    pub items_per_page: u64,
    pub papers: Vec<Paper>,
}

/// Parse a query API response.
pub fn parse(xml: &str) -> Result<QueryPage, ParseError> {
    let feed: Feed = quick_xml::de::from_str(xml)?;
    if let Some(error) = feed
        .entries
        .iter()
        .find(|e| e.id.contains("arxiv.org/api/errors"))
    {
        return Err(ParseError::Api {
            message: error.summary.as_deref().map(normalize).unwrap_or_default(),
        });
    }
    let papers = feed
        .entries
        .into_iter()
        .map(Entry::into_paper)
        .collect::<Result<_, _>>()?;
    Ok(QueryPage {
        total_results: feed.total_results.unwrap_or(0),
        start_index: feed.start_index.unwrap_or(0),
        items_per_page: feed.items_per_page.unwrap_or(0),
        papers,
    })
}

#[derive(Debug, Deserialize)]
struct Feed {
    #[serde(rename = "totalResults")]
    total_results: Option<u64>,
    #[serde(rename = "startIndex")]
    start_index: Option<u64>,
    #[serde(rename = "itemsPerPage")]
    items_per_page: Option<u64>,
    #[serde(rename = "entry", default)]
    entries: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    id: String,
    title: Option<String>,
    summary: Option<String>,
    published: Option<String>,
    updated: Option<String>,
    #[serde(rename = "author", default)]
    authors: Vec<EntryAuthor>,
    #[serde(rename = "category", default)]
    categories: Vec<Term>,
    primary_category: Option<Term>,
    #[serde(rename = "link", default)]
    links: Vec<Link>,
    comment: Option<String>,
    journal_ref: Option<String>,
    doi: Option<String>,
}

#[derive(Debug, Deserialize)]
struct EntryAuthor {
    name: String,
    #[serde(rename = "affiliation", default)]
    affiliations: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Term {
    #[serde(rename = "@term")]
    term: String,
}

#[derive(Debug, Deserialize)]
struct Link {
    #[serde(rename = "@href")]
    href: String,
    #[serde(rename = "@title")]
    title: Option<String>,
}

impl Entry {
    fn into_paper(self) -> Result<Paper, ParseError> {
        let versioned: VersionedId = self.id.parse()?;
        let all: Vec<String> = self.categories.into_iter().map(|c| c.term).collect();
        let primary = self
            .primary_category
            .map(|c| c.term)
            .or_else(|| all.first().cloned())
            .ok_or_else(|| ParseError::invalid("entry", format!("{} has no category", self.id)))?;
        let (abs_url, default_pdf) = Paper::links_for(&versioned.id, versioned.version);
        let pdf_url = self
            .links
            .iter()
            .find(|l| l.title.as_deref() == Some("pdf"))
            .map(|l| l.href.clone())
            .unwrap_or(default_pdf);
        Ok(Paper {
            title: normalize(self.title.as_deref().unwrap_or_default()),
            abstract_text: normalize(self.summary.as_deref().unwrap_or_default()),
            authors: self
                .authors
                .into_iter()
                .map(|a| Author {
                    name: normalize(&a.name),
                    affiliations: a
                        .affiliations
                        .iter()
                        .map(|s| normalize(s))
                        .filter(|s| !s.is_empty())
                        .collect(),
                })
                .collect(),
            categories: categories(&primary, all),
            primary_category: primary,
            published: self.published.as_deref().and_then(parse_date),
            updated: self.updated.as_deref().and_then(parse_date),
            doi: non_blank(self.doi.as_deref()),
            journal_ref: non_blank(self.journal_ref.as_deref()),
            comment: non_blank(self.comment.as_deref()),
            license: None,
            abs_url,
            pdf_url: Some(pdf_url),
            id: versioned.id,
            version: versioned.version,
        })
    }
}
