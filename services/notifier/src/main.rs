use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use notifier::Config;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Matches summarized papers to subscriptions and delivers them by email,
/// webhook, Slack and in-app, once each.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; the environment overrides it.
    #[arg(long, env = "PAPERSTREAM_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ops::init_logging();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("configuration")?;
    tracing::info!(?config, "notifier starting");
    let shutdown = ops::shutdown_on_signal();
    let metrics = ops::init_metrics()?;
    streams::metrics::describe();
    let service = notifier::Service::connect(&config).await?;
    ops::serve(config.ops_addr, metrics, service.checks(), shutdown.clone()).await?;
    service.run(shutdown).await?;
    Ok(())
}
