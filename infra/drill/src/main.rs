//! # drill: rehearse failures against the local system
//!
//! `scripts/drill <name>` (or `cargo run --release -p drill -- <name>`)
//! runs one drill, or `all`, against what `scripts/infra` runs. Each prints
//! a report (sent, processed, duplicates, lost, dead-lettered, time to
//! recover, peak lag), writes it as JSON under `target/drills/`, and exits
//! non-zero when its invariant breaks. `--quick` is the short version CI
//! runs.

mod harness;
mod local;
mod pipeline;
mod report;
mod streams_drills;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Rehearse failures against the local paperstream system"
)]
struct Cli {
    drill: Drill,
    /// The short version (what CI runs).
    #[arg(long)]
    quick: bool,
    /// Where the JSON reports go.
    #[arg(long, default_value = "target/drills")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Drill {
    Load,
    KillConsumer,
    RedisFailover,
    LlmOutage,
    StreamFull,
    Poison,
    PostgresRestart,
    MemorySpread,
    All,
}

const EVERY: [Drill; 8] = [
    Drill::Load,
    Drill::KillConsumer,
    Drill::RedisFailover,
    Drill::LlmOutage,
    Drill::StreamFull,
    Drill::Poison,
    Drill::PostgresRestart,
    Drill::MemorySpread,
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,streams=error")),
        )
        .init();
    let cli = Cli::parse();
    let env = harness::Env::from_env(cli.quick).await?;
    let drills: Vec<Drill> = match cli.drill {
        Drill::All => EVERY.to_vec(),
        one => vec![one],
    };
    let mut failed = Vec::new();
    for drill in drills {
        let report = match drill {
            Drill::Load => pipeline::load(&env).await?,
            Drill::KillConsumer => pipeline::kill_consumer(&env).await?,
            Drill::LlmOutage => pipeline::llm_outage(&env).await?,
            Drill::PostgresRestart => pipeline::postgres_restart(&env).await?,
            Drill::StreamFull => streams_drills::stream_full(&env).await?,
            Drill::Poison => streams_drills::poison(&env).await?,
            Drill::RedisFailover => streams_drills::redis_failover(&env).await?,
            Drill::MemorySpread => streams_drills::memory_spread(&env).await?,
            Drill::All => unreachable!("expanded above"),
        };
        report.publish(&cli.out)?;
        if !report.passed {
            failed.push(report.drill);
        }
    }
    if !failed.is_empty() {
        eprintln!("invariant broken: {}", failed.join(", "));
        std::process::exit(1);
    }
    Ok(())
}
