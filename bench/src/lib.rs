//! Shared helpers of the benchmark programs: timing loops and the comparison table.

use std::time::{Duration, Instant};

pub mod bpf_cost;

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

/// The machine, for table headers: CPU model, cores, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

/// Today's date (UTC), `YYYY-MM-DD`.
pub fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Replace the section between `<!-- NAME:start -->` and `<!-- NAME:end -->` of
/// docs/performance.md with `section` (appended when the markers are missing).
pub fn write_doc(name: &str, section: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/performance.md");
    let start = format!("<!-- {name}:start -->");
    let end = format!("<!-- {name}:end -->");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Performance\n\nFigures measured by the programs of `bench/` (`make bench`); every ratio is against a baseline measured in the same run on the same machine.\n\n".to_string()
    });
    let block = format!("{start}\n{section}{end}\n");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if b > a => {
            // What follows keeps one blank line after the section.
            let rest = old[b + end.len()..].trim_start_matches('\n');
            let gap = if rest.is_empty() { "" } else { "\n" };
            format!("{}{block}{gap}{rest}", &old[..a])
        }
        _ => format!("{}\n\n{block}", old.trim_end()),
    };
    match std::fs::write(&path, new) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}
