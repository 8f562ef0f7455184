//! # fakes: stand-ins for the outside services paperstream cannot reach here
//!
//! Each fake speaks its service's real protocol over real HTTP (or SMTP),
//! serves believable data, can inject the faults the real service shows
//! (errors, 429 with `Retry-After`, slow answers, truncated and malformed
//! bodies), and records what it received, so tests can assert on it. The
//! demo uses them when the real services are not configured.
//!
//! - [`arxiv`]: the query API, OAI-PMH and the announcement feeds.
//! - [`llm`]: Ollama and OpenAI chat completions.
//! - [`smtp`]: an SMTP sink that keeps the mail it accepts, with a web page to read it.
//! - [`webhook`]: a receiver for signed webhooks and Slack incoming webhooks.

pub mod arxiv;
pub mod llm;
pub mod smtp;
pub mod webhook;
