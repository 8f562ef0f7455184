//! Parser throughput on the recorded query-API fixtures, against Python's
//! `feedparser` (the library the popular Python arXiv client uses) parsing
//! the same bytes in the same run.
//!
//! `cargo bench -p arxiv` prints MB/s for both and the ratio, and writes
//! them to `target/bench/arxiv_parse.json`. It installs `feedparser` with
//! pip when it is missing.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arxiv-api");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    let texts: Vec<String> = files
        .iter()
        .map(std::fs::read_to_string)
        .collect::<Result<_, _>>()?;
    let bytes: usize = texts.iter().map(String::len).sum();

    // Ours: repeat the whole set for at least three seconds.
    let mut rounds = 0u64;
    let mut entries = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        for text in &texts {
            if let Ok(page) = arxiv::query::parse(text) {
                entries += page.papers.len();
            }
        }
        rounds += 1;
    }
    let ours = (bytes as f64 * rounds as f64) / started.elapsed().as_secs_f64() / 1e6;
    let entries_per_round = entries / rounds as usize;

    let feedparser = feedparser_mb_per_s(&files)?;
    let report = serde_json::json!({
        "fixtures": files.len(),
        "bytes_per_round": bytes,
        "entries_per_round": entries_per_round,
        "ours_mb_per_s": ours,
        "feedparser_mb_per_s": feedparser,
        "ratio": ours / feedparser,
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("arxiv_parse.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// feedparser over the same files, timed inside Python for three seconds.
fn feedparser_mb_per_s(files: &[PathBuf]) -> Result<f64, Box<dyn std::error::Error>> {
    let probe = Command::new("python3")
        .args(["-c", "import feedparser"])
        .status()?;
    if !probe.success() {
        let installed = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "feedparser"])
            .status()?;
        if !installed.success() {
            return Err("could not install feedparser with pip".into());
        }
    }
    let script = r#"
import sys, time, feedparser
texts = [open(p, 'rb').read() for p in sys.argv[1:]]
size = sum(len(t) for t in texts)
rounds, start = 0, time.perf_counter()
while time.perf_counter() - start < 3:
    for t in texts:
        feedparser.parse(t)
    rounds += 1
print(size * rounds / (time.perf_counter() - start) / 1e6)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(files)
        .output()?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}
