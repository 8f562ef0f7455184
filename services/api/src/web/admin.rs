//! Admin pages over the streams inspection API: topics and partitions,
//! browsing entries, finding a paper's messages everywhere, and the DLQ
//! with replay. Only for the admin role.

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::{
    Form, Router,
    extract::{Path, Query, State},
    response::IntoResponse,
    routing::{get, post},
};
use serde::Deserialize;
use streams::{
    EntryId, RawEntry, TopicLayout,
    inspect::{Direction, Log, NodeMemory, TopicReport},
    redrive::{self, Selection},
};

use super::{AdminViewer, Chrome, PageError, PageResult, encode};
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(overview))
        .route("/admin/topics/{topic}/{partition}", get(browse))
        .route("/admin/find", get(find))
        .route("/admin/dlq", get(dead_letters))
        .route("/admin/dlq/replay", post(replay))
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/overview.html")]
struct Overview {
    chrome: Chrome,
    nodes: Vec<NodeMemory>,
    topics: Vec<TopicReport>,
}

impl Overview {
    fn mib(&self, bytes: &u64) -> String {
        format!("{:.1} MiB", *bytes as f64 / 1_048_576.0)
    }

    fn kib(&self, bytes: &u64) -> String {
        format!("{:.1} KiB", *bytes as f64 / 1024.0)
    }
}

pub async fn overview(State(state): State<AppState>, admin: AdminViewer) -> PageResult {
    let mut topics = Vec::new();
    for layout in state.topics.all_layouts() {
        topics.push(state.inspector.topic(&layout).await?);
    }
    Ok(Overview {
        chrome: admin.chrome,
        nodes: state.inspector.node_memory().await?,
        topics,
    }
    .into_response())
}

/// One entry as the admin pages show it.
#[derive(Debug)]
pub struct EntryView {
    pub topic: String,
    pub partition: u16,
    pub entry_id: String,
    pub key: String,
    pub dead: bool,
    pub fields: Vec<(String, String)>,
}

/// Longest field value shown; payloads can be large.
const FIELD_SHOWN: usize = 2_000;

impl EntryView {
    fn new(topic: &str, partition: u16, log: Log, entry: &RawEntry) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            entry_id: entry.entry_id.to_string(),
            key: entry.key().to_owned(),
            dead: log == Log::Dlq,
            fields: entry
                .fields
                .iter()
                .map(|(name, value)| {
                    let text = String::from_utf8_lossy(value);
                    let shown: String = text.chars().take(FIELD_SHOWN).collect();
                    (name.clone(), shown)
                })
                .collect(),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/entries.html")]
struct EntriesPage {
    chrome: Chrome,
    heading: String,
    logs: Option<Vec<(String, String)>>,
    replayed: Option<String>,
    entries: Vec<EntryView>,
    next_url: Option<String>,
}

fn layout(state: &AppState, topic: &str) -> PageResult<Arc<TopicLayout>> {
    state
        .topics
        .all_layouts()
        .into_iter()
        .find(|l| l.config.name == topic)
        .ok_or(PageError::NotFound)
}

#[derive(Debug, Deserialize)]
pub struct BrowseQuery {
    log: Option<String>,
    cursor: Option<String>,
}

pub async fn browse(
    State(state): State<AppState>,
    admin: AdminViewer,
    Path((topic, partition)): Path<(String, u16)>,
    Query(query): Query<BrowseQuery>,
) -> PageResult {
    let layout = layout(&state, &topic)?;
    if usize::from(partition) >= layout.partitions.len() {
        return Err(PageError::NotFound);
    }
    let (log, log_name) = match query.log.as_deref() {
        Some("dlq") => (Log::Dlq, "dlq"),
        Some("audit") => (Log::Audit, "audit"),
        _ => (Log::Stream, "stream"),
    };
    let cursor = match query.cursor.as_deref() {
        Some(text) => Some(
            text.parse::<EntryId>()
                .map_err(|_| PageError::BadRequest("That is not an entry id.".into()))?,
        ),
        None => None,
    };
    let page = state
        .inspector
        .browse(&layout, partition, log, Direction::Backward, cursor, 50)
        .await?;
    let base = format!("/admin/topics/{topic}/{partition}");
    Ok(EntriesPage {
        chrome: admin.chrome,
        heading: format!("{topic} / partition {partition} / {log_name}"),
        logs: Some(vec![
            ("Stream".into(), base.clone()),
            ("Dead letters".into(), format!("{base}?log=dlq")),
            ("Audit".into(), format!("{base}?log=audit")),
        ]),
        replayed: None,
        entries: page
            .entries
            .iter()
            .map(|e| EntryView::new(&topic, partition, log, e))
            .collect(),
        next_url: page
            .next
            .map(|next| format!("{base}?log={log_name}&cursor={}", encode(&next.to_string()))),
    }
    .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/find.html")]
struct FindPage {
    chrome: Chrome,
    q: String,
}

#[derive(Debug, Deserialize)]
pub struct FindQuery {
    #[serde(default)]
    q: String,
}

/// How many entries per stream a search reads, newest first.
const FIND_SCAN: usize = 5_000;

/// Every message about a paper, in every topic's streams and DLQs: by key
/// (papers are keyed by arXiv id), and by the id inside payloads keyed by
/// something else (notifications and deliveries are keyed by person).
pub async fn find(
    State(state): State<AppState>,
    admin: AdminViewer,
    Query(query): Query<FindQuery>,
) -> PageResult {
    let q = query.q.trim().to_owned();
    if q.is_empty() {
        return Ok(FindPage {
            chrome: admin.chrome,
            q,
        }
        .into_response());
    }
    if q.len() > 100 {
        return Err(PageError::BadRequest("Search for one id.".into()));
    }
    let mut entries = Vec::new();
    for layout in state.topics.all_layouts() {
        for field in ["key", "data.arxiv_id", "data.what.arxiv_id"] {
            for found in state
                .inspector
                .search(&layout, field, &q, FIND_SCAN)
                .await?
            {
                let view = EntryView::new(
                    &layout.config.name,
                    found.partition,
                    found.log,
                    &found.entry,
                );
                if !entries.iter().any(|e: &EntryView| {
                    e.topic == view.topic && e.entry_id == view.entry_id && e.dead == view.dead
                }) {
                    entries.push(view);
                }
            }
        }
    }
    Ok(EntriesPage {
        chrome: admin.chrome,
        heading: format!("Messages about {q}"),
        logs: None,
        replayed: None,
        entries,
        next_url: None,
    }
    .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/dlq.html")]
struct DlqPage {
    chrome: Chrome,
    replayed: Option<String>,
    queues: Vec<(String, u16, u64)>,
}

async fn dlq_page(state: &AppState, chrome: Chrome, replayed: Option<String>) -> PageResult {
    let mut queues = Vec::new();
    for layout in state.topics.all_layouts() {
        let report = state.inspector.topic(&layout).await?;
        for p in report.partitions.iter().filter(|p| p.dlq_length > 0) {
            queues.push((report.topic.clone(), p.partition, p.dlq_length));
        }
    }
    Ok(DlqPage {
        chrome,
        replayed,
        queues,
    }
    .into_response())
}

pub async fn dead_letters(State(state): State<AppState>, admin: AdminViewer) -> PageResult {
    dlq_page(&state, admin.chrome, None).await
}

#[derive(Debug, Deserialize)]
pub struct ReplayForm {
    topic: String,
    partition: u16,
    /// One entry; all of the partition's dead letters when absent.
    entry: Option<String>,
}

pub async fn replay(
    State(state): State<AppState>,
    admin: AdminViewer,
    Form(form): Form<ReplayForm>,
) -> PageResult {
    let layout = layout(&state, &form.topic)?;
    let selection = match form.entry.as_deref().filter(|e| !e.is_empty()) {
        Some(id) => Selection::One(
            id.parse()
                .map_err(|_| PageError::BadRequest("That is not an entry id.".into()))?,
        ),
        None => Selection::All,
    };
    let actor = format!("admin:{}", admin.user.email);
    let report =
        redrive::redrive(&state.client, &layout, form.partition, selection, &actor).await?;
    tracing::info!(topic = %form.topic, partition = form.partition, replayed = report.replayed, %actor, "dead letters replayed");
    let mut message = format!(
        "Replayed {} dead letter(s) of {} / partition {}.",
        report.replayed, form.topic, form.partition
    );
    if report.stopped_by_backpressure {
        message.push_str(" Stopped early: the partition is at capacity; the rest stay in the DLQ.");
    }
    dlq_page(&state, admin.chrome, Some(message)).await
}
