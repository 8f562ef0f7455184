use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use exporter::Config;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Publishes the state of every stream, consumer group and Redis node as
/// Prometheus gauges.
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
    tracing::info!(?config, "exporter starting");
    let shutdown = ops::shutdown_on_signal();
    let metrics = ops::init_metrics()?;
    exporter::describe();
    ops::serve(config.ops_addr, metrics, Vec::new(), shutdown.clone()).await?;
    exporter::run(&config, shutdown).await?;
    Ok(())
}
