/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Source NAT of NodePort traffic towards backends that are not pods of this
 * node. A client outside the node reaches nodeAddress:nodePort; when the
 * selected backend lives elsewhere, its replies would go straight back to the
 * client with the backend's own address, so the request leaves with the
 * node's address (the source the route towards the backend uses) and a port
 * of SNAT_PORT_MIN..SNAT_PORT_MAX, and the reply, addressed to that node
 * address and port, is translated back before the service's reverse NAT.
 *
 *   cilium_snat4_v1  LRU  {saddr, daddr, sport, dport, proto, dir} -> {addr, port}
 *     dir OUT: the client's tuple towards the backend -> the node address and port
 *     dir IN:  the backend's reply tuple to that node address and port -> the client
 *
 * Both entries of a flow are written by the first packet; the IN entry is
 * inserted with BPF_NOEXIST, which is what reserves the port.
 */
#pragma once

#include "common.h"
#include "nat.h"

#define SNAT_MAP_SIZE 131072 /* two entries per flow */
/* Above the kernel's default ephemeral range (32768..60999), so the node's own
 * connections never pick a port a translated flow holds. */
#define SNAT_PORT_MIN 61000
#define SNAT_PORT_MAX 65535
#define SNAT_PORT_TRIES 32

#define SNAT_DIR_OUT 0
#define SNAT_DIR_IN 1

/* Not in the UAPI headers of older distributions (Linux 6.7+): ask the FIB
 * lookup for the source address of the route as well. */
#define FIB_LOOKUP_SRC_ (1U << 4)

/* Key of cilium_snat4_v1. 16 bytes. */
struct snat4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

/* Value of cilium_snat4_v1. 8 bytes. */
struct snat4_val {
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SNAT_MAP_SIZE);
	__type(key, struct snat4_key);
	__type(value, struct snat4_val);
} cilium_snat4_v1 SEC(".maps");

/*
 * Route of a translated packet (client -> backend) arriving on @ifindex:
 * returns 1 and fills @oif / @src when the backend is reached through another
 * host (forwarded), 0 when the host stack should take it (the backend is a
 * local address, or no route). Needs forwarding enabled on @ifindex.
 */
static __always_inline int snat4_route(struct __sk_buff *ctx, const struct pkt_info *pkt,
				       __u32 ifindex, __u32 *oif, __be32 *src)
{
	struct bpf_fib_lookup fib = {
		.family = 2, /* AF_INET */
		.l4_protocol = pkt->proto,
		.sport = pkt->sport,
		.dport = pkt->dport,
		.ipv4_src = pkt->saddr,
		.ipv4_dst = pkt->daddr,
		.ifindex = ifindex,
	};
	long ret = bpf_fib_lookup(ctx, &fib, sizeof(fib),
				  FIB_LOOKUP_SRC_ | BPF_FIB_LOOKUP_SKIP_NEIGH);

	if (ret != BPF_FIB_LKUP_RET_SUCCESS || !fib.ipv4_src)
		return 0;
	*oif = fib.ifindex;
	*src = fib.ipv4_src;
	return 1;
}

/*
 * SNAT of the first and every later packet of a flow towards a backend
 * elsewhere: reuses the flow's port, or reserves a free one. Returns 0 or
 * -DROP_*.
 */
static __always_inline int snat4_out(struct __sk_buff *ctx, struct pkt_info *pkt, __be32 node)
{
	struct snat4_key out = {
		.saddr = pkt->saddr,
		.daddr = pkt->daddr,
		.sport = pkt->sport,
		.dport = pkt->dport,
		.proto = pkt->proto,
		.dir = SNAT_DIR_OUT,
	};
	struct snat4_val *have = bpf_map_lookup_elem(&cilium_snat4_v1, &out);
	struct snat4_val to = { .address = node };
	__u32 start;

	if (have && have->address == node) {
		struct snat4_key in = {
			.saddr = pkt->daddr,
			.daddr = node,
			.sport = pkt->dport,
			.dport = have->port,
			.proto = pkt->proto,
			.dir = SNAT_DIR_IN,
		};

		/* Keep the reply side alive in the LRU as long as the flow is. */
		if (bpf_map_lookup_elem(&cilium_snat4_v1, &in))
			return nat_rewrite(ctx, pkt, node, have->port, pkt->daddr, pkt->dport);
	}

	start = bpf_get_prandom_u32();
	for (int i = 0; i < SNAT_PORT_TRIES; i++) {
		__u16 port = SNAT_PORT_MIN +
			     (__u16)((start + i) % (SNAT_PORT_MAX - SNAT_PORT_MIN + 1));
		struct snat4_key in = {
			.saddr = pkt->daddr,
			.daddr = node,
			.sport = pkt->dport,
			.dport = bpf_htons(port),
			.proto = pkt->proto,
			.dir = SNAT_DIR_IN,
		};
		struct snat4_val back = { .address = pkt->saddr, .port = pkt->sport };

		if (bpf_map_update_elem(&cilium_snat4_v1, &in, &back, BPF_NOEXIST) < 0)
			continue;
		to.port = bpf_htons(port);
		if (bpf_map_update_elem(&cilium_snat4_v1, &out, &to, BPF_ANY) < 0) {
			bpf_map_delete_elem(&cilium_snat4_v1, &in);
			return -DROP_NAT_NO_PORT;
		}
		return nat_rewrite(ctx, pkt, node, to.port, pkt->daddr, pkt->dport);
	}
	return -DROP_NAT_NO_PORT;
}

/*
 * A reply to a node address and SNAT port: rewrites its destination back to
 * the client. Returns 1 when translated, 0 when the packet is not one, or
 * -DROP_*.
 */
static __always_inline int snat4_in(struct __sk_buff *ctx, struct pkt_info *pkt)
{
	struct snat4_key in = {
		.saddr = pkt->saddr,
		.daddr = pkt->daddr,
		.sport = pkt->sport,
		.dport = pkt->dport,
		.proto = pkt->proto,
		.dir = SNAT_DIR_IN,
	};
	struct snat4_val *back;
	int ret;

	if (bpf_ntohs(pkt->dport) < SNAT_PORT_MIN)
		return 0;
	back = bpf_map_lookup_elem(&cilium_snat4_v1, &in);
	if (!back)
		return 0;
	ret = nat_rewrite(ctx, pkt, pkt->saddr, pkt->sport, back->address, back->port);
	return ret < 0 ? ret : 1;
}

/*
 * An ICMP error from a backend elsewhere about a flow this node SNATed: it
 * quotes the request as it left (node:port -> backend) and is addressed to the
 * node. The quoted source and the error's destination go back to the client,
 * which makes it an error about the client's own NodePort flow (the caller
 * translates the rest like any such error). Returns 1 when translated, 0 when
 * it is not one, or -DROP_*.
 */
static __always_inline int snat4_icmp_in(struct __sk_buff *ctx, struct pkt_info *pkt)
{
	struct snat4_key in = { .dir = SNAT_DIR_IN };
	struct snat4_val *back;
	struct icmp_quote q;
	__be32 client;
	__be16 port;

	if (!icmp_is_error(pkt) || icmp_load_quote(ctx, pkt, &q) < 0)
		return 0;
	if (q.ip.saddr != pkt->daddr || bpf_ntohs(q.sport) < SNAT_PORT_MIN)
		return 0;
	in.saddr = q.ip.daddr;
	in.daddr = q.ip.saddr;
	in.sport = q.dport;
	in.dport = q.sport;
	in.proto = q.ip.protocol;
	back = bpf_map_lookup_elem(&cilium_snat4_v1, &in);
	if (!back)
		return 0;
	client = back->address;
	port = back->port;
	if (icmp_quote_nat(ctx, pkt, &q, 1, client, port) < 0 ||
	    nat_addr(ctx, pkt, 0, pkt->daddr, client) < 0)
		return -DROP_WRITE_ERROR;
	pkt->daddr = client;
	return 1;
}
