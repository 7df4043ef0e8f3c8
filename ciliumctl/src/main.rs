//! `ciliumctl`: the command-line client of cilium-agent. It talks to the agent's REST API over
//! its unix socket (`--socket` / env `CILIUM_SOCKET`) and renders answers as a table, JSON or
//! YAML (`-o`).

mod bpf;
mod bpf_lb;
mod bpf_policy;
mod connectivity;
mod endpoint;
mod identity;
mod metrics;
mod monitor;
mod output;
mod policy;
mod resources;
mod service;

use std::path::PathBuf;
use std::process::ExitCode;

use cilium_api::Client;
use cilium_api::models::{CellHealth, HealthLevel, Status};
use clap::{Parser, Subcommand};

use crate::output::{Format, Table, cell, print_structured};

/// Command-line client of cilium-agent.
#[derive(Debug, Parser)]
#[command(name = "ciliumctl", version, about, long_about = None)]
struct Cli {
    /// Path of the agent's API socket [default: /var/run/cilium/cilium.sock].
    #[arg(long, global = true, env = "CILIUM_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the agent's state and the health of its cells.
    ///
    /// Example: `ciliumctl status --verbose`
    Status {
        /// List every cell, not only the unhealthy ones.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Show a statedb table with each object's reconcile status.
    ///
    /// Example: `ciliumctl db health -o json`
    Db {
        /// Table name (`ciliumctl status --verbose` lists them).
        table: String,
    },
    /// Show the agent's effective configuration, per cell.
    ///
    /// Example: `ciliumctl config -o yaml`
    Config,
    /// Show decoded BPF map contents.
    ///
    /// Example: `ciliumctl bpf ct list`
    Bpf {
        #[command(subcommand)]
        map: bpf::BpfCommand,
    },
    /// Stream live datapath events (drops, traces, policy verdicts) until Ctrl-C.
    ///
    /// Example: `ciliumctl monitor --type drop -o json`
    Monitor {
        /// Only events of this type.
        #[arg(long = "type", value_enum)]
        kind: Option<monitor::MonitorType>,
    },
    /// Show the agent's and the datapath's metrics (Prometheus registry).
    ///
    /// Example: `ciliumctl metrics -o json`
    Metrics,
    /// Create or update the objects of a YAML or JSON file (Namespace, Pod, ...), all or nothing.
    ///
    /// Example: `ciliumctl apply -f pods.yaml` or `cat svc.yaml | ciliumctl apply --wait -f -`
    Apply {
        /// File with one or more documents (`---`-separated YAML, JSON, or `kind: List`); `-` reads stdin.
        #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
        file: PathBuf,
        /// Return only once the applied objects are in the datapath (load-balancer tables and
        /// BPF maps); fails naming the stage that did not catch up within --timeout.
        #[arg(long)]
        wait: bool,
        /// Seconds --wait may take.
        #[arg(long, value_name = "SECS", default_value_t = 60.0, requires = "wait")]
        timeout: f64,
    },
    /// Delete the objects a YAML or JSON file names; missing objects are reported, not errors.
    ///
    /// Example: `ciliumctl delete -f pods.yaml`
    Delete {
        /// File naming the objects (same formats as `apply`); `-` reads stdin.
        #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
        file: PathBuf,
    },
    /// Show the agent's endpoints (one per pod interface).
    ///
    /// Example: `ciliumctl endpoint list` or `ciliumctl endpoint get 412 -o yaml`
    Endpoint {
        #[command(subcommand)]
        cmd: endpoint::EndpointCmd,
    },
    /// Show security identities and their labels.
    ///
    /// Example: `ciliumctl identity list` or `ciliumctl identity get 256 -o yaml`
    Identity {
        #[command(subcommand)]
        cmd: identity::IdentityCmd,
    },
    /// Show network policies and explain verdicts between pods.
    ///
    /// Example: `ciliumctl policy list` or `ciliumctl policy explain --from x/a --to y/b --port 80/TCP`
    Policy {
        #[command(subcommand)]
        cmd: policy::PolicyCmd,
    },
    /// Show services with their frontends and backends (address:port and state).
    ///
    /// Example: `ciliumctl service list` or `ciliumctl service list -o json`
    Service {
        #[command(subcommand)]
        cmd: service::ServiceCmd,
    },
    /// Check pod, service, host and policy connectivity end to end against the running agent.
    ///
    /// Example: `ciliumctl connectivity test --test 'policy/' -o json --junit report.xml`
    Connectivity {
        #[command(subcommand)]
        cmd: connectivity::ConnectivityCmd,
    },
    /// Show stored objects of a kind (pods, namespaces, ...).
    ///
    /// Example: `ciliumctl get pods -n shop` or `ciliumctl get pod frontend -n shop -o yaml`
    Get {
        /// Kind: pod/pods/po, namespace/namespaces/ns, or any kind the agent knows.
        kind: String,
        /// Only the object with this name.
        name: Option<String>,
        /// Only objects in this namespace.
        #[arg(short = 'n', long = "namespace", value_name = "NS")]
        namespace: Option<String>,
    },
}

/// Whether a panic payload is Rust's "failed printing to stdout: Broken pipe": the reader of
/// our output went away (`ciliumctl metrics | head`), which is not an error of ours.
fn is_broken_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    text.contains("Broken pipe")
}

fn main() -> ExitCode {
    // Output cut short by the reader (`| head`) ends the program quietly, as for other CLIs.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe(info.payload()) {
            default_hook(info);
        }
    }));
    match std::panic::catch_unwind(run_main) {
        Ok(code) => code,
        Err(payload) if is_broken_pipe(payload.as_ref()) => ExitCode::from(141),
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

fn run_main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = Client::from_env(cli.socket.as_deref());
    match cli.command {
        Command::Status { verbose } => status(&client, cli.output, verbose).await,
        Command::Db { table } => db(&client, cli.output, &table).await,
        Command::Config => config(&client, cli.output).await,
        Command::Bpf { map } => bpf::run(&client, cli.output, map).await,
        Command::Monitor { kind } => monitor::run(&client, cli.output, kind).await,
        Command::Metrics => metrics::run(&client, cli.output).await,
        Command::Endpoint { cmd } => endpoint::run(&client, cli.output, cmd).await,
        Command::Identity { cmd } => identity::run(&client, cli.output, cmd).await,
        Command::Policy { cmd } => policy::run(&client, cli.output, cmd).await,
        Command::Service { cmd } => service::run(&client, cli.output, cmd).await,
        Command::Connectivity { cmd } => connectivity::run(&client, cli.output, cmd).await,
        Command::Apply {
            file,
            wait,
            timeout,
        } => resources::apply(&client, cli.output, &file, wait.then_some(timeout)).await,
        Command::Delete { file } => resources::delete(&client, cli.output, &file).await,
        Command::Get {
            kind,
            name,
            namespace,
        } => {
            resources::get(
                &client,
                cli.output,
                &kind,
                name.as_deref(),
                namespace.as_deref(),
            )
            .await
        }
    }
}

fn level_name(level: HealthLevel) -> &'static str {
    match level {
        HealthLevel::Unknown => "unknown",
        HealthLevel::Ok => "ok",
        HealthLevel::Degraded => "degraded",
        HealthLevel::Stopped => "stopped",
    }
}

async fn status(client: &Client, format: Format, verbose: bool) -> anyhow::Result<ExitCode> {
    let status: Status = client.status().await?;
    if print_structured(format, &status)? {
        return Ok(ExitCode::SUCCESS);
    }
    let healthy = status
        .cells
        .iter()
        .filter(|c| c.level == HealthLevel::Ok)
        .count();
    println!(
        "Agent:     {}   (version {}, up {}s)",
        status.state, status.version, status.uptime_seconds
    );
    if let Some(dp) = &status.datapath {
        let features: Vec<String> = dp
            .features
            .iter()
            .map(|(k, v)| format!("{k}={}", if *v { "yes" } else { "no" }))
            .collect();
        println!(
            "Datapath:  {} ({}), bpf root {}, kernel features: {}",
            dp.mode,
            dp.attach,
            dp.bpf_root,
            features.join(" ")
        );
    }
    println!("Cells:     {healthy}/{} healthy", status.cells.len());
    let objects: u64 = status.tables.iter().map(|t| t.objects).sum();
    println!(
        "Tables:    {} tables, {objects} objects",
        status.tables.len()
    );
    let shown: Vec<&CellHealth> = status
        .cells
        .iter()
        .filter(|c| verbose || c.level != HealthLevel::Ok)
        .collect();
    if !shown.is_empty() {
        println!();
        let mut t = Table::new(["CELL", "LEVEL", "MESSAGE", "ERROR", "UPDATED"]);
        for c in shown {
            t.row([
                c.id.clone(),
                level_name(c.level).to_string(),
                c.message.clone(),
                c.error.clone().unwrap_or_default(),
                c.updated_at.clone(),
            ]);
        }
        print!("{}", t.render());
    }
    if verbose {
        println!();
        let mut t = Table::new(["TABLE", "OBJECTS", "REVISION"]);
        for tb in &status.tables {
            t.row([
                tb.name.clone(),
                tb.objects.to_string(),
                tb.revision.to_string(),
            ]);
        }
        print!("{}", t.render());
    }
    Ok(ExitCode::SUCCESS)
}

async fn db(client: &Client, format: Format, table: &str) -> anyhow::Result<ExitCode> {
    let dump = client.db_table(table).await?;
    if print_structured(format, &dump)? {
        return Ok(ExitCode::SUCCESS);
    }
    // Each object comes as {revision, object}; columns are the union of the objects' own
    // top-level keys in first-seen order, then the revision.
    let rows: Vec<(&serde_json::Value, &serde_json::Value)> = dump
        .objects
        .iter()
        .map(|o| match (o.get("object"), o.get("revision")) {
            (Some(obj), Some(rev)) => (obj, rev),
            _ => (o, &serde_json::Value::Null),
        })
        .collect();
    let mut columns: Vec<String> = Vec::new();
    for (obj, _) in &rows {
        if let Some(map) = obj.as_object() {
            for k in map.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
    }
    let header = columns
        .iter()
        .map(|c| c.to_uppercase())
        .chain(std::iter::once("REVISION".to_string()));
    let mut t = Table::new(header);
    for (obj, rev) in &rows {
        let cells = columns
            .iter()
            .map(|c| db_cell(obj.get(c).unwrap_or(&serde_json::Value::Null)))
            .chain(std::iter::once(cell(rev)));
        t.row(cells);
    }
    print!("{}", t.render());
    Ok(ExitCode::SUCCESS)
}

/// A table cell; a reconcile status `{kind, updated_at, error}` shows as `done`, `pending`,
/// or `error: <message>`.
fn db_cell(v: &serde_json::Value) -> String {
    if let (Some(kind), Some(_)) = (v.get("kind").and_then(|k| k.as_str()), v.get("updated_at")) {
        return match v.get("error").and_then(|e| e.as_str()) {
            Some(err) if !err.is_empty() => format!("{}: {err}", kind.to_lowercase()),
            _ => kind.to_lowercase(),
        };
    }
    cell(v)
}

async fn config(client: &Client, format: Format) -> anyhow::Result<ExitCode> {
    let cfg = client.config().await?;
    if print_structured(format, &cfg)? {
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(["CELL", "KEY", "VALUE"]);
    if let Some(cells) = cfg.as_object() {
        for (cell_name, values) in cells {
            match values.as_object() {
                Some(map) => {
                    for (k, v) in map {
                        t.row([cell_name.clone(), k.clone(), cell(v)]);
                    }
                }
                None => t.row([cell_name.clone(), String::new(), cell(values)]),
            }
        }
    }
    print!("{}", t.render());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
