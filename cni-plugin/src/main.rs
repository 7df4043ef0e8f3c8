//! cilium-cni: the CNI plugin (spec 0.3.1, 0.4.0, 1.0.0, 1.1.0) that hands each pod attachment
//! to cilium-agent over its unix socket. It owns the CNI protocol only: environment and stdin
//! parsing, version negotiation, result formatting and error codes. The agent does the work.
//!
//! stdout is the protocol channel; logs go to stderr, and only when `CILIUM_CNI_LOG` is set
//! (`1`/`debug`, or any tracing filter).

mod commands;
mod config;
mod env;
mod error;
mod result;

use std::io::Write;

fn main() {
    init_logging();
    let outcome = commands::run(|k| std::env::var(k).ok(), &mut std::io::stdin().lock());
    if let Some(text) = &outcome.stderr {
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
    if let Some(text) = &outcome.stdout {
        let mut out = std::io::stdout().lock();
        // If stdout is gone the runtime is gone too; the exit code still says what happened.
        let _ = writeln!(out, "{text}").and_then(|()| out.flush());
    }
    std::process::exit(outcome.exit_code);
}

fn init_logging() {
    let Some(level) = std::env::var("CILIUM_CNI_LOG")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        return;
    };
    let filter = match level.as_str() {
        "1" | "true" => "debug".to_string(),
        other => other.to_string(),
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .try_init();
}
