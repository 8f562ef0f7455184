//! A fake arXiv: the query API, OAI-PMH `ListRecords` (`arXivRaw`) and the
//! announcement feeds over real HTTP, serving a generated corpus and the
//! recorded fixtures, with injectable faults and a log of every request.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Path as UrlPath, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use quick_xml::escape::escape;
use time::{Date, Month};
use tokio::net::TcpListener;

/// A generated paper.
#[derive(Debug, Clone)]
pub struct FakePaper {
    pub id: String,
    pub versions: u32,
    pub categories: Vec<String>,
    /// Submission day of version 1; later versions follow a day apart.
    pub submitted: Date,
    pub title: String,
    pub abstract_text: String,
    pub authors: Vec<String>,
}

impl FakePaper {
    /// Day of the latest version: the OAI datestamp and the announcement day.
    pub fn last_changed(&self) -> Date {
        self.submitted
            .checked_add(time::Duration::days(i64::from(self.versions) - 1))
            .unwrap_or(self.submitted)
    }
}

/// `count` papers submitted over the days from `first_day`, `per_day` a day.
pub fn corpus(count: usize, first_day: Date, per_day: usize) -> Vec<FakePaper> {
    const CATEGORIES: [&str; 6] = ["cs.LG", "cs.AI", "cs.CL", "stat.ML", "cs.CR", "math.OC"];
    const WORDS: [&str; 16] = [
        "streams",
        "partitions",
        "ordering",
        "retries",
        "latency",
        "summaries",
        "graphs",
        "learning",
        "quantum",
        "privacy",
        "backpressure",
        "consensus",
        "kernels",
        "sparse",
        "robust",
        "agents",
    ];
    (0..count)
        .map(|i| {
            let day = first_day
                .checked_add(time::Duration::days((i / per_day.max(1)) as i64))
                .unwrap_or(first_day);
            let primary = CATEGORIES[i % CATEGORIES.len()];
            let mut categories = vec![primary.to_owned()];
            if i % 3 == 0 {
                categories.push(CATEGORIES[(i + 1) % CATEGORIES.len()].to_owned());
            }
            let word = |k: usize| WORDS[(i * 7 + k * 3) % WORDS.len()];
            FakePaper {
                id: format!("{:02}{:02}.{:05}", day.year() % 100, u8::from(day.month()), i + 1),
                versions: if i % 10 == 0 { 2 } else { 1 },
                categories,
                submitted: day,
                title: format!("On {} {}\n  and {} at scale", word(0), word(1), word(2)),
                abstract_text: format!(
                    "  We study {} for {} {}. Our method reduces {} by {}%.\n  Experiments confirm it.",
                    word(3),
                    word(4),
                    word(5),
                    word(6),
                    10 + i % 80
                ),
                authors: (0..1 + i % 3).map(|a| format!("Author {}{}", ["A", "B", "C"][a], i)).collect(),
            }
        })
        .collect()
}

/// What the next request gets instead of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// This status, with `Retry-After` in seconds when given.
    Status { code: u16, retry_after: Option<u64> },
    /// Answer after this long.
    Slow(Duration),
    /// The real body, cut in half.
    Truncated,
    /// A body that is not XML.
    Malformed,
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub query: String,
    pub started: Instant,
    pub finished: Instant,
    pub status: u16,
}

#[derive(Debug, Default)]
struct Shared {
    faults: VecDeque<Fault>,
    log: Vec<Recorded>,
}

#[derive(Debug)]
struct Fake {
    papers: Vec<FakePaper>,
    by_id: HashMap<String, usize>,
    recorded: HashMap<String, (u16, String)>,
    page_size: usize,
    shared: Mutex<Shared>,
}

/// A running fake arXiv on a loopback port. Stops when dropped.
#[derive(Debug)]
pub struct FakeArxiv {
    addr: SocketAddr,
    fake: Arc<Fake>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeArxiv {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeArxiv {
    /// Serve `papers`, `page_size` OAI records a page, plus the recorded
    /// query-API responses in `recorded_dir` (its `INDEX.tsv`), if given.
    pub async fn start(
        papers: Vec<FakePaper>,
        page_size: usize,
        recorded_dir: Option<&Path>,
        port: u16,
    ) -> std::io::Result<Self> {
        let fake = Arc::new(Fake {
            by_id: papers
                .iter()
                .enumerate()
                .map(|(i, p)| (p.id.clone(), i))
                .collect(),
            papers,
            recorded: recorded_dir
                .map(load_recorded)
                .transpose()?
                .unwrap_or_default(),
            page_size: page_size.max(1),
            shared: Mutex::default(),
        });
        let app = Router::new()
            .route("/api/query", get(query))
            .route("/oai", get(oai))
            .route("/atom/{categories}", get(atom))
            .with_state(fake.clone());
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "fake arXiv stopped");
            }
        });
        Ok(Self { addr, fake, server })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn query_url(&self) -> String {
        format!("{}/api/query", self.base_url())
    }

    pub fn oai_url(&self) -> String {
        format!("{}/oai", self.base_url())
    }

    pub fn rss_url(&self) -> String {
        format!("{}/atom", self.base_url())
    }

    /// The next requests meet these faults, one each, in order.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.fake.shared).faults.extend(faults);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.fake.shared).log.clone()
    }

    pub fn papers(&self) -> &[FakePaper] {
        &self.fake.papers
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn load_recorded(dir: &Path) -> std::io::Result<HashMap<String, (u16, String)>> {
    let index = std::fs::read_to_string(dir.join("INDEX.tsv"))?;
    let mut out = HashMap::new();
    for line in index.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        let [file, status, url] = cols[..] else {
            continue;
        };
        let Some((_, query)) = url.split_once('?') else {
            continue;
        };
        let body = std::fs::read_to_string(dir.join(file))?;
        out.insert(recording_key(query), (status.parse().unwrap_or(200), body));
    }
    Ok(out)
}

/// What identifies a recorded query: its id list, or its search and page.
fn recording_key(query: &str) -> String {
    let p: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
    match get("id_list") {
        "" => format!(
            "q={}&start={}&max={}",
            get("search_query"),
            get("start"),
            get("max_results")
        ),
        ids => format!("ids={ids}"),
    }
}

fn params(query: &Option<String>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// Apply the next fault, if any, around `answer`, and log the request.
async fn serve(
    fake: &Fake,
    path: String,
    query: Option<String>,
    answer: (u16, String),
) -> Response {
    let started = Instant::now();
    let fault = lock(&fake.shared).faults.pop_front();
    let (status, body, retry_after) = match fault {
        None => (answer.0, answer.1, None),
        Some(Fault::Status { code, retry_after }) => (code, format!("fault {code}"), retry_after),
        Some(Fault::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            (answer.0, answer.1, None)
        }
        Some(Fault::Truncated) => {
            let mut cut = answer.1.len() / 2;
            while !answer.1.is_char_boundary(cut) {
                cut -= 1;
            }
            (answer.0, answer.1[..cut].to_owned(), None)
        }
        Some(Fault::Malformed) => (answer.0, "<feed><entry><id>oops</feed>&&".to_owned(), None),
    };
    lock(&fake.shared).log.push(Recorded {
        path,
        query: query.unwrap_or_default(),
        started,
        finished: Instant::now(),
        status,
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/atom+xml; charset=utf-8"),
    );
    if let Some(seconds) = retry_after
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        headers.insert(header::RETRY_AFTER, value);
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        headers,
        body,
    )
        .into_response()
}

async fn query(State(fake): State<Arc<Fake>>, RawQuery(raw): RawQuery) -> Response {
    let answer = if let Some(recorded) = fake
        .recorded
        .get(&recording_key(raw.as_deref().unwrap_or_default()))
    {
        recorded.clone()
    } else {
        let p = params(&raw);
        let start: usize = p.get("start").and_then(|s| s.parse().ok()).unwrap_or(0);
        let max: usize = p
            .get("max_results")
            .and_then(|s| s.parse().ok())
            .unwrap_or(10);
        let matches: Vec<&FakePaper> = match p.get("id_list").filter(|l| !l.is_empty()) {
            Some(list) => list
                .split(',')
                .filter_map(|id| {
                    let base = id.split_once('v').map_or(id, |(b, _)| b);
                    fake.by_id.get(base).map(|i| &fake.papers[*i])
                })
                .collect(),
            None => {
                let category = p
                    .get("search_query")
                    .and_then(|q| q.strip_prefix("cat:"))
                    .map(str::to_owned);
                let mut found: Vec<&FakePaper> = fake
                    .papers
                    .iter()
                    .filter(|paper| {
                        category
                            .as_ref()
                            .is_none_or(|c| paper.categories.contains(c))
                    })
                    .collect();
                found.reverse();
                found
            }
        };
        let page: Vec<&FakePaper> = matches.iter().skip(start).take(max).copied().collect();
        (200, atom_feed(&page, matches.len(), start, max))
    };
    serve(&fake, "/api/query".into(), raw, answer).await
}

async fn oai(State(fake): State<Arc<Fake>>, RawQuery(raw): RawQuery) -> Response {
    let p = params(&raw);
    let (filter, offset) = match p.get("resumptionToken") {
        Some(token) => match decode_token(token) {
            Some(parsed) => parsed,
            None => {
                let body = oai_error(
                    "badResumptionToken",
                    "The value of the resumptionToken argument is invalid or expired.",
                );
                return serve(&fake, "/oai".into(), raw, (200, body)).await;
            }
        },
        None => (
            Filter {
                from: p.get("from").cloned().unwrap_or_default(),
                until: p.get("until").cloned().unwrap_or_default(),
                set: p.get("set").cloned().unwrap_or_default(),
            },
            0,
        ),
    };
    let matching: Vec<&FakePaper> = fake
        .papers
        .iter()
        .filter(|paper| filter.matches(paper))
        .collect();
    let body = if matching.is_empty() {
        oai_error(
            "noRecordsMatch",
            "The combination of the values of the from, until, set and metadataPrefix arguments results in an empty list.",
        )
    } else {
        let page: Vec<&FakePaper> = matching
            .iter()
            .skip(offset)
            .take(fake.page_size)
            .copied()
            .collect();
        let next = offset + page.len();
        let token = (next < matching.len()).then(|| encode_token(&filter, next));
        oai_page(&page, token.as_deref(), offset, matching.len())
    };
    serve(&fake, "/oai".into(), raw, (200, body)).await
}

async fn atom(
    State(fake): State<Arc<Fake>>,
    UrlPath(categories): UrlPath<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let wanted: Vec<&str> = categories.split('+').collect();
    let latest = fake.papers.iter().map(FakePaper::last_changed).max();
    let entries: Vec<&FakePaper> = fake
        .papers
        .iter()
        .filter(|p| Some(p.last_changed()) == latest)
        .filter(|p| p.categories.iter().any(|c| wanted.contains(&c.as_str())))
        .collect();
    let body = announcement_feed(&entries, &wanted);
    serve(&fake, format!("/atom/{categories}"), raw, (200, body)).await
}

#[derive(Debug, Clone)]
struct Filter {
    from: String,
    until: String,
    set: String,
}

impl Filter {
    fn matches(&self, paper: &FakePaper) -> bool {
        let day = paper.last_changed().to_string();
        (self.from.is_empty() || day >= self.from)
            && (self.until.is_empty() || day <= self.until)
            && (self.set.is_empty() || paper.categories.iter().any(|c| in_set(c, &self.set)))
    }
}

/// OAI sets: `cs` holds every `cs.*`; `cs:cs:LG` holds `cs.LG`;
/// `physics:hep-th` holds `hep-th`.
fn in_set(category: &str, set: &str) -> bool {
    let parts: Vec<&str> = set.split(':').collect();
    match parts[..] {
        [archive] => category.split('.').next() == Some(archive),
        [_, archive] => category == archive || category.starts_with(&format!("{archive}.")),
        [_, archive, code] => category == format!("{archive}.{code}"),
        _ => false,
    }
}

fn encode_token(filter: &Filter, offset: usize) -> String {
    format!("{}|{}|{}|{offset}", filter.from, filter.until, filter.set)
}

fn decode_token(token: &str) -> Option<(Filter, usize)> {
    let parts: Vec<&str> = token.split('|').collect();
    let [from, until, set, offset] = parts[..] else {
        return None;
    };
    Some((
        Filter {
            from: from.to_owned(),
            until: until.to_owned(),
            set: set.to_owned(),
        },
        offset.parse().ok()?,
    ))
}

fn rfc3339(day: Date) -> String {
    format!("{day}T12:00:00Z")
}

fn atom_feed(papers: &[&FakePaper], total: usize, start: usize, per_page: usize) -> String {
    let mut out = String::from(
        "<?xml version='1.0' encoding='UTF-8'?>\n<feed xmlns:opensearch=\"http://a9.com/-/spec/opensearch/1.1/\" \
         xmlns:arxiv=\"http://arxiv.org/schemas/atom\" xmlns=\"http://www.w3.org/2005/Atom\">\n  <id>https://arxiv.org/api/fake</id>\n  <title>arXiv Query</title>\n",
    );
    out.push_str(&format!(
        "  <opensearch:itemsPerPage>{per_page}</opensearch:itemsPerPage>\n  <opensearch:totalResults>{total}</opensearch:totalResults>\n  <opensearch:startIndex>{start}</opensearch:startIndex>\n"
    ));
    for paper in papers {
        let version = paper.versions;
        out.push_str(&format!(
            "  <entry>\n    <id>http://arxiv.org/abs/{id}v{version}</id>\n    <title>{title}</title>\n    <updated>{updated}</updated>\n    \
             <link href=\"https://arxiv.org/abs/{id}v{version}\" rel=\"alternate\" type=\"text/html\"/>\n    \
             <link href=\"https://arxiv.org/pdf/{id}v{version}\" rel=\"related\" type=\"application/pdf\" title=\"pdf\"/>\n    \
             <summary>{summary}</summary>\n",
            id = paper.id,
            title = escape(&paper.title),
            updated = rfc3339(paper.last_changed()),
            summary = escape(&paper.abstract_text),
        ));
        for category in &paper.categories {
            out.push_str(&format!(
                "    <category term=\"{category}\" scheme=\"http://arxiv.org/schemas/atom\"/>\n"
            ));
        }
        out.push_str(&format!(
            "    <published>{}</published>\n    <arxiv:primary_category term=\"{}\"/>\n",
            rfc3339(paper.submitted),
            paper.categories[0]
        ));
        for author in &paper.authors {
            out.push_str(&format!(
                "    <author>\n      <name>{}</name>\n    </author>\n",
                escape(author)
            ));
        }
        out.push_str("  </entry>\n");
    }
    out.push_str("</feed>\n");
    out
}

fn oai_page(papers: &[&FakePaper], token: Option<&str>, cursor: usize, total: usize) -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<OAI-PMH xmlns=\"http://www.openarchives.org/OAI/2.0/\">\n  \
         <responseDate>2026-11-21T00:00:00Z</responseDate>\n  <request verb=\"ListRecords\">http://export.arxiv.org/oai2</request>\n  <ListRecords>\n",
    );
    for paper in papers {
        out.push_str(&format!(
            "    <record>\n      <header>\n        <identifier>oai:arXiv.org:{id}</identifier>\n        <datestamp>{day}</datestamp>\n        <setSpec>{set}</setSpec>\n      </header>\n      \
             <metadata>\n        <arXivRaw xmlns=\"http://arxiv.org/OAI/arXivRaw/\">\n          <id>{id}</id>\n          <submitter>{submitter}</submitter>\n",
            id = paper.id,
            day = paper.last_changed(),
            set = paper.categories[0].split('.').next().unwrap_or("cs"),
            submitter = escape(&paper.authors[0]),
        ));
        for v in 1..=paper.versions {
            let day = paper
                .submitted
                .checked_add(time::Duration::days(i64::from(v) - 1))
                .unwrap_or(paper.submitted);
            out.push_str(&format!(
                "          <version version=\"v{v}\">\n            <date>{}</date>\n            <size>100kb</size>\n            <source_type>D</source_type>\n          </version>\n",
                rfc2822(day)
            ));
        }
        out.push_str(&format!(
            "          <title>{}</title>\n          <authors>{}</authors>\n          <categories>{}</categories>\n          <license>http://creativecommons.org/licenses/by/4.0/</license>\n          <abstract>{}</abstract>\n        </arXivRaw>\n      </metadata>\n    </record>\n",
            escape(&paper.title),
            escape(paper.authors.join(", ")),
            paper.categories.join(" "),
            escape(&paper.abstract_text),
        ));
    }
    match token {
        Some(token) => out.push_str(&format!(
            "    <resumptionToken cursor=\"{cursor}\" completeListSize=\"{total}\">{}</resumptionToken>\n",
            escape(token)
        )),
        None => out.push_str(&format!("    <resumptionToken cursor=\"{cursor}\" completeListSize=\"{total}\"/>\n")),
    }
    out.push_str("  </ListRecords>\n</OAI-PMH>\n");
    out
}

fn rfc2822(day: Date) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS[usize::from(u8::from(day.month())) - 1];
    let weekday = DAYS[usize::from(day.weekday().number_days_from_monday())];
    format!(
        "{weekday}, {} {month} {} 12:00:00 GMT",
        day.day(),
        day.year()
    )
}

fn oai_error(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<OAI-PMH xmlns=\"http://www.openarchives.org/OAI/2.0/\">\n  <responseDate>2026-11-21T00:00:00Z</responseDate>\n  <request>http://export.arxiv.org/oai2</request>\n  <error code=\"{code}\">{}</error>\n</OAI-PMH>\n",
        escape(message)
    )
}

fn announcement_feed(papers: &[&FakePaper], categories: &[&str]) -> String {
    let mut out = format!(
        "<?xml version='1.0' encoding='UTF-8'?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\" xmlns:arxiv=\"http://arxiv.org/schemas/atom\" xmlns:dc=\"http://purl.org/dc/elements/1.1/\">\n  <id>http://rss.arxiv.org/atom/{cats}</id>\n  <title>{cats} updates on arXiv.org</title>\n",
        cats = categories.join("+")
    );
    for paper in papers {
        let version = paper.versions;
        let primary_listed = categories.contains(&paper.categories[0].as_str());
        let kind = match (version > 1, primary_listed) {
            (false, true) => "new",
            (false, false) => "cross",
            (true, true) => "replace",
            (true, false) => "replace-cross",
        };
        out.push_str(&format!(
            "  <entry>\n    <id>oai:arXiv.org:{id}v{version}</id>\n    <title>{title}</title>\n    <updated>{day}</updated>\n    \
             <link href=\"https://arxiv.org/abs/{id}\" rel=\"alternate\" type=\"text/html\"/>\n    \
             <summary>arXiv:{id}v{version} Announce Type: {kind} \nAbstract: {summary}</summary>\n",
            id = paper.id,
            title = escape(&paper.title),
            day = rfc3339(paper.last_changed()),
            summary = escape(&paper.abstract_text),
        ));
        for category in &paper.categories {
            out.push_str(&format!(
                "    <category term=\"{category}\" scheme=\"http://arxiv.org/schemas/atom\"/>\n"
            ));
        }
        out.push_str(&format!(
            "    <published>{day}</published>\n    <arxiv:announce_type>{kind}</arxiv:announce_type>\n    \
             <dc:rights>http://creativecommons.org/licenses/by/4.0/</dc:rights>\n    <dc:creator>{authors}</dc:creator>\n  </entry>\n",
            day = rfc3339(paper.last_changed()),
            authors = escape(paper.authors.join(", ")),
        ));
    }
    out.push_str("</feed>\n");
    out
}

/// A calendar day, for building corpora.
pub fn day(year: i32, month: u8, day: u8) -> Date {
    Month::try_from(month)
        .ok()
        .and_then(|m| Date::from_calendar_date(year, m, day).ok())
        .unwrap_or(Date::MIN)
}
