use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use crawler::{Config, Crawler, Progress};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Fetches new arXiv papers into Postgres and announces them on `paper.ingested`.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; the environment overrides it.
    #[arg(long, env = "PAPERSTREAM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Harvest a date window over OAI-PMH, resumably.
    Backfill {
        /// First day, YYYY-MM-DD.
        #[arg(long)]
        from: String,
        /// Last day; open-ended when left out.
        #[arg(long)]
        until: Option<String>,
        /// OAI sets (`cs`, `stat`, `cs:cs:LG`, ...); the configured ones by default.
        #[arg(long, value_delimiter = ',')]
        sets: Vec<String>,
        /// Log progress instead of drawing a bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Read today's announcements and look the papers up.
    Daily {
        #[arg(long, value_delimiter = ',')]
        categories: Vec<String>,
    },
    /// Crawl periodically, relay events and probe arXiv until stopped.
    Scheduled,
    /// Print the papers of a saved arXiv response as JSON lines.
    Parse { file: PathBuf },
    /// Check whether arXiv answers.
    Probe,
}

fn day(text: &str) -> anyhow::Result<time::Date> {
    time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .with_context(|| format!("{text:?} is not a YYYY-MM-DD day"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ops::init_logging();
    let cli = Cli::parse();
    if let Command::Parse { file } = &cli.command {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        for paper in crawler::parse_saved(&text)? {
            println!("{}", serde_json::to_string(&paper)?);
        }
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref()).context("configuration")?;
    let shutdown = ops::shutdown_on_signal();
    let metrics = ops::init_metrics()?;
    let crawler = Crawler::connect(&config).await?;
    let checks = crawler.checks();
    ops::serve(config.ops_addr, metrics, checks, shutdown.clone()).await?;
    match cli.command {
        Command::Backfill {
            from,
            until,
            sets,
            no_progress,
        } => {
            let sets = if sets.is_empty() {
                config.schedule.sets.clone()
            } else {
                sets
            };
            let until = until.as_deref().map(day).transpose()?;
            let progress =
                Progress::new(!no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr()));
            let tally = crawler
                .backfill(day(&from)?, until, &sets, &progress, &shutdown)
                .await?;
            crawler
                .drain_outbox(std::time::Duration::from_secs(60))
                .await?;
            println!("{}", serde_json::to_string(&tally)?);
        }
        Command::Daily { categories } => {
            let categories = if categories.is_empty() {
                config.schedule.categories.clone()
            } else {
                categories
            };
            let tally = crawler.daily(&categories).await?;
            crawler
                .drain_outbox(std::time::Duration::from_secs(60))
                .await?;
            println!("{}", serde_json::to_string(&tally)?);
        }
        Command::Scheduled => crawler::run_scheduled(crawler, &config, shutdown).await?,
        Command::Probe => {
            let up = crawler.probe().await;
            println!(
                "arXiv is {}",
                if up { "reachable" } else { "NOT reachable" }
            );
            if !up {
                std::process::exit(1);
            }
        }
        Command::Parse { .. } => {}
    }
    Ok(())
}
