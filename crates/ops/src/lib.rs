//! # ops: what makes a service operable
//!
//! Every paperstream service needs the same few things, and they should
//! behave the same everywhere: configuration from defaults, a file and the
//! environment; structured logs; a Prometheus `/metrics` endpoint; liveness
//! and readiness endpoints; and a shutdown token that fires on SIGINT or
//! SIGTERM so in-flight work can finish.

pub mod config;

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Log to stderr: JSON when `LOG_FORMAT=json` (production), readable text
/// otherwise. `RUST_LOG` filters, default `info`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Install the Prometheus recorder. Histograms get buckets (seconds, from
/// a millisecond to a minute) instead of summaries, so they aggregate.
pub fn init_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let buckets = [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// A readiness check: `Ok` when a dependency answers, `Err(why)` if not.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Build a [`Check`] from an async closure.
pub fn check<F, Fut>(f: F) -> Check
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// A [`Check`] that runs `f` on a clone of `context`, e.g. a pool.
pub fn check_with<C, F, Fut>(context: C, f: F) -> Check
where
    C: Clone + Send + Sync + 'static,
    F: Fn(C) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(f(context.clone())))
}

#[derive(Clone)]
struct OpsState {
    metrics: PrometheusHandle,
    checks: Arc<Vec<(&'static str, Check)>>,
}

/// Serve `/metrics`, `/health/live` and `/health/ready` on `addr` until
/// `shutdown`. Readiness runs every named check and answers 503 with the
/// failures when any fails.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    checks: Vec<(&'static str, Check)>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let state = OpsState {
        metrics,
        checks: Arc::new(checks),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!(%err, "ops endpoint stopped");
        }
    });
    tracing::info!(%bound, "serving /metrics and /health");
    Ok(bound)
}

async fn metrics_page(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<OpsState>) -> impl IntoResponse {
    let mut failures = serde_json::Map::new();
    for (name, check) in state.checks.iter() {
        let outcome = tokio::time::timeout(Duration::from_secs(3), check()).await;
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(why),
            Err(_) => Some("no answer within 3 s".to_owned()),
        };
        if let Some(why) = failure {
            failures.insert((*name).to_owned(), why.into());
        }
    }
    if failures.is_empty() {
        (StatusCode::OK, Json(serde_json::json!({"ready": true})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "failing": failures})),
        )
    }
}

/// A token cancelled on SIGINT or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    term.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
        tracing::info!("shutdown requested; finishing in-flight work");
        cancel.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_answer_and_readiness_reports_failures() {
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let shutdown = CancellationToken::new();
        let checks = vec![
            ("postgres", check(|| async { Ok(()) })),
            (
                "redis",
                check(|| async { Err("connection refused".to_owned()) }),
            ),
        ];
        let addr = serve(([127, 0, 0, 1], 0).into(), handle, checks, shutdown.clone())
            .await
            .expect("serve");
        let http = reqwest::Client::new();
        let live = http
            .get(format!("http://{addr}/health/live"))
            .send()
            .await
            .expect("live");
        assert_eq!(live.status(), 200);
        let ready = http
            .get(format!("http://{addr}/health/ready"))
            .send()
            .await
            .expect("ready");
        assert_eq!(ready.status(), 503);
        let body: serde_json::Value = ready.json().await.expect("json");
        assert_eq!(body["failing"]["redis"], "connection refused");
        assert!(body["failing"].get("postgres").is_none());
        let metrics = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(metrics.status(), 200);
        shutdown.cancel();
    }
}
