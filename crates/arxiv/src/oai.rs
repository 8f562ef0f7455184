//! OAI-PMH `ListRecords` (`oaipmh.arxiv.org/oai`) in the `arXiv` and
//! `arXivRaw` metadata formats.
//!
//! A list comes in pages of up to 2500 records. A page ends with a
//! `resumptionToken`; an empty token ends the list. `noRecordsMatch` is an
//! empty window, not a failure. Datestamps are last-modification dates, so a
//! harvest also returns old papers that were just revised.

use serde::Deserialize;

use crate::{
    ParseError, VersionedId,
    paper::{Author, Paper, categories, non_blank, normalize, parse_date},
};

/// One page of a `ListRecords` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OaiPage {
    pub records: Vec<OaiRecord>,
    /// Where the next page starts; `None` when this page is the last.
    pub resumption: Option<Resumption>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OaiRecord {
    /// `oai:arXiv.org:<id>`.
    pub identifier: String,
    /// Last modification, `YYYY-MM-DD`.
    pub datestamp: String,
    pub sets: Vec<String>,
    /// Deleted records carry no metadata.
    pub paper: Option<Paper>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumption {
    pub token: String,
    pub cursor: Option<u64>,
    pub complete_list_size: Option<u64>,
}

/// Parse a `ListRecords` response in either metadata format.
pub fn parse(xml: &str) -> Result<OaiPage, ParseError> {
    let response: Response = quick_xml::de::from_str(xml)?;
    if let Some(error) = response.error {
        if error.code == "noRecordsMatch" {
            return Ok(OaiPage {
                records: Vec::new(),
                resumption: None,
            });
        }
        return Err(ParseError::Oai {
            code: error.code,
            message: normalize(&error.message),
        });
    }
    let list = response.list_records.unwrap_or_default();
    let records = list
        .records
        .into_iter()
        .map(Record::into_record)
        .collect::<Result<_, _>>()?;
    let resumption = list
        .resumption_token
        .map(|t| Resumption {
            token: t.token.trim().to_owned(),
            cursor: t.cursor,
            complete_list_size: t.complete_list_size,
        })
        .filter(|r| !r.token.is_empty());
    Ok(OaiPage {
        records,
        resumption,
    })
}

#[derive(Debug, Deserialize)]
struct Response {
    error: Option<OaiError>,
    #[serde(rename = "ListRecords")]
    list_records: Option<ListRecords>,
}

#[derive(Debug, Deserialize)]
struct OaiError {
    #[serde(rename = "@code")]
    code: String,
    #[serde(rename = "$text", default)]
    message: String,
}

#[derive(Debug, Default, Deserialize)]
struct ListRecords {
    #[serde(rename = "record", default)]
    records: Vec<Record>,
    #[serde(rename = "resumptionToken")]
    resumption_token: Option<Token>,
}

#[derive(Debug, Deserialize)]
struct Token {
    #[serde(rename = "$text", default)]
    token: String,
    #[serde(rename = "@cursor")]
    cursor: Option<u64>,
    #[serde(rename = "@completeListSize")]
    complete_list_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Record {
    header: Header,
    metadata: Option<Metadata>,
}

#[derive(Debug, Deserialize)]
struct Header {
    #[serde(rename = "@status")]
    status: Option<String>,
    identifier: String,
    datestamp: String,
    #[serde(rename = "setSpec", default)]
    sets: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    #[serde(rename = "arXiv")]
    arxiv: Option<ArxivFormat>,
    #[serde(rename = "arXivRaw")]
    raw: Option<RawFormat>,
}

/// The `arXiv` format: structured authors, no versions.
#[derive(Debug, Deserialize)]
struct ArxivFormat {
    id: String,
    created: Option<String>,
    updated: Option<String>,
    #[serde(default)]
    authors: Authors,
    title: Option<String>,
    categories: Option<String>,
    comments: Option<String>,
    #[serde(rename = "journal-ref")]
    journal_ref: Option<String>,
    doi: Option<String>,
    license: Option<String>,
    #[serde(rename = "abstract")]
    abstract_text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Authors {
    #[serde(rename = "author", default)]
    authors: Vec<StructuredAuthor>,
}

#[derive(Debug, Deserialize)]
struct StructuredAuthor {
    keyname: String,
    forenames: Option<String>,
    suffix: Option<String>,
    #[serde(rename = "affiliation", default)]
    affiliations: Vec<String>,
}

/// The `arXivRaw` format: authors as submitted, every version with its date.
#[derive(Debug, Deserialize)]
struct RawFormat {
    id: String,
    #[serde(rename = "version", default)]
    versions: Vec<RawVersion>,
    title: Option<String>,
    authors: Option<String>,
    categories: Option<String>,
    comments: Option<String>,
    #[serde(rename = "journal-ref")]
    journal_ref: Option<String>,
    doi: Option<String>,
    license: Option<String>,
    #[serde(rename = "abstract")]
    abstract_text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawVersion {
    #[serde(rename = "@version")]
    version: String,
    date: Option<String>,
}

impl Record {
    fn into_record(self) -> Result<OaiRecord, ParseError> {
        let deleted = self.header.status.as_deref() == Some("deleted");
        let paper = match (deleted, self.metadata) {
            (true, _) | (false, None) => None,
            (false, Some(Metadata { arxiv: Some(m), .. })) => Some(m.into_paper()?),
            (false, Some(Metadata { raw: Some(m), .. })) => Some(m.into_paper()?),
            (false, Some(_)) => {
                return Err(ParseError::invalid(
                    "OAI-PMH record",
                    format!(
                        "{} has metadata in neither the arXiv nor the arXivRaw format",
                        self.header.identifier
                    ),
                ));
            }
        };
        Ok(OaiRecord {
            identifier: self.header.identifier.trim().to_owned(),
            datestamp: self.header.datestamp.trim().to_owned(),
            sets: self
                .header
                .sets
                .iter()
                .map(|s| s.trim().to_owned())
                .collect(),
            paper,
        })
    }
}

fn split_categories(text: Option<&str>) -> (String, Vec<String>) {
    let all: Vec<String> = text
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let primary = all.first().cloned().unwrap_or_default();
    (primary, all)
}

impl ArxivFormat {
    fn into_paper(self) -> Result<Paper, ParseError> {
        let versioned: VersionedId = self.id.parse()?;
        let (primary, all) = split_categories(self.categories.as_deref());
        let (abs_url, pdf_url) = Paper::links_for(&versioned.id, None);
        let published = self.created.as_deref().and_then(parse_date);
        Ok(Paper {
            title: normalize(self.title.as_deref().unwrap_or_default()),
            abstract_text: normalize(self.abstract_text.as_deref().unwrap_or_default()),
            authors: self
                .authors
                .authors
                .into_iter()
                .map(|a| {
                    let parts = [
                        a.forenames.as_deref(),
                        Some(a.keyname.as_str()),
                        a.suffix.as_deref(),
                    ];
                    Author {
                        name: normalize(&parts.into_iter().flatten().collect::<Vec<_>>().join(" ")),
                        affiliations: a
                            .affiliations
                            .iter()
                            .map(|s| normalize(s))
                            .filter(|s| !s.is_empty())
                            .collect(),
                    }
                })
                .collect(),
            categories: categories(&primary, all),
            primary_category: primary,
            published,
            updated: self.updated.as_deref().and_then(parse_date).or(published),
            doi: non_blank(self.doi.as_deref()),
            journal_ref: non_blank(self.journal_ref.as_deref()),
            comment: non_blank(self.comments.as_deref()),
            license: non_blank(self.license.as_deref()),
            abs_url,
            pdf_url: Some(pdf_url),
            id: versioned.id,
            version: versioned.version,
        })
    }
}

impl RawFormat {
    fn into_paper(self) -> Result<Paper, ParseError> {
        let versioned: VersionedId = self.id.parse()?;
        let mut versions: Vec<(u32, Option<time::OffsetDateTime>)> = self
            .versions
            .iter()
            .map(|v| {
                let number = v
                    .version
                    .trim()
                    .trim_start_matches('v')
                    .parse()
                    .map_err(|_| {
                        ParseError::invalid(
                            "arXivRaw version",
                            format!("{:?} of {}", v.version, self.id),
                        )
                    })?;
                Ok((number, v.date.as_deref().and_then(parse_date)))
            })
            .collect::<Result<_, ParseError>>()?;
        versions.sort_by_key(|(n, _)| *n);
        let latest = versions.last().map(|(n, _)| *n).or(versioned.version);
        let (primary, all) = split_categories(self.categories.as_deref());
        let (abs_url, pdf_url) = Paper::links_for(&versioned.id, latest);
        Ok(Paper {
            title: normalize(self.title.as_deref().unwrap_or_default()),
            abstract_text: normalize(self.abstract_text.as_deref().unwrap_or_default()),
            authors: split_authors(self.authors.as_deref().unwrap_or_default()),
            categories: categories(&primary, all),
            primary_category: primary,
            published: versions.first().and_then(|(_, d)| *d),
            updated: versions.last().and_then(|(_, d)| *d),
            doi: non_blank(self.doi.as_deref()),
            journal_ref: non_blank(self.journal_ref.as_deref()),
            comment: non_blank(self.comments.as_deref()),
            license: non_blank(self.license.as_deref()),
            abs_url,
            pdf_url: Some(pdf_url),
            id: versioned.id,
            version: latest,
        })
    }
}

/// Authors as submitted: `A. One, B. Two (Some Univ.) and C. Three`. A
/// parenthesised part is taken as the affiliation.
pub(crate) fn split_authors(text: &str) -> Vec<Author> {
    let text = normalize(text);
    let mut names: Vec<&str> = Vec::new();
    for part in text.split(", ") {
        names.extend(part.split(" and ").map(str::trim).filter(|n| !n.is_empty()));
    }
    names
        .into_iter()
        .map(|name| match name.split_once(" (") {
            Some((name, rest)) => Author {
                name: name.trim().to_owned(),
                affiliations: vec![rest.trim_end_matches(')').trim().to_owned()],
            },
            None => Author {
                name: name.to_owned(),
                affiliations: Vec::new(),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submitted_author_lists_split_into_people() {
        let authors = split_authors("A. One, B.  Two (Univ. of X) and\n C. Three");
        let names: Vec<&str> = authors.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["A. One", "B. Two", "C. Three"]);
        assert_eq!(authors[1].affiliations, ["Univ. of X"]);
    }
}
