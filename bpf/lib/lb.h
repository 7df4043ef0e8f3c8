/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Service load balancing: maps and backend selection shared by the socket
 * hooks (cgroup connect4/sendmsg4/recvmsg4/getpeername4), the per-packet DNAT
 * at from-container and NodePort at the host devices.
 *
 *   cilium_lb4_services_v1  HASH  {vip, dport, proto, slot, scope} -> slot 0:
 *                                  header (count, rev_nat id, flags, algorithm,
 *                                  affinity timeout, Maglev size); slot n>0:
 *                                  backend id. Scope LB_SCOPE_INT holds a second
 *                                  set for clients on this node (two scopes).
 *   cilium_lb4_backends_v1  HASH  backend id -> {addr, port, proto, state}
 *   cilium_lb4_reverse_nat_v1 HASH rev_nat id -> {vip, port}
 *   cilium_lb4_affinity_v1  LRU   {client ip | netns cookie, rev_nat id} -> {backend, last used}
 *   cilium_lb4_maglev_v1    HASH_OF_MAPS rev_nat id -> ARRAY[M] of backend ids
 *   cilium_lb4_sk_v1        LRU   {socket cookie, backend addr, port} -> {vip, port, rev_nat}
 *                                  (reverse translation for recvmsg4/getpeername4)
 *   cilium_lb4_sk_fwd_v1    LRU   {socket cookie, vip, port, proto} -> backend id
 *                                  (unconnected UDP: one backend per socket and frontend)
 *   cilium_lb4_source_range_v1 LPM_TRIE {rev_nat id, client prefix} -> 0
 *                                  (loadBalancerSourceRanges of LoadBalancer
 *                                  frontends flagged SVC_F_SRC_RANGE)
 *   cilium_lb_config_v1     ARRAY one lb_config (host netns cookie, node address)
 *
 * Write order (userspace, cilium-lbmap): backends, slots 1..n, Maglev table,
 * reverse NAT, source ranges, the internal scope's header, then the external
 * slot-0 header (ranges a frontend no longer has, and an internal scope it no
 * longer has, are deleted after it); the datapath only reads `count` slots
 * named by a header, and follows SVC_F_TWO_SCOPES only to an internal header
 * that exists, so a half-written service is never visible.
 */
#pragma once

#include "common.h"

#define LB_SERVICES_MAP_SIZE 262144 /* 10k services x (1 header + 10 backends) and room */
#define LB_BACKENDS_MAP_SIZE 262144
#define LB_REVNAT_MAP_SIZE 65536
#define LB_AFFINITY_MAP_SIZE 65536
#define LB_MAGLEV_MAP_SIZE 4096
#define LB_SK_MAP_SIZE 262144
#define LB_SRC_RANGE_MAP_SIZE 65536

/* lb4_service.flags (slot 0) */
#define SVC_F_AFFINITY (1U << 0)    /* sessionAffinity ClientIP */
#define SVC_F_NO_BACKENDS (1U << 1) /* refuse connections at once */
#define SVC_F_EXTERNAL (1U << 2)    /* NodePort / ExternalIP / LoadBalancer frontend */
#define SVC_F_SRC_RANGE (1U << 3)   /* only clients in cilium_lb4_source_range_v1 */
#define SVC_F_SRC_RANGE_DENY (1U << 4) /* with SVC_F_SRC_RANGE: all but those clients */
/* externalTrafficPolicy: Local with backends elsewhere: the header and slots of
 * scope LB_SCOPE_EXT hold the local backends (outside clients), those of scope
 * LB_SCOPE_INT every backend (pods and host processes of this node). */
#define SVC_F_TWO_SCOPES (1U << 5)

/* lb4_key.scope */
#define LB_SCOPE_EXT 0
#define LB_SCOPE_INT 1

/* lb4_service.algorithm */
#define LB_ALG_RANDOM 0
#define LB_ALG_MAGLEV 1

/* lb4_backend.state */
#define BACKEND_STATE_ACTIVE 0
#define BACKEND_STATE_TERMINATING 1

/* Key of cilium_lb4_services_v1. 12 bytes. */
struct lb4_key {
	__be32 address; /* frontend address */
	__be16 dport;   /* frontend port */
	__u16 slot;     /* 0 = header, 1..count = backend slots */
	__u8 proto;     /* IPPROTO_TCP / UDP / SCTP */
	__u8 scope;     /* LB_SCOPE_* */
	__u8 pad[2];
};

/* Value of cilium_lb4_services_v1. 16 bytes. */
struct lb4_service {
	__u32 backend_id;       /* slot >= 1: backend id; slot 0: Maglev table size */
	__u32 affinity_timeout; /* slot 0: seconds, 0 = no affinity */
	__u16 count;            /* slot 0: number of backend slots */
	__u16 rev_nat_id;       /* service id (reverse NAT index) */
	__u8 flags;             /* SVC_F_* */
	__u8 algorithm;         /* LB_ALG_* */
	__u16 pad;
};

/* Value of cilium_lb4_backends_v1 (key: __u32 backend id). 8 bytes. */
struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 state; /* BACKEND_STATE_* (informative; userspace orders the slots) */
};

/* Key of cilium_lb4_reverse_nat_v1. 4 bytes. */
struct lb4_reverse_nat_key {
	__u16 rev_nat_id;
	__u16 pad;
};

/* Value of cilium_lb4_reverse_nat_v1. 8 bytes. */
struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

/* Key of cilium_lb4_affinity_v1. 16 bytes. */
struct lb4_affinity_key {
	__u64 client;     /* client IPv4 (network order, zero-extended) or netns cookie */
	__u16 rev_nat_id;
	__u8 netns;       /* 1: client is a netns cookie (socket layer) */
	__u8 pad[5];
};

/* Value of cilium_lb4_affinity_v1. 8 bytes. */
struct lb4_affinity_val {
	__u32 backend_id;
	__u32 last_used; /* seconds of CLOCK_BOOTTIME */
};

/* Key of cilium_lb4_sk_v1. 16 bytes. */
struct lb4_sk_key {
	__u64 cookie; /* socket cookie */
	__be32 address; /* backend address */
	__be16 port;    /* backend port */
	__u16 pad;
};

/* Value of cilium_lb4_sk_v1. 8 bytes. */
struct lb4_sk_val {
	__be32 address; /* frontend address */
	__be16 port;    /* frontend port */
	__u16 rev_nat_id;
};

/* Key of cilium_lb4_sk_fwd_v1. 16 bytes. */
struct lb4_sk_fwd_key {
	__u64 cookie;
	__be32 address; /* frontend */
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* Value of cilium_lb4_sk_fwd_v1. 8 bytes. */
struct lb4_sk_fwd_val {
	__u32 backend_id;
	__u16 rev_nat_id;
	__u16 pad;
};

/*
 * Key of cilium_lb4_source_range_v1 (LPM trie). 12 bytes. prefixlen = 32
 * (rev_nat_id and pad, always matched) + the client prefix length.
 */
struct lb4_src_range_key {
	__u32 prefixlen;
	__u16 rev_nat_id;
	__u16 pad;
	__be32 addr; /* client prefix, host bits zero */
};

#define LB_SRC_RANGE_STATIC_PREFIX 32

/* Value of cilium_lb_config_v1[0]. 16 bytes. */
struct lb_config {
	__u64 host_netns_cookie; /* external frontends are socket-translated only here */
	__u32 flags;             /* reserved */
	__be32 node_addr;        /* source-range check of unbound host sockets */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_SERVICES_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
} cilium_lb4_services_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_BACKENDS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct lb4_backend);
} cilium_lb4_backends_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_REVNAT_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb4_reverse_nat_key);
	__type(value, struct lb4_reverse_nat);
} cilium_lb4_reverse_nat_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_AFFINITY_MAP_SIZE);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb4_affinity_val);
} cilium_lb4_affinity_v1 SEC(".maps");

/* Inner map template: userspace creates one ARRAY of M backend ids per service. */
struct lb4_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, LB_MAGLEV_MAP_SIZE);
	__type(key, struct lb4_reverse_nat_key);
	__array(values, struct lb4_maglev_inner);
} cilium_lb4_maglev_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_SK_MAP_SIZE);
	__type(key, struct lb4_sk_key);
	__type(value, struct lb4_sk_val);
} cilium_lb4_sk_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_SK_MAP_SIZE);
	__type(key, struct lb4_sk_fwd_key);
	__type(value, struct lb4_sk_fwd_val);
} cilium_lb4_sk_fwd_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, LB_SRC_RANGE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb4_src_range_key);
	__type(value, __u32);
} cilium_lb4_source_range_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
} cilium_lb_config_v1 SEC(".maps");

static __always_inline struct lb4_service *lb4_lookup_service(__be32 addr, __be16 port,
							      __u8 proto)
{
	struct lb4_key key = { .address = addr, .dport = port, .proto = proto };

	return bpf_map_lookup_elem(&cilium_lb4_services_v1, &key);
}

/*
 * loadBalancerSourceRanges: true when @svc has none, or @saddr is in one of
 * its ranges (one LPM lookup under the frontend's rev_nat id); with
 * SVC_F_SRC_RANGE_DENY (service.cilium.io/src-ranges-policy: deny) the ranges
 * are the clients refused, so true when @saddr is in none of them.
 */
static __always_inline int lb4_src_range_ok(const struct lb4_service *svc, __be32 saddr)
{
	struct lb4_src_range_key key = {
		.prefixlen = LB_SRC_RANGE_STATIC_PREFIX + 32,
		.rev_nat_id = svc->rev_nat_id,
		.addr = saddr,
	};
	int listed;

	if (!(svc->flags & SVC_F_SRC_RANGE))
		return 1;
	listed = bpf_map_lookup_elem(&cilium_lb4_source_range_v1, &key) != NULL;
	return (svc->flags & SVC_F_SRC_RANGE_DENY) ? !listed : listed;
}

static __always_inline struct lb4_backend *lb4_lookup_backend(__u32 id)
{
	return bpf_map_lookup_elem(&cilium_lb4_backends_v1, &id);
}

/*
 * The backend set clients on this node (pods, host processes) use for the
 * frontend whose header is @svc: with SVC_F_TWO_SCOPES the header of scope
 * LB_SCOPE_INT replaces @svc (and *@scope says so); otherwise, or while that
 * header is not written, @svc stays.
 */
static __always_inline void lb4_in_node_scope(struct lb4_service *svc, __be32 addr, __be16 port,
					      __u8 proto, __u8 *scope)
{
	struct lb4_key key = {
		.address = addr, .dport = port, .proto = proto, .scope = LB_SCOPE_INT
	};
	struct lb4_service *in;

	*scope = LB_SCOPE_EXT;
	if (!(svc->flags & SVC_F_TWO_SCOPES))
		return;
	in = bpf_map_lookup_elem(&cilium_lb4_services_v1, &key);
	if (!in)
		return;
	*svc = *in;
	*scope = LB_SCOPE_INT;
}

/* Backend id of slot @slot (1-based) of the service @svc was found under. */
static __always_inline __u32 lb4_slot_backend(__be32 addr, __be16 port, __u8 proto, __u8 scope,
					      __u16 slot)
{
	struct lb4_key key = {
		.address = addr, .dport = port, .proto = proto, .slot = slot, .scope = scope
	};
	struct lb4_service *s = bpf_map_lookup_elem(&cilium_lb4_services_v1, &key);

	return s ? s->backend_id : 0;
}

/*
 * Flow hash for Maglev: a murmur3-style mix of the 5-tuple. Mirrored by
 * cilium_lbmap::maglev::flow_hash (tests check the datapath's choice).
 */
static __always_inline __u32 lb_mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bU;
	h ^= h >> 13;
	h *= 0xc2b2ae35U;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 lb4_flow_hash(__be32 saddr, __be32 daddr, __be16 sport, __be16 dport,
					   __u8 proto)
{
	__u32 h = 0x9e3779b9U;

	h = lb_mix32(h ^ saddr);
	h = lb_mix32(h ^ daddr);
	h = lb_mix32(h ^ ((__u32)sport | ((__u32)dport << 16)));
	h = lb_mix32(h ^ proto);
	return h;
}

static __always_inline __u32 lb4_maglev_backend(const struct lb4_service *svc, __u32 hash)
{
	struct lb4_reverse_nat_key key = { .rev_nat_id = svc->rev_nat_id };
	__u32 size = svc->backend_id;
	void *inner;
	__u32 idx, *id;

	if (!size)
		return 0;
	inner = bpf_map_lookup_elem(&cilium_lb4_maglev_v1, &key);
	if (!inner)
		return 0;
	idx = hash % size;
	id = bpf_map_lookup_elem(inner, &idx);
	return id ? *id : 0;
}

static __always_inline __u32 lb4_affinity_get(const struct lb4_service *svc, __u64 client,
					      __u8 netns)
{
	struct lb4_affinity_key key = {
		.client = client, .rev_nat_id = svc->rev_nat_id, .netns = netns
	};
	struct lb4_affinity_val *v = bpf_map_lookup_elem(&cilium_lb4_affinity_v1, &key);
	__u32 now = (__u32)(now_boot_ns() / NSEC_PER_SEC);

	if (!v)
		return 0;
	if (now - v->last_used > svc->affinity_timeout) {
		bpf_map_delete_elem(&cilium_lb4_affinity_v1, &key);
		return 0;
	}
	return v->backend_id;
}

static __always_inline void lb4_affinity_put(const struct lb4_service *svc, __u64 client,
					     __u8 netns, __u32 backend_id)
{
	struct lb4_affinity_key key = {
		.client = client, .rev_nat_id = svc->rev_nat_id, .netns = netns
	};
	struct lb4_affinity_val v = {
		.backend_id = backend_id,
		.last_used = (__u32)(now_boot_ns() / NSEC_PER_SEC),
	};

	bpf_map_update_elem(&cilium_lb4_affinity_v1, &key, &v, BPF_ANY);
}

/*
 * Selects a backend of @svc (found under addr/port/proto/@scope): affinity
 * first (when enabled and the remembered backend still exists), else Maglev on
 * @hash or a random slot. Returns the backend id (0: none) and copies the
 * backend into @out.
 */
static __always_inline __u32 lb4_select_backend(const struct lb4_service *svc, __be32 addr,
						__be16 port, __u8 proto, __u8 scope, __u32 hash,
						__u64 client, __u8 netns, int use_maglev,
						struct lb4_backend *out)
{
	struct lb4_backend *be;
	__u32 id = 0;
	__u16 count = svc->count;

	if (!count)
		return 0;
	if (svc->flags & SVC_F_AFFINITY) {
		id = lb4_affinity_get(svc, client, netns);
		if (id && !lb4_lookup_backend(id))
			id = 0;
	}
	if (!id && use_maglev && svc->algorithm == LB_ALG_MAGLEV)
		id = lb4_maglev_backend(svc, hash);
	if (!id) {
		__u16 slot = (__u16)(bpf_get_prandom_u32() % count) + 1;

		id = lb4_slot_backend(addr, port, proto, scope, slot);
	}
	if (!id)
		return 0;
	be = lb4_lookup_backend(id);
	if (!be)
		return 0;
	*out = *be;
	if (svc->flags & SVC_F_AFFINITY)
		lb4_affinity_put(svc, client, netns, id);
	return id;
}

static __always_inline struct lb4_reverse_nat *lb4_lookup_revnat(__u16 id)
{
	struct lb4_reverse_nat_key key = { .rev_nat_id = id };

	return bpf_map_lookup_elem(&cilium_lb4_reverse_nat_v1, &key);
}

static __always_inline __u64 lb_host_netns_cookie(void)
{
	__u32 zero = 0;
	struct lb_config *c = bpf_map_lookup_elem(&cilium_lb_config_v1, &zero);

	return c ? c->host_netns_cookie : 0;
}

static __always_inline __be32 lb_node_addr(void)
{
	__u32 zero = 0;
	struct lb_config *c = bpf_map_lookup_elem(&cilium_lb_config_v1, &zero);

	return c ? c->node_addr : 0;
}
