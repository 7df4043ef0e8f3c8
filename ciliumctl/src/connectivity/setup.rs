//! What the connectivity test creates and how it is undone: the run's names, the record of
//! everything made (written BEFORE each creation so an interruption never loses track), the
//! CNI calls, the Kubernetes objects, cleanup, and the removal of an earlier run's leftovers.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cilium_api::Client;
use cilium_api::models::MonitorEvent;
use tokio::sync::RwLock;

use super::net::{self, EchoServers};
use super::scenarios::Role;

/// Prefix of netns names and container ids.
pub const NETNS_PREFIX: &str = "cct-";
/// Prefix of the Kubernetes namespaces.
pub const NS_PREFIX: &str = "cilium-test-";

/// A pod the run added (or is adding).
#[derive(Debug, Clone)]
pub struct PodRecord {
    /// netns name = CNI container id.
    pub netns: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Address from the ADD result, once known.
    pub ip: Option<Ipv4Addr>,
    /// Gateway from the ADD result, once known.
    pub gateway: Option<Ipv4Addr>,
}

/// Everything the run made, in creation order per kind.
#[derive(Default)]
pub struct Created {
    /// Pods (netns + CNI attachment).
    pub pods: Vec<PodRecord>,
    /// YAML of objects applied (deleted in reverse order).
    pub objects: Vec<String>,
    /// Echo servers (pods and host).
    pub servers: Vec<EchoServers>,
}

/// Shared state of one run.
pub struct Ctx {
    /// Agent client.
    pub client: Client,
    /// Hex id of this run (our pid).
    pub id: String,
    /// The cilium-cni binary.
    pub cni: PathBuf,
    /// The agent socket given to cilium-cni.
    pub socket: String,
    /// What was made.
    pub created: Mutex<Created>,
    /// Held (read) by every creating call while it runs; cleanup takes it (write) so nothing is
    /// still being created behind its back after an interruption.
    pub inflight: Arc<RwLock<()>>,
    /// Drop events seen since the monitor started.
    pub events: Arc<Mutex<Vec<MonitorEvent>>>,
}

/// Lock a std mutex, ignoring poisoning (a panicked probe thread must not stop cleanup).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Ctx {
    /// Kubernetes namespace `1` or `2` of this run.
    pub fn namespace(&self, n: u8) -> String {
        format!("{NS_PREFIX}{}-{n}", self.id)
    }

    /// netns name (and container id) of a pod of this run.
    pub fn netns_name(&self, role: Role) -> String {
        format!("{NETNS_PREFIX}{}-{}", self.id, role.name())
    }

    /// Apply `yaml`, recorded first so cleanup deletes it even when interrupted mid-call.
    pub async fn apply(&self, yaml: String) -> anyhow::Result<()> {
        lock(&self.created).objects.push(yaml.clone());
        let guard = self.inflight.clone().read_owned().await;
        let client = self.client.clone();
        // A task of its own: it completes even when the caller is cancelled.
        tokio::spawn(async move {
            let r = client.apply(&yaml).await;
            drop(guard);
            r
        })
        .await
        .map_err(|e| anyhow::anyhow!("apply task failed: {e}"))?
        .map_err(|e| anyhow::anyhow!("applying the test objects failed: {e}"))?;
        Ok(())
    }

    /// Delete objects applied with [`Ctx::apply`] (exactly that text) and forget them.
    pub async fn delete(&self, yaml: &str) -> anyhow::Result<()> {
        self.client
            .delete_objects(yaml)
            .await
            .map_err(|e| anyhow::anyhow!("deleting the test objects failed: {e}"))?;
        lock(&self.created).objects.retain(|o| o != yaml);
        Ok(())
    }

    /// Create the pod of `role`: netns, CNI ADD (recorded before either). Returns the record
    /// with its address and gateway.
    pub async fn add_pod(&self, role: Role) -> anyhow::Result<PodRecord> {
        let rec = PodRecord {
            netns: self.netns_name(role),
            namespace: self.namespace(role.ns_index()),
            ip: None,
            gateway: None,
        };
        lock(&self.created).pods.push(rec.clone());
        let guard = self.inflight.clone().read_owned().await;
        let (cni, socket, r) = (self.cni.clone(), self.socket.clone(), rec.clone());
        let out = tokio::task::spawn_blocking(move || {
            let out = net::netns_add(&r.netns).and_then(|()| {
                cni_call(
                    &cni,
                    &socket,
                    "ADD",
                    &r.netns,
                    &net::netns_path(&r.netns),
                    &format!(
                        "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                        r.namespace,
                        role.name()
                    ),
                )
            });
            drop(guard);
            out
        })
        .await
        .map_err(|e| anyhow::anyhow!("CNI ADD task failed: {e}"))??;
        let result: serde_json::Value = serde_json::from_str(&out).map_err(|e| {
            anyhow::anyhow!(
                "cilium-cni ADD of {} printed non-JSON ({e}): {out}",
                rec.netns
            )
        })?;
        let field = |k: &str| -> Option<Ipv4Addr> {
            result["ips"][0][k]
                .as_str()
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
        };
        let (Some(ip), gateway) = (field("address"), field("gateway")) else {
            anyhow::bail!(
                "cilium-cni ADD of {} returned no IPv4 address: {result}",
                rec.netns
            );
        };
        let mut c = lock(&self.created);
        if let Some(p) = c.pods.iter_mut().find(|p| p.netns == rec.netns) {
            p.ip = Some(ip);
            p.gateway = gateway;
        }
        Ok(PodRecord {
            ip: Some(ip),
            gateway,
            ..rec
        })
    }

    /// Undo everything, in order: policies/services, echo servers, pods (CNI DEL, netns), then
    /// Pod and Namespace objects. Returns the failures (empty = clean).
    pub async fn cleanup(&self) -> Vec<String> {
        let mut errors = Vec::new();
        // Wait for creating calls still running (an interrupted ADD or apply).
        let _all = match tokio::time::timeout(Duration::from_secs(60), self.inflight.write()).await
        {
            Ok(g) => Some(g),
            Err(_) => {
                errors.push("a creating call did not finish within 60s; cleaning up anyway".into());
                None
            }
        };
        let (objects, pods, servers) = {
            let mut c = lock(&self.created);
            (
                std::mem::take(&mut c.objects),
                std::mem::take(&mut c.pods),
                std::mem::take(&mut c.servers),
            )
        };
        // Policies, services and slices first (applied last), pods and namespaces at the end.
        let (late, early): (Vec<String>, Vec<String>) = objects
            .into_iter()
            .partition(|o| o.contains("\nkind: Namespace\n") || o.contains("\nkind: Pod\n"));
        for yaml in early.iter().rev() {
            if let Err(e) = self.client.delete_objects(yaml).await {
                errors.push(format!("deleting test objects: {e}"));
            }
        }
        tokio::task::spawn_blocking(move || drop(servers))
            .await
            .unwrap_or_default();
        for p in pods.iter().rev() {
            let (cni, socket, name) = (self.cni.clone(), self.socket.clone(), p.netns.clone());
            let r = tokio::task::spawn_blocking(move || {
                let del = cni_call(&cni, &socket, "DEL", &name, &net::netns_path(&name), "");
                let ns = net::netns_del(&name);
                del.and(ns)
            })
            .await;
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => errors.push(format!("removing pod {}: {e}", p.netns)),
                Err(e) => errors.push(format!("removing pod {}: {e}", p.netns)),
            }
        }
        for yaml in late.iter().rev() {
            if let Err(e) = self.client.delete_objects(yaml).await {
                errors.push(format!("deleting test namespaces/pods: {e}"));
            }
        }
        errors
    }
}

/// The network configuration given to cilium-cni.
pub fn net_conf(socket: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "cilium-connectivity-test",
        "type": "cilium-cni",
        "socketPath": socket,
    })
    .to_string()
}

/// Run cilium-cni `command` for container `id` in `netns`; returns stdout.
pub fn cni_call(
    cni: &Path,
    socket: &str,
    command: &str,
    id: &str,
    netns: &Path,
    args: &str,
) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut cmd = Command::new(cni);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_PATH",
            cni.parent().unwrap_or(Path::new("/opt/cni/bin")),
        )
        .env_remove("CNI_ARGS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if netns.exists() {
        cmd.env("CNI_NETNS", netns);
    }
    if !args.is_empty() {
        cmd.env("CNI_ARGS", args);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", cni.display()))?;
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(net_conf(socket).as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| anyhow::anyhow!("{}: {e}", cni.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        anyhow::bail!(
            "cilium-cni {command} of {id} failed ({}): {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// The run id inside a name made by a run (`cct-<id>-<pod>`, `cilium-test-<id>-<n>`).
pub fn run_id_of(name: &str) -> Option<&str> {
    let rest = name
        .strip_prefix(NETNS_PREFIX)
        .or_else(|| name.strip_prefix(NS_PREFIX))?;
    let id = rest.split('-').next()?;
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit())).then_some(id)
}

/// Whether the run `id` is still going: another live ciliumctl process with that pid. Our own
/// pid counts as finished (a leftover of a run before a reboot or in another pid namespace).
pub fn run_alive(id: &str) -> bool {
    let Ok(pid) = u32::from_str_radix(id, 16) else {
        return false;
    };
    if pid == std::process::id() {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "ciliumctl")
}

/// Remove what earlier runs whose process is gone left behind: netns and their CNI
/// attachments, endpoints, and objects in their namespaces. Returns what was removed.
pub async fn remove_leftovers(ctx: &Ctx) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let dead = |name: &str| run_id_of(name).is_some_and(|id| !run_alive(id));
    // Endpoints of this agent (their netns may be gone already).
    let eps = ctx
        .client
        .endpoint_list()
        .await
        .map_err(|e| anyhow::anyhow!("listing endpoints: {e}"))?;
    let mut attachments: Vec<(String, PathBuf)> = eps
        .iter()
        .filter(|e| dead(&e.container_id))
        .map(|e| (e.container_id.clone(), PathBuf::from(&e.netns)))
        .collect();
    for name in net::netns_list(NETNS_PREFIX) {
        if dead(&name) && !attachments.iter().any(|(id, _)| *id == name) {
            attachments.push((name.clone(), net::netns_path(&name)));
        }
    }
    for (id, netns) in attachments {
        let (cni, socket) = (ctx.cni.clone(), ctx.socket.clone());
        let name = id.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            // DEL is idempotent; an attachment of another agent is simply unknown here.
            let _ = cni_call(&cni, &socket, "DEL", &name, &netns, "");
            net::netns_del(&name)
        })
        .await
        .map_err(|e| anyhow::anyhow!("leftover cleanup task: {e}"))??;
        removed.push(format!("pod {id}"));
    }
    // Objects in namespaces of dead runs.
    let namespaces = ctx
        .client
        .resources("namespace", None, None)
        .await
        .map_err(|e| anyhow::anyhow!("listing namespaces: {e}"))?;
    for ns in namespaces {
        let Some(name) = object_name(&ns) else {
            continue;
        };
        if !name.starts_with(NS_PREFIX) || !dead(name) {
            continue;
        }
        let mut yaml = String::new();
        for (kind, api) in [
            ("CiliumNetworkPolicy", "cilium.io/v2"),
            ("NetworkPolicy", "networking.k8s.io/v1"),
            ("EndpointSlice", "discovery.k8s.io/v1"),
            ("Service", "v1"),
            ("Pod", "v1"),
        ] {
            let objs = ctx
                .client
                .resources(&kind.to_lowercase(), Some(name), None)
                .await
                .map_err(|e| anyhow::anyhow!("listing {kind} objects in {name}: {e}"))?;
            for o in &objs {
                if let Some(n) = object_name(o) {
                    yaml.push_str(&format!(
                        "---\napiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {n}\n  namespace: {name}\n"
                    ));
                }
            }
        }
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"
        ));
        ctx.client
            .delete_objects(&yaml)
            .await
            .map_err(|e| anyhow::anyhow!("deleting leftovers in namespace {name}: {e}"))?;
        removed.push(format!("namespace {name}"));
    }
    // Cluster-scoped policies of dead runs (named after the run).
    let ccnps = ctx
        .client
        .resources("ciliumclusterwidenetworkpolicy", None, None)
        .await
        .map_err(|e| anyhow::anyhow!("listing CiliumClusterwideNetworkPolicy objects: {e}"))?;
    for o in &ccnps {
        let Some(name) = object_name(o) else {
            continue;
        };
        if name.starts_with(NS_PREFIX) && dead(name) {
            ctx.client
                .delete_objects(&format!(
                    "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: {name}\n"
                ))
                .await
                .map_err(|e| anyhow::anyhow!("deleting leftover policy {name}: {e}"))?;
            removed.push(format!("policy {name}"));
        }
    }
    Ok(removed)
}

/// The name of a stored object as the resources API returns it (`name`, or `metadata.name`).
fn object_name(o: &serde_json::Value) -> Option<&str> {
    o["name"]
        .as_str()
        .or_else(|| o["metadata"]["name"].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_read_from_names() {
        assert_eq!(run_id_of("cct-1a2b-client"), Some("1a2b"));
        assert_eq!(run_id_of("cilium-test-1a2b-2"), Some("1a2b"));
        assert_eq!(run_id_of("cct-zz-client"), None);
        assert_eq!(run_id_of("pod1234"), None);
        assert_eq!(run_id_of("cilium-test-"), None);
    }

    #[test]
    fn liveness_of_runs() {
        assert!(!run_alive(&format!("{:x}", std::process::id())));
        // pid 1 is never ciliumctl.
        assert!(!run_alive("1"));
        assert!(!run_alive("not-hex"));
    }

    #[test]
    fn net_conf_carries_the_socket() {
        let v: serde_json::Value = serde_json::from_str(&net_conf("/tmp/a.sock")).unwrap();
        assert_eq!(v["socketPath"], "/tmp/a.sock");
        assert_eq!(v["type"], "cilium-cni");
    }
}
