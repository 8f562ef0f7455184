//! Matching one day of papers against a million subscriptions, on one
//! core, against naive per-subscription matching measured in the same run.
//!
//! The workload is synthetic but shaped like the real thing. Paper text is
//! made of sentences from the real arXiv abstracts recorded in the arxiv
//! crate's fixtures, plus a few words from a long tail of rare terms
//! (method names, datasets, molecules). Subscription terms are drawn from
//! the same vocabulary with a Zipf law: many people follow "reinforcement
//! learning", few follow any one rare term. Categories and authors follow
//! Zipf laws too. The mix: category-only, keyword-only (single words,
//! phrases, AND, OR, NOT), category plus keywords, and author follows.
//!
//! The naive reference tests every subscription against every paper
//! (substring search for each term over the same normalized text). It is
//! timed on a sample of papers and its hits are checked against the
//! index's, so the speed-up compares like with like.
//!
//! `cargo bench -p subscriptions` prints the figures and writes them to
//! `target/bench/matching.json`. `MATCHING_SUBSCRIPTIONS` and
//! `MATCHING_PAPERS` change the sizes.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use subscriptions::{
    index::{Hit, Index, Paper, Scratch, Subscription, normalize_author},
    query::{Query, words},
};

const SEED: u64 = 0x5eed_2026;
const TAIL_TERMS: usize = 50_000;
const AUTHORS: usize = 200_000;
const NAIVE_SAMPLE: usize = 10;
const ROUNDS: usize = 5;

/// arXiv categories, roughly most submitted first.
const CATEGORIES: &[&str] = &[
    "cs.LG",
    "cs.CV",
    "cs.AI",
    "cs.CL",
    "quant-ph",
    "stat.ML",
    "math.OC",
    "cs.RO",
    "eess.IV",
    "hep-ph",
    "cs.CR",
    "math.PR",
    "cond-mat.mtrl-sci",
    "astro-ph.GA",
    "cs.SE",
    "math.NA",
    "physics.optics",
    "cs.IT",
    "math.AP",
    "hep-th",
    "cs.DC",
    "eess.SP",
    "astro-ph.CO",
    "cond-mat.str-el",
    "cs.HC",
    "math.CO",
    "q-bio.NC",
    "cs.NI",
    "econ.EM",
    "gr-qc",
    "cs.DS",
    "physics.flu-dyn",
    "math.ST",
    "cs.SY",
    "cs.IR",
    "astro-ph.SR",
    "nucl-th",
    "cs.NE",
    "q-fin.ST",
    "cs.DB",
    "astro-ph.HE",
    "astro-ph.EP",
    "astro-ph.IM",
    "cond-mat.mes-hall",
    "cond-mat.stat-mech",
    "cond-mat.soft",
    "cond-mat.supr-con",
    "hep-ex",
    "hep-lat",
    "math.AG",
    "math.DG",
    "math.DS",
    "math.FA",
    "math.GT",
    "math.NT",
    "math.RT",
    "math.GR",
    "math.LO",
    "math-ph",
    "nlin.CD",
    "physics.comp-ph",
    "physics.chem-ph",
    "physics.bio-ph",
    "physics.plasm-ph",
    "physics.app-ph",
    "physics.soc-ph",
    "q-bio.QM",
    "q-bio.BM",
    "q-fin.CP",
    "q-fin.PM",
    "stat.ME",
    "stat.AP",
    "stat.CO",
    "eess.AS",
    "eess.SY",
    "cs.GT",
    "cs.LO",
    "cs.PL",
    "cs.CY",
    "cs.SD",
    "cs.GR",
    "cs.MA",
    "cs.SI",
    "cs.CE",
    "cs.CG",
    "cs.FL",
    "cs.DL",
    "cs.OS",
];
const ARCHIVES: &[&str] = &["cs", "math", "stat", "physics", "astro-ph", "q-bio"];
const STOPWORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "a", "is", "for", "we", "that", "on", "with", "this", "as",
    "are", "by", "an", "be", "our", "from", "which", "it", "can", "at", "these", "or", "has",
    "have", "its", "their", "not", "also", "been", "such", "using", "than", "both", "into",
    "between", "based", "show", "paper", "results", "new", "two", "one", "how", "more", "use",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let subscription_count = env_usize("MATCHING_SUBSCRIPTIONS", 1_000_000);
    let paper_count = env_usize("MATCHING_PAPERS", 2_000);
    let mut rng = fastrand::Rng::with_seed(SEED);
    let corpus = Corpus::load()?;

    let papers = corpus.papers(&mut rng, paper_count);
    let subs = corpus.subscriptions(&mut rng, subscription_count);
    println!(
        "{} papers ({} real abstracts as source), {} subscriptions, vocabulary {} real + {} tail terms",
        papers.len(),
        corpus.abstracts.len(),
        subs.len(),
        corpus.vocabulary.len(),
        corpus.tail.len(),
    );

    let started = Instant::now();
    let index = Index::build(subs.iter().cloned());
    let build = started.elapsed();

    let views: Vec<Paper<'_>> = papers.iter().map(SynthPaper::view).collect();
    let mut scratch = Scratch::default();
    // One warm-up pass sizes the scratch buffers and faults the pages in.
    for paper in views.iter().take(50) {
        std::hint::black_box(index.matches(paper, &mut scratch));
    }
    // The whole day, several times: the machine is shared and noisy, so
    // the median round is the figure, and every round is reported.
    let mut hits = Vec::new();
    let mut rounds = Vec::new();
    let mut hits_total = 0usize;
    let mut papers_with_hits = 0usize;
    for _ in 0..ROUNDS {
        hits_total = 0;
        papers_with_hits = 0;
        let started = Instant::now();
        for paper in &views {
            hits.clear();
            index.matches_into(paper, &mut scratch, &mut hits);
            hits_total += hits.len();
            papers_with_hits += usize::from(!hits.is_empty());
        }
        rounds.push(started.elapsed());
        println!("matched the day in {:?}", started.elapsed());
    }
    let mut sorted = rounds.clone();
    sorted.sort();
    let indexed = sorted[sorted.len() / 2];

    // Untimed: how many papers a day each kind of subscription receives.
    let kinds: Vec<&str> = subs.iter().map(kind).collect();
    let mut per_kind: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for k in &kinds {
        per_kind.entry(k).or_default().0 += 1;
    }
    for paper in &views {
        hits.clear();
        index.matches_into(paper, &mut scratch, &mut hits);
        for hit in &hits {
            per_kind
                .entry(kinds[hit.subscription_id as usize])
                .or_default()
                .1 += 1;
        }
    }
    let papers_per_day: serde_json::Map<String, serde_json::Value> = per_kind
        .iter()
        .map(|(k, (subs, hits))| {
            (
                (*k).to_owned(),
                serde_json::json!({
                    "subscriptions": subs,
                    "mean_papers_per_subscription": *hits as f64 / (*subs).max(1) as f64,
                }),
            )
        })
        .collect();

    let naive = Naive::new(&subs);
    let sample = &views[..NAIVE_SAMPLE.min(views.len())];
    let started = Instant::now();
    let naive_hits: Vec<Vec<Hit>> = sample.iter().map(|p| naive.matches(p)).collect();
    let naive_elapsed = started.elapsed();
    for (paper, expected) in sample.iter().zip(naive_hits) {
        let mut got = index.matches(paper, &mut scratch);
        got.sort_unstable();
        let mut expected = expected;
        expected.sort_unstable();
        if got != expected {
            return Err(format!(
                "index and naive matching disagree on {:?}: {} vs {} hits",
                paper.title,
                got.len(),
                expected.len()
            )
            .into());
        }
    }

    let updates = measure_updates(index, &corpus, &mut rng);

    let naive_per_paper = naive_elapsed.as_secs_f64() / sample.len() as f64;
    let indexed_per_paper = indexed.as_secs_f64() / views.len() as f64;
    let report = serde_json::json!({
        "subscriptions": subs.len(),
        "papers": views.len(),
        "index_build_seconds": build.as_secs_f64(),
        "match_seconds": indexed.as_secs_f64(),
        "match_seconds_rounds": rounds.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
        "papers_per_second": views.len() as f64 / indexed.as_secs_f64(),
        "hits_total": hits_total,
        "mean_hits_per_paper": hits_total as f64 / views.len() as f64,
        "papers_with_hits": papers_with_hits,
        "mean_papers_per_subscription": hits_total as f64 / subs.len() as f64,
        "by_kind": papers_per_day,
        "naive_sample_papers": sample.len(),
        "naive_seconds_per_paper": naive_per_paper,
        "naive_seconds_projected": naive_per_paper * views.len() as f64,
        "speedup_vs_naive": naive_per_paper / indexed_per_paper,
        "update_micros_mean": updates.as_secs_f64() * 1e6 / UPDATES as f64,
        "target_seconds": 1.0,
        "meets_target": indexed.as_secs_f64() <= 1.0,
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out)?;
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(out.join("matching.json"), &text)?;
    println!("{text}");
    Ok(())
}

const UPDATES: usize = 2_000;

/// Mean cost of keeping the index current: edits and new subscriptions,
/// some with terms the index has never seen, none with a full rebuild.
fn measure_updates(mut index: Index, corpus: &Corpus, rng: &mut fastrand::Rng) -> Duration {
    let fresh: Vec<Subscription> = (0..UPDATES)
        .map(|i| {
            let mut sub = corpus.subscription(rng, 10_000_000 + i as i64);
            if i % 4 == 0 {
                sub.query = Query::parse(&format!("brandnewterm{i}")).ok();
            }
            sub
        })
        .collect();
    let started = Instant::now();
    for (i, sub) in fresh.into_iter().enumerate() {
        if i % 2 == 0 {
            index.remove(i as i64);
        }
        index.upsert(sub);
    }
    started.elapsed()
}

struct Corpus {
    abstracts: Vec<Vec<String>>,
    titles: Vec<String>,
    /// Real topical words and two-word phrases, most followed first.
    vocabulary: Vec<String>,
    tail: Vec<String>,
    authors: Vec<String>,
}

impl Corpus {
    fn load() -> Result<Self, Box<dyn std::error::Error>> {
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../arxiv/tests/fixtures/arxiv-api");
        let mut seen = std::collections::HashSet::new();
        let mut abstracts = Vec::new();
        let mut titles = Vec::new();
        let mut frequency: HashMap<String, usize> = HashMap::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "xml"))
            .collect();
        entries.sort();
        for path in entries {
            let Ok(page) = arxiv::query::parse(&std::fs::read_to_string(&path)?) else {
                continue;
            };
            for paper in page.papers {
                if !seen.insert(paper.id.to_string()) {
                    continue;
                }
                let all: Vec<String> = words(&paper.abstract_text).collect();
                let content = |w: &String| {
                    w.len() > 2
                        && !STOPWORDS.contains(&w.as_str())
                        && !w.chars().all(|c| c.is_ascii_digit())
                };
                let mut terms: std::collections::HashSet<String> =
                    all.iter().filter(|w| content(w)).cloned().collect();
                terms.extend(
                    all.windows(2)
                        .filter(|pair| content(&pair[0]) && content(&pair[1]))
                        .map(|pair| format!("{} {}", pair[0], pair[1])),
                );
                for term in terms {
                    *frequency.entry(term).or_default() += 1;
                }
                abstracts.push(paper.abstract_text.split(". ").map(str::to_owned).collect());
                titles.push(paper.title);
            }
        }
        // What people follow is topical: words in more than a tenth of all
        // abstracts ("model", "method") are nobody's subscription. Which
        // topics are popular is not how often they are written, so the
        // order is shuffled before the Zipf law applies.
        let generic = abstracts.len() / 10;
        let mut vocabulary: Vec<String> = frequency
            .into_iter()
            .filter(|(_, documents)| *documents <= generic)
            .map(|(term, _)| term)
            .collect();
        vocabulary.sort();
        let mut rng = fastrand::Rng::with_seed(SEED ^ 1);
        rng.shuffle(&mut vocabulary);
        let tail = (0..TAIL_TERMS).map(|_| pseudo_word(&mut rng)).collect();
        let authors = (0..AUTHORS)
            .map(|_| format!("{} {}", pseudo_word(&mut rng), pseudo_word(&mut rng)))
            .map(|name| capitalize(&name))
            .collect();
        Ok(Self {
            abstracts,
            titles,
            vocabulary,
            tail,
            authors,
        })
    }

    fn papers(&self, rng: &mut fastrand::Rng, count: usize) -> Vec<SynthPaper> {
        (0..count)
            .map(|_| {
                let mut text = Vec::new();
                for _ in 0..rng.usize(5..10) {
                    let source = &self.abstracts[rng.usize(..self.abstracts.len())];
                    text.push(source[rng.usize(..source.len())].clone());
                }
                for _ in 0..5 {
                    text.push(format!(
                        "We evaluate on {}",
                        self.tail[rng.usize(..self.tail.len())]
                    ));
                }
                let categories = (0..rng.usize(1..4))
                    .map(|_| CATEGORIES[zipf(rng, CATEGORIES.len())].to_owned())
                    .collect();
                let authors = (0..rng.usize(1..9))
                    .map(|_| self.authors[rng.usize(..self.authors.len())].clone())
                    .collect();
                SynthPaper {
                    title: self.titles[rng.usize(..self.titles.len())].clone(),
                    abstract_text: text.join(". "),
                    categories,
                    authors,
                }
            })
            .collect()
    }

    fn subscriptions(&self, rng: &mut fastrand::Rng, count: usize) -> Vec<Subscription> {
        (0..count)
            .map(|id| self.subscription(rng, id as i64))
            .collect()
    }

    fn subscription(&self, rng: &mut fastrand::Rng, id: i64) -> Subscription {
        let mut categories = Vec::new();
        let mut query = None;
        let mut authors = Vec::new();
        match rng.u32(..100) {
            0..20 => {
                for _ in 0..rng.usize(1..3) {
                    categories.push(if rng.u32(..10) == 0 {
                        ARCHIVES[rng.usize(..ARCHIVES.len())].to_owned()
                    } else {
                        CATEGORIES[zipf(rng, CATEGORIES.len())].to_owned()
                    });
                }
            }
            20..65 => query = Some(self.query(rng)),
            65..90 => {
                categories.push(CATEGORIES[zipf(rng, CATEGORIES.len())].to_owned());
                query = Some(self.query(rng));
            }
            _ => {
                for _ in 0..rng.usize(1..4) {
                    authors.push(self.authors[zipf(rng, self.authors.len())].clone());
                }
            }
        }
        Subscription {
            id,
            user_id: id / 5,
            categories,
            query: query.and_then(|text| Query::parse(&text).ok()),
            authors,
        }
    }

    /// A query as a person would type it.
    fn query(&self, rng: &mut fastrand::Rng) -> String {
        let term = |rng: &mut fastrand::Rng| {
            let t = if rng.u32(..10) < 6 {
                &self.vocabulary[zipf(rng, self.vocabulary.len())]
            } else {
                &self.tail[zipf(rng, self.tail.len())]
            };
            if t.contains(' ') {
                format!("\"{t}\"")
            } else {
                t.clone()
            }
        };
        match rng.u32(..100) {
            0..40 => term(rng),
            40..65 => format!("{} {}", term(rng), term(rng)),
            65..90 => (0..rng.usize(2..4))
                .map(|_| term(rng))
                .collect::<Vec<_>>()
                .join(" OR "),
            _ => format!("{} -{}", term(rng), term(rng)),
        }
    }
}

struct SynthPaper {
    title: String,
    abstract_text: String,
    categories: Vec<String>,
    authors: Vec<String>,
}

impl SynthPaper {
    fn view(&self) -> Paper<'_> {
        Paper {
            title: &self.title,
            abstract_text: &self.abstract_text,
            categories: &self.categories,
            authors: &self.authors,
        }
    }
}

/// Every subscription tested against the paper in turn.
struct Naive<'a> {
    subs: &'a [Subscription],
    authors: Vec<Vec<String>>,
}

impl<'a> Naive<'a> {
    fn new(subs: &'a [Subscription]) -> Self {
        let authors = subs
            .iter()
            .map(|s| s.authors.iter().map(|a| normalize_author(a)).collect())
            .collect();
        Self { subs, authors }
    }

    fn matches(&self, paper: &Paper<'_>) -> Vec<Hit> {
        let mut text = String::from(" ");
        for word in words(paper.title).chain(words(paper.abstract_text)) {
            text.push_str(&word);
            text.push(' ');
        }
        let paper_authors: Vec<String> =
            paper.authors.iter().map(|a| normalize_author(a)).collect();
        let in_category = |wanted: &String| {
            paper
                .categories
                .iter()
                .any(|c| c == wanted || c.split_once('.').is_some_and(|(a, _)| a == wanted))
        };
        let mut hits = Vec::new();
        for (sub, authors) in self.subs.iter().zip(&self.authors) {
            let categories_ok = sub.categories.is_empty() || sub.categories.iter().any(in_category);
            let authors_ok =
                authors.is_empty() || authors.iter().any(|a| paper_authors.contains(a));
            let query_ok = sub
                .query
                .as_ref()
                .is_none_or(|q| q.matches(&|term: &str| text.contains(&format!(" {term} "))));
            if categories_ok && authors_ok && query_ok {
                hits.push(Hit {
                    subscription_id: sub.id,
                    user_id: sub.user_id,
                });
            }
        }
        hits
    }
}

fn kind(sub: &Subscription) -> &'static str {
    match (
        !sub.categories.is_empty(),
        sub.query.is_some(),
        !sub.authors.is_empty(),
    ) {
        (true, false, false) => "categories",
        (false, true, false) => "keywords",
        (true, true, false) => "categories_and_keywords",
        (false, false, true) => "authors",
        _ => "other",
    }
}

/// A rank in `0..n` with probability proportional to 1 / (rank + 1).
fn zipf(rng: &mut fastrand::Rng, n: usize) -> usize {
    // Inverse of the continuous approximation of the harmonic CDF.
    let u = rng.f64();
    let rank = ((n as f64 + 1.0).powf(u) - 1.0).floor() as usize;
    rank.min(n - 1)
}

fn pseudo_word(rng: &mut fastrand::Rng) -> String {
    const SYLLABLES: &[&str] = &[
        "ka", "lo", "mi", "ne", "tra", "vo", "zen", "dil", "qua", "ris", "mon", "tel", "fa", "gor",
        "shi", "bel", "nu", "pex", "cor", "dan",
    ];
    (0..rng.usize(3..5))
        .map(|_| SYLLABLES[rng.usize(..SYLLABLES.len())])
        .collect()
}

fn capitalize(name: &str) -> String {
    name.split(' ')
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
