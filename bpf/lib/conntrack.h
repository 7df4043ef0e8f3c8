/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Connection tracking: cilium_ct4_v1 (TCP) and cilium_ct_any4_v1 (everything
 * else). One entry per connection, keyed by the tuple of the packet that
 * created it (the "original" direction); replies match the reversed tuple.
 * Lifetimes are absolute expiry times in seconds of CLOCK_BOOTTIME
 * (bpf_ktime_get_boot_ns() / 1e9); userspace GC deletes expired entries and
 * the LRU evicts under pressure.
 */
#pragma once

#include "common.h"
#include "config.h"

/* Key of both CT maps. Addresses/ports network byte order. 16 bytes. */
struct ct_key4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport; /* ICMP echo: identifier in sport (request) or dport (reply) */
	__be16 dport;
	__u8 proto;
	__u8 flags; /* CT_KEY_F_*, 0 today */
	__u16 pad;
};

/* ct_entry4.flags */
#define CT_F_ESTABLISHED (1U << 0) /* TCP: ACK seen in both directions */
#define CT_F_CLOSING (1U << 1)     /* TCP: RST seen, or FIN both ways */

/* Value of both CT maps. 64 bytes. */
struct ct_entry4 {
	__u64 tx_packets; /* original direction */
	__u64 tx_bytes;
	__u64 rx_packets; /* reply direction */
	__u64 rx_bytes;
	__u64 created_ns; /* bpf_ktime_get_boot_ns() at creation */
	__u32 lifetime;   /* expiry, seconds of CLOCK_BOOTTIME */
	__u32 src_sec_identity;
	__u8 tx_flags_seen; /* TCP flags seen, original direction */
	__u8 rx_flags_seen; /* TCP flags seen, reply direction */
	__u16 flags;        /* CT_F_* */
	__u32 last_report;  /* seconds, last trace event (aggregation) */
	__u64 reserved;
};

#define CT_MAP_SIZE_TCP 524288
#define CT_MAP_SIZE_ANY 262144

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_MAP_SIZE_TCP);
	__type(key, struct ct_key4);
	__type(value, struct ct_entry4);
} cilium_ct4_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_MAP_SIZE_ANY);
	__type(key, struct ct_key4);
	__type(value, struct ct_entry4);
} cilium_ct_any4_v1 SEC(".maps");

/* Result of a conntrack pass (also carried in events). */
enum ct_status {
	CT_NEW = 0,
	CT_ESTABLISHED = 1, /* packet in the original direction of a known flow */
	CT_REPLY = 2,       /* packet in the reply direction */
};

/* TCP flag bits as in byte 13 of the TCP header. */
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

static __always_inline __u32 ct_lifetime(const struct ct_entry4 *e, __u8 proto,
					 const struct dp_config *cfg)
{
	if (proto != IPPROTO_TCP)
		return cfg->ct_lifetime_any;
	if (e->flags & CT_F_CLOSING)
		return cfg->ct_lifetime_tcp_close;
	if (e->flags & CT_F_ESTABLISHED)
		return cfg->ct_lifetime_tcp;
	return cfg->ct_lifetime_tcp_syn;
}

static __always_inline void ct_update_tcp_state(struct ct_entry4 *e)
{
	__u8 both = e->tx_flags_seen | e->rx_flags_seen;

	if ((e->tx_flags_seen & TCP_FLAG_ACK) && (e->rx_flags_seen & TCP_FLAG_ACK))
		e->flags |= CT_F_ESTABLISHED;
	if ((both & TCP_FLAG_RST) ||
	    ((e->tx_flags_seen & TCP_FLAG_FIN) && (e->rx_flags_seen & TCP_FLAG_FIN)))
		e->flags |= CT_F_CLOSING;
}

static __always_inline void ct_reverse(const struct ct_key4 *in, struct ct_key4 *out)
{
	out->saddr = in->daddr;
	out->daddr = in->saddr;
	out->sport = in->dport;
	out->dport = in->sport;
	out->proto = in->proto;
	out->flags = in->flags;
	out->pad = 0;
}

/*
 * Look the packet up in @map, creating an entry for a new flow.
 * Returns the status, or a negative drop reason. *entry_out points at the
 * map entry (NULL only on error). *report is set when this packet should be
 * traced under aggregation (new flow, TCP SYN/FIN/RST).
 */
static __always_inline int ct_process(void *map, const struct pkt_info *pkt, __u32 src_identity,
				      const struct dp_config *cfg, int *report)
{
	struct ct_key4 key = {
		.saddr = pkt->saddr,
		.daddr = pkt->daddr,
		.sport = pkt->sport,
		.dport = pkt->dport,
		.proto = pkt->proto,
	};
	struct ct_key4 rev = {};
	struct ct_entry4 *e;
	__u64 now = now_boot_ns();
	__u32 now_s = (__u32)(now / NSEC_PER_SEC);
	int status;

	*report = 0;
	e = bpf_map_lookup_elem(map, &key);
	if (e && e->lifetime >= now_s) {
		/* A fresh SYN on a closing connection starts a new one. */
		if ((e->flags & CT_F_CLOSING) && (pkt->tcp_flags & TCP_FLAG_SYN) &&
		    !(pkt->tcp_flags & TCP_FLAG_ACK))
			goto create;
		status = CT_ESTABLISHED;
		__sync_fetch_and_add(&e->tx_packets, 1);
		__sync_fetch_and_add(&e->tx_bytes, pkt->len);
		if (pkt->proto == IPPROTO_TCP)
			e->tx_flags_seen |= pkt->tcp_flags;
		goto update;
	}
	ct_reverse(&key, &rev);
	e = bpf_map_lookup_elem(map, &rev);
	if (e && e->lifetime >= now_s) {
		status = CT_REPLY;
		__sync_fetch_and_add(&e->rx_packets, 1);
		__sync_fetch_and_add(&e->rx_bytes, pkt->len);
		if (pkt->proto == IPPROTO_TCP)
			e->rx_flags_seen |= pkt->tcp_flags;
		goto update;
	}

create: {
	struct ct_entry4 fresh = {
		.tx_packets = 1,
		.tx_bytes = pkt->len,
		.created_ns = now,
		.src_sec_identity = src_identity,
		.tx_flags_seen = pkt->proto == IPPROTO_TCP ? pkt->tcp_flags : 0,
		.last_report = now_s,
	};

	ct_update_tcp_state(&fresh);
	fresh.lifetime = now_s + ct_lifetime(&fresh, pkt->proto, cfg);
	if (bpf_map_update_elem(map, &key, &fresh, BPF_ANY) < 0)
		return -DROP_CT_MAP_FULL;
	*report = 1;
	return CT_NEW;
}

update:
	ct_update_tcp_state(e);
	e->lifetime = now_s + ct_lifetime(e, pkt->proto, cfg);
	if (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST))
		*report = 1;
	return status;
}

static __always_inline int ct_lookup_create4(const struct pkt_info *pkt, __u32 src_identity,
					     const struct dp_config *cfg, int *report)
{
	if (pkt->proto == IPPROTO_TCP)
		return ct_process(&cilium_ct4_v1, pkt, src_identity, cfg, report);
	return ct_process(&cilium_ct_any4_v1, pkt, src_identity, cfg, report);
}

/* Removes the entry a dropped first packet created (so its "replies" get no pass). */
static __always_inline void ct_delete4(const struct pkt_info *pkt)
{
	struct ct_key4 key = {
		.saddr = pkt->saddr,
		.daddr = pkt->daddr,
		.sport = pkt->sport,
		.dport = pkt->dport,
		.proto = pkt->proto,
	};

	if (pkt->proto == IPPROTO_TCP)
		bpf_map_delete_elem(&cilium_ct4_v1, &key);
	else
		bpf_map_delete_elem(&cilium_ct_any4_v1, &key);
}
