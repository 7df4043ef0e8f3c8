//! cilium-agent: the node agent. Runs the hive of cells until SIGTERM/SIGINT.

use std::process::ExitCode;

use cilium_agent::{agent_hive, logging::LogControl};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let initial = std::env::var("CILIUM_LOG_LEVEL").unwrap_or_else(|_| "info".to_string());
    let log = LogControl::install(&initial);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cilium-agent")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cilium-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hive = agent_hive(log);
    match runtime.block_on(hive.run_with_args(std::env::args_os())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // clap's help/version are reported as errors by the parser; print them as-is.
            eprintln!("cilium-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
