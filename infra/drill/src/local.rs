//! Faults injected into the local system that `scripts/infra` runs.

use std::{path::PathBuf, process::Command};

use anyhow::Context;

fn repo_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The operator's URL for the node at `address` (`host:port`), with the
/// credentials of the configured seed URLs.
pub fn node_url(address: &str) -> anyhow::Result<String> {
    Ok(match operator_credentials()? {
        Some(credentials) => format!("redis://{credentials}@{address}"),
        None => format!("redis://{address}"),
    })
}

/// `user:password` of the first configured seed URL, if it has any.
pub fn operator_credentials() -> anyhow::Result<Option<String>> {
    let seed = std::env::var("PAPERSTREAM_REDIS_URLS")?;
    let first = seed.split(',').next().unwrap_or_default();
    let rest = first.strip_prefix("redis://").unwrap_or(first);
    Ok(rest
        .rsplit_once('@')
        .map(|(credentials, _)| credentials.to_owned()))
}

/// `kill -9` the Redis node at `address`.
pub fn kill_redis_node(address: &str) -> anyhow::Result<()> {
    let mut connection = redis::Client::open(node_url(address)?)?.get_connection()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut connection)?;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(str::trim)
        .context("no process_id in INFO")?
        .to_owned();
    tracing::warn!(%address, %pid, "kill -9 of a Redis master");
    let status = Command::new("kill").args(["-9", &pid]).status()?;
    anyhow::ensure!(status.success(), "kill -9 {pid} failed");
    Ok(())
}

/// Start whatever node of the local cluster is down again (it rejoins as a
/// replica of the master that took over).
pub fn restore_redis() -> anyhow::Result<()> {
    run_infra(&["redis-up"])
}

/// Restart the local Postgres (fast shutdown: connections are cut).
pub fn restart_postgres() -> anyhow::Result<()> {
    run_infra(&["restart-postgres"])
}

fn run_infra(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(repo_root().join("scripts/infra"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "scripts/infra {} failed", args.join(" "));
    Ok(())
}
