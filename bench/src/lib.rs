//! Shared helpers of the benchmark programs: timing loops and the comparison table.

use std::time::{Duration, Instant};

/// One measured row: our figure and the baseline's, both in operations per second.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Our operations per second.
    pub ours: f64,
    /// The baseline's operations per second (None when there is no baseline for this row).
    pub baseline: Option<f64>,
}

/// Run `f` (which performs `ops_per_call` operations) repeatedly for about `budget`, returning
/// operations per second. The first call is a warm-up and is not counted.
pub fn ops_per_sec(budget: Duration, ops_per_call: u64, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget {
        f();
        calls += 1;
    }
    (calls * ops_per_call) as f64 / start.elapsed().as_secs_f64()
}

/// Format a rate with a unit suffix.
pub fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M/s", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1}k/s", rate / 1e3)
    } else {
        format!("{rate:.1}/s")
    }
}

/// Print the rows as a markdown table with the ratio ours/baseline.
pub fn print_table(title: &str, baseline_name: &str, rows: &[Row]) {
    println!("### {title}\n");
    println!("| benchmark | ours | {baseline_name} | ratio (ours / baseline) |");
    println!("|---|---:|---:|---:|");
    for r in rows {
        let (b, ratio) = match r.baseline {
            Some(b) => (human(b), format!("{:.2}x", r.ours / b)),
            None => ("-".to_string(), "-".to_string()),
        };
        println!("| {} | {} | {} | {} |", r.name, human(r.ours), b, ratio);
    }
    println!();
}
