//! Resolved policy entries to BPF map entries (normalisation) and a userspace model of
//! the datapath lookup in `bpf/lib/policy.h` (for tests and diagnostics).
//!
//! The datapath makes one LPM lookup per (identity, protocol) pair, most specific first:
//! (peer, proto), (peer, any), (any, proto), (any, any). Each lookup returns the longest
//! port block covering the port. Any deny hit drops; else the first allow hit allows;
//! else default deny. That equals [`cilium_policy::lookup`] provided that, within one
//! pair, an allow block is never returned while a shorter deny block of the same pair
//! covers the port: [`normalize`] writes such an allow block as the covering deny (the
//! longest one, the most specific deny). Two entries with the same key merge: deny beats
//! allow, and the lower cookie wins among equals (like `cilium_policy::lookup`'s tie-break).

use std::collections::BTreeMap;

use cilium_bpf::{PolicyKey, PolicyValue};
use cilium_policy::{Direction, EndpointPolicy, PolicyEntry};

/// Datapath direction code of a policy direction (1 ingress, 2 egress).
pub fn dir_code(d: Direction) -> u8 {
    match d {
        Direction::Ingress => 1,
        Direction::Egress => 2,
    }
}

/// Policy direction of a datapath direction code.
pub fn direction_of(code: u8) -> Option<Direction> {
    match code {
        1 => Some(Direction::Ingress),
        2 => Some(Direction::Egress),
        _ => None,
    }
}

/// What the reconciler needs from a row of `endpoint_policies`.
pub trait PolicySource {
    /// Endpoint id.
    fn endpoint_id(&self) -> u16;
    /// (ingress enforced, egress enforced).
    fn enforcement(&self) -> (bool, bool);
    /// The resolved entries.
    fn policy_entries(&self) -> &[PolicyEntry];
}

impl PolicySource for EndpointPolicy {
    fn endpoint_id(&self) -> u16 {
        self.endpoint_id
    }
    fn enforcement(&self) -> (bool, bool) {
        (self.ingress_enforced, self.egress_enforced)
    }
    fn policy_entries(&self) -> &[PolicyEntry] {
        &self.entries
    }
}

fn value(e: &PolicyEntry) -> PolicyValue {
    PolicyValue {
        cookie: e.cookie,
        deny: u8::from(e.deny),
        pad: [0; 3],
    }
}

/// `a` should replace `b` under the same key: deny beats allow, then the lower cookie.
fn better(a: &PolicyValue, b: &PolicyValue) -> bool {
    (a.deny, std::cmp::Reverse(a.cookie)) > (b.deny, std::cmp::Reverse(b.cookie))
}

/// The BPF map entries of one endpoint, normalised (see the module docs).
pub fn normalize(ep_id: u16, entries: &[PolicyEntry]) -> BTreeMap<PolicyKey, PolicyValue> {
    let mut map: BTreeMap<PolicyKey, PolicyValue> = BTreeMap::new();
    for e in entries {
        let key = PolicyKey::new(
            ep_id,
            dir_code(e.direction),
            e.identity,
            e.protocol,
            e.port,
            e.port_prefix_len.min(16),
        );
        let v = value(e);
        map.entry(key)
            .and_modify(|cur| {
                if better(&v, cur) {
                    *cur = v;
                }
            })
            .or_insert(v);
    }
    let denies: BTreeMap<PolicyKey, PolicyValue> = map
        .iter()
        .filter(|(_, v)| v.deny != 0)
        .map(|(k, v)| (*k, *v))
        .collect();
    if denies.is_empty() {
        return map;
    }
    for (k, v) in map.iter_mut().filter(|(_, v)| v.deny == 0) {
        for len in (0..k.port_prefix_len()).rev() {
            let ancestor = PolicyKey::new(k.ep_id, k.dir, k.identity, k.proto, k.port(), len);
            if let Some(d) = denies.get(&ancestor) {
                *v = *d;
                break;
            }
        }
    }
    map
}

/// Outcome of [`simulate`]: the verdict the datapath reports (0 allow, else minus the
/// drop reason code) and the cookie (0 for default deny).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Simulated {
    /// 0, -181 (policy-deny) or -133 (policy-denied).
    pub verdict: i32,
    /// Deciding cookie.
    pub cookie: u32,
}

/// Longest-prefix lookup of one (identity, proto) pair, as the LPM trie does it.
fn lpm(
    map: &BTreeMap<PolicyKey, PolicyValue>,
    ep: u16,
    dir: u8,
    identity: u32,
    proto: u8,
    port: u16,
) -> Option<PolicyValue> {
    (0..=16u8)
        .rev()
        .find_map(|len| map.get(&PolicyKey::new(ep, dir, identity, proto, port, len)))
        .copied()
}

/// The datapath's lookup (`policy_can_access`) over normalised entries of an ENFORCED
/// direction.
pub fn simulate(
    map: &BTreeMap<PolicyKey, PolicyValue>,
    ep: u16,
    dir: u8,
    identity: u32,
    proto: u8,
    port: u16,
) -> Simulated {
    let mut allow = None;
    for (id, p) in [(identity, proto), (identity, 0), (0, proto), (0, 0)] {
        if let Some(v) = lpm(map, ep, dir, id, p, port) {
            if v.deny != 0 {
                return Simulated {
                    verdict: -i32::from(cilium_bpf::DropReason::PolicyDeny.code()),
                    cookie: v.cookie,
                };
            }
            allow.get_or_insert(v.cookie);
        }
    }
    match allow {
        Some(cookie) => Simulated { verdict: 0, cookie },
        None => Simulated {
            verdict: -i32::from(cilium_bpf::DropReason::PolicyDenied.code()),
            cookie: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cilium_policy::Direction::{Egress, Ingress};

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

    fn agree(entries: &[PolicyEntry], dir: Direction, id: u32, proto: u8, port: u16) {
        let map = normalize(9, entries);
        let got = simulate(&map, 9, dir_code(dir), id, proto, port);
        let want = cilium_policy::lookup(entries, dir, id, proto, port);
        let want_verdict = match (want.allowed, want.deny) {
            (true, _) => 0,
            (false, true) => -181,
            (false, false) => -133,
        };
        assert_eq!(
            (got.verdict, got.cookie),
            (want_verdict, want.cookie.unwrap_or(0)),
            "id {id} proto {proto} port {port} over {entries:?}"
        );
    }

    #[test]
    fn shorter_deny_under_a_longer_allow_still_denies() {
        let entries = [
            e(Ingress, 300, 6, 80, 16, false, 1),
            e(Ingress, 300, 6, 0, 9, true, 2), // 0..=127
            e(Ingress, 300, 6, 0, 8, true, 3), // 0..=255, less specific deny
        ];
        let map = normalize(9, &entries);
        let v = map[&PolicyKey::new(9, 1, 300, 6, 80, 16)];
        assert_eq!(
            (v.deny, v.cookie),
            (1, 2),
            "allow rewritten as the longest deny"
        );
        for port in [80, 81, 127, 128, 300] {
            agree(&entries, Ingress, 300, 6, port);
        }
    }

    #[test]
    fn duplicate_keys_merge_deny_first_then_lowest_cookie() {
        let entries = [
            e(Egress, 0, 17, 53, 16, false, 7),
            e(Egress, 0, 17, 53, 16, false, 5),
            e(Egress, 5, 17, 53, 16, false, 9),
            e(Egress, 5, 17, 53, 16, true, 11),
        ];
        let map = normalize(9, &entries);
        assert_eq!(map.len(), 2);
        agree(&entries, Egress, 6, 17, 53);
        agree(&entries, Egress, 5, 17, 53);
    }

    /// Exhaustive agreement with `cilium_policy::lookup` over a pseudo-random corpus.
    #[test]
    fn datapath_lookup_agrees_with_the_policy_lookup() {
        let mut seed = 0x2545_f491_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let ids = [0u32, 300, 301];
        let protos = [0u8, 6, 17];
        for _round in 0..200 {
            let count = 1 + next(8);
            let entries: Vec<PolicyEntry> = (0..count)
                .map(|i| {
                    let len = [0u8, 12, 14, 15, 16][usize::try_from(next(5)).unwrap()];
                    let port = if len == 0 {
                        0
                    } else {
                        u16::try_from(next(16)).unwrap() + 72
                    };
                    let mask = u16::try_from((0xffff_0000_u32 >> len) & 0xffff).unwrap();
                    e(
                        if next(4) == 0 { Egress } else { Ingress },
                        ids[usize::try_from(next(3)).unwrap()],
                        protos[usize::try_from(next(3)).unwrap()],
                        port & mask,
                        len,
                        next(3) == 0,
                        u32::try_from(i).unwrap() + 1 + u32::try_from(next(3)).unwrap(),
                    )
                })
                .collect();
            for id in [300, 301, 302] {
                for proto in [6, 17, 1] {
                    for port in 64..96 {
                        agree(&entries, Ingress, id, proto, port);
                    }
                    agree(&entries, Egress, id, proto, 80);
                }
            }
        }
    }
}
