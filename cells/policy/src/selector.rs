//! Label selectors (`matchLabels` + `matchExpressions`) normalized into a list of
//! requirements on security labels, so that equal selectors compare and hash equal and the
//! selector cache can key on them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Security labels, `key -> value` (same shape as `cilium_identity::Labels`).
pub type Labels = BTreeMap<String, String>;

/// Label carrying the pod's namespace.
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix of the namespace labels copied into a pod's security labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// Prefix of the label keys of reserved identities (`reserved:host`).
pub const RESERVED_PREFIX: &str = "reserved:";

/// Source prefixes a selector key may carry; they match the key without them.
const SOURCE_PREFIXES: [&str; 3] = ["k8s:", "any:", "container:"];

/// A selector key without its source prefix (`k8s:app` selects the label `app`).
pub fn strip_source(key: &str) -> &str {
    SOURCE_PREFIXES
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .unwrap_or(key)
}

/// A `matchExpressions` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operator {
    /// The label is present with one of the values.
    In,
    /// The label is absent, or present with none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Requirement {
    /// Label key (source prefix removed).
    pub key: String,
    /// Operator.
    pub op: Operator,
    /// Values for `In`/`NotIn`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub values: BTreeSet<String>,
}

impl Requirement {
    /// `key In (value)`: what a `matchLabels` entry means.
    pub fn equals(key: &str, value: &str) -> Self {
        Self {
            key: strip_source(key).to_string(),
            op: Operator::In,
            values: [value.to_string()].into(),
        }
    }

    /// `key Exists`.
    pub fn exists(key: &str) -> Self {
        Self {
            key: strip_source(key).to_string(),
            op: Operator::Exists,
            values: BTreeSet::new(),
        }
    }

    /// True if `labels` satisfy the requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match self.op {
            Operator::In => v.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

/// A normalized label selector: every requirement must hold. The empty selector selects
/// everything it is evaluated against.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Selector {
    /// Sorted, deduplicated requirements.
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// A selector from requirements (sorted and deduplicated here).
    pub fn new(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort();
        requirements.dedup();
        Self { requirements }
    }

    /// This selector with `extra` requirements added.
    pub fn and(&self, extra: impl IntoIterator<Item = Requirement>) -> Self {
        let mut r = self.requirements.clone();
        r.extend(extra);
        Self::new(r)
    }

    /// True if every requirement holds for `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// True if some requirement is about `key`.
    pub fn mentions(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key == key)
    }

    /// True if the selector names a reserved label (`reserved:host`), so it may select
    /// reserved identities.
    pub fn mentions_reserved(&self) -> bool {
        self.requirements
            .iter()
            .any(|r| r.key.starts_with(RESERVED_PREFIX))
    }

    /// The namespace this selector is limited to by an `io.kubernetes.pod.namespace In (ns)`
    /// requirement with a single value, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.requirements.iter().find_map(|r| {
            (r.key == POD_NAMESPACE_LABEL && r.op == Operator::In && r.values.len() == 1)
                .then(|| r.values.iter().next().map(String::as_str))
                .flatten()
        })
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| {
                let vals = || r.values.iter().cloned().collect::<Vec<_>>().join(",");
                match r.op {
                    Operator::In if r.values.len() == 1 => format!("{}={}", r.key, vals()),
                    Operator::In => format!("{} in ({})", r.key, vals()),
                    Operator::NotIn => format!("{} notin ({})", r.key, vals()),
                    Operator::Exists => r.key.clone(),
                    Operator::DoesNotExist => format!("!{}", r.key),
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn operators() {
        let l = labels(&[("app", "web"), ("tier", "")]);
        let vals = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        let req = |op, v: &[&str]| Requirement {
            key: "app".into(),
            op,
            values: vals(v),
        };
        assert!(req(Operator::In, &["web", "db"]).matches(&l));
        assert!(!req(Operator::In, &["db"]).matches(&l));
        assert!(!req(Operator::NotIn, &["web"]).matches(&l));
        assert!(req(Operator::NotIn, &["db"]).matches(&l));
        assert!(req(Operator::Exists, &[]).matches(&l));
        assert!(!req(Operator::DoesNotExist, &[]).matches(&l));
        // NotIn and DoesNotExist match when the label is absent.
        let none = Labels::new();
        assert!(req(Operator::NotIn, &["web"]).matches(&none));
        assert!(req(Operator::DoesNotExist, &[]).matches(&none));
        assert!(!req(Operator::In, &["web"]).matches(&none));
        assert!(!req(Operator::Exists, &[]).matches(&none));
    }

    #[test]
    fn normalized_and_prefix_stripped() {
        let a = Selector::new(vec![
            Requirement::equals("k8s:app", "x"),
            Requirement::exists("b"),
        ]);
        let b = Selector::new(vec![
            Requirement::exists("any:b"),
            Requirement::equals("app", "x"),
        ]);
        assert_eq!(a, b);
        assert!(a.matches(&labels(&[("app", "x"), ("b", "1")])));
        assert!(Selector::default().matches(&Labels::new()));
        let scoped = a.and([Requirement::equals(POD_NAMESPACE_LABEL, "ns1")]);
        assert_eq!(scoped.namespace(), Some("ns1"));
        assert_eq!(a.namespace(), None);
        assert_eq!(a.to_string(), "app=x,b");
    }
}
