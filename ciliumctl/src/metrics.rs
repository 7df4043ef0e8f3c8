//! `ciliumctl metrics`: the agent's Prometheus metrics as a table or JSON objects.

use std::collections::BTreeMap;
use std::process::ExitCode;

use cilium_api::Client;
use serde::Serialize;

use crate::output::{Format, Table, print_structured};

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses Prometheus text exposition (comments skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = match line.rfind('}') {
            Some(end) => (&line[..=end], line[end + 1..].trim()),
            None => match line.split_once(' ') {
                Some((h, v)) => (h, v.trim()),
                None => continue,
            },
        };
        let value = value.split_whitespace().next().unwrap_or_default();
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
            None => (head, BTreeMap::new()),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim().trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

/// Prints the metrics.
pub async fn run(client: &Client, format: Format) -> anyhow::Result<ExitCode> {
    let samples = parse(&client.metrics_text().await?);
    if print_structured(format, &samples)? {
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(["METRIC", "LABELS", "VALUE"]);
    for s in samples {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.row([s.name, labels.join(" "), s.value.to_string()]);
    }
    print!("{}", t.render());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_and_values() {
        let text = "# HELP x y\n# TYPE x counter\n\
            cilium_datapath_packets_total{direction=\"egress\",reason=\"forwarded\"} 12\n\
            cilium_up 1\n\
            weird{a=\"q\\\"uote, x\"} 0.5\n";
        let s = parse(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "cilium_datapath_packets_total");
        assert_eq!(s[0].labels["reason"], "forwarded");
        assert_eq!(s[0].labels["direction"], "egress");
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].name, "cilium_up");
        assert!(s[1].labels.is_empty());
        assert_eq!(s[2].labels["a"], "q\"uote, x");
    }
}
