//! Network policy conformance through the real binaries: the upstream model (namespaces x, y, z;
//! pods a, b, c; TCP and UDP on 80 and 81), every case of `policy_cases` applied with
//! `ciliumctl apply`, the full 9×9 matrix probed for the four ports after every step and
//! compared with the independent oracle (`cilium_e2e::oracle`), and `ciliumctl policy explain`
//! compared with every observed probe.
//!
//! All cases run even when some fail; the test fails at the end with a summary, after printing
//! expected vs observed matrices for every mismatch. Environment:
//! - `POLICY_E2E_CASES=sub1,sub2` runs only the cases whose name contains one of the substrings;
//! - `POLICY_E2E_REPORT=/path` also writes the report there;
//! - `POLICY_E2E_SETTLE_SECS=N` how long a step may take to be enforced (default 5).

mod policy_cases;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cilium_e2e::model::{Cluster, Explained, PORTS, base_yaml};
use cilium_e2e::oracle::{Matrix, ModelNamespace, ModelPod, Oracle, Proto, parse_documents};
use cilium_e2e::{Agent, require_privileges};
use policy_cases::{CASES, Case, Step};

/// The oracle over fake addresses, for checking the case table without privileges.
fn fake_oracle() -> (Oracle, Vec<String>) {
    let mut nss = Vec::new();
    let mut pods = Vec::new();
    let mut keys = Vec::new();
    let mut n = 10u8;
    for ns in ["x", "y", "z"] {
        nss.push(ModelNamespace {
            name: ns.into(),
            labels: [("ns", ns), ("kubernetes.io/metadata.name", ns)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
        for p in ["a", "b", "c"] {
            pods.push(ModelPod {
                namespace: ns.into(),
                name: p.into(),
                labels: [("pod".to_string(), p.to_string())].into_iter().collect(),
                ip: std::net::Ipv4Addr::new(10, 220, 0, n),
                named_ports: PORTS
                    .iter()
                    .map(|(port, proto)| {
                        (
                            format!("serve-{port}-{}", proto.name().to_lowercase()),
                            (*port, *proto),
                        )
                    })
                    .collect(),
                service_account: "default".into(),
            });
            keys.push(format!("{ns}/{p}"));
            n += 1;
        }
    }
    (Oracle::new(nss, pods), keys)
}

fn fake_render(o: &Oracle, t: &str) -> String {
    let mut s = t.replace("{{podcidr}}", "10.220.0.0/24");
    for p in &o.pods {
        s = s.replace(&format!("{{{{ip:{}}}}}", p.key()), &p.ip.to_string());
    }
    s
}

fn expected(o: &Oracle) -> Vec<Matrix> {
    PORTS.iter().map(|(p, pr)| o.matrix(*p, *pr)).collect()
}

#[test]
fn case_table_is_well_formed() {
    let (base, _) = fake_oracle();
    let full = expected(&base);
    let mut names = std::collections::BTreeSet::new();
    let mut policies = std::collections::BTreeSet::new();
    for case in CASES {
        assert!(names.insert(case.name), "case {} twice", case.name);
        let mut o = base.clone();
        let mut changed_something = false;
        for step in case.steps {
            let (Step::Apply(t) | Step::Delete(t)) = step;
            let yaml = fake_render(&o, t);
            assert!(
                !yaml.contains("{{"),
                "{}: unrendered template in {yaml}",
                case.name
            );
            for d in parse_documents(&yaml).unwrap_or_else(|e| panic!("{}: {e}", case.name)) {
                let kind = d["kind"].as_str().unwrap_or_default().to_string();
                if kind.contains("Policy") {
                    policies.insert(d.to_string());
                }
            }
            match step {
                Step::Apply(_) => o.apply_yaml(&yaml),
                Step::Delete(_) => o.delete_yaml(&yaml),
            }
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            changed_something |= expected(&o) != full;
        }
        assert!(
            changed_something || case.name == "np-selector-matching-nothing",
            "case {} never changes the matrix: it cannot fail",
            case.name
        );
    }
    assert!(
        policies.len() >= 30,
        "only {} distinct policies",
        policies.len()
    );
    // The replies case is what it claims: x/a reaches y/b, y/b does not reach x/a.
    let mut o = base.clone();
    let case = CASES
        .iter()
        .find(|c| c.name == "replies-pass-under-default-deny-ingress");
    if let Some(Step::Apply(t)) = case.and_then(|c| c.steps.first()) {
        o.apply_yaml(t).unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(o.allowed(0, 4, 80, Proto::Tcp) && !o.allowed(4, 0, 80, Proto::Tcp));
}

/// What happened in one step.
struct StepReport {
    what: String,
    apply_error: Option<String>,
    rounds: u32,
    mismatches: Vec<(Matrix, Matrix)>,
    explain_disagreements: Vec<String>,
}

/// What happened in one case.
struct CaseReport {
    name: &'static str,
    covers: &'static str,
    steps: Vec<StepReport>,
    elapsed: Duration,
    cleanup_error: Option<String>,
}

impl CaseReport {
    fn failed(&self) -> bool {
        self.cleanup_error.is_some()
            || self.steps.iter().any(|s| {
                s.apply_error.is_some()
                    || !s.mismatches.is_empty()
                    || !s.explain_disagreements.is_empty()
            })
    }
}

fn settle() -> Duration {
    Duration::from_secs(
        std::env::var("POLICY_E2E_SETTLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5),
    )
}

/// Compare `policy explain` with every observed probe; returns the disagreements.
fn check_explain(cluster: &Cluster<'_>, observed: &[Matrix]) -> Vec<String> {
    let n = cluster.pods.len();
    // Self pairs are skipped: a pod reaching its own address never leaves its loopback
    // device, so no policy (and no explanation of one) applies to it.
    let jobs: Vec<(usize, usize, usize)> = (0..observed.len())
        .flat_map(|m| (0..n).flat_map(move |i| (0..n).map(move |j| (m, i, j))))
        .filter(|&(_, i, j)| i != j)
        .collect();
    let next = AtomicUsize::new(0);
    let out = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(m, i, j)) = jobs.get(k) else {
                        break;
                    };
                    let Some(mat) = observed.get(m) else { break };
                    let seen = mat.cells[i][j];
                    let msg = match cluster.explain(i, j, mat.port, mat.proto) {
                        Explained::Verdict(v) if v == seen => None,
                        Explained::Verdict(v) => Some(format!(
                            "explain {} -> {} {}/{} says {} but the probe {}",
                            cluster.keys[i],
                            cluster.keys[j],
                            mat.port,
                            mat.proto,
                            if v { "allowed" } else { "denied" },
                            if seen { "passed" } else { "was dropped" }
                        )),
                        Explained::Unsupported(e) | Explained::Error(e) => Some(format!(
                            "explain {} -> {} {}/{} failed: {e}",
                            cluster.keys[i], cluster.keys[j], mat.port, mat.proto
                        )),
                    };
                    if let Some(msg) = msg {
                        out.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(msg);
                    }
                }
            });
        }
    });
    out.into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn run_case(cluster: &Cluster<'_>, case: &Case, explain: bool) -> CaseReport {
    let start = Instant::now();
    let mut oracle = cluster.base.clone();
    let mut applied = Vec::new();
    let mut touched_objects = false;
    let mut steps = Vec::new();
    for (k, step) in case.steps.iter().enumerate() {
        let (verb, t) = match step {
            Step::Apply(t) => ("apply", t),
            Step::Delete(t) => ("delete", t),
        };
        let yaml = cluster.render(t);
        let docs = parse_documents(&yaml).unwrap_or_default();
        let what = format!(
            "step {} {verb} {}",
            k + 1,
            docs.iter()
                .map(|d| format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap_or("?"),
                    d["metadata"]["name"].as_str().unwrap_or("?")
                ))
                .collect::<Vec<_>>()
                .join(",")
        );
        let result = if verb == "apply" {
            cluster.apply(&yaml)
        } else {
            cluster.delete(&yaml)
        };
        let oracle_result = if verb == "apply" {
            touched_objects |= docs
                .iter()
                .any(|d| matches!(d["kind"].as_str(), Some("Pod" | "Namespace")));
            if docs
                .iter()
                .any(|d| d["kind"].as_str().is_some_and(|k| k.contains("Policy")))
            {
                applied.push(yaml.clone());
            }
            oracle.apply_yaml(&yaml)
        } else {
            oracle.delete_yaml(&yaml)
        };
        let apply_error = match (result, oracle_result) {
            (Ok(()), Ok(())) => None,
            (Err(e), _) => Some(e),
            (_, Err(e)) => Some(format!("oracle: {e}")),
        };
        let want = expected(&oracle);
        let (observed, rounds) = cluster.probe_until(&want, settle());
        let mismatches = want
            .iter()
            .zip(&observed)
            .filter(|(w, o)| w != o)
            .map(|(w, o)| (w.clone(), o.clone()))
            .collect();
        let explain_disagreements = if explain {
            check_explain(cluster, &observed)
        } else {
            Vec::new()
        };
        steps.push(StepReport {
            what,
            apply_error,
            rounds,
            mismatches,
            explain_disagreements,
        });
    }
    // Clean up: delete what the case applied, restore the objects' labels.
    let mut cleanup = Vec::new();
    for y in applied.iter().rev() {
        if let Err(e) = cluster.delete(y)
            && !e.contains("not found")
            && !e.contains("missing")
        {
            cleanup.push(e);
        }
    }
    if touched_objects && let Err(e) = cluster.apply(&base_yaml()) {
        cleanup.push(e);
    }
    CaseReport {
        name: case.name,
        covers: case.covers,
        steps,
        elapsed: start.elapsed(),
        cleanup_error: (!cleanup.is_empty()).then(|| cleanup.join("; ")),
    }
}

fn render_report(reports: &[CaseReport], explain_note: &str, total: Duration) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "== policy conformance: {} cases, {explain_note}",
        reports.len()
    );
    for c in reports {
        let mm: usize = c
            .steps
            .iter()
            .flat_map(|s| &s.mismatches)
            .map(|(w, o)| w.diff(o).len())
            .sum();
        let ex: usize = c.steps.iter().map(|s| s.explain_disagreements.len()).sum();
        let rounds: Vec<String> = c.steps.iter().map(|s| s.rounds.to_string()).collect();
        let _ = writeln!(
            r,
            "{} {:<45} steps {} rounds [{}] {:>5.1}s  mismatched probes {mm}  explain disagreements {ex}",
            if c.failed() { "FAIL" } else { "ok  " },
            c.name,
            c.steps.len(),
            rounds.join(","),
            c.elapsed.as_secs_f64()
        );
    }
    for c in reports.iter().filter(|c| c.failed()) {
        let _ = writeln!(r, "\n---- {} ({}) ----", c.name, c.covers);
        if let Some(e) = &c.cleanup_error {
            let _ = writeln!(r, "cleanup: {e}");
        }
        for s in &c.steps {
            if let Some(e) = &s.apply_error {
                let _ = writeln!(r, "{}: {e}", s.what);
            }
            for (want, got) in &s.mismatches {
                let _ = writeln!(
                    r,
                    "{}: {} mismatched probes; expected ('.' allowed, 'X' dropped, '!' expected allowed but dropped, '?' expected dropped but passed):\n{}",
                    s.what,
                    want.diff(got).len(),
                    want.render(Some(got))
                );
            }
            for (i, e) in s.explain_disagreements.iter().enumerate() {
                if i == 10 {
                    let _ = writeln!(
                        r,
                        "{}: ... {} more explain disagreements",
                        s.what,
                        s.explain_disagreements.len() - 10
                    );
                    break;
                }
                let _ = writeln!(r, "{}: {e}", s.what);
            }
        }
    }
    let failed = reports.iter().filter(|c| c.failed()).count();
    let _ = writeln!(
        r,
        "\n== {} of {} cases passed, {failed} failed; total {:.1}s",
        reports.len() - failed,
        reports.len(),
        total.as_secs_f64()
    );
    r
}

/// `ciliumctl bpf policy list` takes the pod as NAMESPACE/NAME as well as the endpoint id,
/// and says which pod it does not know.
fn check_bpf_policy_names(cluster: &Cluster<'_>) {
    let key = &cluster.keys[0];
    let out = cluster.agent.ctl(&["endpoint", "list", "-o", "json"]);
    let eps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let id = eps
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["pod"].as_str() == Some(key.as_str()))
        .and_then(|e| e["id"].as_u64())
        .unwrap_or_else(|| panic!("no endpoint of pod {key} in `endpoint list`: {eps}"));
    let by_id = cluster
        .agent
        .ctl(&["bpf", "policy", "list", &id.to_string(), "-o", "json"]);
    let by_name = cluster
        .agent
        .ctl(&["bpf", "policy", "list", key, "-o", "json"]);
    assert!(
        by_id.status.success() && by_name.status.success(),
        "{by_id:?} {by_name:?}"
    );
    let id_of = |o: &std::process::Output| {
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_default()["endpoint_id"]
            .clone()
    };
    assert_eq!(id_of(&by_name), serde_json::json!(id), "{by_name:?}");
    assert_eq!(id_of(&by_id), id_of(&by_name));
    let missing = cluster
        .agent
        .ctl(&["bpf", "policy", "list", "nowhere/nobody"]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && err.contains("nowhere/nobody"),
        "{missing:?}"
    );
}

#[test]
fn policy_conformance_matrix() {
    if !require_privileges("policy_conformance_matrix") {
        return;
    }
    let start = Instant::now();
    let agent = Agent::start("10.220.0.0/24", &[]);
    let cluster = Cluster::build(&agent);
    // Without policy everything reaches everything: the harness itself works.
    let full = expected(&cluster.base);
    let (observed, _) = cluster.probe_until(&full, Duration::from_secs(10));
    for (w, o) in full.iter().zip(&observed) {
        assert_eq!(
            w,
            o,
            "the model is not fully connected without policy:\n{}",
            w.render(Some(o))
        );
    }
    eprintln!(
        "model ready in {:.1}s (9 pods, full connectivity)",
        start.elapsed().as_secs_f64()
    );
    check_bpf_policy_names(&cluster);

    let explain = cluster.explain_supported();
    let explain_note = match &explain {
        Ok(()) => "policy explain checked on every probe".to_string(),
        Err(e) => {
            eprintln!("SKIPPED explain checks: `ciliumctl policy explain` is not available: {e}");
            format!("explain checks SKIPPED ({e})")
        }
    };
    let filter: Vec<String> = std::env::var("POLICY_E2E_CASES")
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let mut reports = Vec::new();
    for case in CASES {
        if !filter.is_empty() && !filter.iter().any(|f| case.name.contains(f.as_str())) {
            continue;
        }
        let rep = run_case(&cluster, case, explain.is_ok());
        eprintln!(
            "{} {} ({:.1}s)",
            if rep.failed() { "FAIL" } else { "ok  " },
            rep.name,
            rep.elapsed.as_secs_f64()
        );
        reports.push(rep);
    }
    let report = render_report(&reports, &explain_note, start.elapsed());
    eprintln!("{report}");
    if let Ok(path) = std::env::var("POLICY_E2E_REPORT") {
        let _ = std::fs::write(&path, &report);
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|c| c.failed())
        .map(|c| c.name)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} policy cases failed: {}",
        failed.len(),
        reports.len(),
        failed.join(", ")
    );
}
