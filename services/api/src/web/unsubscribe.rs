//! Unsubscribe links from emails: a GET shows a confirmation page (mail
//! scanners follow links, and must not unsubscribe anyone); a POST, with
//! or without a login, turns the channel off (RFC 8058 one-click).

use askama::Template;
use askama_web::WebTemplate;
use axum::{
    extract::{Path, State},
    response::IntoResponse,
};
use delivery::channel;

use super::{Chrome, MaybeViewer, PageError, PageResult};
use crate::AppState;

/// The purpose unsubscribe links are signed for (the notifier signs them).
pub const UNSUBSCRIBE: &str = "unsubscribe";

#[derive(Template, WebTemplate)]
#[template(path = "unsubscribe.html")]
struct UnsubscribePage {
    chrome: Chrome,
    token: String,
    target: String,
    done: bool,
}

async fn channel_for(state: &AppState, token: &str) -> PageResult<channel::Channel> {
    let (user_id, channel_id): (i64, i64) = state
        .signer
        .verify(UNSUBSCRIBE, token)
        .ok_or(PageError::NotFound)?;
    channel::get(&state.pool, channel_id)
        .await?
        .filter(|c| c.user_id == user_id)
        .ok_or(PageError::NotFound)
}

pub async fn confirm(
    State(state): State<AppState>,
    viewer: MaybeViewer,
    Path(token): Path<String>,
) -> PageResult {
    let channel = channel_for(&state, &token).await?;
    Ok(UnsubscribePage {
        chrome: viewer.chrome,
        done: !channel.enabled,
        target: channel.target,
        token,
    }
    .into_response())
}

pub async fn unsubscribe(
    State(state): State<AppState>,
    viewer: MaybeViewer,
    Path(token): Path<String>,
) -> PageResult {
    let channel = channel_for(&state, &token).await?;
    let mut conn = state.pool.acquire().await?;
    channel::set_enabled(
        &mut conn,
        channel.user_id,
        channel.id,
        false,
        Some("unsubscribed from an email"),
    )
    .await?;
    metrics::counter!("unsubscribes_total").increment(1);
    tracing::info!(channel = channel.id, "unsubscribed by link");
    Ok(UnsubscribePage {
        chrome: viewer.chrome,
        done: true,
        target: channel.target,
        token,
    }
    .into_response())
}
