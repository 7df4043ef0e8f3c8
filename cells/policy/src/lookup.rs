//! The policy lookup the datapath implements, in userspace, for `explain` and tests.

use serde::{Deserialize, Serialize};

use crate::model::{Direction, PolicyEntry};

/// Why a lookup decided what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The direction is not enforced for the endpoint: allowed without a lookup.
    NotEnforced,
    /// An allow entry matched (and no deny).
    Allowed,
    /// A deny entry matched (drop reason `policy-deny`).
    PolicyDeny,
    /// No entry matched in an enforced direction (drop reason `policy-denied`).
    PolicyDenied,
}

impl Reason {
    /// `not-enforced`, `allowed`, `policy-deny`, `policy-denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotEnforced => "not-enforced",
            Reason::Allowed => "allowed",
            Reason::PolicyDeny => "policy-deny",
            Reason::PolicyDenied => "policy-denied",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The packet passes.
    pub allowed: bool,
    /// An explicit deny entry decided.
    pub deny: bool,
    /// Cookie of the deciding entry (none for not-enforced and default deny).
    pub cookie: Option<u32>,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// The decision when the direction is not enforced.
    pub const NOT_ENFORCED: Decision = Decision {
        allowed: true,
        deny: false,
        cookie: None,
        reason: Reason::NotEnforced,
    };
}

/// Specificity of a matching entry: exact identity before any, exact protocol before any,
/// longer port prefix first; lower cookie breaks ties (deterministic).
fn rank(e: &PolicyEntry) -> (bool, bool, u8, std::cmp::Reverse<u32>) {
    (
        e.identity != 0,
        e.protocol != 0,
        e.port_prefix_len,
        std::cmp::Reverse(e.cookie),
    )
}

/// Does `e` match a packet from/to peer `identity` with `proto`/`port` in `direction`?
pub fn entry_matches(
    e: &PolicyEntry,
    direction: Direction,
    identity: u32,
    proto: u8,
    port: u16,
) -> bool {
    e.direction == direction
        && (e.identity == identity || e.identity == 0)
        && (e.protocol == proto || e.protocol == 0)
        && e.covers_port(port)
}

/// Look a packet up in the entries of an ENFORCED direction: any matching deny drops
/// (`policy-deny`, cookie of the most specific deny); else the most specific matching allow
/// allows; else default deny (`policy-denied`). Callers check enforcement first (see
/// [`lookup_enforced`]).
pub fn lookup(
    entries: &[PolicyEntry],
    direction: Direction,
    identity: u32,
    proto: u8,
    port: u16,
) -> Decision {
    let matching = entries
        .iter()
        .filter(|e| entry_matches(e, direction, identity, proto, port));
    let mut best_deny: Option<&PolicyEntry> = None;
    let mut best_allow: Option<&PolicyEntry> = None;
    for e in matching {
        let slot = if e.deny {
            &mut best_deny
        } else {
            &mut best_allow
        };
        if slot.is_none_or(|b| rank(e) > rank(b)) {
            *slot = Some(e);
        }
    }
    if let Some(d) = best_deny {
        return Decision {
            allowed: false,
            deny: true,
            cookie: Some(d.cookie),
            reason: Reason::PolicyDeny,
        };
    }
    if let Some(a) = best_allow {
        return Decision {
            allowed: true,
            deny: false,
            cookie: Some(a.cookie),
            reason: Reason::Allowed,
        };
    }
    Decision {
        allowed: false,
        deny: false,
        cookie: None,
        reason: Reason::PolicyDenied,
    }
}

/// [`lookup`] preceded by the enforcement check: a direction that is not enforced allows
/// without a lookup.
pub fn lookup_enforced(
    enforced: bool,
    entries: &[PolicyEntry],
    direction: Direction,
    identity: u32,
    proto: u8,
    port: u16,
) -> Decision {
    if !enforced {
        return Decision::NOT_ENFORCED;
    }
    lookup(entries, direction, identity, proto, port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Direction::{Egress, Ingress};

    fn e(
        direction: Direction,
        identity: u32,
        protocol: u8,
        port: u16,
        len: u8,
        deny: bool,
        cookie: u32,
    ) -> PolicyEntry {
        PolicyEntry {
            direction,
            identity,
            protocol,
            port,
            port_prefix_len: len,
            deny,
            cookie,
        }
    }

    #[test]
    fn default_deny_when_nothing_matches() {
        let d = lookup(&[], Ingress, 300, 6, 80);
        assert!(!d.allowed && !d.deny);
        assert_eq!(d.reason, Reason::PolicyDenied);
        assert_eq!(d.cookie, None);
        assert_eq!(
            lookup_enforced(false, &[], Ingress, 300, 6, 80),
            Decision::NOT_ENFORCED
        );
    }

    #[test]
    fn matches_identity_proto_port_and_direction() {
        let entries = [e(Ingress, 300, 6, 80, 16, false, 1)];
        assert!(lookup(&entries, Ingress, 300, 6, 80).allowed);
        assert!(!lookup(&entries, Ingress, 301, 6, 80).allowed);
        assert!(!lookup(&entries, Ingress, 300, 17, 80).allowed);
        assert!(!lookup(&entries, Ingress, 300, 6, 81).allowed);
        assert!(!lookup(&entries, Egress, 300, 6, 80).allowed);
        // Wildcards.
        let any = [e(Ingress, 0, 0, 0, 0, false, 2)];
        assert!(lookup(&any, Ingress, 12345, 132, 9).allowed);
        // A range block 80-81 (prefix 15).
        let block = [e(Ingress, 0, 17, 80, 15, false, 3)];
        assert!(lookup(&block, Ingress, 5, 17, 80).allowed);
        assert!(lookup(&block, Ingress, 5, 17, 81).allowed);
        assert!(!lookup(&block, Ingress, 5, 17, 82).allowed);
        assert!(!lookup(&block, Ingress, 5, 17, 79).allowed);
    }

    #[test]
    fn deny_beats_allow_even_when_less_specific() {
        let entries = [
            e(Ingress, 300, 6, 80, 16, false, 1),
            e(Ingress, 0, 0, 0, 0, true, 2),
        ];
        let d = lookup(&entries, Ingress, 300, 6, 80);
        assert!(!d.allowed && d.deny);
        assert_eq!(d.cookie, Some(2));
        assert_eq!(d.reason, Reason::PolicyDeny);
    }

    #[test]
    fn most_specific_allow_names_the_cookie() {
        let entries = [
            e(Egress, 0, 0, 0, 0, false, 10),
            e(Egress, 0, 6, 0, 0, false, 11),
            e(Egress, 0, 6, 80, 16, false, 12),
            e(Egress, 300, 0, 0, 0, false, 13),
            e(Egress, 300, 6, 0, 0, false, 14),
            e(Egress, 300, 6, 64, 10, false, 15),
        ];
        assert_eq!(lookup(&entries, Egress, 300, 6, 80).cookie, Some(15));
        assert_eq!(lookup(&entries, Egress, 300, 6, 200).cookie, Some(14));
        assert_eq!(lookup(&entries, Egress, 300, 17, 80).cookie, Some(13));
        assert_eq!(lookup(&entries, Egress, 301, 6, 80).cookie, Some(12));
        assert_eq!(lookup(&entries, Egress, 301, 6, 81).cookie, Some(11));
        assert_eq!(lookup(&entries, Egress, 301, 17, 81).cookie, Some(10));
    }
}
