/* SPDX-License-Identifier: Apache-2.0 */
/* Local endpoints (cilium_lxc_v1) and the IP -> identity cache (cilium_ipcache_v1). */
#pragma once

#include "common.h"

/* The address belongs to the host: deliver to the stack, not to a pod. */
#define ENDPOINT_F_HOST (1U << 0)

/* Key of cilium_lxc_v1: the endpoint's IPv4 address, network byte order. 4 bytes. */
struct endpoint_key {
	__be32 ip4;
};

/* Value of cilium_lxc_v1. 24 bytes. */
struct endpoint_info {
	__u32 ifindex;       /* host-side veth ifindex */
	__u16 ep_id;         /* endpoint id */
	__u16 flags;         /* ENDPOINT_F_* */
	__u8 mac[6];         /* pod (container-side) MAC */
	__u8 node_mac[6];    /* host-side veth MAC */
	__u32 sec_identity;  /* security identity of the pod */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
} cilium_lxc_v1 SEC(".maps");

/* Key of cilium_ipcache_v1 (LPM trie). prefixlen counts bits of ip4. 8 bytes. */
struct ipcache_key {
	__u32 prefixlen;
	__be32 ip4;
};

/* Value of cilium_ipcache_v1. 12 bytes. */
struct ipcache_value {
	__u32 sec_identity;
	__be32 tunnel_endpoint; /* node address for remote pods, 0 if local/none */
	__u8 flags;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 524288);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
} cilium_ipcache_v1 SEC(".maps");

static __always_inline struct endpoint_info *lookup_endpoint(__be32 ip4)
{
	struct endpoint_key key = { .ip4 = ip4 };

	return bpf_map_lookup_elem(&cilium_lxc_v1, &key);
}

/* Identity of an address: ipcache longest prefix, else WORLD. */
static __always_inline __u32 lookup_identity(__be32 ip4)
{
	struct ipcache_key key = { .prefixlen = 32, .ip4 = ip4 };
	struct ipcache_value *v = bpf_map_lookup_elem(&cilium_ipcache_v1, &key);

	return v ? v->sec_identity : IDENTITY_WORLD;
}
