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
	__u8 flags; /* CT_KEY_F_* */
	__u16 pad;
};

/* ct_key4.flags */
#define CT_KEY_F_SERVICE (1U << 0) /* client -> frontend tuple of a load-balanced flow */

/* ct_entry4.flags */
#define CT_F_ESTABLISHED (1U << 0) /* TCP: ACK seen in both directions */
#define CT_F_CLOSING (1U << 1)     /* TCP: RST seen, or FIN both ways */
#define CT_F_SERVICE (1U << 2)     /* translated service flow: replies get reverse NAT */
#define CT_F_HAIRPIN (1U << 3)     /* service flow back to its client: source NATed to the frontend */
#define CT_F_NODEPORT (1U << 4)    /* arrived on a host device: replies leave through nat_aux */
#define CT_F_NAT_MASK (CT_F_SERVICE | CT_F_HAIRPIN | CT_F_NODEPORT)

/* Service state carried by a conntrack entry (in/out of ct_process). */
struct ct_nat {
	__u16 rev_nat_id;
	__u16 flags; /* CT_F_NAT_MASK bits */
	__u32 aux;   /* CT_F_NODEPORT: ingress ifindex; service entries: backend id */
};

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
	__u16 rev_nat_id;   /* service flows: reverse NAT index, 0 = none */
	__u16 pad;
	__u32 nat_aux;      /* CT_F_NODEPORT: ingress ifindex; service entries: backend id */
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
				      const struct dp_config *cfg, int *report, struct ct_nat *nat)
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
		.rev_nat_id = nat->rev_nat_id,
		.nat_aux = nat->aux,
		.flags = nat->flags & CT_F_NAT_MASK,
	};

	ct_update_tcp_state(&fresh);
	fresh.lifetime = now_s + ct_lifetime(&fresh, pkt->proto, cfg);
	if (bpf_map_update_elem(map, &key, &fresh, BPF_ANY) < 0)
		return -DROP_CT_MAP_FULL;
	*report = 1;
	return CT_NEW;
}

update:
	nat->rev_nat_id = e->rev_nat_id;
	nat->flags = e->flags & CT_F_NAT_MASK;
	nat->aux = e->nat_aux;
	ct_update_tcp_state(e);
	e->lifetime = now_s + ct_lifetime(e, pkt->proto, cfg);
	if (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST))
		*report = 1;
	return status;
}

/*
 * Conntrack pass. @nat: on a new entry its service state is stored; on an
 * existing one (established or reply) it is filled from the entry.
 */
static __always_inline int ct_lookup_create4_nat(const struct pkt_info *pkt, __u32 src_identity,
						 const struct dp_config *cfg, int *report,
						 struct ct_nat *nat)
{
	if (pkt->proto == IPPROTO_TCP)
		return ct_process(&cilium_ct4_v1, pkt, src_identity, cfg, report, nat);
	return ct_process(&cilium_ct_any4_v1, pkt, src_identity, cfg, report, nat);
}

static __always_inline int ct_lookup_create4(const struct pkt_info *pkt, __u32 src_identity,
					     const struct dp_config *cfg, int *report)
{
	struct ct_nat nat = {};

	return ct_lookup_create4_nat(pkt, src_identity, cfg, report, &nat);
}

static __always_inline void *ct_map_for(__u8 proto)
{
	if (proto == IPPROTO_TCP)
		return &cilium_ct4_v1;
	return &cilium_ct_any4_v1;
}

/*
 * Service entry of a per-packet load-balanced flow: key = the client's
 * tuple towards the frontend with CT_KEY_F_SERVICE, nat_aux = the selected
 * backend. Returns the backend id (0: none or expired) and refreshes it.
 */
static __always_inline __u32 ct_service_lookup4(const struct pkt_info *pkt,
						const struct dp_config *cfg)
{
	struct ct_key4 key = {
		.saddr = pkt->saddr,
		.daddr = pkt->daddr,
		.sport = pkt->sport,
		.dport = pkt->dport,
		.proto = pkt->proto,
		.flags = CT_KEY_F_SERVICE,
	};
	struct ct_entry4 *e = bpf_map_lookup_elem(ct_map_for(pkt->proto), &key);
	__u32 now_s = (__u32)(now_boot_ns() / NSEC_PER_SEC);

	if (!e || e->lifetime < now_s)
		return 0;
	__sync_fetch_and_add(&e->tx_packets, 1);
	__sync_fetch_and_add(&e->tx_bytes, pkt->len);
	e->lifetime = now_s + (pkt->proto == IPPROTO_TCP ? cfg->ct_lifetime_tcp
							 : cfg->ct_lifetime_any);
	return e->nat_aux;
}

static __always_inline int ct_service_create4(const struct pkt_info *pkt,
					      const struct dp_config *cfg, __u32 src_identity,
					      __u32 backend_id, __u16 rev_nat_id)
{
	struct ct_key4 key = {
		.saddr = pkt->saddr,
		.daddr = pkt->daddr,
		.sport = pkt->sport,
		.dport = pkt->dport,
		.proto = pkt->proto,
		.flags = CT_KEY_F_SERVICE,
	};
	__u64 now = now_boot_ns();
	__u32 now_s = (__u32)(now / NSEC_PER_SEC);
	struct ct_entry4 fresh = {
		.tx_packets = 1,
		.tx_bytes = pkt->len,
		.created_ns = now,
		.src_sec_identity = src_identity,
		.flags = CT_F_SERVICE,
		.last_report = now_s,
		.rev_nat_id = rev_nat_id,
		.nat_aux = backend_id,
	};

	/* A TCP flow may sit in SYN state for long; keep the choice for the flow's lifetime. */
	fresh.lifetime = now_s + (pkt->proto == IPPROTO_TCP ? cfg->ct_lifetime_tcp
							    : cfg->ct_lifetime_any);
	if (bpf_map_update_elem(ct_map_for(pkt->proto), &key, &fresh, BPF_ANY) < 0)
		return -DROP_CT_MAP_FULL;
	return 0;
}

/*
 * Read-only: the entry @pkt is a reply of (its reverse tuple), or NULL when
 * there is none or it expired. For hooks that must not track every packet.
 */
static __always_inline struct ct_entry4 *ct_lookup_reply4(const struct pkt_info *pkt)
{
	struct ct_key4 rev = {
		.saddr = pkt->daddr,
		.daddr = pkt->saddr,
		.sport = pkt->dport,
		.dport = pkt->sport,
		.proto = pkt->proto,
	};
	struct ct_entry4 *e = bpf_map_lookup_elem(ct_map_for(pkt->proto), &rev);
	__u32 now_s = (__u32)(now_boot_ns() / NSEC_PER_SEC);

	if (!e || e->lifetime < now_s)
		return NULL;
	return e;
}

/*
 * A reply seen by a hook that only looks entries up (ct_lookup_reply4): counted,
 * its TCP flags folded into the state and the lifetime renewed, as ct_process
 * does for replies; so a flow whose replies only pass such a hook still becomes
 * established, closes, and stays alive while only the reply side talks.
 */
static __always_inline void ct_reply_seen4(struct ct_entry4 *e, const struct pkt_info *pkt,
					   const struct dp_config *cfg)
{
	__u32 now_s = (__u32)(now_boot_ns() / NSEC_PER_SEC);

	__sync_fetch_and_add(&e->rx_packets, 1);
	__sync_fetch_and_add(&e->rx_bytes, pkt->len);
	if (pkt->proto == IPPROTO_TCP)
		e->rx_flags_seen |= pkt->tcp_flags;
	ct_update_tcp_state(e);
	e->lifetime = now_s + ct_lifetime(e, pkt->proto, cfg);
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
