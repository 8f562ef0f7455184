//! What every drill reports, and how.

use std::{path::Path, time::Duration};

use serde::Serialize;

/// One drill's outcome. `passed` is the drill's invariant; the numbers are
/// what an operator reads to judge the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub drill: String,
    /// Messages (or papers) the drill sent into the system.
    pub sent: u64,
    /// Distinct messages the consumers processed.
    pub processed: u64,
    /// Extra deliveries of messages already processed.
    pub duplicates: u64,
    /// Sent and acknowledged to the sender, never processed.
    pub lost: u64,
    pub dead_lettered: u64,
    /// From the fault (or its end) until the system was caught up again.
    pub time_to_recover_s: f64,
    /// Highest lag (entries not yet acknowledged by the group) seen.
    pub peak_lag: u64,
    /// The invariant, in words.
    pub invariant: String,
    pub passed: bool,
    /// Drill-specific figures.
    pub details: serde_json::Value,
}

impl Report {
    pub fn new(drill: &str, invariant: &str) -> Self {
        Self {
            drill: drill.to_owned(),
            invariant: invariant.to_owned(),
            details: serde_json::json!({}),
            ..Self::default()
        }
    }

    pub fn recovered_after(&mut self, elapsed: Duration) {
        self.time_to_recover_s = (elapsed.as_secs_f64() * 1000.0).round() / 1000.0;
    }

    pub fn detail(&mut self, name: &str, value: impl Serialize) {
        if let serde_json::Value::Object(map) = &mut self.details {
            map.insert(
                name.to_owned(),
                serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
            );
        }
    }

    /// Print the report and write it as `<dir>/<drill>.json`.
    pub fn publish(&self, dir: &Path) -> anyhow::Result<()> {
        println!(
            "drill {}: {}\n  sent {}  processed {}  duplicates {}  lost {}  dead-lettered {}  \
             time to recover {:.2} s  peak lag {}\n  invariant: {}\n  details: {}",
            self.drill,
            if self.passed { "PASSED" } else { "FAILED" },
            self.sent,
            self.processed,
            self.duplicates,
            self.lost,
            self.dead_lettered,
            self.time_to_recover_s,
            self.peak_lag,
            self.invariant,
            self.details
        );
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.json", self.drill));
        std::fs::write(&path, serde_json::to_string_pretty(self)?)?;
        println!("  written to {}", path.display());
        Ok(())
    }
}
