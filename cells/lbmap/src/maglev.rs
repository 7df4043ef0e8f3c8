//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of `M` (prime)
//! entries filled from one permutation per backend, so every backend owns about `M / n`
//! entries and removing one backend only moves the entries it owned.
//!
//! A backend's permutation comes from two hashes of its stable id: `offset = h1 % M`,
//! `skip = h2 % (M - 1) + 1`; entry `j` of its preference list is `(offset + j * skip) % M`.
//! Backends take turns claiming their next free preferred entry until the table is full.
//! The hash is fixed (FNV-1a 64 with two seeds), so the table depends only on the set of
//! backend ids and `M`, across restarts and nodes.

/// Default table size (`--maglev-table-size`).
pub const DEFAULT_TABLE_SIZE: u32 = 16381;
/// Smallest accepted table size.
pub const MIN_TABLE_SIZE: u32 = 251;
/// Largest accepted table size.
pub const MAX_TABLE_SIZE: u32 = 131_071;

/// Whether `n` is prime.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Checks a table size: a prime in [`MIN_TABLE_SIZE`, `MAX_TABLE_SIZE`].
pub fn validate_table_size(m: u32) -> Result<(), String> {
    if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&m) {
        return Err(format!(
            "must be between {MIN_TABLE_SIZE} and {MAX_TABLE_SIZE} (e.g. 16381 or 65521)"
        ));
    }
    if !is_prime(m) {
        return Err("must be a prime number (e.g. 251, 1021, 16381, 65521, 131071)".into());
    }
    Ok(())
}

fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so nearby ids spread.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// `(offset, skip)` of a backend's permutation in a table of size `m`.
pub fn permutation(backend_id: u32, m: u32) -> (u32, u32) {
    let bytes = backend_id.to_le_bytes();
    let m64 = u64::from(m);
    let offset = fnv1a(0x5bd1_e995, &bytes) % m64;
    let skip = fnv1a(0x1b87_3593_c2b2_ae35, &bytes) % (m64 - 1) + 1;
    (
        u32::try_from(offset).unwrap_or(0),
        u32::try_from(skip).unwrap_or(1),
    )
}

/// The Maglev table (`m` backend ids) for `backends` (ids, any order; duplicates
/// ignored). Empty when there is no backend. `m` must be prime (see
/// [`validate_table_size`]).
pub fn table(backends: &[u32], m: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = backends.to_vec();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() || m < 2 {
        return Vec::new();
    }
    let perms: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let (o, s) = permutation(*id, m);
            (u64::from(o), u64::from(s))
        })
        .collect();
    let m_us = m as usize;
    let mut next = vec![0u64; ids.len()];
    let mut entry = vec![0u32; m_us];
    let mut filled = 0usize;
    let m64 = u64::from(m);
    'outer: loop {
        for (i, id) in ids.iter().enumerate() {
            let (offset, skip) = perms[i];
            let mut c = (offset + next[i] * skip) % m64;
            while entry[c as usize] != 0 {
                next[i] += 1;
                c = (offset + next[i] * skip) % m64;
            }
            entry[c as usize] = *id;
            next[i] += 1;
            filled += 1;
            if filled == m_us {
                break 'outer;
            }
        }
    }
    entry
}

fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The datapath's flow hash (`lb4_flow_hash` in `bpf/lib/lb.h`): addresses and ports as
/// they sit in the packet (network order), so `saddr`/`daddr` are `u32::from_ne_bytes` of
/// the octets and ports `port.to_be()`. The Maglev entry is `hash % m`.
pub fn flow_hash(
    saddr: std::net::Ipv4Addr,
    daddr: std::net::Ipv4Addr,
    sport: u16,
    dport: u16,
    proto: u8,
) -> u32 {
    let s = u32::from_ne_bytes(saddr.octets());
    let d = u32::from_ne_bytes(daddr.octets());
    let ports = u32::from(sport.to_be()) | (u32::from(dport.to_be()) << 16);
    let mut h = 0x9e37_79b9_u32;
    h = mix32(h ^ s);
    h = mix32(h ^ d);
    h = mix32(h ^ ports);
    mix32(h ^ u32::from(proto))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn counts(t: &[u32]) -> HashMap<u32, usize> {
        let mut c = HashMap::new();
        for id in t {
            *c.entry(*id).or_default() += 1;
        }
        c
    }

    #[test]
    fn sizes_are_validated() {
        assert!(validate_table_size(16381).is_ok());
        assert!(validate_table_size(251).is_ok());
        assert!(validate_table_size(16383).is_err(), "not prime");
        assert!(validate_table_size(7).is_err(), "too small");
        assert!(validate_table_size(262_139).is_err(), "too large");
        assert!(is_prime(65521) && !is_prime(65535) && !is_prime(1));
    }

    #[test]
    fn permutations_are_full_cycles() {
        let m = 251;
        for id in [1u32, 2, 77, 9999] {
            let (o, s) = permutation(id, m);
            assert!(o < m && (1..m).contains(&s));
            let mut seen = vec![false; m as usize];
            for j in 0..m {
                seen[((o + j * s) % m) as usize] = true;
            }
            assert!(
                seen.iter().all(|x| *x),
                "permutation of {id} visits every entry"
            );
        }
    }

    #[test]
    fn table_is_full_fair_and_deterministic() {
        let m = 16381;
        let ids: Vec<u32> = (1..=10).collect();
        let t = table(&ids, m);
        assert_eq!(t.len(), m as usize);
        assert!(t.iter().all(|id| ids.contains(id)));
        let c = counts(&t);
        let ideal = m as usize / ids.len();
        for id in &ids {
            let n = c[id];
            assert!(
                n.abs_diff(ideal) <= ideal / 10,
                "backend {id} owns {n}, ideal {ideal}"
            );
        }
        let mut shuffled = ids.clone();
        shuffled.reverse();
        assert_eq!(table(&shuffled, m), t, "independent of input order");
        assert!(table(&[], m).is_empty());
        assert_eq!(table(&[5], 251), vec![5; 251]);
    }

    #[test]
    fn removing_a_backend_moves_little_else() {
        let m = 16381;
        let ids: Vec<u32> = (1..=10).collect();
        let before = table(&ids, m);
        let after = table(&ids[..9], m);
        let moved_other = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 10 && b != a)
            .count();
        // Entries of the removed backend must move; others (almost) stay.
        assert!(
            moved_other < m as usize / 50,
            "{moved_other} entries of surviving backends moved"
        );
        // Adding one backend takes about 1/(n+1) of the table.
        let grown = table(&(1..=11).collect::<Vec<_>>(), m);
        let changed = before.iter().zip(&grown).filter(|(b, g)| b != g).count();
        let expected = m as usize / 11;
        assert!(
            changed < expected + expected / 2,
            "{changed} changed, ~{expected} expected"
        );
    }

    #[test]
    fn flow_hash_is_stable() {
        let a = flow_hash([10, 0, 0, 1].into(), [10, 96, 0, 10].into(), 40000, 80, 6);
        let b = flow_hash([10, 0, 0, 1].into(), [10, 96, 0, 10].into(), 40000, 80, 6);
        let c = flow_hash([10, 0, 0, 1].into(), [10, 96, 0, 10].into(), 40001, 80, 6);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
