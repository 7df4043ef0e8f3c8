/* SPDX-License-Identifier: Apache-2.0 */
/* Per-CPU packet/byte counters by (reason, direction): cilium_metrics_v1. */
#pragma once

#include "common.h"

/* Key of cilium_metrics_v1. reason 0 = forwarded, else a drop reason. 4 bytes. */
struct metrics_key {
	__u8 reason;
	__u8 dir; /* METRIC_DIR_INGRESS / METRIC_DIR_EGRESS */
	__u16 pad;
};

/* Value of cilium_metrics_v1 (one per CPU). 16 bytes. */
struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
} cilium_metrics_v1 SEC(".maps");

static __always_inline void update_metrics(__u8 reason, __u8 dir, __u32 bytes)
{
	struct metrics_key key = { .reason = reason, .dir = dir };
	struct metrics_value *v = bpf_map_lookup_elem(&cilium_metrics_v1, &key);

	if (v) {
		v->packets += 1;
		v->bytes += bytes;
		return;
	}
	struct metrics_value fresh = { .packets = 1, .bytes = bytes };

	bpf_map_update_elem(&cilium_metrics_v1, &key, &fresh, BPF_NOEXIST);
}
