//! arXiv identifiers: new style (`2104.12255`, `0704.0001`) and old style
//! (`astro-ph/0601001`, `math.GT/0309136`), each optionally versioned.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// A paper's identifier without its version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArxivId(String);

impl ArxivId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Old-style ids carry their archive: `hep-th/9901001`.
    pub fn is_old_style(&self) -> bool {
        self.0.contains('/')
    }
}

impl fmt::Display for ArxivId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ArxivId> for String {
    fn from(id: ArxivId) -> Self {
        id.0
    }
}

impl TryFrom<String> for ArxivId {
    type Error = ParseError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let versioned: VersionedId = value.parse()?;
        match versioned.version {
            None => Ok(versioned.id),
            Some(_) => Err(ParseError::invalid(
                "arXiv id",
                format!("{value:?} has a version"),
            )),
        }
    }
}

/// An identifier with its version, when one was given (`2104.12255v2`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionedId {
    pub id: ArxivId,
    pub version: Option<u32>,
}

impl fmt::Display for VersionedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}v{v}", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

impl FromStr for VersionedId {
    type Err = ParseError;

    /// Accepts a bare id or the forms the interfaces wrap it in:
    /// `http(s)://arxiv.org/abs/<id>`, `oai:arXiv.org:<id>`, `arXiv:<id>`.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::invalid("arXiv id", format!("{raw:?} is not an arXiv identifier"));
        let text = raw.trim();
        let text = [
            "http://arxiv.org/abs/",
            "https://arxiv.org/abs/",
            "oai:arXiv.org:",
            "arXiv:",
        ]
        .iter()
        .find_map(|prefix| text.strip_prefix(prefix))
        .unwrap_or(text);
        let (base, version) = match text.rfind('v') {
            Some(at)
                if at > 0
                    && text[at + 1..].bytes().all(|b| b.is_ascii_digit())
                    && at + 1 < text.len() =>
            {
                let version = text[at + 1..].parse().map_err(|_| bad())?;
                (&text[..at], Some(version))
            }
            _ => (text, None),
        };
        if !is_new_style(base) && !is_old_style(base) {
            return Err(bad());
        }
        Ok(Self {
            id: ArxivId(base.to_owned()),
            version,
        })
    }
}

/// `YYMM.NNNN` (2007-2014) or `YYMM.NNNNN` (since 2015).
fn is_new_style(s: &str) -> bool {
    let Some((yymm, number)) = s.split_once('.') else {
        return false;
    };
    yymm.len() == 4
        && yymm.bytes().all(|b| b.is_ascii_digit())
        && (4..=5).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// `archive[.SUBJECT]/YYMMNNN`, e.g. `hep-th/9901001`, `math.GT/0309136`.
fn is_old_style(s: &str) -> bool {
    let Some((archive, number)) = s.split_once('/') else {
        return false;
    };
    let (name, subject) = archive.split_once('.').unwrap_or((archive, ""));
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        && subject.bytes().all(|b| b.is_ascii_alphabetic())
        && number.len() == 7
        && number.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (String, Option<u32>) {
        let v: VersionedId = s.parse().expect(s);
        (v.id.to_string(), v.version)
    }

    #[test]
    fn parses_every_form_the_interfaces_use() {
        assert_eq!(
            parse("http://arxiv.org/abs/2104.12255v1"),
            ("2104.12255".into(), Some(1))
        );
        assert_eq!(
            parse("https://arxiv.org/abs/0808.05394"),
            ("0808.05394".into(), None)
        );
        assert_eq!(
            parse("oai:arXiv.org:2611.01234v12"),
            ("2611.01234".into(), Some(12))
        );
        assert_eq!(
            parse("astro-ph/0601001v2"),
            ("astro-ph/0601001".into(), Some(2))
        );
        assert_eq!(parse("math.GT/0309136"), ("math.GT/0309136".into(), None));
        assert_eq!(parse("0704.0001"), ("0704.0001".into(), None));
        assert!(parse("astro-ph/0601001").0.contains('/'));
    }

    #[test]
    fn refuses_what_is_not_an_id() {
        for bad in [
            "abc",
            "",
            "2104.1",
            "2104.123456",
            "v2",
            "Astro-ph/0601001",
            "hep-th/990100",
            "2104.12255v",
        ] {
            assert!(bad.parse::<VersionedId>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn round_trips_through_text() {
        let v: VersionedId = "hep-th/9901001v3".parse().expect("valid");
        assert_eq!(v.to_string(), "hep-th/9901001v3");
        assert!(v.id.is_old_style());
    }
}
