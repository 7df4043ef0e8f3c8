/* SPDX-License-Identifier: Apache-2.0 */
/* Includes, constants and small helpers shared by every datapath program. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "drop_reasons.h"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define ETH_ALEN_ 6

/* linux/icmp.h pulls in libc headers; only these two types are needed. */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

/* Metrics/event direction, seen from the endpoint. */
#define METRIC_DIR_INGRESS 1
#define METRIC_DIR_EGRESS 2

/* Reserved security identities (subset of Cilium's numbering). */
#define IDENTITY_UNKNOWN 0
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2

#define NSEC_PER_SEC 1000000000ULL

#define IP_TTL_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, ttl))
#define IP_CSUM_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, check))

/* Parsed IPv4 5-tuple plus what the programs need about the packet. */
struct pkt_info {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 ttl;
	__u8 icmp_type; /* ICMP: type (matched by policy through the port field) */
	__u32 len;
	__u32 l4off; /* offset of the layer-4 header from the start of the frame */
};

static __always_inline __u64 now_boot_ns(void)
{
	return bpf_ktime_get_boot_ns();
}
