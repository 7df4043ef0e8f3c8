//! `ciliumctl connectivity test`: end-to-end checks against the running agent. It creates its
//! own test pods (network namespaces wired through cilium-cni, labelled through Pod and
//! Namespace objects), echo servers inside them and on the host, its own Services and policies,
//! and probes pod<->pod, pod<->service, host<->pod/service and policy allow/deny scenarios,
//! requiring `monitor` drop events with the right reason for every expected drop. Everything it
//! made is removed at the end, on failure and on Ctrl-C; leftovers of an earlier interrupted run
//! (whose process is gone) are removed first.

mod net;
mod report;
mod run;
mod scenarios;
mod setup;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cilium_api::Client;
use clap::Subcommand;

use crate::output::Format;

/// `ciliumctl connectivity ...`.
#[derive(Debug, Subcommand)]
pub enum ConnectivityCmd {
    /// Run the connectivity scenarios against the agent (needs root: it creates network
    /// namespaces). Progress on stderr, a summary table (or `-o json`) on stdout; exits 1 when
    /// any scenario failed, 130 when interrupted.
    ///
    /// Example: `ciliumctl connectivity test --test '^policy/' --junit report.xml`
    Test(TestArgs),
}

/// Options of `connectivity test`.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// Run only the scenarios whose name matches this regular expression (setup still runs).
    #[arg(long = "test", value_name = "REGEX")]
    pub test: Option<String>,
    /// Also write the results as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// The cilium-cni plugin binary [default: cilium-cni next to ciliumctl, else
    /// /opt/cni/bin/cilium-cni].
    #[arg(long = "cni-bin", value_name = "PATH")]
    pub cni_bin: Option<PathBuf>,
    /// How long one scenario may wait for its outcomes (policy enforced, service programmed).
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    pub timeout: u64,
    /// How long one probe waits for an answer before it counts as dropped.
    #[arg(long = "probe-timeout-ms", value_name = "MS", default_value_t = 1000)]
    pub probe_timeout_ms: u64,
}

/// Where the plugin is installed by default.
pub const DEFAULT_CNI_BIN: &str = "/opt/cni/bin/cilium-cni";

/// Dispatch a `connectivity` subcommand.
pub async fn run(
    client: &Client,
    format: Format,
    cmd: ConnectivityCmd,
) -> anyhow::Result<ExitCode> {
    match cmd {
        ConnectivityCmd::Test(args) => run::test(client, format, args).await,
    }
}

/// The plugin binary: `explicit`, else `cilium-cni` beside `exe`, else [`DEFAULT_CNI_BIN`].
pub fn resolve_cni_bin(explicit: Option<&Path>, exe: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(
            p.is_file(),
            "the CNI plugin {} does not exist: pass the path of cilium-cni with --cni-bin",
            p.display()
        );
        return Ok(p.to_path_buf());
    }
    let beside = exe.and_then(Path::parent).map(|d| d.join("cilium-cni"));
    if let Some(b) = &beside
        && b.is_file()
    {
        return Ok(b.clone());
    }
    let default = PathBuf::from(DEFAULT_CNI_BIN);
    if default.is_file() {
        return Ok(default);
    }
    anyhow::bail!(
        "cilium-cni not found at {} nor at {DEFAULT_CNI_BIN}: build it (cargo build --bins) or \
         install it (make install), or pass --cni-bin PATH",
        beside.map_or_else(
            || "<beside ciliumctl>".to_string(),
            |b| b.display().to_string()
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_bin_prefers_explicit_then_beside_the_executable() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("ciliumctl");
        let beside = dir.path().join("cilium-cni");
        std::fs::write(&beside, "").unwrap();
        assert_eq!(resolve_cni_bin(None, Some(&exe)).unwrap(), beside);
        let other = dir.path().join("other-cni");
        std::fs::write(&other, "").unwrap();
        assert_eq!(resolve_cni_bin(Some(&other), Some(&exe)).unwrap(), other);
        let missing = dir.path().join("missing");
        let e = resolve_cni_bin(Some(&missing), Some(&exe)).unwrap_err();
        assert!(e.to_string().contains("--cni-bin"), "{e}");
    }

    #[test]
    fn missing_plugin_names_both_paths() {
        if Path::new(DEFAULT_CNI_BIN).exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("ciliumctl");
        let e = resolve_cni_bin(None, Some(&exe)).unwrap_err().to_string();
        assert!(
            e.contains(DEFAULT_CNI_BIN) && e.contains("cilium-cni not found at /"),
            "{e}"
        );
    }
}
