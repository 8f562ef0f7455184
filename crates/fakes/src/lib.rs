//! # fakes: stand-ins for the outside services paperstream cannot reach here
//!
//! Each fake speaks its service's real protocol over real HTTP (or SMTP),
//! serves believable data, can inject the faults the real service shows
//! (errors, 429 with `Retry-After`, slow answers, truncated and malformed
//! bodies), and records what it received, so tests can assert on it. The
//! demo uses them when the real services are not configured.

pub mod arxiv;
pub mod llm;
