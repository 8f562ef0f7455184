//! # subscriptions: what people want to read, and which papers it matches
//!
//! Owns the subscription model (categories, a keyword [`query::Query`],
//! authors), the query language with errors a person can act on, and the
//! [`index::Index`] that matches a paper against every active subscription
//! at once: categories and authors through maps, keywords through one
//! Aho-Corasick automaton, then the boolean query evaluated for the few
//! candidates. The API validates and previews with it; the notifier
//! matches with it.

pub mod index;
pub mod query;
