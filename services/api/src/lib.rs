//! # api: the web UI, the JSON API and the admin pages
//!
//! The front door of paperstream. It owns no tables and no rules of its
//! own: accounts, subscriptions, channels, the reading queries and the
//! stream inspection all live in their crates, and this service turns
//! them into pages ([`web`]), JSON ([`json`]) and admin views
//! ([`web::admin`]). What it adds is the web's own concerns: signed
//! cookies, CSRF protection, rate limits on sign-up and login, body size
//! limits, idempotent POSTs, security headers and request metrics.
//!
//! Changes that other services must hear about travel through Postgres
//! (subscriptions' change feed), never through a call from here.

pub mod config;
pub mod json;
pub mod runtime_settings;
mod state;
pub mod web;

use std::{net::SocketAddr, time::Instant};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::Response,
    routing::get,
};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

pub use config::Config;

/// The variable `api create-user` reads the new account's password from,
/// unless told another; never the command line, which `ps` shows.
pub const USER_PASSWORD_ENV: &str = "PAPERSTREAM_USER_PASSWORD";
pub use state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("catalog: {0}")]
    Catalog(#[from] catalog::Error),
    #[error("accounts: {0}")]
    Accounts(#[from] accounts::Error),
    #[error("subscriptions: {0}")]
    Subscriptions(#[from] subscriptions::store::Error),
    #[error("delivery: {0}")]
    Delivery(#[from] delivery::Error),
    #[error("outbox: {0}")]
    Outbox(#[from] outbox::Error),
    #[error("streams: {0}")]
    Streams(#[from] streams::Error),
    #[error("settings: {0}")]
    Settings(#[from] settings::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every route, with the middleware that applies to all of them.
pub fn router(state: AppState) -> Router {
    let body_limit = state.max_body_bytes;
    let timeout =
        TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, state.request_timeout);
    for why in ["csrf", "admin"] {
        metrics::counter!("http_forbidden_total", "why" => why).increment(0);
    }
    Router::new()
        .merge(web::routes())
        .nest("/api/v1", json::routes())
        .route("/health", get(|| async { "ok" }))
        .route("/static/style.css", get(web::style))
        .route("/static/app.js", get(web::script))
        .fallback(web::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            web::csrf::protect,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(timeout)
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(record))
        .with_state(state)
}

/// Headers every answer carries: no framing, no sniffing, scripts and
/// styles only from here, and no referrer leaving the site.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; object-src 'none'; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

/// Requests and their latency by route and status class.
async fn record(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = format!("{}xx", response.status().as_u16() / 100);
    metrics::counter!("http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Serve the web UI and the API on the configured address until
/// `shutdown`; returns once in-flight requests have finished.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<()> {
    let state = AppState::connect(config).await?;
    let watcher = watch_settings(&state, config).await?;
    let watching = tokio::spawn(watcher.run(shutdown.clone()));
    serve(state, config.listen, shutdown, |_| {}).await?;
    if let Ok(Err(err)) = watching.await {
        tracing::warn!(%err, "settings watcher stopped with an error");
    }
    Ok(())
}

/// This instance's settings watcher: the topics' capacities (which replay
/// respects) follow the runtime settings, and the instance appears on the
/// settings page.
pub async fn watch_settings(state: &AppState, config: &Config) -> Result<settings::bus::Watcher> {
    let (watcher, _) = settings::bus::Watcher::start(
        state.settings.clone(),
        settings::bus::WatcherConfig::new(
            "api",
            &settings::instance_name("api"),
            config.redis_urls.clone(),
        ),
        vec![settings::topic_applier(
            state.topics.all_layouts(),
            &config.topic_prefix,
        )],
    )
    .await?;
    Ok(watcher)
}

/// Serve `state` on `addr`; `bound` learns the address (for port 0).
pub async fn serve(
    state: AppState,
    addr: SocketAddr,
    shutdown: CancellationToken,
    bound: impl FnOnce(SocketAddr),
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "serving the web UI and the API");
    bound(local);
    let maintenance = tokio::spawn(state.clone().maintain(shutdown.clone()));
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await?;
    maintenance.abort();
    Ok(())
}
