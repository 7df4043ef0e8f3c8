//! The policy cases of the conformance e2e test, as data: a case is a name and a list of steps;
//! each step applies or deletes a YAML document set (templates: `{{ip:NS/POD}}` is that pod's
//! address, `{{podcidr}}` the agent's pod range). The expected matrices come from the oracle;
//! adding a case is adding one entry.

/// One step of a case.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// `ciliumctl apply -f -` of the YAML.
    Apply(&'static str),
    /// `ciliumctl delete -f -` of the YAML.
    Delete(&'static str),
}

/// A named list of steps; after the last step every policy the case applied is deleted and the
/// model's Namespace and Pod objects are re-applied as they were.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Unique name.
    pub name: &'static str,
    /// What the case covers (the wave3 §2 rule).
    pub covers: &'static str,
    /// Steps, each followed by the full matrix check.
    pub steps: &'static [Step],
}

use Step::{Apply, Delete};

const DENY_ALL_INGRESS_X: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

const ALLOW_ALL_INGRESS_X: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-ingress, namespace: x}
spec:
  podSelector: {}
  ingress:
  - {}
";

const ALLOW_XA_FROM_B: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-from, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
";

const ALLOW_XA_FROM_C: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-from, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: c}}
";

const ALLOW_XA_FROM_NS_Z: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: xa-from-z, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: z}}
";

const X_FROM_TEAM_BLUE: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team-blue, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: blue}}
";

const NS_Y_BLUE: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: y
  labels: {ns: y, kubernetes.io/metadata.name: y, team: blue}
";

const NS_Y_PLAIN: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: y
  labels: {ns: y, kubernetes.io/metadata.name: y}
";

const XA_FROM_ROLE_CLIENT: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-clients, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchLabels: {role: client}}
";

const POD_ZC_CLIENT: &str = "
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: z, labels: {pod: c, role: client}}
spec:
  containers:
  - name: server
    ports:
    - {name: serve-80-tcp, containerPort: 80, protocol: TCP}
    - {name: serve-81-tcp, containerPort: 81, protocol: TCP}
    - {name: serve-80-udp, containerPort: 80, protocol: UDP}
    - {name: serve-81-udp, containerPort: 81, protocol: UDP}
";

const POD_ZC_PLAIN: &str = "
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: z, labels: {pod: c}}
spec:
  containers:
  - name: server
    ports:
    - {name: serve-80-tcp, containerPort: 80, protocol: TCP}
    - {name: serve-81-tcp, containerPort: 81, protocol: TCP}
    - {name: serve-80-udp, containerPort: 80, protocol: UDP}
    - {name: serve-81-udp, containerPort: 81, protocol: UDP}
";

const LOCKED_DENY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: locked, namespace: x}
spec:
  podSelector: {matchLabels: {role: locked}}
  policyTypes: [Ingress, Egress]
";

const POD_XB_LOCKED: &str = "
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b, role: locked}}
spec:
  containers:
  - name: server
    ports:
    - {name: serve-80-tcp, containerPort: 80, protocol: TCP}
    - {name: serve-81-tcp, containerPort: 81, protocol: TCP}
    - {name: serve-80-udp, containerPort: 80, protocol: UDP}
    - {name: serve-81-udp, containerPort: 81, protocol: UDP}
";

const POD_XB_PLAIN: &str = "
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec:
  containers:
  - name: server
    ports:
    - {name: serve-80-tcp, containerPort: 80, protocol: TCP}
    - {name: serve-81-tcp, containerPort: 81, protocol: TCP}
    - {name: serve-80-udp, containerPort: 80, protocol: UDP}
    - {name: serve-81-udp, containerPort: 81, protocol: UDP}
";

const DENY_ALL_EVERYWHERE: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: y}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: z}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
";

const Y_INGRESS_FROM_X: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-x, namespace: y}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: x}}
";

const X_EGRESS_TO_Z: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: z}}
";

const X_EGRESS_TO_Y: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: y}}
";

const CNP_XA_FROM_B_NO_DEFAULT_DENY: &str = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: xa-from-b-additive, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints:
    - matchLabels: {pod: b}
";

/// Every case.
pub const CASES: &[Case] = &[
    Case {
        name: "np-deny-all-ingress-namespace",
        covers: "empty podSelector, policyTypes Ingress",
        steps: &[Apply(DENY_ALL_INGRESS_X)],
    },
    Case {
        name: "np-allow-all-ingress-adds-to-deny-all",
        covers: "empty ingress rule allows all, policies add up, delete",
        steps: &[
            Apply(DENY_ALL_INGRESS_X),
            Apply(ALLOW_ALL_INGRESS_X),
            Delete(ALLOW_ALL_INGRESS_X),
        ],
    },
    Case {
        name: "np-deny-all-egress-namespace",
        covers: "policyTypes Egress without rules",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
",
        )],
    },
    Case {
        name: "np-deny-both-directions-one-pod",
        covers: "policyTypes Ingress+Egress on one pod",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-a, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
",
        )],
    },
    Case {
        name: "np-missing-policytypes-with-egress-rules",
        covers: "policyTypes missing: Ingress plus Egress because egress rules exist",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: implicit-types, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress:
  - to:
    - podSelector: {matchLabels: {pod: b}}
",
        )],
    },
    Case {
        name: "np-egress-type-only-ignores-ingress-rules",
        covers: "policyTypes [Egress] with ingress rules present",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: y}}
",
        )],
    },
    Case {
        name: "np-same-namespace-only",
        covers: "empty podSelector peer = the policy's namespace",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same-ns, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {}
",
        )],
    },
    Case {
        name: "np-pod-selector-peer",
        covers: "podSelector peer alone",
        steps: &[Apply(ALLOW_XA_FROM_B)],
    },
    Case {
        name: "np-namespace-selector-alone",
        covers: "namespaceSelector peer alone",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
",
        )],
    },
    Case {
        name: "np-empty-namespace-selector",
        covers: "empty namespaceSelector = every namespace",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-all-ns, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchLabels: {pod: c}}
",
        )],
    },
    Case {
        name: "np-namespace-and-pod-selector",
        covers: "namespaceSelector with podSelector in one peer (AND)",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: y-b-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
",
        )],
    },
    Case {
        name: "np-namespace-or-pod-selector",
        covers: "two peers (OR)",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: y-or-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}
",
        )],
    },
    Case {
        name: "np-match-expressions-in-notin",
        covers: "matchExpressions In / NotIn on pod and namespace selectors",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: exprs, namespace: x}
spec:
  podSelector:
    matchExpressions: [{key: pod, operator: NotIn, values: [c]}]
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: NotIn, values: [x]}]
      podSelector:
        matchExpressions: [{key: pod, operator: In, values: [b, c]}]
",
        )],
    },
    Case {
        name: "np-match-expressions-exists",
        covers: "matchExpressions Exists / DoesNotExist",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: exists, namespace: y}
spec:
  podSelector:
    matchExpressions: [{key: role, operator: DoesNotExist}]
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [z]}]
      podSelector:
        matchExpressions: [{key: pod, operator: Exists}]
",
        )],
    },
    Case {
        name: "np-port-without-protocol",
        covers: "ports without protocol = TCP",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: port-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports:
    - port: 81
",
        )],
    },
    Case {
        name: "np-port-without-port",
        covers: "ports with a protocol and no port = every port",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: all-udp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports:
    - protocol: UDP
",
        )],
    },
    Case {
        name: "np-endport-ranges",
        covers: "endPort ranges (TCP and UDP)",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ranges, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {}
    ports:
    - {protocol: TCP, port: 81, endPort: 1000}
    - {protocol: UDP, port: 70, endPort: 80}
",
        )],
    },
    Case {
        name: "np-named-port-ingress",
        covers: "named port (TCP, protocol defaulted) resolved on the destination",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named-tcp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports:
    - port: serve-81-tcp
",
        )],
    },
    Case {
        name: "np-named-port-udp",
        covers: "named UDP port",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named-udp, namespace: z}
spec:
  podSelector: {}
  ingress:
  - ports:
    - {port: serve-80-udp, protocol: UDP}
",
        )],
    },
    Case {
        name: "np-named-port-egress",
        covers: "named port in an egress rule resolves on the peer",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - ports:
    - {port: serve-81-udp, protocol: UDP}
    - {port: serve-80-tcp}
",
        )],
    },
    Case {
        name: "np-udp-only",
        covers: "UDP port rule",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: udp-80, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from:
    - namespaceSelector: {}
    ports:
    - {protocol: UDP, port: 80}
",
        )],
    },
    Case {
        name: "np-sctp-only-blocks-tcp-udp",
        covers: "SCTP port rule (no SCTP probe: TCP and UDP must be blocked)",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sctp-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports:
    - {protocol: SCTP, port: 80}
",
        )],
    },
    Case {
        name: "np-ipblock-except-pod-ips",
        covers: "ipBlock over the pod range with except naming pod IPs",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ipblock, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - ipBlock:
        cidr: '{{podcidr}}'
        except: ['{{ip:y/b}}/32', '{{ip:z/c}}/32']
",
        )],
    },
    Case {
        name: "np-ipblock-egress-single-pod",
        covers: "egress ipBlock /32 of a pod",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ipblock-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: '{{ip:y/a}}/32'}
    ports:
    - {port: 80, protocol: TCP}
    - {port: 81, protocol: UDP}
",
        )],
    },
    Case {
        name: "np-additive-policies",
        covers: "two policies on one pod add up; deleting one keeps the other",
        steps: &[
            Apply(ALLOW_XA_FROM_B),
            Apply(ALLOW_XA_FROM_NS_Z),
            Delete(ALLOW_XA_FROM_B),
        ],
    },
    Case {
        name: "np-ingress-and-egress-both-required",
        covers: "a flow needs the source's egress and the destination's ingress",
        steps: &[
            Apply(Y_INGRESS_FROM_X),
            Apply(X_EGRESS_TO_Z),
            Apply(X_EGRESS_TO_Y),
        ],
    },
    Case {
        name: "np-policy-update",
        covers: "re-applying a policy under the same name replaces it",
        steps: &[Apply(ALLOW_XA_FROM_B), Apply(ALLOW_XA_FROM_C)],
    },
    Case {
        name: "np-namespace-relabel",
        covers: "live re-evaluation on namespace label change",
        steps: &[Apply(X_FROM_TEAM_BLUE), Apply(NS_Y_BLUE), Apply(NS_Y_PLAIN)],
    },
    Case {
        name: "np-peer-pod-relabel",
        covers: "live re-evaluation when a peer pod's labels change",
        steps: &[
            Apply(XA_FROM_ROLE_CLIENT),
            Apply(POD_ZC_CLIENT),
            Apply(POD_ZC_PLAIN),
        ],
    },
    Case {
        name: "np-target-pod-relabel",
        covers: "live re-evaluation when the selected pod's labels change",
        steps: &[
            Apply(LOCKED_DENY),
            Apply(POD_XB_LOCKED),
            Apply(POD_XB_PLAIN),
        ],
    },
    Case {
        name: "np-delete-restores-full-connectivity",
        covers: "deny all everywhere, then delete: full connectivity back",
        steps: &[Apply(DENY_ALL_EVERYWHERE), Delete(DENY_ALL_EVERYWHERE)],
    },
    Case {
        name: "np-selector-matching-nothing",
        covers: "a podSelector that selects no pod changes nothing",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: nobody, namespace: x}
spec:
  podSelector: {matchLabels: {pod: nobody}}
  policyTypes: [Ingress, Egress]
",
        )],
    },
    Case {
        name: "np-egress-namespace-and-ports",
        covers: "egress to a namespace on some ports",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-y-ports, namespace: z}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: y}}
    ports:
    - {port: 80}
    - {port: 81, protocol: UDP}
",
        )],
    },
    Case {
        name: "replies-pass-under-default-deny-ingress",
        covers: "x/a may connect out while nothing may connect in: the replies come back",
        steps: &[Apply(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-no-ingress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
",
        )],
    },
    Case {
        name: "cnp-endpoints-namespace-scoped",
        covers: "CNP fromEndpoints scoped to the policy's namespace",
        steps: &[Apply(
            "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: scoped, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
  - fromEndpoints:
    - matchLabels: {'k8s:pod': b}
",
        )],
    },
    Case {
        name: "cnp-endpoints-naming-a-namespace",
        covers: "CNP fromEndpoints naming io.kubernetes.pod.namespace crosses namespaces",
        steps: &[Apply(
            "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cross-ns, namespace: x}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints:
    - matchLabels: {'k8s:io.kubernetes.pod.namespace': y}
    - matchLabels: {pod: c}
",
        )],
    },
    Case {
        name: "cnp-match-expressions-namespace",
        covers: "CNP matchExpressions on the namespace label and pod label",
        steps: &[Apply(
            "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: exprs, namespace: z}
spec:
  endpointSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
  ingress:
  - fromEndpoints:
    - matchExpressions:
      - {key: 'k8s:io.kubernetes.pod.namespace', operator: In, values: [x, y]}
      - {key: pod, operator: NotIn, values: [a]}
",
        )],
    },
    Case {
        name: "cnp-entities-cluster-and-world",
        covers: "fromEntities cluster allows pods; toEntities world/host do not cover pods",
        steps: &[Apply(
            "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: entities, namespace: y}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
  - fromEntities: [cluster]
  egress:
  - toEntities: [world, host]
",
        )],
    },
    Case {
        name: "cnp-ingress-deny-beats-allow-all",
        covers: "fromEntities all + ingressDeny: deny wins",
        steps: &[Apply(
            "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-y, namespace: x}
spec:
  endpointSelector: {}
  ingress:
  - fromEntities: [all]
  ingressDeny:
  - fromEndpoints:
    - matchLabels: {'k8s:io.kubernetes.pod.namespace': y}
",
        )],
    },
    Case {
        name: "cnp-egress-deny-port",
        covers: "egressDeny on a port beats toEntities all",
        steps: &[Apply(
            "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-81-tcp, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  egress:
  - toEntities: [all]
  egressDeny:
  - toPorts:
    - ports: [{port: '81', protocol: TCP}]
",
        )],
    },
    Case {
        name: "cnp-ports-protocol-any",
        covers: "toPorts protocol ANY, no L3 peer = every peer",
        steps: &[Apply(
            "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: any-80, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: b}}
  ingress:
  - toPorts:
    - ports: [{port: '80', protocol: ANY}]
",
        )],
    },
    Case {
        name: "cnp-port-range",
        covers: "toPorts port + endPort range",
        steps: &[Apply(
            "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: range, namespace: y}
spec:
  endpointSelector: {}
  ingress:
  - fromEntities: [cluster]
    toPorts:
    - ports: [{port: '81', endPort: 90, protocol: TCP}, {port: '79', endPort: 80, protocol: UDP}]
",
        )],
    },
    Case {
        name: "cnp-cidrset-except-pod-ip",
        covers: "fromCIDRSet with except covering a pod IP",
        steps: &[Apply(
            "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidrset, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
  - fromCIDRSet:
    - cidr: '{{podcidr}}'
      except: ['{{ip:x/b}}/32', '{{ip:y/c}}/32']
",
        )],
    },
    Case {
        name: "cnp-to-cidr",
        covers: "toCIDR /32s of pods",
        steps: &[Apply(
            "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-cidr, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  egress:
  - toCIDR: ['{{ip:z/a}}/32', '{{ip:z/b}}/32']
",
        )],
    },
    Case {
        name: "cnp-enable-default-deny-false",
        covers: "enableDefaultDeny ingress false: additive only, until another policy isolates",
        steps: &[
            Apply(CNP_XA_FROM_B_NO_DEFAULT_DENY),
            Apply(DENY_ALL_INGRESS_X),
        ],
    },
    Case {
        name: "cnp-deny-beats-np-allow",
        covers: "a CNP ingressDeny beats a NetworkPolicy allow-all",
        steps: &[
            Apply(ALLOW_ALL_INGRESS_X),
            Apply(
                "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-from-z, namespace: x}
spec:
  endpointSelector: {}
  ingressDeny:
  - fromEndpoints:
    - matchLabels: {'k8s:io.kubernetes.pod.namespace': z}
",
            ),
        ],
    },
    Case {
        name: "ccnp-clusterwide-namespace-labels",
        covers: "CiliumClusterwideNetworkPolicy selecting in every namespace by namespace label",
        steps: &[Apply(
            "
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: c-from-ns-x}
spec:
  endpointSelector: {matchLabels: {pod: c}}
  ingress:
  - fromEndpoints:
    - matchLabels: {io.cilium.k8s.namespace.labels.ns: x}
",
        )],
    },
];
