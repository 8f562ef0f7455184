//! Matching one paper against every active subscription at once.
//!
//! Each subscription is filed under one *anchor*: something a paper must
//! have for the subscription to match, chosen to be as rare as possible.
//! That is one term of its query when it has one (the cheapest of the terms
//! every match needs), else one of its categories, else its authors. A
//! paper is matched by finding its terms with one Aho-Corasick pass over
//! its title and abstract, collecting the subscriptions filed under those
//! terms, its categories and its authors, and evaluating each candidate's
//! full predicate (every facet it sets must match; the query is evaluated
//! against the terms found).
//!
//! Updates do not rebuild the automaton: terms added since the last build
//! go to a small second automaton, rebuilt on change; when it grows past
//! a fraction of the main one, both merge. Removed subscriptions are
//! skipped until the next merge compacts them away.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::query::{Query, words};

/// What a subscription asks for. Every facet given must match: one of the
/// categories (an archive like `cs` holds `cs.LG`), the query, and one of
/// the authors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: i64,
    pub user_id: i64,
    pub categories: Vec<String>,
    pub query: Option<Query>,
    pub authors: Vec<String>,
}

/// The parts of a paper matching looks at.
#[derive(Debug, Clone, Copy)]
pub struct Paper<'a> {
    pub title: &'a str,
    pub abstract_text: &'a str,
    pub categories: &'a [String],
    pub authors: &'a [String],
}

/// A subscription that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hit {
    pub subscription_id: i64,
    pub user_id: i64,
}

/// An author's name as compared: lowercase, no dots, single spaces.
pub fn normalize_author(name: &str) -> String {
    name.split(|c: char| c.is_whitespace() || c == '.')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone)]
enum Compiled {
    Term(u32),
    And(Vec<Compiled>),
    Or(Vec<Compiled>),
    Not(Box<Compiled>),
}

impl Compiled {
    fn matches(&self, present: &Bitset) -> bool {
        match self {
            Self::Term(t) => present.get(*t),
            Self::And(parts) => parts.iter().all(|p| p.matches(present)),
            Self::Or(parts) => parts.iter().any(|p| p.matches(present)),
            Self::Not(inner) => !inner.matches(present),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    id: i64,
    user_id: i64,
    categories: Vec<u32>,
    authors: Vec<u32>,
    query: Option<Compiled>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Anchor {
    Term(u32),
    Category(u32),
    Author(u32),
}

#[derive(Debug, Default)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn get(&self, i: u32) -> bool {
        self.0
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: u32) {
        let word = i as usize / 64;
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (i % 64);
    }
}

/// Reusable buffers for [`Index::matches`], so that matching allocates
/// nothing per paper.
#[derive(Debug, Default)]
pub struct Scratch {
    present: Bitset,
    present_list: Vec<u32>,
    seen: Vec<u32>,
    stamp: u32,
    text: String,
}

/// Terms added since the last build wait in the second automaton when there
/// are fewer than this share of the main one's (and at least this many).
const DELTA_SHARE: usize = 10;
const DELTA_MIN: usize = 1_000;

/// All active subscriptions, indexed for matching.
#[derive(Debug, Default)]
pub struct Index {
    entries: Vec<Option<Entry>>,
    slot_of: HashMap<i64, u32>,
    terms: Vec<String>,
    term_ids: HashMap<String, u32>,
    categories: HashMap<String, u32>,
    authors: HashMap<String, u32>,
    by_term: Vec<Vec<u32>>,
    by_category: Vec<Vec<u32>>,
    by_author: Vec<Vec<u32>>,
    /// Automaton over `terms[..main_terms]`.
    main: Option<AhoCorasick>,
    main_terms: usize,
    /// Automaton over `terms[main_terms..]`.
    delta: Option<AhoCorasick>,
    removed: usize,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// Build an index of many subscriptions at once (one automaton build).
    pub fn build(subscriptions: impl IntoIterator<Item = Subscription>) -> Self {
        let mut index = Self::new();
        for subscription in subscriptions {
            index.insert(subscription);
        }
        index.rebuild_main();
        index
    }

    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    /// Add a subscription, or replace the one with its id.
    pub fn upsert(&mut self, subscription: Subscription) {
        self.remove(subscription.id);
        let before = self.terms.len();
        self.insert(subscription);
        if self.terms.len() != before {
            self.refresh_automata();
        }
    }

    pub fn remove(&mut self, id: i64) {
        if let Some(slot) = self.slot_of.remove(&id) {
            self.entries[slot as usize] = None;
            self.removed += 1;
        }
    }

    fn insert(&mut self, subscription: Subscription) {
        let slot = self.entries.len() as u32;
        let query = subscription.query.as_ref().map(|q| self.compile(q));
        let categories: Vec<u32> = subscription
            .categories
            .iter()
            .map(|c| intern(&mut self.categories, &mut self.by_category, c.trim()))
            .collect();
        let authors: Vec<u32> = subscription
            .authors
            .iter()
            .map(|a| intern(&mut self.authors, &mut self.by_author, &normalize_author(a)))
            .collect();
        for anchor in self.anchors(&subscription, &categories, &authors) {
            let postings = match anchor {
                Anchor::Term(t) => &mut self.by_term[t as usize],
                Anchor::Category(c) => &mut self.by_category[c as usize],
                Anchor::Author(a) => &mut self.by_author[a as usize],
            };
            postings.push(slot);
        }
        self.entries.push(Some(Entry {
            id: subscription.id,
            user_id: subscription.user_id,
            categories,
            authors,
            query,
        }));
        self.slot_of.insert(subscription.id, slot);
    }

    fn compile(&mut self, query: &Query) -> Compiled {
        match query {
            Query::Term(t) => Compiled::Term(self.term(t)),
            Query::And(parts) => Compiled::And(parts.iter().map(|p| self.compile(p)).collect()),
            Query::Or(parts) => Compiled::Or(parts.iter().map(|p| self.compile(p)).collect()),
            Query::Not(inner) => Compiled::Not(Box::new(self.compile(inner))),
        }
    }

    fn term(&mut self, term: &str) -> u32 {
        if let Some(id) = self.term_ids.get(term) {
            return *id;
        }
        let id = self.terms.len() as u32;
        self.terms.push(term.to_owned());
        self.term_ids.insert(term.to_owned(), id);
        self.by_term.push(Vec::new());
        id
    }

    /// Where to file a subscription: the rarest thing every match needs.
    fn anchors(
        &self,
        subscription: &Subscription,
        categories: &[u32],
        authors: &[u32],
    ) -> Vec<Anchor> {
        // Without paper statistics, longer terms and phrases count as rarer,
        // and a category as common as a short word.
        let rarity = |t: &str| 1_000 / (t.len() as u64 + 8 * t.matches(' ').count() as u64 + 1);
        let mut options: Vec<(u64, Vec<Anchor>)> = Vec::new();
        if let Some(query) = &subscription.query {
            let terms = query.anchor_terms(&rarity);
            let cost = terms.iter().map(|t| rarity(t)).sum();
            options.push((
                cost,
                terms
                    .iter()
                    .map(|t| Anchor::Term(self.term_ids[*t]))
                    .collect(),
            ));
        }
        if !categories.is_empty() {
            let cost = categories.len() as u64 * 150;
            options.push((
                cost,
                categories.iter().map(|c| Anchor::Category(*c)).collect(),
            ));
        }
        if !authors.is_empty() {
            options.push((
                authors.len() as u64,
                authors.iter().map(|a| Anchor::Author(*a)).collect(),
            ));
        }
        options
            .into_iter()
            .min_by_key(|(cost, _)| *cost)
            .map(|(_, a)| a)
            .unwrap_or_default()
    }

    fn refresh_automata(&mut self) {
        let pending = self.terms.len() - self.main_terms;
        if pending > DELTA_MIN.max(self.main_terms / DELTA_SHARE) || self.removed > self.len() / 2 {
            self.rebuild_main();
        } else {
            self.delta = automaton(&self.terms[self.main_terms..]);
        }
    }

    /// Rebuild the main automaton over every term and drop what removed
    /// subscriptions left behind.
    fn rebuild_main(&mut self) {
        if self.removed > 0 {
            self.compact();
        }
        self.main = automaton(&self.terms);
        self.main_terms = self.terms.len();
        self.delta = None;
    }

    fn compact(&mut self) {
        let alive = |slot: &u32, entries: &[Option<Entry>]| entries[*slot as usize].is_some();
        let entries = &self.entries;
        for postings in self
            .by_term
            .iter_mut()
            .chain(&mut self.by_category)
            .chain(&mut self.by_author)
        {
            postings.retain(|slot| alive(slot, entries));
        }
        self.removed = 0;
    }

    /// Every subscription `paper` matches.
    pub fn matches(&self, paper: &Paper<'_>, scratch: &mut Scratch) -> Vec<Hit> {
        scratch.stamp = scratch.stamp.wrapping_add(1);
        if scratch.stamp == 0 || scratch.seen.len() < self.entries.len() {
            scratch.seen.clear();
            scratch.seen.resize(self.entries.len(), 0);
            scratch.stamp = 1;
        }
        for t in scratch.present_list.drain(..) {
            if let Some(word) = scratch.present.0.get_mut(t as usize / 64) {
                *word = 0;
            }
        }
        // Words joined by single spaces, padded, against padded terms: a
        // match is always a whole word or phrase.
        scratch.text.clear();
        scratch.text.push(' ');
        for word in words(paper.title).chain(words(paper.abstract_text)) {
            scratch.text.push_str(&word);
            scratch.text.push(' ');
        }
        for (automaton, offset) in [(&self.main, 0), (&self.delta, self.main_terms)] {
            let Some(automaton) = automaton else { continue };
            for found in automaton.find_overlapping_iter(scratch.text.as_str()) {
                let term = (found.pattern().as_usize() + offset) as u32;
                if !scratch.present.get(term) {
                    scratch.present.set(term);
                    scratch.present_list.push(term);
                }
            }
        }
        let mut hits = Vec::new();
        let categories = paper_categories(paper.categories);
        let category_ids: Vec<u32> = categories
            .iter()
            .filter_map(|c| self.categories.get(*c).copied())
            .collect();
        let author_ids: Vec<u32> = paper
            .authors
            .iter()
            .filter_map(|a| self.authors.get(&normalize_author(a)).copied())
            .collect();
        let candidates = scratch
            .present_list
            .iter()
            .flat_map(|t| &self.by_term[*t as usize])
            .chain(
                category_ids
                    .iter()
                    .flat_map(|c| &self.by_category[*c as usize]),
            )
            .chain(author_ids.iter().flat_map(|a| &self.by_author[*a as usize]));
        for &slot in candidates {
            let seen = &mut scratch.seen[slot as usize];
            if *seen == scratch.stamp {
                continue;
            }
            *seen = scratch.stamp;
            let Some(entry) = &self.entries[slot as usize] else {
                continue;
            };
            let categories_ok = entry.categories.is_empty()
                || entry.categories.iter().any(|c| category_ids.contains(c));
            let authors_ok =
                entry.authors.is_empty() || entry.authors.iter().any(|a| author_ids.contains(a));
            let query_ok = entry
                .query
                .as_ref()
                .is_none_or(|q| q.matches(&scratch.present));
            if categories_ok && authors_ok && query_ok {
                hits.push(Hit {
                    subscription_id: entry.id,
                    user_id: entry.user_id,
                });
            }
        }
        hits
    }
}

/// A paper's categories and their archives (`cs.LG` also counts as `cs`).
fn paper_categories(categories: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::with_capacity(categories.len() * 2);
    for c in categories {
        out.push(c);
        if let Some((archive, _)) = c.split_once('.')
            && !out.contains(&archive)
        {
            out.push(archive);
        }
    }
    out
}

fn intern(ids: &mut HashMap<String, u32>, postings: &mut Vec<Vec<u32>>, key: &str) -> u32 {
    if let Some(id) = ids.get(key) {
        return *id;
    }
    let id = postings.len() as u32;
    postings.push(Vec::new());
    ids.insert(key.to_owned(), id);
    id
}

fn automaton(terms: &[String]) -> Option<AhoCorasick> {
    if terms.is_empty() {
        return None;
    }
    let padded: Vec<String> = terms.iter().map(|t| format!(" {t} ")).collect();
    // Building only fails past the automaton's size limits; matching then
    // finds no terms instead of crashing the matcher.
    match AhoCorasickBuilder::new()
        .match_kind(MatchKind::Standard)
        .build(&padded)
    {
        Ok(automaton) => Some(automaton),
        Err(err) => {
            tracing::error!(%err, terms = terms.len(), "keyword automaton could not be built");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: i64, categories: &[&str], query: Option<&str>, authors: &[&str]) -> Subscription {
        Subscription {
            id,
            user_id: id * 10,
            categories: categories.iter().map(|c| (*c).to_owned()).collect(),
            query: query.map(|q| Query::parse(q).expect("valid query")),
            authors: authors.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    fn paper<'a>(
        title: &'a str,
        abstract_text: &'a str,
        categories: &'a [String],
        authors: &'a [String],
    ) -> Paper<'a> {
        Paper {
            title,
            abstract_text,
            categories,
            authors,
        }
    }

    fn ids(hits: Vec<Hit>) -> Vec<i64> {
        let mut ids: Vec<i64> = hits.into_iter().map(|h| h.subscription_id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn every_facet_must_match() {
        let index = Index::build([
            sub(1, &["cs.LG"], None, &[]),
            sub(2, &["cs"], Some("\"graph neural\" -survey"), &[]),
            sub(3, &[], Some("transformer OR attention"), &[]),
            sub(4, &["math.OC"], Some("graph"), &[]),
            sub(5, &[], None, &["Yoshua Bengio"]),
            sub(6, &["cs.LG"], Some("graph"), &["Y. Bengio"]),
        ]);
        let cats = vec!["cs.LG".to_owned(), "stat.ML".to_owned()];
        let authors = vec!["Yoshua  Bengio".to_owned()];
        let mut scratch = Scratch::default();
        let found = index.matches(
            &paper(
                "Graph Neural networks",
                "We use attention. A survey-free study.",
                &cats,
                &authors,
            ),
            &mut scratch,
        );
        assert_eq!(ids(found), [1, 2, 3, 5]);
        let survey = index.matches(
            &paper("Graph neural nets: a survey", "", &cats, &[]),
            &mut scratch,
        );
        assert_eq!(ids(survey), [1]);
        let none = index.matches(
            &paper("Graphs", "graphical", &["q-bio.NC".to_owned()], &[]),
            &mut scratch,
        );
        assert!(none.is_empty(), "whole words only");
    }

    #[test]
    fn updates_and_removals_without_a_rebuild() {
        let mut index = Index::build([sub(1, &[], Some("streams"), &[])]);
        let cats: Vec<String> = vec!["cs.DC".into()];
        let mut scratch = Scratch::default();
        let text = "Redis streams with backpressure";
        assert_eq!(
            ids(index.matches(&paper(text, "", &cats, &[]), &mut scratch)),
            [1]
        );
        index.upsert(sub(2, &[], Some("backpressure"), &[]));
        assert_eq!(
            index.main_terms, 1,
            "the new term went to the delta automaton"
        );
        assert_eq!(
            ids(index.matches(&paper(text, "", &cats, &[]), &mut scratch)),
            [1, 2]
        );
        index.upsert(sub(1, &[], Some("kafka"), &[]));
        assert_eq!(
            ids(index.matches(&paper(text, "", &cats, &[]), &mut scratch)),
            [2]
        );
        index.remove(2);
        assert!(
            index
                .matches(&paper(text, "", &cats, &[]), &mut scratch)
                .is_empty()
        );
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn matches_what_a_naive_evaluation_matches() {
        // A small random world, compared with evaluating every subscription.
        let vocabulary = [
            "alpha", "beta", "gamma", "delta", "graph", "net", "quantum", "sparse",
        ];
        let categories = ["cs.LG", "cs.AI", "math.OC", "stat.ML"];
        let mut state = 7u64;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % n
        };
        let mut subscriptions = Vec::new();
        for id in 0..300 {
            let word = |k: usize| vocabulary[(id as usize * 3 + k) % vocabulary.len()];
            let query = match id % 5 {
                0 => None,
                1 => Some(format!("{} {}", word(0), word(1))),
                2 => Some(format!("{} OR \"{} {}\"", word(0), word(1), word(2))),
                3 => Some(format!("{} -{}", word(0), word(2))),
                _ => Some(word(1).to_owned()),
            };
            let cats: Vec<&str> = if id % 3 == 0 {
                vec![]
            } else {
                vec![categories[id as usize % 4]]
            };
            let cats = if query.is_none() && cats.is_empty() {
                vec!["cs"]
            } else {
                cats
            };
            subscriptions.push(sub(id, &cats, query.as_deref(), &[]));
        }
        let index = Index::build(subscriptions.clone());
        let mut scratch = Scratch::default();
        for _ in 0..200 {
            let text: Vec<&str> = (0..6).map(|_| vocabulary[next(vocabulary.len())]).collect();
            let text = text.join(" ");
            let paper_cats = vec![categories[next(4)].to_owned()];
            let got = ids(index.matches(&paper(&text, "", &paper_cats, &[]), &mut scratch));
            let words: Vec<String> = words(&text).collect();
            let joined = format!(" {} ", words.join(" "));
            let want: Vec<i64> = subscriptions
                .iter()
                .filter(|s| {
                    let cats_ok = s.categories.is_empty()
                        || s.categories
                            .iter()
                            .any(|c| paper_categories(&paper_cats).contains(&c.as_str()));
                    let query_ok = s
                        .query
                        .as_ref()
                        .is_none_or(|q| q.matches(&|t: &str| joined.contains(&format!(" {t} "))));
                    cats_ok && query_ok
                })
                .map(|s| s.id)
                .collect();
            assert_eq!(got, want, "{text} in {paper_cats:?}");
        }
    }
}
