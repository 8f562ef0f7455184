//! The keyword query language.
//!
//! ```text
//! graph neural "message passing" -survey
//! (privacy OR "differential privacy") AND NOT blockchain
//! ```
//!
//! Terms are words or quoted phrases, matched case-insensitively as whole
//! words in a paper's title and abstract. Terms next to each other must all
//! match (`AND` may be written out); `OR` offers alternatives; `NOT` or a
//! leading `-` excludes; parentheses group. `AND` binds tighter than `OR`.
//! A query needs at least one term that must be present, so that it cannot
//! match nearly every paper.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A parsed query. Terms are normalized: lowercase words separated by one
/// space.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Query {
    Term(String),
    And(Vec<Query>),
    Or(Vec<Query>),
    Not(Box<Query>),
}

/// Why a query was refused, in words for the person who wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {position})")]
pub struct QueryError {
    pub message: String,
    /// 1-based character position in the query text.
    pub position: usize,
}

/// Longest query accepted, in characters.
pub const MAX_QUERY_LENGTH: usize = 500;
/// Most terms in one query.
pub const MAX_TERMS: usize = 32;

impl Query {
    pub fn parse(text: &str) -> Result<Self, QueryError> {
        if text.chars().count() > MAX_QUERY_LENGTH {
            return Err(QueryError {
                message: format!("the query is longer than {MAX_QUERY_LENGTH} characters"),
                position: MAX_QUERY_LENGTH + 1,
            });
        }
        let tokens = lex(text)?;
        if tokens.is_empty() {
            return Err(QueryError {
                message: "the query is empty".into(),
                position: 1,
            });
        }
        let mut parser = Parser { tokens, at: 0 };
        let query = parser.or()?;
        if let Some(extra) = parser.tokens.get(parser.at) {
            return Err(QueryError {
                message: match extra.kind {
                    TokenKind::Close => "this closing parenthesis has no opening one".into(),
                    _ => "unexpected text here".into(),
                },
                position: extra.position,
            });
        }
        let terms = query.terms().len();
        if terms > MAX_TERMS {
            return Err(QueryError {
                message: format!("the query has {terms} terms; at most {MAX_TERMS} are allowed"),
                position: 1,
            });
        }
        if !query.has_required_term() {
            return Err(QueryError {
                message: "the query only excludes; add a word or phrase that papers must contain"
                    .into(),
                position: 1,
            });
        }
        Ok(query)
    }

    /// Every term, in order of appearance, including excluded ones.
    pub fn terms(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_terms(&mut out);
        out
    }

    fn collect_terms<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Self::Term(t) => out.push(t),
            Self::And(parts) | Self::Or(parts) => parts.iter().for_each(|p| p.collect_terms(out)),
            Self::Not(inner) => inner.collect_terms(out),
        }
    }

    /// Whether every way to satisfy the query needs some term present.
    fn has_required_term(&self) -> bool {
        match self {
            Self::Term(_) => true,
            Self::Not(_) => false,
            Self::And(parts) => parts.iter().any(Query::has_required_term),
            Self::Or(parts) => parts.iter().all(Query::has_required_term),
        }
    }

    /// Whether any one of its terms being present is the whole match: a
    /// term, or alternatives of terms.
    pub fn is_any_of_terms(&self) -> bool {
        match self {
            Self::Term(_) => true,
            Self::Or(parts) => parts.iter().all(Query::is_any_of_terms),
            Self::And(_) | Self::Not(_) => false,
        }
    }

    /// Evaluate with `present` telling which terms occur in the paper.
    pub fn matches(&self, present: &impl Fn(&str) -> bool) -> bool {
        match self {
            Self::Term(t) => present(t),
            Self::And(parts) => parts.iter().all(|p| p.matches(present)),
            Self::Or(parts) => parts.iter().any(|p| p.matches(present)),
            Self::Not(inner) => !inner.matches(present),
        }
    }

    /// Terms of which at least one must be present for the query to match:
    /// the smallest such set found by walking the query. A matcher files
    /// the query under these terms only.
    pub fn anchor_terms(&self, rarity: &impl Fn(&str) -> u64) -> Vec<&str> {
        match self {
            Self::Term(t) => vec![t.as_str()],
            Self::Not(_) => Vec::new(),
            Self::Or(parts) => parts.iter().flat_map(|p| p.anchor_terms(rarity)).collect(),
            // Any one required part will do: take the cheapest.
            Self::And(parts) => parts
                .iter()
                .filter(|p| p.has_required_term())
                .map(|p| p.anchor_terms(rarity))
                .min_by_key(|terms| terms.iter().map(|t| rarity(t)).sum::<u64>())
                .unwrap_or_default(),
        }
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Term(t) if t.contains(' ') => write!(f, "\"{t}\""),
            Self::Term(t) => f.write_str(t),
            Self::Not(inner) => write!(f, "NOT {inner}"),
            Self::And(parts) | Self::Or(parts) => {
                let glue = if matches!(self, Self::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                f.write_str("(")?;
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(glue)?;
                    }
                    write!(f, "{p}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// Lowercase words of `text`: letters, digits and inner hyphens; all else
/// separates. Papers and queries go through the same function.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .map(|w| w.trim_matches('-'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenKind {
    Word(String),
    Phrase(String),
    And,
    Or,
    Not,
    Open,
    Close,
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    position: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let position = i + 1;
        match c {
            c if c.is_whitespace() => i += 1,
            '(' | ')' => {
                tokens.push(Token {
                    kind: if c == '(' {
                        TokenKind::Open
                    } else {
                        TokenKind::Close
                    },
                    position,
                });
                i += 1;
            }
            '"' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|c| *c == '"')
                    .ok_or_else(|| QueryError {
                        message: "this quote is never closed".into(),
                        position,
                    })?;
                let inner: String = chars[i + 1..i + 1 + end].iter().collect();
                let phrase = words(&inner).collect::<Vec<_>>().join(" ");
                if phrase.is_empty() {
                    return Err(QueryError {
                        message: "the quotes hold no words".into(),
                        position,
                    });
                }
                tokens.push(Token {
                    kind: TokenKind::Phrase(phrase),
                    position,
                });
                i += end + 2;
            }
            // At the start of a token, `-word` excludes; inside a word
            // (`self-supervised`) a hyphen is part of it.
            '-' if chars.get(i + 1).is_some_and(|n| !n.is_whitespace()) => {
                tokens.push(Token {
                    kind: TokenKind::Not,
                    position,
                });
                i += 1;
            }
            _ => {
                let len = chars[i..]
                    .iter()
                    .position(|c| c.is_whitespace() || matches!(c, '(' | ')' | '"'))
                    .unwrap_or(chars.len() - i);
                let raw: String = chars[i..i + len].iter().collect();
                let kind = match raw.as_str() {
                    "AND" => TokenKind::And,
                    "OR" => TokenKind::Or,
                    "NOT" => TokenKind::Not,
                    _ => {
                        let normalized = words(&raw).collect::<Vec<_>>().join(" ");
                        if normalized.is_empty() {
                            return Err(QueryError {
                                message: format!("{raw:?} is not a word"),
                                position,
                            });
                        }
                        // `foo-bar.baz` becomes the phrase "foo-bar baz".
                        if normalized.contains(' ') {
                            TokenKind::Phrase(normalized)
                        } else {
                            TokenKind::Word(normalized)
                        }
                    }
                };
                tokens.push(Token { kind, position });
                i += len;
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&TokenKind> {
        self.tokens.get(self.at).map(|t| &t.kind)
    }

    fn position(&self) -> usize {
        self.tokens
            .get(self.at)
            .map(|t| t.position)
            .or_else(|| self.tokens.last().map(|t| t.position + 1))
            .unwrap_or(1)
    }

    fn or(&mut self) -> Result<Query, QueryError> {
        let mut parts = vec![self.and()?];
        while self.peek() == Some(&TokenKind::Or) {
            self.at += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Query::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Query, QueryError> {
        let mut parts = vec![self.unary()?];
        loop {
            match self.peek() {
                Some(TokenKind::And) => {
                    self.at += 1;
                    parts.push(self.unary()?);
                }
                Some(
                    TokenKind::Word(_) | TokenKind::Phrase(_) | TokenKind::Not | TokenKind::Open,
                ) => {
                    parts.push(self.unary()?);
                }
                _ => break,
            }
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Query::And(parts)
        })
    }

    fn unary(&mut self) -> Result<Query, QueryError> {
        if self.peek() == Some(&TokenKind::Not) {
            self.at += 1;
            return Ok(Query::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Query, QueryError> {
        let position = self.position();
        match self.peek().cloned() {
            Some(TokenKind::Word(w) | TokenKind::Phrase(w)) => {
                self.at += 1;
                Ok(Query::Term(w))
            }
            Some(TokenKind::Open) => {
                self.at += 1;
                let inner = self.or()?;
                if self.peek() != Some(&TokenKind::Close) {
                    return Err(QueryError {
                        message: "this parenthesis is never closed".into(),
                        position,
                    });
                }
                self.at += 1;
                Ok(inner)
            }
            Some(TokenKind::And | TokenKind::Or) => Err(QueryError {
                message: "AND and OR need a word or phrase on both sides".into(),
                position,
            }),
            Some(TokenKind::Close) => Err(QueryError {
                message: "expected a word or phrase before this parenthesis".into(),
                position,
            }),
            Some(TokenKind::Not) | None => Err(QueryError {
                message: "the query ends where a word or phrase is expected".into(),
                position,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Query {
        Query::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn term(t: &str) -> Query {
        Query::Term(t.into())
    }

    #[test]
    fn implicit_and_phrases_or_and_not() {
        assert_eq!(
            q("graph neural \"Message  Passing\" -survey"),
            Query::And(vec![
                term("graph"),
                term("neural"),
                term("message passing"),
                Query::Not(Box::new(term("survey")))
            ])
        );
        assert_eq!(
            q("privacy OR \"differential privacy\" AND NOT blockchain"),
            Query::Or(vec![
                term("privacy"),
                Query::And(vec![
                    term("differential privacy"),
                    Query::Not(Box::new(term("blockchain")))
                ])
            ])
        );
        assert_eq!(
            q("(a OR b) c"),
            Query::And(vec![Query::Or(vec![term("a"), term("b")]), term("c")])
        );
        assert_eq!(q("Self-Supervised"), term("self-supervised"));
        assert_eq!(q("BERT.base"), term("bert base"));
    }

    #[test]
    fn errors_say_what_and_where() {
        let error = |text: &str| Query::parse(text).expect_err(text);
        assert_eq!(error("\"open quote").position, 1);
        assert!(error("\"open quote").message.contains("never closed"));
        assert_eq!(error("(a OR b").position, 1);
        assert!(error("a OR").message.contains("ends"));
        assert!(error("AND b").message.contains("both sides"));
        assert!(error("a )").message.contains("no opening"));
        assert!(error("NOT a").message.contains("only excludes"));
        assert!(error("-a -b").message.contains("only excludes"));
        assert!(error("   ").message.contains("empty"));
        assert!(error("\"  \"").message.contains("no words"));
        assert!(error(&"x ".repeat(300)).message.contains("longer"));
        assert!(
            error(
                &(0..40)
                    .map(|i| format!("w{i}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
            .message
            .contains("terms")
        );
        assert!(
            Query::parse("a OR NOT b").is_err(),
            "an alternative that only excludes matches too much"
        );
    }

    #[test]
    fn evaluation_and_anchors() {
        let query = q("(privacy OR \"differential privacy\") AND NOT blockchain");
        let has = |terms: &'static [&'static str]| move |t: &str| terms.contains(&t);
        assert!(query.matches(&has(&["privacy"])));
        assert!(!query.matches(&has(&["privacy", "blockchain"])));
        assert!(!query.matches(&has(&["blockchain"])));
        let rarity = |t: &str| if t == "graph" { 1000 } else { 1 };
        assert_eq!(q("graph neural").anchor_terms(&rarity), ["neural"]);
        assert_eq!(q("a OR (b c)").anchor_terms(&|_| 1), ["a", "b"]);
    }
}
