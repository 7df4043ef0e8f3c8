/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Per-endpoint network policy:
 *   cilium_policy_v1        LPM_TRIE  {ep, dir, proto, peer identity, dport/prefix} -> verdict
 *   cilium_policy_cfg_v1    HASH      ep -> enforcement flags per direction
 *   cilium_policy_stats_v1  PERCPU_HASH cookie -> packets, bytes
 *
 * Lookup (policy_can_access): a direction that is not enforced for the endpoint
 * allows without lookup. Otherwise four LPM lookups, most specific first:
 * (peer, proto), (peer, any proto), (any peer, proto), (any, any); each finds
 * the longest port block covering the destination port. Any deny hit drops
 * (DROP_POLICY_DENY, cookie of the first deny in that order); else the first
 * allow hit allows with its cookie; else DROP_POLICY_DENIED (default deny).
 * Within one (peer, proto) pair a longer allow block can hide a shorter deny
 * block covering it: userspace writes such an allow entry as that deny
 * (cilium-policymap normalises the entries), so one lookup per pair suffices.
 */
#pragma once

#include "common.h"

/* Bits of the exact part of the key data: ep_id, dir, proto, identity. */
#define POLICY_KEY_EXACT_BITS 64
/* Full prefix of a lookup key: exact part + 16 port bits. */
#define POLICY_KEY_FULL_BITS (POLICY_KEY_EXACT_BITS + 16)

#define POLICY_MAP_SIZE 524288
#define POLICY_CFG_MAP_SIZE 65536
#define POLICY_STATS_MAP_SIZE 65536

/*
 * Key of cilium_policy_v1 (LPM trie). 16 bytes. prefixlen = 64 + port prefix
 * bits (0..16). ep_id and identity host order (matched exactly), dport network
 * order (the LPM part); ICMP: the type as a 16-bit port. pad is never part of
 * a prefix; keep it 0.
 */
struct policy_key {
	__u32 prefixlen;
	__u16 ep_id;
	__u8 dir;       /* METRIC_DIR_INGRESS / METRIC_DIR_EGRESS */
	__u8 proto;     /* 0 = any protocol */
	__u32 identity; /* peer identity, 0 = any peer */
	__be16 dport;
	__u16 pad;
};

/* Value of cilium_policy_v1. 8 bytes. */
struct policy_entry {
	__u32 cookie; /* names the rule (cilium_policy::Repository::rule_by_cookie) */
	__u8 deny;    /* 1 = deny, 0 = allow */
	__u8 pad[3];
};

/* Key of cilium_policy_cfg_v1. 4 bytes. */
struct policy_cfg_key {
	__u16 ep_id;
	__u16 pad;
};

/* Value of cilium_policy_cfg_v1. 8 bytes. No entry = nothing enforced. */
struct policy_cfg {
	__u8 ingress_enforced;
	__u8 egress_enforced;
	__u16 pad;
	__u32 revision; /* bumped by the agent on every write (debugging) */
};

/* Value of cilium_policy_stats_v1 (per CPU). 16 bytes. */
struct policy_stats {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, POLICY_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
} cilium_policy_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, POLICY_CFG_MAP_SIZE);
	__type(key, struct policy_cfg_key);
	__type(value, struct policy_cfg);
} cilium_policy_cfg_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, POLICY_STATS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct policy_stats);
} cilium_policy_stats_v1 SEC(".maps");

/* Outcome of a policy check. */
struct policy_result {
	int verdict;   /* 0 allow, -DROP_POLICY_DENY, -DROP_POLICY_DENIED */
	__u32 cookie;  /* deciding entry, 0 for default deny / not enforced */
	int enforced;  /* 0: direction not enforced, no lookup was made */
};

static __always_inline void policy_count(__u32 cookie, __u32 bytes)
{
	struct policy_stats *s;

	if (!cookie)
		return;
	s = bpf_map_lookup_elem(&cilium_policy_stats_v1, &cookie);
	if (s) {
		s->packets += 1;
		s->bytes += bytes;
		return;
	}
	struct policy_stats fresh = { .packets = 1, .bytes = bytes };

	bpf_map_update_elem(&cilium_policy_stats_v1, &cookie, &fresh, BPF_NOEXIST);
}

/*
 * Policy of endpoint @ep_id in direction @dir for a packet to/from @peer.
 * Counts the packet against the deciding cookie.
 */
static __always_inline void policy_can_access(__u16 ep_id, __u8 dir, __u32 peer,
					      const struct pkt_info *pkt,
					      struct policy_result *res)
{
	struct policy_cfg_key ck = { .ep_id = ep_id };
	struct policy_cfg *cfg;
	struct policy_key key = {};
	struct policy_entry *e;
	__u32 allow_cookie = 0;
	int allowed = 0, i;

	res->verdict = 0;
	res->cookie = 0;
	res->enforced = 0;
	cfg = bpf_map_lookup_elem(&cilium_policy_cfg_v1, &ck);
	if (!cfg)
		return;
	if (!(dir == METRIC_DIR_INGRESS ? cfg->ingress_enforced : cfg->egress_enforced))
		return;
	res->enforced = 1;

	key.prefixlen = POLICY_KEY_FULL_BITS;
	key.ep_id = ep_id;
	key.dir = dir;
	key.dport = pkt->proto == IPPROTO_ICMP ? bpf_htons((__u16)pkt->icmp_type) : pkt->dport;

#pragma unroll
	for (i = 0; i < 4; i++) {
		key.identity = i < 2 ? peer : 0;
		key.proto = (i & 1) ? 0 : pkt->proto;
		e = bpf_map_lookup_elem(&cilium_policy_v1, &key);
		if (!e)
			continue;
		if (e->deny) {
			res->verdict = -DROP_POLICY_DENY;
			res->cookie = e->cookie;
			policy_count(e->cookie, pkt->len);
			return;
		}
		if (!allowed) {
			allowed = 1;
			allow_cookie = e->cookie;
		}
	}
	if (allowed) {
		res->cookie = allow_cookie;
		policy_count(allow_cookie, pkt->len);
		return;
	}
	res->verdict = -DROP_POLICY_DENIED;
}
