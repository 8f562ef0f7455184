//! Reading: the landing page, the feed, search, the inbox, feedback, and
//! an Atom feed per subscription.

use askama::Template;
use askama_web::WebTemplate;
use axum::{
    Form,
    extract::{Path, Query, State},
    http::header,
    response::IntoResponse,
};
use catalog::reading::Card;
use delivery::ledger::{self, FeedCursor};
use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{Chrome, MaybeViewer, PageError, PageResult, Viewer, see_other};
use crate::AppState;

/// The purpose feed URLs are signed for.
pub const FEED: &str = "feed";
const PAGE: i64 = 25;

#[derive(Template, WebTemplate)]
#[template(path = "home.html")]
struct HomePage {
    chrome: Chrome,
    recent: Vec<Card>,
}

pub async fn home(State(state): State<AppState>, viewer: MaybeViewer) -> PageResult {
    if viewer.user.is_some() {
        return Ok(see_other("/feed"));
    }
    let recent = state.recent_papers().await?;
    Ok(HomePage {
        chrome: viewer.chrome,
        recent: recent.iter().take(10).cloned().collect(),
    }
    .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "feed.html")]
struct FeedPage {
    chrome: Chrome,
    subscription_name: Option<String>,
    atom_url: Option<String>,
    /// Each paper with whether the person voted it up or down.
    items: Vec<(Card, bool, bool)>,
    next_url: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    subscription: Option<i64>,
    /// The cursor: the last item's match time and id.
    at: Option<String>,
    id: Option<String>,
}

impl FeedQuery {
    fn cursor(&self) -> Result<Option<FeedCursor>, PageError> {
        match (&self.at, &self.id) {
            (Some(at), Some(id)) => Ok(Some(FeedCursor {
                matched_at: OffsetDateTime::parse(at, &Rfc3339)
                    .map_err(|_| PageError::BadRequest("That page link is broken.".into()))?,
                arxiv_id: id.clone(),
            })),
            _ => Ok(None),
        }
    }
}

pub async fn feed(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<FeedQuery>,
) -> PageResult {
    let cursor = query.cursor()?;
    let (subscription_name, atom_url) = match query.subscription {
        Some(id) => {
            let Some(subscription) =
                subscriptions::store::get(&state.pool, viewer.user.id, id).await?
            else {
                return Err(PageError::NotFound);
            };
            let token = state.signer.sign(FEED, &(viewer.user.id, id), None);
            (
                Some(subscription.name),
                Some(format!("{}/feeds/{token}.atom", state.public_url)),
            )
        }
        None => (None, None),
    };
    let items = ledger::feed(
        &state.pool,
        viewer.user.id,
        query.subscription,
        cursor.as_ref(),
        PAGE,
    )
    .await?;
    let next_url = (items.len() as i64 == PAGE)
        .then(|| items.last())
        .flatten()
        .and_then(|last| {
            let at = last.matched_at.format(&Rfc3339).ok()?;
            let mut url = format!(
                "/feed?at={}&id={}",
                super::encode(&at),
                super::encode(&last.card.arxiv_id)
            );
            if let Some(s) = query.subscription {
                url.push_str(&format!("&subscription={s}"));
            }
            Some(url)
        });
    Ok(FeedPage {
        chrome: viewer.chrome,
        subscription_name,
        atom_url,
        items: items
            .into_iter()
            .map(|i| (i.card, i.vote == Some(1), i.vote == Some(-1)))
            .collect(),
        next_url,
    }
    .into_response())
}

#[derive(Template)]
#[template(path = "feed.atom", escape = "html")]
struct AtomFeed {
    name: String,
    self_url: String,
    public_url: String,
    subscription_id: i64,
    updated: String,
    items: Vec<(Card, String)>,
}

/// `/feeds/{token}.atom`: a subscription's matches for feed readers, which
/// cannot log in; the signed token is the permission.
pub async fn atom(State(state): State<AppState>, Path(token): Path<String>) -> PageResult {
    let token = token.strip_suffix(".atom").ok_or(PageError::NotFound)?;
    let (user_id, subscription_id): (i64, i64) = state
        .signer
        .verify(FEED, token)
        .ok_or(PageError::NotFound)?;
    let subscription = subscriptions::store::get(&state.pool, user_id, subscription_id)
        .await?
        .ok_or(PageError::NotFound)?;
    let items = ledger::feed(&state.pool, user_id, Some(subscription_id), None, 50).await?;
    let rfc3339 = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    let updated = items
        .first()
        .map_or(subscription.updated_at, |i| i.matched_at);
    let feed = AtomFeed {
        name: subscription.name,
        self_url: format!("{}/feeds/{token}.atom", state.public_url),
        public_url: state.public_url.clone(),
        subscription_id,
        updated: rfc3339(updated),
        items: items
            .into_iter()
            .map(|i| (i.card, rfc3339(i.matched_at)))
            .collect(),
    };
    let body = feed
        .render()
        .map_err(|e| PageError::Internal(e.to_string()))?;
    Ok((
        [(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8")],
        body,
    )
        .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "search.html")]
struct SearchPage {
    chrome: Chrome,
    q: String,
    results: Vec<Card>,
}

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
}

pub async fn search(
    State(state): State<AppState>,
    viewer: MaybeViewer,
    Query(query): Query<SearchQuery>,
) -> PageResult {
    let q: String = query.q.trim().chars().take(500).collect();
    let results = if q.is_empty() {
        Vec::new()
    } else {
        catalog::reading::search(&state.pool, &q, 50, 0).await?
    };
    Ok(SearchPage {
        chrome: viewer.chrome,
        q,
        results,
    }
    .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "inbox.html")]
struct InboxPage {
    chrome: Chrome,
    items: Vec<(Card, bool)>,
}

pub async fn inbox(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let (items, _) = ledger::inbox(&state.pool, viewer.user.id, 100).await?;
    Ok(InboxPage {
        chrome: viewer.chrome,
        items: items.into_iter().map(|i| (i.card, i.read)).collect(),
    }
    .into_response())
}

pub async fn mark_all_read(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let mut conn = state.pool.acquire().await?;
    ledger::mark_read(&mut conn, viewer.user.id, None).await?;
    Ok(see_other("/inbox"))
}

#[derive(Debug, Deserialize)]
pub struct FeedbackForm {
    vote: i16,
}

pub async fn feedback(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(arxiv_id): Path<String>,
    Form(form): Form<FeedbackForm>,
) -> PageResult {
    if !matches!(form.vote, -1 | 1) {
        return Err(PageError::BadRequest("A vote is 1 or -1.".into()));
    }
    let mut conn = state.pool.acquire().await?;
    ledger::set_feedback(&mut conn, viewer.user.id, &arxiv_id, Some(form.vote)).await?;
    Ok(see_other("/feed"))
}
