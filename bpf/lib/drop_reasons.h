/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one list of drop reasons, shared by the C datapath and the Rust crate.
 *
 * Each entry is X(C_NAME, code, "short-name", "description"). build.rs parses
 * this file and generates the Rust `DropReason` enum from it, so the list must
 * keep the shape: one X(...) per line, code a decimal literal in 1..=255,
 * strings without escaped quotes. Code 0 is reserved for "forwarded" in the
 * metrics map. Never reuse a code for a different meaning.
 */
#pragma once

#define CILIUM_DROP_REASONS(X)                                                           \
	X(DROP_INVALID_SIP, 132, "invalid-source-ip",                                    \
	  "source IPv4 address is not the endpoint's address on this interface")         \
	X(DROP_POLICY_DENIED, 133, "policy-denied",                                      \
	  "denied by network policy: no rule allows it (default deny)")                  \
	X(DROP_INVALID_PACKET, 134, "invalid-packet", "truncated or malformed packet")   \
	X(DROP_CT_INVALID_HDR, 135, "ct-invalid-header",                                 \
	  "conntrack: layer-4 header could not be read")                                 \
	X(DROP_WRITE_ERROR, 141, "write-error", "rewriting packet headers failed")       \
	X(DROP_NO_SERVICE, 158, "no-service-backend",                                    \
	  "service has no backend: connection refused (TCP RST or ICMP unreachable sent)") \
	X(DROP_TTL_EXCEEDED, 147, "ttl-exceeded",                                        \
	  "IPv4 TTL expired (local delivery, or NodePort forwarding to a backend elsewhere)") \
	X(DROP_CT_MAP_FULL, 160, "ct-map-insertion-failed",                              \
	  "conntrack entry could not be created")                                        \
	X(DROP_REDIRECT_FAILED, 161, "redirect-failed",                                  \
	  "redirect to the destination endpoint failed")                                 \
	X(DROP_NAT_NO_PORT, 162, "snat-no-port",                                         \
	  "NodePort SNAT: no free node port towards this backend (or the SNAT map is full)") \
	X(DROP_LB_SRC_RANGE, 177, "lb-source-range",                                    \
	  "client address outside the service's loadBalancerSourceRanges")               \
	X(DROP_POLICY_DENY, 181, "policy-deny", "denied by an explicit deny policy rule")

#define CILIUM_DROP_ENUM_ENTRY(name, code, short_name, desc) name = code,

enum cilium_drop_reason { CILIUM_DROP_REASONS(CILIUM_DROP_ENUM_ENTRY) };
