//! Matching one paper against every active subscription at once.
//!
//! Subscriptions that ask for the same thing (everyone who follows `cs.LG`,
//! everyone who follows "diffusion models") share one *predicate*, which is
//! evaluated once per paper and then reports all of its subscribers. Each
//! predicate is filed under *anchors*: things a paper must have for it to
//! match, chosen to be as rare as possible. That is the terms of its query
//! when it has one (the cheapest set of which one is always needed), else
//! its categories, else its authors. A paper is matched by finding its
//! terms with one Aho-Corasick pass over its title and abstract, collecting
//! the predicates filed under those terms, its categories and its authors,
//! and evaluating each candidate (every facet it sets must match; the query
//! is evaluated against the terms found). Most predicates are decided by
//! their anchor alone and are never evaluated.
//!
//! Updates do not rebuild the index: terms added since the last build go to
//! a small second automaton, rebuilt on change, and merge into the main one
//! when they grow past a fraction of it. Predicates left without
//! subscribers stay until they outnumber the live ones; then the index is
//! rebuilt from the live ones.

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
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

#[derive(Debug, Clone, Copy)]
enum Op {
    Term(u32),
    And(u32),
    Or(u32),
    Not,
}

/// A query compiled to postfix over term ids: one allocation to read and
/// no recursion. Values wait on a stack of bits, which holds as many as
/// the query has terms (a query refused by [`Query::parse`] for having
/// more than 64 takes a slower path).
#[derive(Debug, Clone)]
struct Program {
    ops: Box<[Op]>,
    deep: bool,
}

impl Program {
    fn compile(query: &Query, term: &mut impl FnMut(&str) -> u32) -> Self {
        fn emit(query: &Query, term: &mut impl FnMut(&str) -> u32, ops: &mut Vec<Op>) {
            match query {
                Query::Term(t) => ops.push(Op::Term(term(t))),
                Query::And(parts) | Query::Or(parts) => {
                    parts.iter().for_each(|p| emit(p, term, ops));
                    let n = parts.len() as u32;
                    ops.push(if matches!(query, Query::And(_)) {
                        Op::And(n)
                    } else {
                        Op::Or(n)
                    });
                }
                Query::Not(inner) => {
                    emit(inner, term, ops);
                    ops.push(Op::Not);
                }
            }
        }
        let mut ops = Vec::new();
        emit(query, term, &mut ops);
        Self {
            deep: query.terms().len() > 64,
            ops: ops.into_boxed_slice(),
        }
    }

    fn matches(&self, present: &Bitset) -> bool {
        if self.deep {
            return self.matches_deep(present);
        }
        let mut stack = 0u64;
        for op in &self.ops {
            let (n, any) = match *op {
                Op::Term(t) => {
                    stack = stack << 1 | u64::from(present.get(t));
                    continue;
                }
                Op::Not => {
                    stack ^= 1;
                    continue;
                }
                Op::And(n) => (n, false),
                Op::Or(n) => (n, true),
            };
            let mask = if n >= 64 { u64::MAX } else { (1 << n) - 1 };
            let value = if any {
                stack & mask != 0
            } else {
                stack & mask == mask
            };
            stack = stack.checked_shr(n).unwrap_or(0) << 1 | u64::from(value);
        }
        stack & 1 == 1
    }

    fn matches_deep(&self, present: &Bitset) -> bool {
        let mut stack: Vec<bool> = Vec::new();
        for op in &self.ops {
            match *op {
                Op::Term(t) => stack.push(present.get(t)),
                Op::Not => {
                    if let Some(top) = stack.last_mut() {
                        *top = !*top;
                    }
                }
                Op::And(n) | Op::Or(n) => {
                    let parts = stack.split_off(stack.len().saturating_sub(n as usize));
                    stack.push(if matches!(op, Op::And(_)) {
                        parts.iter().all(|v| *v)
                    } else {
                        parts.iter().any(|v| *v)
                    });
                }
            }
        }
        stack.pop().unwrap_or(false)
    }
}

/// The facets of a subscription, normalized, as the key that makes equal
/// subscriptions share a predicate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Facets {
    categories: Vec<String>,
    query: Option<Query>,
    authors: Vec<String>,
}

impl Facets {
    fn of(subscription: &Subscription) -> Self {
        let mut categories: Vec<String> = subscription
            .categories
            .iter()
            .map(|c| c.trim().to_owned())
            .collect();
        categories.sort_unstable();
        categories.dedup();
        let mut authors: Vec<String> = subscription
            .authors
            .iter()
            .map(|a| normalize_author(a))
            .collect();
        authors.sort_unstable();
        authors.dedup();
        Self {
            categories,
            query: subscription.query.clone(),
            authors,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum AnchorKind {
    Author,
    Term,
    Category,
}

impl Facets {
    /// Where to file a predicate: the rarest things of which a match
    /// needs one.
    fn anchors(&self) -> (AnchorKind, Vec<&str>) {
        // Without paper statistics, longer terms and phrases count as rarer.
        // A category is commoner than any one word people subscribe to
        // (cs.LG alone holds a fifth of a day's papers), and an author
        // rarer than anything.
        let rarity = |t: &str| 1_000 / (t.len() as u64 + 8 * t.matches(' ').count() as u64 + 1);
        let mut options: Vec<(u64, AnchorKind, Vec<&str>)> = Vec::new();
        if let Some(query) = &self.query {
            let terms = query.anchor_terms(&rarity);
            let cost = terms.iter().map(|t| rarity(t)).sum();
            options.push((cost, AnchorKind::Term, terms));
        }
        if !self.categories.is_empty() {
            let cost = self.categories.len() as u64 * 1_000;
            options.push((
                cost,
                AnchorKind::Category,
                self.categories.iter().map(String::as_str).collect(),
            ));
        }
        if !self.authors.is_empty() {
            options.push((
                self.authors.len() as u64,
                AnchorKind::Author,
                self.authors.iter().map(String::as_str).collect(),
            ));
        }
        let (_, kind, mut keys) = options
            .into_iter()
            .min_by_key(|(cost, _, _)| *cost)
            .unwrap_or((0, AnchorKind::Category, Vec::new()));
        // `graph OR graph` must not report one match twice.
        keys.sort_unstable();
        keys.dedup();
        (kind, keys)
    }
}

/// Category ids below this are kept as bits, so that testing a
/// predicate's categories reads nothing beyond the predicate. arXiv has
/// about 155 categories and 20 archives.
const CATEGORY_BITS: u32 = 192;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct CategorySet([u64; 3]);

impl CategorySet {
    /// False when `id` is past the bits.
    fn insert(&mut self, id: u32) -> bool {
        if id >= CATEGORY_BITS {
            return false;
        }
        self.0[id as usize / 64] |= 1 << (id % 64);
        true
    }

    fn is_empty(&self) -> bool {
        self.0 == [0; 3]
    }

    fn intersects(&self, other: &Self) -> bool {
        self.0.iter().zip(other.0).any(|(a, b)| a & b != 0)
    }
}

/// A paper's categories and authors as the index's ids.
struct PaperIds {
    categories: Vec<u32>,
    category_set: CategorySet,
    authors: Vec<u32>,
}

/// What matching reads of a predicate, in one cache line: a paper's
/// candidates are scattered over memory, so each costs a cache miss or
/// two, and that, not the logic, is the cost of matching.
#[derive(Debug)]
#[repr(align(64))]
struct Predicate {
    subscribers: Vec<Hit>,
    categories: CategorySet,
    query: Option<Program>,
    /// Authors, and categories past the bits: rare, so kept aside.
    rest: Option<Box<Rest>>,
}

#[derive(Debug, Default)]
struct Rest {
    authors: Vec<u32>,
    /// Every category, when one of them is past the bits.
    categories: Vec<u32>,
}

impl Predicate {
    fn matches(&self, paper: &PaperIds, present: &Bitset) -> bool {
        let categories_ok = match &self.rest {
            Some(rest) if !rest.categories.is_empty() => {
                rest.categories.iter().any(|c| paper.categories.contains(c))
            }
            _ => self.categories.is_empty() || self.categories.intersects(&paper.category_set),
        };
        categories_ok
            && self.rest.as_ref().is_none_or(|rest| {
                rest.authors.is_empty() || rest.authors.iter().any(|a| paper.authors.contains(a))
            })
            && self.query.as_ref().is_none_or(|q| q.matches(present))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Anchor {
    Term(u32),
    Category(u32),
    Author(u32),
}

/// A predicate filed under one anchor.
#[derive(Debug, Clone, Copy)]
struct Posting {
    predicate: u32,
    /// The predicate's categories, one bit each (the id modulo 64); zero
    /// when it has none. A paper whose categories share no bit cannot
    /// match, and is turned away without reading the predicate: most
    /// "this topic in that category" subscriptions fail on the category.
    categories: u64,
    /// The anchor being present is the whole match.
    decided: bool,
    /// Filed under more than one anchor, so a paper may reach it twice.
    shared: bool,
    /// Whether `single` holds the predicate's only subscriber: most
    /// predicates have one, and a decided one is then reported without
    /// reading the predicate at all.
    has_single: bool,
    single: Hit,
}

#[derive(Debug, Default, Clone)]
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

    fn clear(&mut self, i: u32) {
        if let Some(word) = self.0.get_mut(i as usize / 64) {
            *word &= !(1 << (i % 64));
        }
    }
}

/// Reusable buffers for [`Index::matches_into`], so that matching
/// allocates little per paper.
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
/// Predicates without subscribers are dropped by a rebuild once they
/// outnumber the live ones (and this many), so rebuilds stay rare and cost,
/// spread over the removals that caused them, a constant per removal.
const VACANT_MIN: usize = 64;

/// All active subscriptions, indexed for matching.
#[derive(Debug, Default)]
pub struct Index {
    predicates: Vec<Predicate>,
    /// By predicate id, what each predicate was made from.
    facets: Vec<Facets>,
    predicate_of: HashMap<Facets, u32>,
    /// Where each subscription is: its predicate and its place among that
    /// predicate's subscribers.
    place: HashMap<i64, (u32, u32)>,
    /// Predicates that lost their last subscriber.
    vacant: usize,
    terms: Vec<String>,
    term_ids: HashMap<String, u32>,
    categories: HashMap<String, u32>,
    authors: HashMap<String, u32>,
    by_term: Vec<Vec<Posting>>,
    by_category: Vec<Vec<Posting>>,
    by_author: Vec<Vec<Posting>>,
    /// Automaton over `terms[..main_terms]`.
    main: Option<AhoCorasick>,
    main_terms: usize,
    /// Automaton over `terms[main_terms..]`.
    delta: Option<AhoCorasick>,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// Build an index of many subscriptions at once (one automaton build).
    /// Of two subscriptions with one id, the later counts, as with
    /// [`Index::upsert`].
    pub fn build(subscriptions: impl IntoIterator<Item = Subscription>) -> Self {
        let subscriptions: Vec<Subscription> = subscriptions.into_iter().collect();
        let mut ids = std::collections::HashSet::with_capacity(subscriptions.len());
        let mut groups: HashMap<Facets, Vec<Hit>> = HashMap::new();
        for subscription in subscriptions.iter().rev() {
            if ids.insert(subscription.id) {
                groups
                    .entry(Facets::of(subscription))
                    .or_default()
                    .push(Hit {
                        subscription_id: subscription.id,
                        user_id: subscription.user_id,
                    });
            }
        }
        Self::from_groups(groups.into_iter().collect())
    }

    /// Predicates filed under the same anchor get neighbouring ids, so a
    /// paper's candidates are read from memory in order.
    fn from_groups(mut groups: Vec<(Facets, Vec<Hit>)>) -> Self {
        groups.retain(|(_, subscribers)| !subscribers.is_empty());
        groups.sort_by_cached_key(|(facets, _)| {
            let (kind, keys) = facets.anchors();
            (
                kind,
                keys.into_iter().map(str::to_owned).collect::<Vec<_>>(),
            )
        });
        let mut index = Self::new();
        for (facets, subscribers) in groups {
            let id = index.add_predicate(facets);
            index.vacant -= 1;
            for (position, hit) in subscribers.iter().enumerate() {
                index
                    .place
                    .insert(hit.subscription_id, (id, position as u32));
            }
            // A fresh copy, so that neighbouring predicates' subscribers
            // are neighbours in memory too.
            index.predicates[id as usize].subscribers = subscribers.clone();
            if subscribers.len() == 1 {
                index.refresh_postings(id);
            }
        }
        index.rebuild_automaton();
        index
    }

    /// How many subscriptions it holds.
    pub fn len(&self) -> usize {
        self.place.len()
    }

    pub fn is_empty(&self) -> bool {
        self.place.is_empty()
    }

    /// How many distinct predicates its subscriptions share.
    pub fn predicates(&self) -> usize {
        self.predicates.len() - self.vacant
    }

    /// Add a subscription, or replace the one with its id.
    pub fn upsert(&mut self, subscription: Subscription) {
        self.remove(subscription.id);
        let before = self.terms.len();
        self.add(&subscription);
        if self.terms.len() != before {
            let pending = self.terms.len() - self.main_terms;
            if pending > DELTA_MIN.max(self.main_terms / DELTA_SHARE) {
                self.rebuild_automaton();
            } else {
                self.delta = automaton(&self.terms[self.main_terms..]);
            }
        }
    }

    pub fn remove(&mut self, id: i64) {
        let Some((predicate, position)) = self.place.remove(&id) else {
            return;
        };
        let subscribers = &mut self.predicates[predicate as usize].subscribers;
        subscribers.swap_remove(position as usize);
        if let Some(moved) = subscribers.get(position as usize) {
            self.place
                .insert(moved.subscription_id, (predicate, position));
        }
        let left = subscribers.len();
        if left <= 1 {
            self.refresh_postings(predicate);
        }
        if left == 0 {
            self.vacant += 1;
            if self.vacant > self.predicates().max(VACANT_MIN) {
                self.rebuild();
            }
        }
    }

    fn add(&mut self, subscription: &Subscription) {
        let facets = Facets::of(subscription);
        let predicate = match self.predicate_of.get(&facets) {
            Some(&p) => p,
            None => self.add_predicate(facets),
        };
        let subscribers = &mut self.predicates[predicate as usize].subscribers;
        if subscribers.is_empty() {
            self.vacant -= 1;
        }
        subscribers.push(Hit {
            subscription_id: subscription.id,
            user_id: subscription.user_id,
        });
        let position = (subscribers.len() - 1) as u32;
        self.place.insert(subscription.id, (predicate, position));
        if position <= 1 {
            self.refresh_postings(predicate);
        }
    }

    /// Bring the copies of a predicate's only subscriber in its postings up
    /// to date, after it gained or lost one. Finding the postings takes a
    /// walk over its anchors' lists; that is the price of never reading
    /// the predicate while matching.
    fn refresh_postings(&mut self, predicate: u32) {
        let subscribers = &self.predicates[predicate as usize].subscribers;
        let single = match subscribers.as_slice() {
            [only] => Some(*only),
            _ => None,
        };
        for anchor in self.anchor_ids(&self.facets[predicate as usize]) {
            let postings = match anchor {
                Anchor::Term(t) => &mut self.by_term[t as usize],
                Anchor::Category(c) => &mut self.by_category[c as usize],
                Anchor::Author(a) => &mut self.by_author[a as usize],
            };
            if let Some(posting) = postings.iter_mut().find(|p| p.predicate == predicate) {
                posting.has_single = single.is_some();
                posting.single = single.unwrap_or(posting.single);
            }
        }
    }

    fn anchor_ids(&self, facets: &Facets) -> Vec<Anchor> {
        match facets.anchors() {
            (AnchorKind::Term, keys) => keys
                .iter()
                .filter_map(|t| self.term_ids.get(*t))
                .map(|t| Anchor::Term(*t))
                .collect(),
            (AnchorKind::Category, keys) => keys
                .iter()
                .filter_map(|c| self.categories.get(*c))
                .map(|c| Anchor::Category(*c))
                .collect(),
            (AnchorKind::Author, keys) => keys
                .iter()
                .filter_map(|a| self.authors.get(*a))
                .map(|a| Anchor::Author(*a))
                .collect(),
        }
    }

    fn add_predicate(&mut self, facets: Facets) -> u32 {
        let id = self.predicates.len() as u32;
        let query = facets
            .query
            .as_ref()
            .map(|q| Program::compile(q, &mut |t| self.term(t)));
        let categories: Vec<u32> = facets
            .categories
            .iter()
            .map(|c| intern(&mut self.categories, &mut self.by_category, c))
            .collect();
        let authors: Vec<u32> = facets
            .authors
            .iter()
            .map(|a| intern(&mut self.authors, &mut self.by_author, a))
            .collect();
        let anchors = self.anchor_ids(&facets);
        let facet_count = usize::from(!categories.is_empty())
            + usize::from(!authors.is_empty())
            + usize::from(query.is_some());
        let category_filter = category_bits(&categories);
        let decided = facet_count == 1 && facets.query.as_ref().is_none_or(Query::is_any_of_terms);
        for anchor in &anchors {
            let postings = match *anchor {
                Anchor::Term(t) => &mut self.by_term[t as usize],
                Anchor::Category(c) => &mut self.by_category[c as usize],
                Anchor::Author(a) => &mut self.by_author[a as usize],
            };
            postings.push(Posting {
                predicate: id,
                categories: category_filter,
                decided,
                shared: anchors.len() > 1,
                has_single: false,
                single: Hit::default(),
            });
        }
        let mut category_set = CategorySet::default();
        let all_in_bits = categories.iter().all(|c| category_set.insert(*c));
        let rest = (!authors.is_empty() || !all_in_bits).then(|| {
            Box::new(Rest {
                authors,
                categories: if all_in_bits {
                    Vec::new()
                } else {
                    categories.clone()
                },
            })
        });
        self.predicate_of.insert(facets.clone(), id);
        self.facets.push(facets);
        self.predicates.push(Predicate {
            subscribers: Vec::new(),
            categories: category_set,
            query,
            rest,
        });
        // Counted vacant until its first subscriber arrives.
        self.vacant += 1;
        id
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

    fn rebuild_automaton(&mut self) {
        self.main = automaton(&self.terms);
        self.main_terms = self.terms.len();
        self.delta = None;
    }

    /// Start over from the live predicates, dropping the vacant ones and
    /// the terms only they used.
    fn rebuild(&mut self) {
        let groups = std::mem::take(&mut self.facets)
            .into_iter()
            .zip(std::mem::take(&mut self.predicates))
            .map(|(facets, predicate)| (facets, predicate.subscribers))
            .collect();
        *self = Self::from_groups(groups);
    }

    /// Every subscription `paper` matches.
    pub fn matches(&self, paper: &Paper<'_>, scratch: &mut Scratch) -> Vec<Hit> {
        let mut hits = Vec::new();
        self.matches_into(paper, scratch, &mut hits);
        hits
    }

    /// [`Index::matches`] appending to `hits`, whose allocation a caller
    /// matching many papers can keep.
    pub fn matches_into(&self, paper: &Paper<'_>, scratch: &mut Scratch, hits: &mut Vec<Hit>) {
        scratch.stamp = scratch.stamp.wrapping_add(1);
        if scratch.stamp == 0 || scratch.seen.len() < self.predicates.len() {
            scratch.seen.clear();
            scratch.seen.resize(self.predicates.len(), 0);
            scratch.stamp = 1;
        }
        for t in scratch.present_list.drain(..) {
            scratch.present.clear(t);
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
        let categories: Vec<u32> = paper_categories(paper.categories)
            .iter()
            .filter_map(|c| self.categories.get(*c).copied())
            .collect();
        let mut authors: Vec<u32> = paper
            .authors
            .iter()
            .filter_map(|a| self.authors.get(&normalize_author(a)).copied())
            .collect();
        authors.sort_unstable();
        authors.dedup();
        let mut category_set = CategorySet::default();
        for c in &categories {
            category_set.insert(*c);
        }
        let ids = PaperIds {
            categories,
            category_set,
            authors,
        };
        let paper_bits = category_bits(&ids.categories);
        let candidates = scratch
            .present_list
            .iter()
            .map(|t| &self.by_term[*t as usize])
            .chain(
                ids.categories
                    .iter()
                    .map(|c| &self.by_category[*c as usize]),
            )
            .chain(ids.authors.iter().map(|a| &self.by_author[*a as usize]));
        for postings in candidates {
            for posting in postings {
                if posting.categories != 0 && posting.categories & paper_bits == 0 {
                    continue;
                }
                if posting.shared {
                    let seen = &mut scratch.seen[posting.predicate as usize];
                    if *seen == scratch.stamp {
                        continue;
                    }
                    *seen = scratch.stamp;
                }
                if posting.decided && posting.has_single {
                    hits.push(posting.single);
                    continue;
                }
                let predicate = &self.predicates[posting.predicate as usize];
                if posting.decided || predicate.matches(&ids, &scratch.present) {
                    hits.extend_from_slice(&predicate.subscribers);
                }
            }
        }
    }
}

fn category_bits(ids: &[u32]) -> u64 {
    ids.iter().fold(0, |bits, id| bits | 1 << (id % 64))
}

/// A paper's categories and their archives (`cs.LG` also counts as `cs`).
fn paper_categories(categories: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::with_capacity(categories.len() * 2);
    for c in categories {
        if !out.contains(&c.as_str()) {
            out.push(c);
        }
        if let Some((archive, _)) = c.split_once('.')
            && !out.contains(&archive)
        {
            out.push(archive);
        }
    }
    out
}

fn intern(ids: &mut HashMap<String, u32>, postings: &mut Vec<Vec<Posting>>, key: &str) -> u32 {
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

    /// Every subscription tested against the paper in turn.
    fn naive(subscriptions: &[Subscription], paper: &Paper<'_>) -> Vec<i64> {
        let text: Vec<String> = words(paper.title)
            .chain(words(paper.abstract_text))
            .collect();
        let joined = format!(" {} ", text.join(" "));
        let categories = paper_categories(paper.categories);
        let authors: Vec<String> = paper.authors.iter().map(|a| normalize_author(a)).collect();
        let mut ids: Vec<i64> = subscriptions
            .iter()
            .filter(|s| {
                (s.categories.is_empty()
                    || s.categories
                        .iter()
                        .any(|c| categories.contains(&c.as_str())))
                    && (s.authors.is_empty()
                        || s.authors
                            .iter()
                            .any(|a| authors.contains(&normalize_author(a))))
                    && s.query
                        .as_ref()
                        .is_none_or(|q| q.matches(&|t: &str| joined.contains(&format!(" {t} "))))
            })
            .map(|s| s.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// A small random world: subscriptions over few words, categories and
    /// authors, so that many share a predicate and papers hit many.
    struct World {
        state: u64,
    }

    const WORDS: [&str; 8] = [
        "alpha", "beta", "gamma", "delta", "graph", "net", "quantum", "sparse",
    ];
    const CATEGORIES: [&str; 5] = ["cs.LG", "cs.AI", "math.OC", "stat.ML", "cs"];
    const AUTHORS: [&str; 3] = ["Ada Lovelace", "A. Turing", "Emmy Noether"];

    impl World {
        fn next(&mut self, n: usize) -> usize {
            self.state = self
                .state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.state >> 33) as usize) % n
        }

        fn word(&mut self) -> &'static str {
            WORDS[self.next(WORDS.len())]
        }

        fn subscription(&mut self, id: i64) -> Subscription {
            let query = match self.next(6) {
                0 => None,
                1 => Some(format!("{} {}", self.word(), self.word())),
                2 => Some(format!(
                    "{} OR \"{} {}\"",
                    self.word(),
                    self.word(),
                    self.word()
                )),
                3 => Some(format!("{} -{}", self.word(), self.word())),
                4 => Some(format!(
                    "({} OR {}) NOT {}",
                    self.word(),
                    self.word(),
                    self.word()
                )),
                _ => Some(self.word().to_owned()),
            }
            .and_then(|q| Query::parse(&q).ok());
            let categories: Vec<String> = (0..self.next(3))
                .map(|_| CATEGORIES[self.next(CATEGORIES.len())].to_owned())
                .collect();
            let authors: Vec<String> = if self.next(5) == 0 {
                vec![AUTHORS[self.next(AUTHORS.len())].to_owned()]
            } else {
                Vec::new()
            };
            let categories = if query.is_none() && categories.is_empty() && authors.is_empty() {
                vec!["cs".to_owned()]
            } else {
                categories
            };
            Subscription {
                id,
                user_id: id % 17,
                categories,
                query,
                authors,
            }
        }

        fn check(&mut self, index: &Index, live: &[Subscription], papers: usize) {
            let mut scratch = Scratch::default();
            for _ in 0..papers {
                let text: Vec<&str> = (0..6).map(|_| self.word()).collect();
                let text = text.join(" ");
                let cats = vec![CATEGORIES[self.next(4)].to_owned()];
                let authors = ["ada  lovelace".to_owned(), "Alan Turing".to_owned()];
                let authors = &authors[..self.next(3)];
                let paper = paper(&text, "", &cats, authors);
                let got = ids(index.matches(&paper, &mut scratch));
                assert_eq!(
                    got,
                    naive(live, &paper),
                    "{text} in {cats:?} by {authors:?}"
                );
            }
        }
    }

    #[test]
    fn categories_past_the_bits_still_match_exactly() {
        // More categories than the bit set holds: the later ones are
        // compared as lists.
        let names: Vec<String> = (0..300).map(|i| format!("x{i}.Y")).collect();
        let subscriptions: Vec<Subscription> = (0..300)
            .map(|i| {
                let categories = [&names[i], &names[(i * 7) % 300]];
                let query = (i % 2 == 0).then_some("graph");
                sub(i as i64, &categories.map(String::as_str), query, &[])
            })
            .collect();
        let index = Index::build(subscriptions.clone());
        let mut scratch = Scratch::default();
        for i in (0..300).step_by(7) {
            let cats = vec![names[i].clone()];
            for text in ["graph theory", "topology"] {
                let paper = paper(text, "", &cats, &[]);
                let got = ids(index.matches(&paper, &mut scratch));
                assert_eq!(got, naive(&subscriptions, &paper), "{text} in {cats:?}");
            }
        }
    }

    #[test]
    fn programs_evaluate_as_the_query_does() {
        let term = |i: usize| Query::Term(format!("t{i}"));
        let wide_and = Query::And((0..70).map(term).collect());
        let queries = [
            Query::parse("a (b OR c) -d").expect("valid"),
            Query::parse("(a OR (b -c)) AND NOT (d OR e)").expect("valid"),
            Query::Or(vec![wide_and.clone(), term(0)]),
            Query::And(vec![
                Query::Or((0..40).map(term).collect()),
                Query::Not(Box::new(term(1))),
            ]),
            wide_and,
        ];
        let names: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| (*s).to_owned())
            .chain((0..70).map(|i| format!("t{i}")))
            .collect();
        let mut ids: HashMap<String, u32> = HashMap::new();
        let programs: Vec<Program> = queries
            .iter()
            .map(|q| {
                Program::compile(q, &mut |t| {
                    let next = ids.len() as u32;
                    *ids.entry(t.to_owned()).or_insert(next)
                })
            })
            .collect();
        assert!(programs[2].deep && !programs[3].deep);
        let mut world = World { state: 3 };
        for _ in 0..2_000 {
            let present_names: Vec<&String> = names.iter().filter(|_| world.next(4) != 0).collect();
            let mut present = Bitset::default();
            for name in &present_names {
                if let Some(id) = ids.get(*name) {
                    present.set(*id);
                }
            }
            for (query, program) in queries.iter().zip(&programs) {
                assert_eq!(
                    program.matches(&present),
                    query.matches(&|t: &str| present_names.iter().any(|n| *n == t)),
                    "{query}"
                );
            }
        }
    }

    #[test]
    fn matches_what_a_naive_evaluation_matches() {
        let mut world = World { state: 7 };
        let subscriptions: Vec<Subscription> = (0..300).map(|id| world.subscription(id)).collect();
        let index = Index::build(subscriptions.clone());
        assert!(
            index.predicates() < index.len(),
            "equal subscriptions share"
        );
        world.check(&index, &subscriptions, 300);
    }

    #[test]
    fn stays_exact_through_churn_and_rebuilds() {
        let mut world = World { state: 11 };
        let mut live: Vec<Subscription> = (0..2_000).map(|id| world.subscription(id)).collect();
        let mut index = Index::build(live.clone());
        for round in 0..6 {
            // Edits, removals and new subscriptions, some with new terms so
            // that the delta automaton and its merge are exercised.
            for step in 0..1_500 {
                let id = world.next(3_000) as i64;
                match world.next(3) {
                    0 => {
                        index.remove(id);
                        live.retain(|s| s.id != id);
                    }
                    _ => {
                        let mut sub = world.subscription(id);
                        if step % 7 == 0 {
                            sub.query = Query::parse(&format!("fresh{round}x{step}")).ok();
                        }
                        index.upsert(sub.clone());
                        live.retain(|s| s.id != id);
                        live.push(sub);
                    }
                }
            }
            assert_eq!(index.len(), live.len());
            world.check(&index, &live, 100);
        }
        // Emptying most of it forces a rebuild from the live predicates.
        for sub in live.split_off(50) {
            index.remove(sub.id);
        }
        assert_eq!(index.len(), 50);
        assert!(
            index.predicates.len() < 2 * VACANT_MIN + 50,
            "vacant predicates were dropped: {} kept",
            index.predicates.len()
        );
        world.check(&index, &live, 200);
    }
}
