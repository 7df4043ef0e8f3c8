/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Packet rewriting for service translation: address/port NAT with
 * incremental checksum updates, and the refusal a service without backends
 * answers with (TCP RST for TCP, ICMP port unreachable otherwise), built in
 * place from the offending packet.
 */
#pragma once

#include "common.h"
#include "conntrack.h"

#define IP_SADDR_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, daddr))

#ifndef BPF_F_MARK_MANGLED_0
#define BPF_F_MARK_MANGLED_0 (1ULL << 5)
#endif

/* Offset of the layer-4 checksum, or -1 when there is none to fix. */
static __always_inline int l4_csum_off(const struct pkt_info *pkt)
{
	if (pkt->proto == IPPROTO_TCP)
		return (int)pkt->l4off + 16;
	if (pkt->proto == IPPROTO_UDP)
		return (int)pkt->l4off + 6;
	return -1;
}

static __always_inline __u64 l4_csum_flags(const struct pkt_info *pkt)
{
	return pkt->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Rewrites the source (@src=1) or destination address. Returns 0 or -DROP_WRITE_ERROR. */
static __always_inline int nat_addr(struct __sk_buff *ctx, const struct pkt_info *pkt, int src,
				    __be32 old, __be32 new)
{
	int csum = l4_csum_off(pkt);

	if (old == new)
		return 0;
	if (csum >= 0 &&
	    bpf_l4_csum_replace(ctx, csum, old, new,
				BPF_F_PSEUDO_HDR | sizeof(new) | l4_csum_flags(pkt)) < 0)
		return -DROP_WRITE_ERROR;
	if (bpf_l3_csum_replace(ctx, IP_CSUM_OFF, old, new, sizeof(new)) < 0)
		return -DROP_WRITE_ERROR;
	if (bpf_skb_store_bytes(ctx, src ? IP_SADDR_OFF : IP_DADDR_OFF, &new, sizeof(new), 0) < 0)
		return -DROP_WRITE_ERROR;
	return 0;
}

/* Rewrites the source (@src=1) or destination port. Returns 0 or -DROP_WRITE_ERROR. */
static __always_inline int nat_port(struct __sk_buff *ctx, const struct pkt_info *pkt, int src,
				    __be16 old, __be16 new)
{
	int csum = l4_csum_off(pkt);

	if (old == new)
		return 0;
	if (csum < 0)
		return 0;
	if (bpf_l4_csum_replace(ctx, csum, old, new, sizeof(new) | l4_csum_flags(pkt)) < 0)
		return -DROP_WRITE_ERROR;
	if (bpf_skb_store_bytes(ctx, pkt->l4off + (src ? 0 : 2), &new, sizeof(new), 0) < 0)
		return -DROP_WRITE_ERROR;
	return 0;
}

/* Rewrites the tuple to (saddr:sport -> daddr:dport) and updates @pkt. */
static __always_inline int nat_rewrite(struct __sk_buff *ctx, struct pkt_info *pkt, __be32 saddr,
				       __be16 sport, __be32 daddr, __be16 dport)
{
	int ret;

	ret = nat_addr(ctx, pkt, 1, pkt->saddr, saddr);
	if (ret < 0)
		return ret;
	ret = nat_addr(ctx, pkt, 0, pkt->daddr, daddr);
	if (ret < 0)
		return ret;
	ret = nat_port(ctx, pkt, 1, pkt->sport, sport);
	if (ret < 0)
		return ret;
	ret = nat_port(ctx, pkt, 0, pkt->dport, dport);
	if (ret < 0)
		return ret;
	pkt->saddr = saddr;
	pkt->daddr = daddr;
	pkt->sport = sport;
	pkt->dport = dport;
	return 0;
}

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

#define ICMP_DEST_UNREACH_ 3
#define ICMP_TIME_EXCEEDED_ 11

/* What an ICMP error quotes of the packet that caused it (RFC 792): its IPv4
 * header and the first 8 bytes of layer 4, of which the ports are used. */
struct icmp_quote {
	struct iphdr ip;
	__be16 sport;
	__be16 dport;
};

/* Destination unreachable or time exceeded: an error that quotes a packet. */
static __always_inline int icmp_is_error(const struct pkt_info *pkt)
{
	return pkt->proto == IPPROTO_ICMP &&
	       (pkt->icmp_type == ICMP_DEST_UNREACH_ || pkt->icmp_type == ICMP_TIME_EXCEEDED_);
}

/* Loads the quote of an ICMP error about TCP or UDP (no IP options). 0 or -1. */
static __always_inline int icmp_load_quote(struct __sk_buff *ctx, const struct pkt_info *pkt,
					   struct icmp_quote *q)
{
	if (bpf_skb_load_bytes(ctx, pkt->l4off + 8, q, sizeof(*q)) < 0)
		return -1;
	if (q->ip.ihl != 5 || (q->ip.protocol != IPPROTO_TCP && q->ip.protocol != IPPROTO_UDP))
		return -1;
	return 0;
}

/*
 * Rewrites the quoted source (@src=1) or destination address and port of an
 * ICMP error to @addr:@port, with the quoted header's checksum and the ICMP
 * checksum (which covers the quote); @q is updated. Returns 0 or -1. The
 * quoted layer-4 checksum is left alone: receivers do not check it.
 */
static __always_inline int icmp_quote_nat(struct __sk_buff *ctx, const struct pkt_info *pkt,
					  struct icmp_quote *q, int src, __be32 addr, __be16 port)
{
	__u32 qoff = pkt->l4off + 8, csum = pkt->l4off + 2;
	__be32 old_addr = src ? q->ip.saddr : q->ip.daddr;
	__be16 old_port = src ? q->sport : q->dport;
	__be16 old_check = q->ip.check;
	__be16 check = csum_fold32(bpf_csum_diff(&old_addr, 4, &addr, 4, (__u16)~old_check));
	__u32 addr_off = qoff + (src ? __builtin_offsetof(struct iphdr, saddr)
				     : __builtin_offsetof(struct iphdr, daddr));
	__u32 port_off = qoff + sizeof(struct iphdr) + (src ? 0 : 2);

	if (bpf_l4_csum_replace(ctx, csum, old_addr, addr, 4) < 0 ||
	    bpf_l4_csum_replace(ctx, csum, old_check, check, 2) < 0 ||
	    bpf_l4_csum_replace(ctx, csum, old_port, port, 2) < 0)
		return -1;
	if (bpf_skb_store_bytes(ctx, addr_off, &addr, 4, 0) < 0 ||
	    bpf_skb_store_bytes(ctx, qoff + __builtin_offsetof(struct iphdr, check), &check, 2,
				0) < 0 ||
	    bpf_skb_store_bytes(ctx, port_off, &port, 2, 0) < 0)
		return -1;
	if (src) {
		q->ip.saddr = addr;
		q->sport = port;
	} else {
		q->ip.daddr = addr;
		q->dport = port;
	}
	q->ip.check = check;
	return 0;
}

/* One's complement sum of @n 16-bit words (n constant after inlining). */
static __always_inline __u32 csum_words(const __u16 *w, int n, __u32 sum)
{
#pragma unroll
	for (int i = 0; i < n; i++)
		sum += w[i];
	return sum;
}

/* IPv4 header of a locally generated reply (20 bytes, no options). */
static __always_inline void reply_iphdr(struct iphdr *ip, __u8 proto, __u16 tot_len,
					__be32 saddr, __be32 daddr)
{
	__builtin_memset(ip, 0, sizeof(*ip));
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = bpf_htons(tot_len);
	ip->frag_off = bpf_htons(0x4000); /* DF */
	ip->ttl = 64;
	ip->protocol = proto;
	ip->saddr = saddr;
	ip->daddr = daddr;
	ip->check = csum_fold32(csum_words((const __u16 *)ip, 10, 0));
}

/* Swaps the Ethernet addresses so the frame goes back where it came from. */
static __always_inline int swap_macs(struct __sk_buff *ctx)
{
	__u8 macs[12], swapped[12];

	if (bpf_skb_load_bytes(ctx, 0, macs, sizeof(macs)) < 0)
		return -DROP_WRITE_ERROR;
	__builtin_memcpy(swapped, &macs[6], 6);
	__builtin_memcpy(&swapped[6], macs, 6);
	if (bpf_skb_store_bytes(ctx, 0, swapped, sizeof(swapped), 0) < 0)
		return -DROP_WRITE_ERROR;
	return 0;
}

struct rst_pkt {
	struct iphdr ip;
	struct tcphdr tcp;
};

struct icmp_unreach_pkt {
	struct iphdr ip;
	__u8 type;
	__u8 code;
	__u16 check;
	__u32 unused;
	__u8 orig[28]; /* original IPv4 header (no options) + 8 bytes of layer 4 */
};

/*
 * Turns the packet (@pkt, towards a frontend without backends) into the
 * refusal its sender expects, addressed back to the sender, MACs swapped.
 * The caller redirects it back out. Returns 0 or -DROP_*.
 */
static __always_inline int lb_build_refusal(struct __sk_buff *ctx, const struct pkt_info *pkt)
{
	__u8 ihl_byte;

	if (bpf_skb_load_bytes(ctx, ETH_HLEN, &ihl_byte, 1) < 0)
		return -DROP_INVALID_PACKET;
	if ((ihl_byte & 0x0f) != 5)
		return -DROP_INVALID_PACKET; /* IP options: just drop */

	if (pkt->proto == IPPROTO_TCP) {
		struct rst_pkt r = {};
		struct tcphdr orig;
		__u32 sum;
		__u16 pseudo[6];

		if (pkt->tcp_flags & TCP_FLAG_RST)
			return -DROP_NO_SERVICE; /* never answer a RST */
		if (bpf_skb_load_bytes(ctx, pkt->l4off, &orig, sizeof(orig)) < 0)
			return -DROP_CT_INVALID_HDR;
		reply_iphdr(&r.ip, IPPROTO_TCP, sizeof(r), pkt->daddr, pkt->saddr);
		r.tcp.source = pkt->dport;
		r.tcp.dest = pkt->sport;
		r.tcp.doff = 5;
		r.tcp.rst = 1;
		if (pkt->tcp_flags & TCP_FLAG_ACK) {
			r.tcp.seq = orig.ack_seq;
		} else {
			__u32 len = pkt->len - pkt->l4off - orig.doff * 4;

			if (pkt->tcp_flags & TCP_FLAG_SYN)
				len += 1;
			if (pkt->tcp_flags & TCP_FLAG_FIN)
				len += 1;
			r.tcp.ack = 1;
			r.tcp.ack_seq = bpf_htonl(bpf_ntohl(orig.seq) + len);
		}
		__builtin_memcpy(&pseudo[0], &r.ip.saddr, 4);
		__builtin_memcpy(&pseudo[2], &r.ip.daddr, 4);
		pseudo[4] = bpf_htons(IPPROTO_TCP);
		pseudo[5] = bpf_htons(sizeof(struct tcphdr));
		sum = csum_words(pseudo, 6, 0);
		sum = csum_words((const __u16 *)&r.tcp, sizeof(r.tcp) / 2, sum);
		r.tcp.check = csum_fold32(sum);
		if (bpf_skb_change_tail(ctx, ETH_HLEN + sizeof(r), 0) < 0)
			return -DROP_WRITE_ERROR;
		if (bpf_skb_store_bytes(ctx, ETH_HLEN, &r, sizeof(r), 0) < 0)
			return -DROP_WRITE_ERROR;
	} else {
		struct icmp_unreach_pkt u = {};

		if (bpf_skb_load_bytes(ctx, ETH_HLEN, u.orig, sizeof(u.orig)) < 0)
			return -DROP_CT_INVALID_HDR;
		reply_iphdr(&u.ip, IPPROTO_ICMP, sizeof(u), pkt->daddr, pkt->saddr);
		u.type = 3; /* destination unreachable */
		u.code = 3; /* port unreachable */
		u.check = csum_fold32(csum_words((const __u16 *)&u.type, 36 / 2, 0));
		if (bpf_skb_change_tail(ctx, ETH_HLEN + sizeof(u), 0) < 0)
			return -DROP_WRITE_ERROR;
		if (bpf_skb_store_bytes(ctx, ETH_HLEN, &u, sizeof(u), 0) < 0)
			return -DROP_WRITE_ERROR;
	}
	return swap_macs(ctx);
}
