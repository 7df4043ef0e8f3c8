//! Security labels: what an identity is made of, and how a pod's are derived.

use std::collections::BTreeMap;

use cilium_resources::{Namespace, Pod};

/// A set of security labels, `key -> value`, ordered so equal sets compare and hash equal.
pub type Labels = BTreeMap<String, String>;

/// Label carrying the pod's namespace.
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix of the labels copied from the pod's Namespace object.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// Label carrying the pod's service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// Label carrying the cluster name.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// The cluster name of this (single) cluster.
pub const CLUSTER_NAME: &str = "default";
/// Prefix of the label keys of reserved identities (`reserved:host`, ...).
pub const RESERVED_PREFIX: &str = "reserved:";
/// Label key of node-local CIDR identities; the value is the prefix (`10.0.0.0/8`).
pub const CIDR_LABEL: &str = "cidr";

/// Source prefixes a selector key may carry; they match the key without them.
pub const SOURCE_PREFIXES: [&str; 3] = ["k8s:", "any:", "container:"];

/// The security labels of `pod`: its labels, `io.kubernetes.pod.namespace=<ns>`, each label
/// `k=v` of its Namespace object (when there is one) as
/// `io.cilium.k8s.namespace.labels.<k>=<v>`, `io.cilium.k8s.policy.serviceaccount=<sa>` and
/// `io.cilium.k8s.policy.cluster=default`.
pub fn pod_security_labels(pod: &Pod, ns: Option<&Namespace>) -> Labels {
    let mut labels = namespace_security_labels(&pod.namespace, ns);
    for (k, v) in &pod.labels {
        labels.insert(k.clone(), v.clone());
    }
    if !pod.service_account.is_empty() {
        labels.insert(SERVICE_ACCOUNT_LABEL.into(), pod.service_account.clone());
    }
    labels
}

/// The namespace-derived part of a pod's security labels (what an endpoint whose Pod object
/// is unknown gets): `io.kubernetes.pod.namespace=<namespace>`, the Namespace object's labels
/// as `io.cilium.k8s.namespace.labels.<k>=<v>`, and `io.cilium.k8s.policy.cluster=default`.
pub fn namespace_security_labels(namespace: &str, ns: Option<&Namespace>) -> Labels {
    let mut labels = Labels::new();
    if let Some(ns) = ns {
        for (k, v) in &ns.labels {
            labels.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
        }
    }
    labels.insert(POD_NAMESPACE_LABEL.into(), namespace.to_string());
    labels.insert(CLUSTER_LABEL.into(), CLUSTER_NAME.into());
    labels
}

/// A selector key without its source prefix (`k8s:app` and `any:app` match the label `app`).
pub fn strip_source(key: &str) -> &str {
    SOURCE_PREFIXES
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .unwrap_or(key)
}

/// `k=v,k2=v2` (sorted), the way CLIs and logs print a label set.
pub fn format_labels(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        Pod {
            namespace: "x".into(),
            name: "a".into(),
            labels: [("pod".to_string(), "a".to_string())].into(),
            service_account: "default".into(),
            named_ports: Default::default(),
            uid: "u".into(),
        }
    }

    #[test]
    fn pod_labels_include_namespace_and_service_account() {
        let ns = Namespace {
            name: "x".into(),
            labels: [
                ("ns".to_string(), "x".to_string()),
                ("kubernetes.io/metadata.name".to_string(), "x".to_string()),
            ]
            .into(),
        };
        let l = pod_security_labels(&pod(), Some(&ns));
        assert_eq!(l["pod"], "a");
        assert_eq!(l[POD_NAMESPACE_LABEL], "x");
        assert_eq!(l["io.cilium.k8s.namespace.labels.ns"], "x");
        assert_eq!(
            l["io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"],
            "x"
        );
        assert_eq!(l[SERVICE_ACCOUNT_LABEL], "default");
        assert_eq!(l[CLUSTER_LABEL], "default");
        assert_eq!(l.len(), 6);

        let without_ns = pod_security_labels(&pod(), None);
        assert_eq!(without_ns.len(), 4);
        assert!(!without_ns.contains_key("io.cilium.k8s.namespace.labels.ns"));

        let only_ns = namespace_security_labels("x", Some(&ns));
        assert!(!only_ns.contains_key("pod"));
        assert!(!only_ns.contains_key(SERVICE_ACCOUNT_LABEL));
        assert_eq!(only_ns[POD_NAMESPACE_LABEL], "x");
    }

    #[test]
    fn source_prefixes_are_stripped() {
        assert_eq!(strip_source("k8s:app"), "app");
        assert_eq!(strip_source("any:app"), "app");
        assert_eq!(strip_source("app"), "app");
        assert_eq!(
            format_labels(
                &[
                    ("a".into(), "1".into()),
                    ("reserved:host".into(), String::new())
                ]
                .into()
            ),
            "a=1,reserved:host"
        );
    }
}
