//! A subscription as a person fills it in, validated field by field.

use serde::Serialize;

use crate::query::{Query, QueryError};

/// Most categories one subscription may name.
pub const MAX_CATEGORIES: usize = 20;
/// Most authors one subscription may name.
pub const MAX_AUTHORS: usize = 20;
pub const MAX_NAME: usize = 100;
pub const MAX_AUTHOR: usize = 100;

/// What is wrong with one field, in words for the person who filled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A valid subscription: at least one of categories, query and authors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    /// Canonical codes (`cs.LG`, `math`).
    pub categories: Vec<String>,
    /// The query as typed, and parsed.
    pub query: Option<(String, Query)>,
    pub authors: Vec<String>,
}

impl Spec {
    /// Validate a subscription from its form fields: categories separated
    /// by commas or spaces, authors by commas, semicolons or new lines.
    /// Every wrong field is reported.
    pub fn parse(
        name: &str,
        categories: &str,
        query: &str,
        authors: &str,
    ) -> Result<Self, Vec<FieldError>> {
        Self::from_parts(
            name,
            &categories
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>(),
            query,
            &authors
                .split([',', ';', '\n'])
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>(),
        )
    }

    /// Validate a subscription given as lists (the JSON API).
    pub fn from_parts(
        name: &str,
        categories: &[&str],
        query: &str,
        authors: &[&str],
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let name = name.trim();
        if name.chars().count() > MAX_NAME {
            errors.push(FieldError::new(
                "name",
                format!("use at most {MAX_NAME} characters"),
            ));
        }
        let mut canonical = Vec::new();
        for category in categories
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
        {
            match arxiv::taxonomy::canonical(category) {
                Some(code) if !canonical.contains(&code.to_owned()) => {
                    canonical.push(code.to_owned());
                }
                Some(_) => {}
                None => errors.push(FieldError::new(
                    "categories",
                    format!(
                        "arXiv has no category {:?}; use codes such as cs.LG or math",
                        shorten(category)
                    ),
                )),
            }
        }
        if canonical.len() > MAX_CATEGORIES {
            errors.push(FieldError::new(
                "categories",
                format!("name at most {MAX_CATEGORIES} categories"),
            ));
        }
        let query_text = query.trim();
        let parsed = if query_text.is_empty() {
            None
        } else {
            match Query::parse(query_text) {
                Ok(parsed) => Some((query_text.to_owned(), parsed)),
                Err(QueryError { message, position }) => {
                    errors.push(FieldError::new(
                        "query",
                        format!("{message} (at character {position})"),
                    ));
                    None
                }
            }
        };
        let mut people = Vec::new();
        for author in authors.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            if author.chars().count() > MAX_AUTHOR {
                errors.push(FieldError::new(
                    "authors",
                    format!("an author's name has at most {MAX_AUTHOR} characters"),
                ));
            } else if !people
                .iter()
                .any(|p: &String| p.eq_ignore_ascii_case(author))
            {
                people.push(author.to_owned());
            }
        }
        if people.len() > MAX_AUTHORS {
            errors.push(FieldError::new(
                "authors",
                format!("name at most {MAX_AUTHORS} authors"),
            ));
        }
        if errors.is_empty() && canonical.is_empty() && parsed.is_none() && people.is_empty() {
            errors.push(FieldError::new(
                "query",
                "give categories, a keyword query or authors (or several)",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let name = if name.is_empty() {
            default_name(
                &canonical,
                parsed.as_ref().map(|(q, _)| q.as_str()),
                &people,
            )
        } else {
            name.to_owned()
        };
        Ok(Self {
            name,
            categories: canonical,
            query: parsed,
            authors: people,
        })
    }

    pub fn query_text(&self) -> Option<&str> {
        self.query.as_ref().map(|(text, _)| text.as_str())
    }
}

fn default_name(categories: &[String], query: Option<&str>, authors: &[String]) -> String {
    let mut parts = Vec::new();
    if let Some(query) = query {
        parts.push(query.to_owned());
    }
    if !categories.is_empty() {
        parts.push(format!("in {}", categories.join(", ")));
    }
    if !authors.is_empty() {
        parts.push(format!("by {}", authors.join(", ")));
    }
    shorten(&parts.join(" "))
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_NAME {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_NAME - 1).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_forms() {
        let spec =
            Spec::parse("", "cs.lg, stat.ML cs.LG", "\"graph neural\" -survey", "").expect("valid");
        assert_eq!(spec.categories, ["cs.LG", "stat.ML"]);
        assert_eq!(spec.query_text(), Some("\"graph neural\" -survey"));
        assert_eq!(spec.name, "\"graph neural\" -survey in cs.LG, stat.ML");
        let authors = Spec::parse(
            "People",
            "",
            "",
            "Yoshua Bengio; Geoffrey Hinton\nyoshua bengio",
        )
        .expect("valid");
        assert_eq!(authors.authors, ["Yoshua Bengio", "Geoffrey Hinton"]);
    }

    #[test]
    fn every_wrong_field_is_explained() {
        let errors =
            Spec::parse(&"n".repeat(101), "cs.XX", "graph AND (", "").expect_err("invalid");
        let fields: Vec<&str> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["name", "categories", "query"]);
        assert!(errors[1].message.contains("cs.XX"));
        assert!(errors[2].message.contains("at character"));
        let empty = Spec::parse("name only", "", "  ", "").expect_err("nothing to follow");
        assert_eq!(empty[0].field, "query");
        let many: Vec<String> = (0..25).map(|i| format!("Author {i}")).collect();
        let errors = Spec::parse("", "", "", &many.join(";")).expect_err("too many");
        assert_eq!(errors[0].field, "authors");
    }
}
