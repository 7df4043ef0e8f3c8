//! Results of a connectivity run and their renderings: the summary table, the JSON document
//! (`-o json`) and JUnit XML (`--junit FILE`).

use serde::Serialize;

use crate::output::Table;

/// Result of one scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every probe had its expected outcome.
    Pass,
    /// Some probe did not, or the scenario could not be set up.
    Fail,
    /// Not runnable here (the reason is in `error`).
    Skip,
}

impl Outcome {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Skip => "skip",
        }
    }
}

/// One probe as it ran (its last attempt).
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// Source: `host` or `<namespace>/<pod>`.
    pub from: String,
    /// Destination: `<namespace>/<pod>`, `service <ns>/<name>` or `host`.
    pub to: String,
    /// Destination address and port actually probed.
    pub address: String,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// `connected`, `refused` or `dropped (<reason>)`.
    pub expected: String,
    /// What happened: `connected (<server>)`, `refused`, `timeout`, `error: ...`.
    pub observed: String,
    /// For expected drops: the matching monitor drop event, as a text line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_event: Option<String>,
    /// Whether the probe met its expectation.
    pub ok: bool,
}

/// One scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Scenario name.
    pub name: String,
    /// What it checks.
    pub description: String,
    /// pass, fail or skip.
    pub result: Outcome,
    /// Wall time.
    pub duration_ms: u64,
    /// The probes (last attempt).
    pub probes: Vec<ProbeResult>,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole run (`-o json` prints exactly this).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Run id (prefix of every object, namespace and netns it made).
    pub run_id: String,
    /// The agent's socket.
    pub agent: String,
    /// Scenarios that ran, in order.
    pub scenarios: Vec<ScenarioResult>,
    /// Count of passes.
    pub passed: usize,
    /// Count of failures.
    pub failed: usize,
    /// Count of skips.
    pub skipped: usize,
    /// True when the run was stopped by Ctrl-C.
    pub interrupted: bool,
    /// A failure outside any scenario (setup, cleanup).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// Recount passed/failed/skipped from the scenarios.
    pub fn tally(&mut self) {
        let count = |o| self.scenarios.iter().filter(|s| s.result == o).count();
        self.passed = count(Outcome::Pass);
        self.failed = count(Outcome::Fail);
        self.skipped = count(Outcome::Skip);
    }

    /// Whether the run succeeded (exit code 0).
    pub fn success(&self) -> bool {
        self.failed == 0 && self.error.is_none() && !self.interrupted
    }

    /// The summary table with a closing line.
    pub fn table(&self) -> String {
        let mut t = Table::new(["SCENARIO", "RESULT", "DURATION", "DETAIL"]);
        for s in &self.scenarios {
            let detail = match (&s.error, s.result) {
                (Some(e), _) => e.clone(),
                (None, _) => format!("{} probes", s.probes.len()),
            };
            t.row([
                s.name.clone(),
                s.result.name().to_string(),
                secs(s.duration_ms),
                detail,
            ]);
        }
        let mut out = t.render();
        out.push_str(&format!(
            "\n{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        ));
        if self.interrupted {
            out.push_str(" (interrupted)");
        }
        out.push('\n');
        if let Some(e) = &self.error {
            out.push_str(&format!("error: {e}\n"));
        }
        out
    }

    /// JUnit XML: one testsuite, one testcase per scenario.
    pub fn junit(&self) -> String {
        let total: u64 = self.scenarios.iter().map(|s| s.duration_ms).sum();
        let errors = usize::from(self.error.is_some());
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        x.push_str(&format!(
            "<testsuites tests=\"{}\" failures=\"{}\" errors=\"{errors}\" skipped=\"{}\" time=\"{}\">\n",
            self.scenarios.len(),
            self.failed,
            self.skipped,
            secs_f(total)
        ));
        x.push_str(&format!(
            "  <testsuite name=\"cilium-connectivity\" id=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{errors}\" skipped=\"{}\" time=\"{}\">\n",
            xml(&self.run_id),
            self.scenarios.len(),
            self.failed,
            self.skipped,
            secs_f(total)
        ));
        for s in &self.scenarios {
            let (class, case) = s.name.split_once('/').unwrap_or(("connectivity", &s.name));
            x.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{}\">",
                xml(class),
                xml(case),
                secs_f(s.duration_ms)
            ));
            let body = s
                .probes
                .iter()
                .map(|p| {
                    format!(
                        "{} {} -> {} ({}): expected {}, observed {}{}",
                        if p.ok { "ok  " } else { "FAIL" },
                        p.from,
                        p.to,
                        p.protocol,
                        p.expected,
                        p.observed,
                        p.drop_event
                            .as_ref()
                            .map(|e| format!(", monitor: {e}"))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            match s.result {
                Outcome::Pass => {}
                Outcome::Fail => x.push_str(&format!(
                    "\n      <failure message=\"{}\" type=\"connectivity\">{}</failure>\n    ",
                    xml(s.error.as_deref().unwrap_or("failed")),
                    xml(&body)
                )),
                Outcome::Skip => x.push_str(&format!(
                    "\n      <skipped message=\"{}\"/>\n    ",
                    xml(s.error.as_deref().unwrap_or("skipped"))
                )),
            }
            if !body.is_empty() && s.result == Outcome::Pass {
                x.push_str(&format!("<system-out>{}</system-out>", xml(&body)));
            }
            x.push_str("</testcase>\n");
        }
        if let Some(e) = &self.error {
            x.push_str(&format!("    <system-err>{}</system-err>\n", xml(e)));
        }
        x.push_str("  </testsuite>\n</testsuites>\n");
        x
    }
}

/// `1.2s`.
pub fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn secs_f(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// Escape text for XML attributes and content.
pub fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => {}
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut r = Report {
            run_id: "cct-1f".into(),
            agent: "/run/cilium.sock".into(),
            scenarios: vec![
                ScenarioResult {
                    name: "pod-to-pod/same-namespace".into(),
                    description: "x".into(),
                    result: Outcome::Pass,
                    duration_ms: 400,
                    probes: vec![],
                    error: None,
                },
                ScenarioResult {
                    name: "policy/np-ingress-deny".into(),
                    description: "y".into(),
                    result: Outcome::Fail,
                    duration_ms: 1200,
                    probes: vec![ProbeResult {
                        from: "ns/client".into(),
                        to: "ns/echo".into(),
                        address: "10.0.0.1:80".into(),
                        protocol: "tcp",
                        expected: "dropped (policy-denied)".into(),
                        observed: "connected (echo <x>)".into(),
                        drop_event: None,
                        ok: false,
                    }],
                    error: Some("1 probe <wrong> & late".into()),
                },
            ],
            passed: 0,
            failed: 0,
            skipped: 0,
            interrupted: false,
            error: None,
        };
        r.tally();
        r
    }

    #[test]
    fn tally_and_exit_status() {
        let r = report();
        assert_eq!((r.passed, r.failed, r.skipped), (1, 1, 0));
        assert!(!r.success());
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v = serde_json::to_value(report()).unwrap();
        assert_eq!(v["passed"], 1);
        assert_eq!(v["failed"], 1);
        assert_eq!(v["scenarios"][1]["result"], "fail");
        assert_eq!(
            v["scenarios"][1]["probes"][0]["expected"],
            "dropped (policy-denied)"
        );
        assert_eq!(v["scenarios"][0]["duration_ms"], 400);
        assert!(v["scenarios"][0].get("error").is_none());
    }

    #[test]
    fn junit_escapes_and_counts_failures() {
        let x = report().junit();
        assert!(x.contains("failures=\"1\""), "{x}");
        assert_eq!(x.matches("<testcase ").count(), 2);
        assert_eq!(x.matches("<failure ").count(), 1);
        assert!(x.contains("1 probe &lt;wrong&gt; &amp; late"), "{x}");
        assert!(!x.contains("<x>"), "{x}");
        assert!(
            x.contains("classname=\"policy\" name=\"np-ingress-deny\""),
            "{x}"
        );
    }

    #[test]
    fn table_lists_every_scenario() {
        let t = report().table();
        assert!(t.starts_with("SCENARIO"), "{t}");
        assert!(t.contains("policy/np-ingress-deny"), "{t}");
        assert!(t.contains("1 passed, 1 failed, 0 skipped"), "{t}");
    }
}
