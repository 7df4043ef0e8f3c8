/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Datapath events on the cilium_events_v1 ring buffer. Every record is one
 * struct cilium_event; `version` says which layout. Version 1 was 56 bytes;
 * version 2 (64 bytes) appends the policy cookie. A later version may only
 * append fields, so decoders accept longer records.
 */
#pragma once

#include "common.h"
#include "config.h"

#define EVENT_VERSION 2

#define EVENT_TYPE_DROP 1
#define EVENT_TYPE_TRACE 4
#define EVENT_TYPE_POLICY_VERDICT 5

/* Trace observation points (subtype of EVENT_TYPE_TRACE). */
#define TRACE_TO_LXC 0   /* delivered to a pod */
#define TRACE_TO_STACK 3 /* handed to the host stack */
#define TRACE_FROM_LXC 5 /* left a pod */

struct cilium_event {
	__u8 type;    /* EVENT_TYPE_* */
	__u8 subtype; /* drop: reason; trace: observation point; verdict: 0 */
	__u8 version; /* EVENT_VERSION */
	__u8 dir;     /* METRIC_DIR_* of the endpoint that reports */
	__u16 ep_id;  /* reporting endpoint, 0 if unknown */
	__u16 dst_ep_id;
	__u32 ifindex; /* interface the program ran on */
	__u32 pkt_len;
	__u64 ts_ns; /* bpf_ktime_get_boot_ns() */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 ct_status;
	__u8 tcp_flags;
	__u8 pad;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 dst_ifindex; /* where a local delivery went, 0 otherwise */
	__s32 verdict;     /* policy verdict: 0 allow, else -reason */
	/* version 2 */
	__u32 cookie; /* policy verdicts and policy drops: deciding rule, 0 = none */
	__u32 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} cilium_events_v1 SEC(".maps");

/* Per-CPU scratch where events are assembled (keeps the BPF stack small). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cilium_event);
} cilium_scratch_v1 SEC(".maps");

static __always_inline struct cilium_event *event_scratch(__u8 type, __u8 subtype, __u8 dir,
							  const struct pkt_info *pkt, __u32 ifindex)
{
	__u32 zero = 0;
	struct cilium_event *ev = bpf_map_lookup_elem(&cilium_scratch_v1, &zero);

	if (!ev)
		return NULL;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = type;
	ev->subtype = subtype;
	ev->version = EVENT_VERSION;
	ev->dir = dir;
	ev->ifindex = ifindex;
	ev->ts_ns = now_boot_ns();
	if (pkt) {
		ev->pkt_len = pkt->len;
		ev->saddr = pkt->saddr;
		ev->daddr = pkt->daddr;
		ev->sport = pkt->sport;
		ev->dport = pkt->dport;
		ev->proto = pkt->proto;
		ev->tcp_flags = pkt->tcp_flags;
	}
	return ev;
}

static __always_inline void event_send(struct cilium_event *ev)
{
	bpf_ringbuf_output(&cilium_events_v1, ev, sizeof(*ev), 0);
}
