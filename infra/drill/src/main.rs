//! # drill: rehearse failures against the local system
//!
//! `scripts/drill <name>` (or `cargo run --release -p drill -- <name>`)
//! runs one drill, or `all`, against what `scripts/infra` runs. Each prints
//! a report (sent, processed, duplicates, lost, dead-lettered, time to
//! recover, peak lag), writes it as JSON under `target/drills/`, and exits
//! non-zero when its invariant breaks. `--quick` is the short version CI
//! runs.

mod faults;
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
    /// `faults`: run only the schedule drawn from this seed (as a failed
    /// run prints it).
    #[arg(long)]
    seed: Option<u64>,
    /// `faults`: how many schedules (20 quick, 500 full by default).
    #[arg(long)]
    schedules: Option<u64>,
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
    Faults,
    /// One consumer process of the `faults` drill (started by it).
    #[value(hide = true)]
    FaultsConsumer,
    All,
}

const EVERY: [Drill; 9] = [
    Drill::Load,
    Drill::KillConsumer,
    Drill::RedisFailover,
    Drill::LlmOutage,
    Drill::StreamFull,
    Drill::Poison,
    Drill::PostgresRestart,
    Drill::MemorySpread,
    Drill::Faults,
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
    if cli.drill == Drill::FaultsConsumer {
        return faults::consumer_process().await;
    }
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
            Drill::Faults => faults::faults(&env, cli.seed, cli.schedules, &cli.out).await?,
            Drill::FaultsConsumer | Drill::All => unreachable!("handled above"),
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
