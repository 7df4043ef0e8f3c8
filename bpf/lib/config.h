/* SPDX-License-Identifier: Apache-2.0 */
/* Runtime configuration written by the agent into cilium_config_v1[0]. */
#pragma once

#include "common.h"

/* Event switches in dp_config.event_flags. */
#define EVENT_F_DROP (1U << 0)
#define EVENT_F_TRACE (1U << 1)
#define EVENT_F_POLICY_VERDICT (1U << 2)
/* Trace every packet instead of only new connections and TCP SYN/FIN/RST. */
#define EVENT_F_TRACE_ALL (1U << 3)

/* Defaults used when the config map has not been written yet. */
#define CT_LIFETIME_TCP_SYN_DEFAULT 60
#define CT_LIFETIME_TCP_DEFAULT 21600
#define CT_LIFETIME_TCP_CLOSE_DEFAULT 10
#define CT_LIFETIME_ANY_DEFAULT 60
#define EVENT_FLAGS_DEFAULT (EVENT_F_DROP | EVENT_F_TRACE | EVENT_F_POLICY_VERDICT)

/* Value of cilium_config_v1 (ARRAY, one entry, key u32 0). 24 bytes. */
struct dp_config {
	__u32 ct_lifetime_tcp_syn;   /* seconds, TCP until both sides ACKed */
	__u32 ct_lifetime_tcp;       /* seconds, established TCP */
	__u32 ct_lifetime_tcp_close; /* seconds, after RST or FIN both ways */
	__u32 ct_lifetime_any;       /* seconds, non-TCP */
	__u32 event_flags;           /* EVENT_F_* */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dp_config);
} cilium_config_v1 SEC(".maps");

static __always_inline void load_config(struct dp_config *cfg)
{
	__u32 zero = 0;
	struct dp_config *c = bpf_map_lookup_elem(&cilium_config_v1, &zero);

	if (c && c->ct_lifetime_tcp) {
		*cfg = *c;
		return;
	}
	cfg->ct_lifetime_tcp_syn = CT_LIFETIME_TCP_SYN_DEFAULT;
	cfg->ct_lifetime_tcp = CT_LIFETIME_TCP_DEFAULT;
	cfg->ct_lifetime_tcp_close = CT_LIFETIME_TCP_CLOSE_DEFAULT;
	cfg->ct_lifetime_any = CT_LIFETIME_ANY_DEFAULT;
	cfg->event_flags = EVENT_FLAGS_DEFAULT;
	cfg->pad = 0;
}
