//! The announcement feeds (`rss.arxiv.org/atom/cs.LG+cs.AI`): what was
//! announced in the last mailing, rebuilt at midnight US Eastern, empty on
//! weekends. Each entry says whether the paper is new, a cross-list, or a
//! replacement (new version), possibly cross-listed.

use serde::{Deserialize, Serialize};

use crate::{
    ParseError, VersionedId,
    oai::split_authors,
    paper::{Paper, categories, non_blank, normalize, parse_date},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnnounceType {
    New,
    Cross,
    Replace,
    ReplaceCross,
}

impl AnnounceType {
    fn parse(text: &str) -> Result<Self, ParseError> {
        match text.trim() {
            "new" => Ok(Self::New),
            "cross" => Ok(Self::Cross),
            "replace" => Ok(Self::Replace),
            "replace-cross" => Ok(Self::ReplaceCross),
            other => Err(ParseError::invalid("announce type", format!("{other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub kind: AnnounceType,
    pub paper: Paper,
}

/// Parse an announcement feed.
pub fn parse(xml: &str) -> Result<Vec<Announcement>, ParseError> {
    let feed: Feed = quick_xml::de::from_str(xml)?;
    feed.entries
        .into_iter()
        .map(Entry::into_announcement)
        .collect()
}

#[derive(Debug, Deserialize)]
struct Feed {
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
    #[serde(rename = "category", default)]
    categories: Vec<Term>,
    announce_type: String,
    rights: Option<String>,
    creator: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Term {
    #[serde(rename = "@term")]
    term: String,
}

impl Entry {
    fn into_announcement(self) -> Result<Announcement, ParseError> {
        let versioned: VersionedId = self.id.parse()?;
        let kind = AnnounceType::parse(&self.announce_type)?;
        let all: Vec<String> = self.categories.into_iter().map(|c| c.term).collect();
        let primary = all.first().cloned().ok_or_else(|| {
            ParseError::invalid("announcement", format!("{} has no category", self.id))
        })?;
        let (abs_url, pdf_url) = Paper::links_for(&versioned.id, versioned.version);
        let published = self.published.as_deref().and_then(parse_date);
        Ok(Announcement {
            kind,
            paper: Paper {
                title: normalize(self.title.as_deref().unwrap_or_default()),
                abstract_text: strip_announce_prefix(self.summary.as_deref().unwrap_or_default()),
                authors: split_authors(self.creator.as_deref().unwrap_or_default()),
                // The feed lists the categories of this mailing; the
                // paper's own primary category comes from the query API.
                categories: categories(&primary, all),
                primary_category: primary,
                published,
                updated: self.updated.as_deref().and_then(parse_date).or(published),
                doi: None,
                journal_ref: None,
                comment: None,
                license: non_blank(self.rights.as_deref()),
                abs_url,
                pdf_url: Some(pdf_url),
                id: versioned.id,
                version: versioned.version,
            },
        })
    }
}

/// The summary reads `arXiv:<id>v<N> Announce Type: new Abstract: <text>`.
fn strip_announce_prefix(summary: &str) -> String {
    let text = normalize(summary);
    match text.split_once("Abstract:") {
        Some((head, abstract_text)) if head.contains("Announce Type") => {
            abstract_text.trim().to_owned()
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_header_is_not_part_of_the_abstract() {
        assert_eq!(
            strip_announce_prefix(
                "arXiv:2611.01234v1 Announce Type: new \nAbstract: We show  that."
            ),
            "We show that."
        );
        assert_eq!(
            strip_announce_prefix("Abstract: kept as is"),
            "Abstract: kept as is"
        );
    }
}
