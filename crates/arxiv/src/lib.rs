//! # arxiv: reading arXiv
//!
//! This crate owns everything paperstream knows about arXiv's formats: the
//! identifiers (new and old style, with versions) and the parsers for the
//! three interfaces the crawler uses, each read into the one [`Paper`]
//! model:
//!
//! * the query API ([`query`]): Atom with OpenSearch paging, for id look-ups
//!   and searches; its error feed becomes [`ParseError::Api`];
//! * OAI-PMH `ListRecords` ([`oai`]) in the `arXiv` and `arXivRaw` formats,
//!   with resumption tokens, for backfills;
//! * the announcement feeds ([`announce`]), for the daily run.
//!
//! The [`client`] fetches them over HTTP within arXiv's rules: one request
//! every three seconds, one at a time, across every crawler instance
//! together ([`pace`]), retrying 429 and 503 as `Retry-After` says.
//!
//! It exists apart from the crawler so that the formats, which disagree on
//! nearly everything (where the version is, how authors and dates are
//! written), are handled and tested in one place, and so that `crawler
//! parse FILE` and the fuzz targets use exactly the code the crawler runs.
//!
//! Parsing never panics on bad input: malformed XML, missing fields and
//! invalid ids are [`ParseError`]s. Titles and abstracts have their
//! whitespace normalized.

pub mod announce;
pub mod client;
mod error;
mod id;
pub mod oai;
pub mod pace;
mod paper;
pub mod query;
pub mod taxonomy;

pub use error::ParseError;
pub use id::{ArxivId, VersionedId};
pub use paper::{Author, Paper};
