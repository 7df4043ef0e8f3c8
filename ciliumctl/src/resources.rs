//! `ciliumctl apply -f`, `delete -f` and `get KIND [NAME] [-n NS]`.

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use cilium_api::models::ResourceChange;
use cilium_api::{Client, ClientError};

use crate::output::{Format, Table, print_structured};

/// Read FILE, or stdin for `-`.
fn read_input(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the objects from stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
    }
}

/// An API error with every document error on its own line.
fn explain(e: ClientError) -> anyhow::Error {
    if let ClientError::Api { body, .. } = &e
        && let Some(errors) = body.details.get("errors").and_then(|v| v.as_array())
        && errors.len() > 1
    {
        let lines: Vec<String> = errors
            .iter()
            .filter_map(|e| e.get("message").and_then(|m| m.as_str()))
            .map(|m| format!("  {m}"))
            .collect();
        return anyhow::anyhow!(
            "{} documents are invalid; nothing was changed:\n{}",
            errors.len(),
            lines.join("\n")
        );
    }
    anyhow::Error::new(e)
}

fn print_changes(format: Format, changes: &[ResourceChange]) -> anyhow::Result<()> {
    if print_structured(format, &changes)? {
        return Ok(());
    }
    for c in changes {
        let kind = c.kind.to_lowercase();
        if c.namespace.is_empty() {
            println!("{kind}/{} {}", c.name, c.action.as_str());
        } else {
            println!(
                "{kind}/{} {} (namespace {})",
                c.name,
                c.action.as_str(),
                c.namespace
            );
        }
    }
    Ok(())
}

/// `ciliumctl apply -f FILE|-`.
pub async fn apply(
    client: &Client,
    format: Format,
    file: &Path,
    wait_secs: Option<f64>,
) -> anyhow::Result<ExitCode> {
    let text = read_input(file)?;
    let changes = match wait_secs {
        Some(secs) => client.apply_wait(&text, secs).await,
        None => client.apply(&text).await,
    }
    .map_err(explain)?;
    print_changes(format, &changes)?;
    Ok(ExitCode::SUCCESS)
}

/// `ciliumctl delete -f FILE|-`.
pub async fn delete(client: &Client, format: Format, file: &Path) -> anyhow::Result<ExitCode> {
    let text = read_input(file)?;
    let changes = client.delete_objects(&text).await.map_err(explain)?;
    print_changes(format, &changes)?;
    Ok(ExitCode::SUCCESS)
}

fn labels(v: &serde_json::Value) -> String {
    v.get("labels")
        .and_then(|l| l.as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn field(v: &serde_json::Value, key: &str) -> String {
    crate::output::cell(v.get(key).unwrap_or(&serde_json::Value::Null))
}

/// `ciliumctl get KIND [NAME] [-n NS]`.
pub async fn get(
    client: &Client,
    format: Format,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let objects = client.resources(kind, namespace, name).await?;
    if name.is_some() && objects.is_empty() {
        anyhow::bail!(
            "{kind} {:?} not found{}",
            name.unwrap_or_default(),
            namespace
                .map(|n| format!(" in namespace {n}"))
                .unwrap_or_default()
        );
    }
    if print_structured(format, &objects)? {
        return Ok(ExitCode::SUCCESS);
    }
    let lower = kind.to_ascii_lowercase();
    let table = match lower.as_str() {
        "pod" | "pods" | "po" => {
            let mut t = Table::new(["NAMESPACE", "NAME", "LABELS", "SERVICE-ACCOUNT"]);
            for o in &objects {
                t.row([
                    field(o, "namespace"),
                    field(o, "name"),
                    labels(o),
                    field(o, "service_account"),
                ]);
            }
            t
        }
        "namespace" | "namespaces" | "ns" => {
            let mut t = Table::new(["NAME", "LABELS"]);
            for o in &objects {
                t.row([field(o, "name"), labels(o)]);
            }
            t
        }
        _ => {
            // Kinds added by other cells: namespace/name when present, then the labels.
            let mut t = Table::new(["NAMESPACE", "NAME", "LABELS"]);
            for o in &objects {
                t.row([field(o, "namespace"), field(o, "name"), labels(o)]);
            }
            t
        }
    };
    if objects.is_empty() {
        // Like kubectl: the kind may have been typed as an alias (`ns`, `svc`), so it is not
        // repeated here.
        match namespace {
            Some(ns) => eprintln!("No resources found in namespace {ns}."),
            None => eprintln!("No resources found."),
        }
    } else {
        print!("{}", table.render());
    }
    Ok(ExitCode::SUCCESS)
}
