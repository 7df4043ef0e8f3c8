//! Runs every benchmark program of this crate in turn (`make bench`).

use std::process::Command;

fn main() {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_default();
    let mut failed = false;
    for b in ["bench-statedb", "bench-policy", "bench-lb"] {
        match Command::new(dir.join(b)).status() {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!("{b} failed: {s}");
                failed = true;
            }
            Err(e) => {
                eprintln!("cannot run {b}: {e} (build with cargo build --release -p cilium-bench)");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
