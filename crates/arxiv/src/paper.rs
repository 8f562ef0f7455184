//! The one model every interface is read into.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ArxivId;

/// One version of one paper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Paper {
    pub id: ArxivId,
    /// Not every interface tells: OAI-PMH's `arXiv` format does not.
    pub version: Option<u32>,
    /// Whitespace normalized: runs of spaces and newlines become one space.
    pub title: String,
    pub abstract_text: String,
    pub authors: Vec<Author>,
    /// Primary category first, then the cross-lists, without repeats.
    pub categories: Vec<String>,
    pub primary_category: String,
    /// When version 1 was submitted.
    #[serde(with = "time::serde::rfc3339::option")]
    pub published: Option<OffsetDateTime>,
    /// When this version was submitted or last changed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated: Option<OffsetDateTime>,
    pub doi: Option<String>,
    pub journal_ref: Option<String>,
    pub comment: Option<String>,
    pub license: Option<String>,
    /// The abstract page; PDFs are linked, never hosted.
    pub abs_url: String,
    pub pdf_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    pub name: String,
    pub affiliations: Vec<String>,
}

impl Paper {
    pub(crate) fn links_for(id: &ArxivId, version: Option<u32>) -> (String, String) {
        let versioned = match version {
            Some(v) => format!("{id}v{v}"),
            None => id.to_string(),
        };
        (
            format!("https://arxiv.org/abs/{versioned}"),
            format!("https://arxiv.org/pdf/{versioned}"),
        )
    }
}

/// Collapse every run of whitespace into one space and trim the ends.
pub(crate) fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// `Some(normalized)` unless blank.
pub(crate) fn non_blank(text: Option<&str>) -> Option<String> {
    text.map(normalize).filter(|t| !t.is_empty())
}

/// Primary first, then the rest in order, each once.
pub(crate) fn categories(primary: &str, all: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = vec![primary.to_owned()];
    for c in all {
        if !c.is_empty() && !out.contains(&c) {
            out.push(c);
        }
    }
    out.retain(|c| !c.is_empty());
    out
}

/// Dates come as RFC 3339 (`2021-04-20T16:07:14Z`, `...-05:00`), as plain
/// days (`2021-04-20`, OAI-PMH) or in RFC 2822 (`Mon, 2 Apr 2007 19:18:42
/// GMT`, arXivRaw versions).
pub(crate) fn parse_date(text: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::{Rfc2822, Rfc3339};
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(t);
    }
    if let Ok(day) = time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    ) {
        return Some(day.midnight().assume_utc());
    }
    let rfc2822 = text.strip_suffix(" GMT").map(|t| format!("{t} +0000"));
    OffsetDateTime::parse(rfc2822.as_deref().unwrap_or(text), &Rfc2822).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_normalized() {
        assert_eq!(
            normalize("  Quantum\n   codes\tand  more \n"),
            "Quantum codes and more"
        );
        assert_eq!(normalize("0"), "0");
        assert_eq!(non_blank(Some("  \n ")), None);
    }

    #[test]
    fn dates_in_every_format_seen() {
        let rfc3339 = parse_date("2021-04-20T16:07:14Z").expect("rfc3339");
        assert_eq!(rfc3339.unix_timestamp(), 1_618_934_834);
        assert_eq!(
            parse_date("2026-11-20T00:00:00-05:00")
                .expect("offset")
                .offset()
                .whole_hours(),
            -5
        );
        assert_eq!(
            parse_date("2007-04-02").expect("day").unix_timestamp(),
            1_175_472_000
        );
        assert_eq!(
            parse_date("Mon, 2 Apr 2007 19:18:42 GMT")
                .expect("rfc2822")
                .unix_timestamp(),
            1_175_541_522
        );
        assert!(parse_date("yesterday").is_none());
    }

    #[test]
    fn categories_put_the_primary_first_once() {
        let c = categories("cs.LG", ["stat.ML".into(), "cs.LG".into(), "cs.AI".into()]);
        assert_eq!(c, ["cs.LG", "stat.ML", "cs.AI"]);
    }
}
