// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Pod datapath, attached to the host side of every pod's veth:
 *   cil_from_container  tcx ingress  (packets leaving the pod)
 *   cil_to_container    tcx egress   (packets the host stack sends to the pod)
 * Policy (lib/policy.h): egress of the source endpoint at from-container,
 * ingress of the destination endpoint at local delivery and at to-container.
 * Per-endpoint behaviour comes only from map entries: attaching an endpoint
 * never loads or verifies a program.
 */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/conntrack.h"
#include "lib/eps.h"
#include "lib/events.h"
#include "lib/lb.h"
#include "lib/nat.h"
#include "lib/metrics.h"
#include "lib/policy.h"
#include "lib/snat.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define ETH_P_ARP_ 0x0806
#define ARPOP_REQUEST_ 1
#define ARPOP_REPLY_ 2

/* Ethernet/IPv4 ARP body as on the wire (28 bytes, unaligned addresses). */
struct arp_eth_ipv4 {
	__be16 hrd;
	__be16 pro;
	__u8 hln;
	__u8 pln;
	__be16 op;
	__u8 sha[6];
	__u8 sip[4];
	__u8 tha[6];
	__u8 tip[4];
} __attribute__((packed));

static __always_inline void emit_drop(const struct dp_config *cfg, int reason, __u8 dir,
				      const struct pkt_info *pkt, __u32 ifindex, __u16 ep_id,
				      __u32 src_id)
{
	if (!(cfg->event_flags & EVENT_F_DROP))
		return;
	struct cilium_event *ev = event_scratch(EVENT_TYPE_DROP, (__u8)reason, dir, pkt, ifindex);

	if (!ev)
		return;
	ev->ep_id = ep_id;
	ev->src_identity = src_id;
	ev->verdict = -reason;
	event_send(ev);
}

static __always_inline int drop(struct __sk_buff *ctx, const struct dp_config *cfg, int reason,
				__u8 dir, const struct pkt_info *pkt, __u16 ep_id, __u32 src_id)
{
	update_metrics((__u8)reason, dir, ctx->len);
	emit_drop(cfg, reason, dir, pkt, ctx->ifindex, ep_id, src_id);
	return TC_ACT_SHOT;
}

static __always_inline void emit_trace(const struct dp_config *cfg, __u8 obs, __u8 dir,
				       const struct pkt_info *pkt, __u32 ifindex, __u16 ep_id,
				       __u16 dst_ep_id, __u32 src_id, __u32 dst_id,
				       __u32 dst_ifindex, int ct_status, int report)
{
	if (!(cfg->event_flags & EVENT_F_TRACE))
		return;
	if (!report && !(cfg->event_flags & EVENT_F_TRACE_ALL))
		return;
	struct cilium_event *ev = event_scratch(EVENT_TYPE_TRACE, obs, dir, pkt, ifindex);

	if (!ev)
		return;
	ev->ep_id = ep_id;
	ev->dst_ep_id = dst_ep_id;
	ev->src_identity = src_id;
	ev->dst_identity = dst_id;
	ev->dst_ifindex = dst_ifindex;
	ev->ct_status = (__u8)ct_status;
	event_send(ev);
}

static __always_inline void emit_policy_verdict(const struct dp_config *cfg,
						const struct policy_result *res, __u8 dir,
						const struct pkt_info *pkt, __u32 ifindex,
						__u16 ep_id, __u16 dst_ep_id, __u32 src_id,
						__u32 dst_id)
{
	if (!(cfg->event_flags & EVENT_F_POLICY_VERDICT))
		return;
	struct cilium_event *ev = event_scratch(EVENT_TYPE_POLICY_VERDICT, 0, dir, pkt, ifindex);

	if (!ev)
		return;
	ev->ep_id = ep_id;
	ev->dst_ep_id = dst_ep_id;
	ev->src_identity = src_id;
	ev->dst_identity = dst_id;
	ev->verdict = res->verdict;
	ev->cookie = res->cookie;
	event_send(ev);
}

/*
 * Policy of endpoint @ep_id in direction @dir (egress: source endpoint, peer =
 * destination identity; ingress: destination endpoint, peer = source
 * identity). Only original-direction packets are checked: replies (CT_REPLY)
 * ride on conntrack, while new and established flows are re-checked on every
 * packet so that a policy change stops a flow it forbids. A verdict event is
 * emitted for the first packet of a connection when the direction is
 * enforced. Returns 0 to continue or TC_ACT_SHOT after counting and reporting
 * the drop (and removing the conntrack entry the dropped first packet made).
 */
static __always_inline int policy_check(struct __sk_buff *ctx, const struct dp_config *cfg,
					__u8 dir, __u16 ep_id, __u16 dst_ep_id, __u32 src_id,
					__u32 dst_id, const struct pkt_info *pkt, int status)
{
	struct policy_result res;
	int reason;

	if (status == CT_REPLY)
		return 0;
	policy_can_access(ep_id, dir, dir == METRIC_DIR_INGRESS ? src_id : dst_id, pkt, &res);
	if (!res.enforced)
		return 0;
	if (status == CT_NEW)
		emit_policy_verdict(cfg, &res, dir, pkt, ctx->ifindex, ep_id, dst_ep_id, src_id,
				    dst_id);
	if (res.verdict == 0)
		return 0;

	reason = -res.verdict;
	update_metrics((__u8)reason, dir, ctx->len);
	if (status == CT_NEW)
		ct_delete4(pkt);
	if (cfg->event_flags & EVENT_F_DROP) {
		struct cilium_event *ev =
			event_scratch(EVENT_TYPE_DROP, (__u8)reason, dir, pkt, ctx->ifindex);

		if (ev) {
			ev->ep_id = ep_id;
			ev->dst_ep_id = dst_ep_id;
			ev->src_identity = src_id;
			ev->dst_identity = dst_id;
			ev->ct_status = (__u8)status;
			ev->verdict = res.verdict;
			ev->cookie = res.cookie;
			event_send(ev);
		}
	}
	return TC_ACT_SHOT;
}

/* Parse Ethernet + IPv4 (+ ports/TCP flags). Returns 0 or -DROP_*. */
static __always_inline int parse_ipv4(struct __sk_buff *ctx, struct pkt_info *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	__u32 l4off;

	if ((void *)(ip + 1) > data_end)
		return -DROP_INVALID_PACKET;
	if (ip->ihl < 5 || ip->version != 4)
		return -DROP_INVALID_PACKET;

	pkt->saddr = ip->saddr;
	pkt->daddr = ip->daddr;
	pkt->proto = ip->protocol;
	pkt->ttl = ip->ttl;
	pkt->len = ctx->len;
	pkt->sport = 0;
	pkt->dport = 0;
	pkt->tcp_flags = 0;
	pkt->icmp_type = 0;

	/* Non-first fragments carry no layer-4 header: track them port-less. */
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;

	l4off = ETH_HLEN + ip->ihl * 4;
	pkt->l4off = l4off;
	switch (pkt->proto) {
	case IPPROTO_TCP: {
		__u8 buf[14];

		if (bpf_skb_load_bytes(ctx, l4off, buf, sizeof(buf)) < 0)
			return -DROP_CT_INVALID_HDR;
		__builtin_memcpy(&pkt->sport, &buf[0], 2);
		__builtin_memcpy(&pkt->dport, &buf[2], 2);
		pkt->tcp_flags = buf[13];
		break;
	}
	case IPPROTO_UDP: {
		__be16 ports[2];

		if (bpf_skb_load_bytes(ctx, l4off, ports, sizeof(ports)) < 0)
			return -DROP_CT_INVALID_HDR;
		pkt->sport = ports[0];
		pkt->dport = ports[1];
		break;
	}
	case IPPROTO_ICMP: {
		__u8 buf[8];

		if (bpf_skb_load_bytes(ctx, l4off, buf, sizeof(buf)) < 0)
			return -DROP_CT_INVALID_HDR;
		pkt->icmp_type = buf[0];
		/* Echo identifier as a port so request and reply pair up. */
		if (buf[0] == ICMP_ECHO)
			__builtin_memcpy(&pkt->sport, &buf[4], 2);
		else if (buf[0] == ICMP_ECHOREPLY)
			__builtin_memcpy(&pkt->dport, &buf[4], 2);
		break;
	}
	default:
		break;
	}
	return 0;
}

/* Answer an ARP request from the pod with the host-side veth MAC. */
static __always_inline int handle_arp(struct __sk_buff *ctx)
{
	struct arp_eth_ipv4 arp;
	struct endpoint_info *ep;
	__be32 sip, tip;
	__u8 smac[6];

	if (bpf_skb_load_bytes(ctx, ETH_HLEN, &arp, sizeof(arp)) < 0)
		return TC_ACT_OK;
	if (arp.hrd != bpf_htons(1) || arp.pro != bpf_htons(ETH_P_IP) || arp.hln != 6 ||
	    arp.pln != 4 || arp.op != bpf_htons(ARPOP_REQUEST_))
		return TC_ACT_OK;
	__builtin_memcpy(&sip, arp.sip, 4);
	__builtin_memcpy(&tip, arp.tip, 4);
	/* Leave probes (sip 0) and gratuitous ARP (tip == sip) alone. */
	if (sip == 0 || sip == tip)
		return TC_ACT_OK;
	ep = lookup_endpoint(sip);
	if (!ep || ep->ifindex != ctx->ifindex)
		return TC_ACT_OK;

	__builtin_memcpy(smac, arp.sha, 6);
	arp.op = bpf_htons(ARPOP_REPLY_);
	__builtin_memcpy(arp.tha, smac, 6);
	__builtin_memcpy(arp.sha, ep->node_mac, 6);
	__builtin_memcpy(arp.tip, &sip, 4);
	__builtin_memcpy(arp.sip, &tip, 4);

	if (bpf_skb_store_bytes(ctx, ETH_HLEN, &arp, sizeof(arp), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, 0, smac, 6, 0) < 0 ||
	    bpf_skb_store_bytes(ctx, 6, ep->node_mac, 6, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(ctx->ifindex, 0);
}

static __always_inline __be16 eth_proto(struct __sk_buff *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;
	return eth->h_proto;
}

/* A routing hop: the TTL goes down by one. Returns 0 or -DROP_*. */
static __always_inline int dec_ttl(struct __sk_buff *ctx, __u8 ttl)
{
	__u8 new_ttl;

	if (ttl <= 1)
		return -DROP_TTL_EXCEEDED;
	new_ttl = ttl - 1;
	if (bpf_l3_csum_replace(ctx, IP_CSUM_OFF, bpf_htons((__u16)ttl << 8),
				bpf_htons((__u16)new_ttl << 8), 2) < 0)
		return -DROP_WRITE_ERROR;
	if (bpf_skb_store_bytes(ctx, IP_TTL_OFF, &new_ttl, 1, 0) < 0)
		return -DROP_WRITE_ERROR;
	return 0;
}

/* Rewrite MACs and TTL for delivery into @dst's namespace. Returns 0 or -DROP_*. */
static __always_inline int rewrite_for_delivery(struct __sk_buff *ctx,
						const struct endpoint_info *dst, __u8 ttl)
{
	int ret = dec_ttl(ctx, ttl);

	if (ret < 0)
		return ret;
	if (bpf_skb_store_bytes(ctx, 0, dst->mac, 6, 0) < 0 ||
	    bpf_skb_store_bytes(ctx, 6, dst->node_mac, 6, 0) < 0)
		return -DROP_WRITE_ERROR;
	return 0;
}

#define LB_REFUSED 1

/*
 * Per-packet translation of an original-direction packet towards a
 * frontend: the flow's service entry (or a fresh selection: affinity,
 * Maglev on the 5-tuple, random) gives the backend; the packet is DNATed
 * to it (and, when the backend is the client itself, SNATed to the
 * frontend so the reply comes back through here: hairpin). @nat receives
 * the service state for the conntrack entry of the translated tuple.
 * @ingress_ifindex: NodePort (replies leave through that device), 0 for pods,
 * which use the frontend's internal scope when it has two.
 * Returns 0 (translated or not a service), LB_REFUSED (no backend) or -DROP_*.
 */
static __always_inline int lb4_xlate_fwd(struct __sk_buff *ctx, const struct dp_config *cfg,
					 struct pkt_info *pkt, __u32 src_id, struct ct_nat *nat,
					 __u32 ingress_ifindex)
{
	struct lb4_service *found, svc;
	struct lb4_backend be = {}, *bep;
	__be32 vip = pkt->daddr, saddr = pkt->saddr;
	__u32 id;
	__u8 scope = LB_SCOPE_EXT;
	int ret;

	if (pkt->proto != IPPROTO_TCP && pkt->proto != IPPROTO_UDP)
		return 0;
	found = lb4_lookup_service(pkt->daddr, pkt->dport, pkt->proto);
	if (!found)
		return 0;
	svc = *found;
	/* loadBalancerSourceRanges: every packet, before anything is learnt. */
	if (!lb4_src_range_ok(&svc, pkt->saddr))
		return -DROP_LB_SRC_RANGE;
	if (!ingress_ifindex)
		lb4_in_node_scope(&svc, pkt->daddr, pkt->dport, pkt->proto, &scope);
	if (!svc.count || (svc.flags & SVC_F_NO_BACKENDS)) {
		/* Track the refused packet so the refusal is a reply. */
		int report;

		ct_lookup_create4(pkt, src_id, cfg, &report);
		return LB_REFUSED;
	}
	id = ct_service_lookup4(pkt, cfg);
	if (id) {
		bep = lb4_lookup_backend(id);
		if (bep)
			be = *bep;
		else
			id = 0;
	}
	if (!id) {
		__u32 hash = lb4_flow_hash(pkt->saddr, pkt->daddr, pkt->sport, pkt->dport,
					   pkt->proto);

		id = lb4_select_backend(&svc, pkt->daddr, pkt->dport, pkt->proto, scope, hash,
					(__u64)pkt->saddr, 0, 1, &be);
		if (!id) {
			int report;

			ct_lookup_create4(pkt, src_id, cfg, &report);
			return LB_REFUSED;
		}
		ret = ct_service_create4(pkt, cfg, src_id, id, svc.rev_nat_id);
		if (ret < 0)
			return ret;
	}
	nat->rev_nat_id = svc.rev_nat_id;
	nat->flags = CT_F_SERVICE;
	nat->aux = 0;
	if (ingress_ifindex) {
		nat->flags |= CT_F_NODEPORT;
		nat->aux = ingress_ifindex;
	}
	if (be.address == pkt->saddr) {
		/* Hairpin: the client reaches itself; make the frontend the source. */
		nat->flags |= CT_F_HAIRPIN;
		saddr = vip;
	}
	return nat_rewrite(ctx, pkt, saddr, pkt->sport, be.address, be.port);
}

/* Reverse NAT of a reply of a translated flow (source back to the frontend). */
static __always_inline int lb4_rev_nat(struct __sk_buff *ctx, struct pkt_info *pkt,
				       const struct ct_nat *nat)
{
	struct lb4_reverse_nat *rn = lb4_lookup_revnat(nat->rev_nat_id);
	__be32 daddr = pkt->daddr;

	if (!rn)
		return 0; /* service gone: leave the packet alone */
	if (nat->flags & CT_F_HAIRPIN)
		daddr = pkt->saddr; /* the backend is the client */
	return nat_rewrite(ctx, pkt, rn->address, rn->port, daddr, pkt->dport);
}

/*
 * An ICMP error (destination unreachable, time exceeded) about a tracked
 * flow: "related", so policy lets it through like a reply. When the flow is
 * a translated service flow, the error quotes the packet as translated
 * (client -> backend), which the client's socket does not recognise: the
 * quoted destination goes back to the frontend (with the quoted header's
 * checksum and the ICMP checksum), and so does the error's source when the
 * backend itself sent it. A hairpin flow (the client is its own backend) gets
 * its quote and addresses turned back whole, so the error reaches the client
 * from the frontend. Returns 1 when related, 0 when not, or -DROP_*.
 */
static __always_inline int icmp_err_related4(struct __sk_buff *ctx, struct pkt_info *pkt,
					     struct ct_nat *nat)
{
	struct lb4_reverse_nat *rn;
	struct ct_entry4 *e;
	struct icmp_quote q;
	__be32 backend;
	struct ct_key4 key = {};

	if (!icmp_is_error(pkt) || icmp_load_quote(ctx, pkt, &q) < 0)
		return 0;
	/* An error about a flow only ever goes to the flow's own sender. */
	if (q.ip.saddr != pkt->daddr)
		return 0;
	key.saddr = q.ip.saddr;
	key.daddr = q.ip.daddr;
	key.sport = q.sport;
	key.dport = q.dport;
	key.proto = q.ip.protocol;
	e = bpf_map_lookup_elem(ct_map_for(key.proto), &key);
	if (!e)
		return 0;
	nat->rev_nat_id = e->rev_nat_id;
	nat->flags = e->flags & CT_F_NAT_MASK;
	nat->aux = e->nat_aux;
	if (!(e->flags & CT_F_SERVICE))
		return 1;
	rn = lb4_lookup_revnat(e->rev_nat_id);
	if (!rn)
		return 1;
	backend = q.ip.daddr;
	if (e->flags & CT_F_HAIRPIN) {
		/* The client is its own backend: the error (client -> frontend) quotes the
		 * packet as the hairpin SNAT sent it (frontend:sport -> client:bport). The
		 * client sent client:sport -> frontend:port, and the error comes back from
		 * the frontend, into the client (its address is now the destination). */
		if (icmp_quote_nat(ctx, pkt, &q, 1, backend, q.sport) < 0 ||
		    icmp_quote_nat(ctx, pkt, &q, 0, rn->address, rn->port) < 0 ||
		    nat_addr(ctx, pkt, 1, pkt->saddr, rn->address) < 0 ||
		    nat_addr(ctx, pkt, 0, pkt->daddr, backend) < 0)
			return -DROP_WRITE_ERROR;
		pkt->saddr = rn->address;
		pkt->daddr = backend;
		return 1;
	}
	if (icmp_quote_nat(ctx, pkt, &q, 0, rn->address, rn->port) < 0)
		return -DROP_WRITE_ERROR;
	if (pkt->saddr == backend) {
		if (nat_addr(ctx, pkt, 1, backend, rn->address) < 0)
			return -DROP_WRITE_ERROR;
		pkt->saddr = rn->address;
	}
	return 1;
}

SEC("tcx/ingress")
int cil_from_container(struct __sk_buff *ctx)
{
	struct dp_config cfg;
	struct pkt_info pkt = {};
	struct endpoint_info *src_ep, *dst_ep;
	struct ct_nat nat = {};
	__u32 src_id, dst_id;
	__u16 ep_id;
	__be16 proto;
	int ret, report = 0, status, related = 0;

	proto = eth_proto(ctx);
	if (proto == bpf_htons(ETH_P_ARP_))
		return handle_arp(ctx);
	if (proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK; /* IPv6 and others: host stack decides */

	load_config(&cfg);
	ret = parse_ipv4(ctx, &pkt);
	if (ret < 0)
		return drop(ctx, &cfg, -ret, METRIC_DIR_EGRESS, &pkt, 0, 0);

	src_ep = lookup_endpoint(pkt.saddr);
	if (!src_ep || src_ep->ifindex != ctx->ifindex)
		return drop(ctx, &cfg, DROP_INVALID_SIP, METRIC_DIR_EGRESS, &pkt, 0, 0);
	ep_id = src_ep->ep_id;
	src_id = src_ep->sec_identity;

	if (pkt.proto == IPPROTO_ICMP) {
		related = icmp_err_related4(ctx, &pkt, &nat);
		if (related < 0)
			return drop(ctx, &cfg, -related, METRIC_DIR_EGRESS, &pkt, ep_id, src_id);
	}

	/* Per-packet service translation for what the socket layer did not translate. */
	ret = lb4_xlate_fwd(ctx, &cfg, &pkt, src_id, &nat, 0);
	if (ret == LB_REFUSED) {
		ret = lb_build_refusal(ctx, &pkt);
		update_metrics(DROP_NO_SERVICE, METRIC_DIR_EGRESS, pkt.len);
		emit_drop(&cfg, DROP_NO_SERVICE, METRIC_DIR_EGRESS, &pkt, ctx->ifindex, ep_id, src_id);
		if (ret < 0)
			return TC_ACT_SHOT;
		/* Straight back into the client's namespace (skips cil_to_container). */
		return bpf_redirect_peer(ctx->ifindex, 0);
	}
	if (ret < 0)
		return drop(ctx, &cfg, -ret, METRIC_DIR_EGRESS, &pkt, ep_id, src_id);

	/* An ICMP error about a tracked flow passes like a reply, untracked itself. */
	status = related ? CT_REPLY : ct_lookup_create4_nat(&pkt, src_id, &cfg, &report, &nat);
	if (status < 0)
		return drop(ctx, &cfg, -status, METRIC_DIR_EGRESS, &pkt, ep_id, src_id);

	/* An error about a NodePort flow: already translated, back out of its device. */
	if (related && (nat.flags & CT_F_NODEPORT) && nat.aux) {
		update_metrics(0, METRIC_DIR_EGRESS, pkt.len);
		emit_trace(&cfg, TRACE_TO_STACK, METRIC_DIR_EGRESS, &pkt, ctx->ifindex, ep_id, 0,
			   src_id, IDENTITY_WORLD, nat.aux, status, report);
		return bpf_redirect_neigh(nat.aux, NULL, 0, 0);
	}

	/* Replies of translated flows: reverse NAT back to the frontend. */
	if (status == CT_REPLY && !related && (nat.flags & CT_F_SERVICE)) {
		ret = lb4_rev_nat(ctx, &pkt, &nat);
		if (ret < 0)
			return drop(ctx, &cfg, -ret, METRIC_DIR_EGRESS, &pkt, ep_id, src_id);
		if ((nat.flags & CT_F_NODEPORT) && nat.aux) {
			update_metrics(0, METRIC_DIR_EGRESS, pkt.len);
			emit_trace(&cfg, TRACE_TO_STACK, METRIC_DIR_EGRESS, &pkt, ctx->ifindex, ep_id,
				   0, src_id, IDENTITY_WORLD, nat.aux, status, report);
			return bpf_redirect_neigh(nat.aux, NULL, 0, 0);
		}
	}

	dst_ep = lookup_endpoint(pkt.daddr);
	if (dst_ep && !(dst_ep->flags & ENDPOINT_F_HOST)) {
		struct endpoint_info dst = *dst_ep;

		dst_id = dst.sec_identity;
		/* Egress policy of the source, then ingress policy of the destination. */
		if (policy_check(ctx, &cfg, METRIC_DIR_EGRESS, ep_id, dst.ep_id, src_id, dst_id,
				 &pkt, status))
			return TC_ACT_SHOT;
		if (policy_check(ctx, &cfg, METRIC_DIR_INGRESS, dst.ep_id, dst.ep_id, src_id,
				 dst_id, &pkt, status))
			return TC_ACT_SHOT;
		ret = rewrite_for_delivery(ctx, &dst, pkt.ttl);
		if (ret < 0)
			return drop(ctx, &cfg, -ret, METRIC_DIR_EGRESS, &pkt, ep_id, src_id);
		update_metrics(0, METRIC_DIR_EGRESS, pkt.len);
		update_metrics(0, METRIC_DIR_INGRESS, pkt.len);
		emit_trace(&cfg, TRACE_TO_LXC, METRIC_DIR_EGRESS, &pkt, ctx->ifindex, ep_id,
			   dst.ep_id, src_id, dst_id, dst.ifindex, status, report);
		ret = bpf_redirect_peer(dst.ifindex, 0);
		if (ret != TC_ACT_REDIRECT)
			return drop(ctx, &cfg, DROP_REDIRECT_FAILED, METRIC_DIR_EGRESS, &pkt, ep_id,
				    src_id);
		return ret;
	}

	/* The host's own addresses (lxc entries flagged HOST, or ipcache rows with
	 * identity 1 written by the agent) are the host; anything unknown is world. */
	dst_id = dst_ep ? IDENTITY_HOST : lookup_identity(pkt.daddr);
	if (policy_check(ctx, &cfg, METRIC_DIR_EGRESS, ep_id, 0, src_id, dst_id, &pkt, status))
		return TC_ACT_SHOT;
	update_metrics(0, METRIC_DIR_EGRESS, pkt.len);
	emit_trace(&cfg, TRACE_TO_STACK, METRIC_DIR_EGRESS, &pkt, ctx->ifindex, ep_id, 0, src_id,
		   dst_id, 0, status, report);
	return TC_ACT_OK;
}

SEC("tcx/egress")
int cil_to_container(struct __sk_buff *ctx)
{
	struct dp_config cfg;
	struct pkt_info pkt = {};
	struct endpoint_info *dst_ep;
	struct ct_nat nat = {};
	__u32 src_id, dst_id = 0;
	__u16 ep_id = 0;
	int ret, report = 0, status, related = 0;

	if (eth_proto(ctx) != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;

	load_config(&cfg);
	ret = parse_ipv4(ctx, &pkt);
	if (ret < 0)
		return drop(ctx, &cfg, -ret, METRIC_DIR_INGRESS, &pkt, 0, 0);

	/* Everything here comes from the host stack: the host itself (its addresses
	 * are ipcache rows with identity 1, or lxc entries flagged HOST), or traffic
	 * it routed (identity from the ipcache, WORLD when unknown). */
	src_id = lookup_identity(pkt.saddr);
	if (src_id == IDENTITY_WORLD) {
		struct endpoint_info *src_ep = lookup_endpoint(pkt.saddr);

		if (src_ep && (src_ep->flags & ENDPOINT_F_HOST))
			src_id = IDENTITY_HOST;
	}
	dst_ep = lookup_endpoint(pkt.daddr);
	if (dst_ep) {
		ep_id = dst_ep->ep_id;
		dst_id = dst_ep->sec_identity;
	}

	if (pkt.proto == IPPROTO_ICMP) {
		related = icmp_err_related4(ctx, &pkt, &nat);
		if (related < 0)
			return drop(ctx, &cfg, -related, METRIC_DIR_INGRESS, &pkt, ep_id, src_id);
	}
	status = related ? CT_REPLY : ct_lookup_create4_nat(&pkt, src_id, &cfg, &report, &nat);
	if (status < 0)
		return drop(ctx, &cfg, -status, METRIC_DIR_INGRESS, &pkt, ep_id, src_id);

	/* Replies of a flow this pod sent to a service whose backend is not a pod of
	 * this node (the host itself, or an address the host routes to): they come
	 * through the host stack, so the reverse NAT happens here. */
	if (status == CT_REPLY && !related && (nat.flags & CT_F_SERVICE)) {
		ret = lb4_rev_nat(ctx, &pkt, &nat);
		if (ret < 0)
			return drop(ctx, &cfg, -ret, METRIC_DIR_INGRESS, &pkt, ep_id, src_id);
	}

	if (dst_ep && policy_check(ctx, &cfg, METRIC_DIR_INGRESS, ep_id, ep_id, src_id, dst_id,
				   &pkt, status))
		return TC_ACT_SHOT;

	update_metrics(0, METRIC_DIR_INGRESS, pkt.len);
	emit_trace(&cfg, TRACE_TO_LXC, METRIC_DIR_INGRESS, &pkt, ctx->ifindex, ep_id, ep_id, src_id,
		   dst_id, ctx->ifindex, status, report);
	return TC_ACT_OK;
}

/*
 * NodePort / ExternalIP / LoadBalancer frontends on the host devices
 * (`--devices`, tcx ingress). A packet towards a frontend is DNATed to a
 * backend selected like at from-container; the client's address is kept
 * (backends are local: policy sees the client) and the conntrack entry
 * remembers the device, so the backend's replies are reverse-NATed at its
 * from-container and sent back out of this device (bpf_redirect_neigh).
 * Without backends the client gets a TCP RST / ICMP port unreachable at
 * once. Everything else goes to the host stack untouched.
 */
SEC("tcx/ingress")
int cil_from_netdev(struct __sk_buff *ctx)
{
	struct dp_config cfg;
	struct pkt_info pkt = {};
	struct ct_nat nat = {};
	struct endpoint_info *dst_ep;
	__u32 src_id, oif = 0;
	__be32 node = 0;
	int ret, report = 0, status;

	if (eth_proto(ctx) != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (parse_ipv4(ctx, &pkt) < 0)
		return TC_ACT_OK;

	/* An ICMP error from a backend elsewhere about a flow this node SNATed:
	 * back to the client, the frontend restored, out of the client's device. */
	if (pkt.proto == IPPROTO_ICMP) {
		ret = snat4_icmp_in(ctx, &pkt);
		if (ret > 0)
			ret = icmp_err_related4(ctx, &pkt, &nat);
		if (ret == 0)
			return TC_ACT_OK;
		load_config(&cfg);
		src_id = lookup_identity(pkt.saddr);
		if (ret > 0 && (!(nat.flags & CT_F_NODEPORT) || !nat.aux))
			return TC_ACT_OK;
		if (ret > 0)
			ret = dec_ttl(ctx, pkt.ttl);
		if (ret < 0)
			return drop(ctx, &cfg, -ret, METRIC_DIR_INGRESS, &pkt, 0, src_id);
		update_metrics(0, METRIC_DIR_INGRESS, pkt.len);
		emit_trace(&cfg, TRACE_TO_STACK, METRIC_DIR_INGRESS, &pkt, ctx->ifindex, 0, 0,
			   src_id, IDENTITY_WORLD, nat.aux, CT_REPLY, 0);
		return bpf_redirect_neigh(nat.aux, NULL, 0, 0);
	}
	if (pkt.proto != IPPROTO_TCP && pkt.proto != IPPROTO_UDP)
		return TC_ACT_OK;

	/* A backend elsewhere answering a NodePort flow this node SNATed: back to
	 * the client, then the service's reverse NAT, out of the client's device. */
	ret = snat4_in(ctx, &pkt);
	if (ret != 0) {
		load_config(&cfg);
		src_id = lookup_identity(pkt.saddr);
		if (ret < 0)
			return drop(ctx, &cfg, -ret, METRIC_DIR_INGRESS, &pkt, 0, src_id);
		status = ct_lookup_create4_nat(&pkt, src_id, &cfg, &report, &nat);
		if (status < 0)
			return drop(ctx, &cfg, -status, METRIC_DIR_INGRESS, &pkt, 0, src_id);
		if (status != CT_REPLY || !(nat.flags & CT_F_NODEPORT) || !nat.aux)
			return TC_ACT_OK; /* flow forgotten: the host stack decides */
		ret = lb4_rev_nat(ctx, &pkt, &nat);
		if (ret == 0)
			ret = dec_ttl(ctx, pkt.ttl);
		if (ret < 0)
			return drop(ctx, &cfg, -ret, METRIC_DIR_INGRESS, &pkt, 0, src_id);
		update_metrics(0, METRIC_DIR_INGRESS, pkt.len);
		emit_trace(&cfg, TRACE_TO_STACK, METRIC_DIR_INGRESS, &pkt, ctx->ifindex, 0, 0,
			   src_id, IDENTITY_WORLD, nat.aux, status, report);
		return bpf_redirect_neigh(nat.aux, NULL, 0, 0);
	}

	if (!lb4_lookup_service(pkt.daddr, pkt.dport, pkt.proto))
		return TC_ACT_OK;

	load_config(&cfg);
	src_id = lookup_identity(pkt.saddr);
	ret = lb4_xlate_fwd(ctx, &cfg, &pkt, src_id, &nat, ctx->ifindex);
	if (ret == LB_REFUSED) {
		ret = lb_build_refusal(ctx, &pkt);
		update_metrics(DROP_NO_SERVICE, METRIC_DIR_INGRESS, pkt.len);
		emit_drop(&cfg, DROP_NO_SERVICE, METRIC_DIR_INGRESS, &pkt, ctx->ifindex, 0, src_id);
		if (ret < 0)
			return TC_ACT_SHOT;
		return bpf_redirect(ctx->ifindex, 0);
	}
	if (ret < 0)
		return drop(ctx, &cfg, -ret, METRIC_DIR_INGRESS, &pkt, 0, src_id);

	status = ct_lookup_create4_nat(&pkt, src_id, &cfg, &report, &nat);
	if (status < 0)
		return drop(ctx, &cfg, -status, METRIC_DIR_INGRESS, &pkt, 0, src_id);

	dst_ep = lookup_endpoint(pkt.daddr);
	if (dst_ep && !(dst_ep->flags & ENDPOINT_F_HOST)) {
		struct endpoint_info dst = *dst_ep;

		if (policy_check(ctx, &cfg, METRIC_DIR_INGRESS, dst.ep_id, dst.ep_id, src_id,
				 dst.sec_identity, &pkt, status))
			return TC_ACT_SHOT;
		ret = rewrite_for_delivery(ctx, &dst, pkt.ttl);
		if (ret < 0)
			return drop(ctx, &cfg, -ret, METRIC_DIR_INGRESS, &pkt, 0, src_id);
		update_metrics(0, METRIC_DIR_INGRESS, pkt.len);
		emit_trace(&cfg, TRACE_TO_LXC, METRIC_DIR_INGRESS, &pkt, ctx->ifindex, 0, dst.ep_id,
			   src_id, dst.sec_identity, dst.ifindex, status, report);
		ret = bpf_redirect_peer(dst.ifindex, 0);
		if (ret != TC_ACT_REDIRECT)
			return drop(ctx, &cfg, DROP_REDIRECT_FAILED, METRIC_DIR_INGRESS, &pkt, 0,
				    src_id);
		return ret;
	}
	/* Backend elsewhere (routed through another host): SNAT to the node address
	 * of the route towards it, so its replies come back here, and out of that
	 * device. A backend that is the host itself goes to the host stack. */
	if (snat4_route(ctx, &pkt, ctx->ifindex, &oif, &node)) {
		ret = snat4_out(ctx, &pkt, node);
		if (ret == 0)
			ret = dec_ttl(ctx, pkt.ttl);
		if (ret < 0)
			return drop(ctx, &cfg, -ret, METRIC_DIR_INGRESS, &pkt, 0, src_id);
		update_metrics(0, METRIC_DIR_INGRESS, pkt.len);
		emit_trace(&cfg, TRACE_TO_STACK, METRIC_DIR_INGRESS, &pkt, ctx->ifindex, 0, 0,
			   src_id, IDENTITY_WORLD, oif, status, report);
		return bpf_redirect_neigh(oif, NULL, 0, 0);
	}
	return TC_ACT_OK;
}

/*
 * Host devices' egress (`--devices`, tcx egress): the replies of NodePort
 * flows whose backend is the host itself (a host-network server). The request
 * was DNATed at cil_from_netdev and delivered by the host stack; the host's
 * reply leaves here and gets the frontend back as its source, and its entry
 * sees the reply (TCP state, lifetime). Only existing entries are looked up,
 * so the host's own traffic is never tracked.
 */
SEC("tcx/egress")
int cil_to_netdev(struct __sk_buff *ctx)
{
	struct dp_config cfg;
	struct pkt_info pkt = {};
	struct ct_entry4 *e;
	struct ct_nat nat = {};
	int ret;

	if (eth_proto(ctx) != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (parse_ipv4(ctx, &pkt) < 0)
		return TC_ACT_OK;
	if (pkt.proto != IPPROTO_TCP && pkt.proto != IPPROTO_UDP)
		return TC_ACT_OK;
	e = ct_lookup_reply4(&pkt);
	if (!e || !(e->flags & CT_F_NODEPORT))
		return TC_ACT_OK;
	nat.rev_nat_id = e->rev_nat_id;
	nat.flags = e->flags & CT_F_NAT_MASK;
	nat.aux = e->nat_aux;
	load_config(&cfg);
	ct_reply_seen4(e, &pkt, &cfg);
	ret = lb4_rev_nat(ctx, &pkt, &nat);
	if (ret < 0)
		return drop(ctx, &cfg, -ret, METRIC_DIR_EGRESS, &pkt, 0, IDENTITY_HOST);
	return TC_ACT_OK;
}

/* ---- Socket-level load balancing (cgroup v2 sock_addr hooks) ---- */

#define ECONNREFUSED_ 111
#define EPERM_ 1
#define SYS_PROCEED 1
#define SYS_REJECT 0

/*
 * Translates the destination of connect()/sendmsg() towards a frontend to a
 * backend: ctx->user_ip4/user_port rewritten, the reverse mapping kept per
 * socket cookie for recvmsg4/getpeername4. External frontends (NodePort,
 * ExternalIP, LoadBalancer) are only translated in the host network
 * namespace (cilium_lb_config_v1), so other namespaces on the machine reach
 * them through the devices like any outside client; the host's own sockets use
 * the frontend's internal scope when it has two. No backend: the call
 * fails at once with ECONNREFUSED. A refused call counts as one packet (0
 * bytes) of its drop reason in cilium_metrics_v1. @sendmsg: unconnected UDP
 * keeps one backend per socket and frontend (cilium_lb4_sk_fwd_v1).
 */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx, int sendmsg)
{
	struct lb4_service *found, svc;
	struct lb4_backend be = {}, *bep;
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	__u8 proto = (__u8)ctx->protocol;
	__u64 netns, cookie;
	__u32 id = 0;
	__u8 scope;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SYS_PROCEED;
	found = lb4_lookup_service(addr, port, proto);
	if (!found)
		return SYS_PROCEED;
	svc = *found;
	netns = bpf_get_netns_cookie(ctx);
	if (svc.flags & SVC_F_EXTERNAL) {
		__u64 host = lb_host_netns_cookie();

		if (!host || netns != host)
			return SYS_PROCEED;
	}
	if (svc.flags & SVC_F_SRC_RANGE) {
		/* The socket's own address, or the node's when not bound yet; refused
		 * like a connect() that netfilter drops on its way out. */
		struct bpf_sock *sk = ctx->sk;
		__be32 src = sk ? sk->src_ip4 : 0;

		if (sendmsg && ctx->msg_src_ip4)
			src = ctx->msg_src_ip4;
		if (!src)
			src = lb_node_addr();
		if (!lb4_src_range_ok(&svc, src)) {
			update_metrics(DROP_LB_SRC_RANGE, METRIC_DIR_EGRESS, 0);
			bpf_set_retval(-EPERM_);
			return SYS_REJECT;
		}
	}
	lb4_in_node_scope(&svc, addr, port, proto, &scope);
	if (!svc.count || (svc.flags & SVC_F_NO_BACKENDS)) {
		update_metrics(DROP_NO_SERVICE, METRIC_DIR_EGRESS, 0);
		bpf_set_retval(-ECONNREFUSED_);
		return SYS_REJECT;
	}
	cookie = bpf_get_socket_cookie(ctx);

	struct lb4_sk_fwd_key fkey = { .cookie = cookie, .address = addr, .port = port, .proto = proto };

	if (sendmsg) {
		struct lb4_sk_fwd_val *fv = bpf_map_lookup_elem(&cilium_lb4_sk_fwd_v1, &fkey);

		if (fv && fv->rev_nat_id == svc.rev_nat_id) {
			bep = lb4_lookup_backend(fv->backend_id);
			if (bep) {
				id = fv->backend_id;
				be = *bep;
			}
		}
	}
	if (!id) {
		id = lb4_select_backend(&svc, addr, port, proto, scope, 0, netns, 1, 0, &be);
		if (!id) {
			update_metrics(DROP_NO_SERVICE, METRIC_DIR_EGRESS, 0);
			bpf_set_retval(-ECONNREFUSED_);
			return SYS_REJECT;
		}
		if (sendmsg) {
			struct lb4_sk_fwd_val fv = { .backend_id = id, .rev_nat_id = svc.rev_nat_id };

			bpf_map_update_elem(&cilium_lb4_sk_fwd_v1, &fkey, &fv, BPF_ANY);
		}
	}

	struct lb4_sk_key skey = { .cookie = cookie, .address = be.address, .port = be.port };
	struct lb4_sk_val sval = { .address = addr, .port = port, .rev_nat_id = svc.rev_nat_id };

	bpf_map_update_elem(&cilium_lb4_sk_v1, &skey, &sval, BPF_ANY);
	ctx->user_ip4 = be.address;
	ctx->user_port = (__u32)be.port;
	return SYS_PROCEED;
}

/* The peer a translated socket sees is the frontend, not the backend. */
static __always_inline int sock4_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct lb4_sk_key key = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct lb4_sk_val *v = bpf_map_lookup_elem(&cilium_lb4_sk_v1, &key);

	if (v && lb4_lookup_revnat(v->rev_nat_id)) {
		ctx->user_ip4 = v->address;
		ctx->user_port = (__u32)v->port;
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int cil_sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx, 0);
}

SEC("cgroup/sendmsg4")
int cil_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx, 1);
}

SEC("cgroup/recvmsg4")
int cil_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_rev(ctx);
}

SEC("cgroup/getpeername4")
int cil_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_rev(ctx);
}

/*
 * A translated socket's reverse entry dies with the socket: without this the
 * LRU map fills after a few hundred thousand connections and every connect()
 * pays for an eviction. Unconnected UDP choices (cilium_lb4_sk_fwd_v1, keyed by
 * frontend) are left to the LRU.
 */
SEC("cgroup/sock_release")
int cil_sock4_release(struct bpf_sock *ctx)
{
	struct lb4_sk_key key = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->dst_ip4,
		.port = (__be16)ctx->dst_port,
	};

	if (key.address)
		bpf_map_delete_elem(&cilium_lb4_sk_v1, &key);
	return 1;
}
