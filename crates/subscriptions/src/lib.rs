//! # subscriptions: what people want to read, and which papers it matches
//!
//! Owns the subscription model (categories, a keyword [`query::Query`],
//! authors), the query language with errors a person can act on, and the
//! [`index::Index`] that matches a paper against every active subscription
//! at once: categories and authors through maps, keywords through one
//! Aho-Corasick automaton, then the boolean query evaluated for the few
//! candidates. It also owns the `subscriptions` table ([`store`]), with
//! the change feed that keeps matchers' indexes current without a
//! rebuild, and the validation of subscription forms ([`spec`]). The API
//! validates and previews with it; the notifier matches with it.

pub mod index;
pub mod query;
pub mod spec;
pub mod store;
