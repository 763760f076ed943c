/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Shapes shared by skiff's kernel programs (skiff.bpf.c) and the Rust loader
 * (ebpf/src/abi.rs mirrors every struct here; a test compares their layouts).
 *
 * Addresses are always 16 bytes: IPv4 is stored v4-mapped (::ffff:a.b.c.d), so an
 * AF_INET6 dual-stack socket and an AF_INET socket describe the same connection alike.
 * Ports are in host byte order.
 */
#ifndef SKIFF_H
#define SKIFF_H

#include <linux/types.h>

#define SKIFF_MAX_PORTS 16
#define SKIFF_MAX_CIDRS 16
#define SKIFF_MAX_IDS 4
#define SKIFF_MAX_POD_IPS 4

/* skiff_pod.flags */
#define SKIFF_F_OUT_ALL_CIDRS (1u << 0) /* -i '*' */
#define SKIFF_F_IN_ALL_PORTS (1u << 1)  /* -b '*' */
#define SKIFF_F_EVENTS (1u << 2)        /* send events to the ring buffer */
#define SKIFF_F_SK_MSG (1u << 3)        /* short-circuit local hops with sk_msg */

/* An address range; IPv4 ranges are v4-mapped with 96 added to the prefix. */
struct skiff_cidr {
	__u8 addr[16];
	__u32 prefix;
};

/* What one enrolled pod (network namespace) captures. Key: the netns cookie (u64). */
struct skiff_pod {
	__u16 outbound_port; /* -p */
	__u16 inbound_port;  /* -z */
	__u16 tunnel_port;   /* -e, never captured inbound */
	__u16 pad0;
	__u32 flags;
	__u32 mark; /* sockets with this SO_MARK are the proxy's; 0: none */
	__u32 n_uids;
	__u32 n_gids;
	__u32 uids[SKIFF_MAX_IDS]; /* -u */
	__u32 gids[SKIFF_MAX_IDS]; /* -g */
	__u16 n_in_ports;
	__u16 n_in_exclude_ports;
	__u16 n_out_ports;
	__u16 n_out_exclude_ports;
	__u16 in_ports[SKIFF_MAX_PORTS];          /* -b */
	__u16 in_exclude_ports[SKIFF_MAX_PORTS];  /* -d */
	__u16 out_ports[SKIFF_MAX_PORTS];         /* -q */
	__u16 out_exclude_ports[SKIFF_MAX_PORTS]; /* -o */
	__u32 n_out_cidrs;
	__u32 n_out_exclude_cidrs;
	__u32 n_pod_ips;
	__u32 pad1;
	struct skiff_cidr out_cidrs[SKIFF_MAX_CIDRS];         /* -i */
	struct skiff_cidr out_exclude_cidrs[SKIFF_MAX_CIDRS]; /* -x */
	__u8 pod_ips[SKIFF_MAX_POD_IPS][16];
};

/* A redirected connection, as the application's socket and the proxy's accepted
 * socket both see it. Key of skiff_orig_dst. */
struct skiff_tuple {
	__u64 netns;
	__u8 client_ip[16];
	__u8 proxy_ip[16];
	__u16 client_port;
	__u16 proxy_port;
	__u32 pad;
};

/* Where a redirected connection was going. */
struct skiff_orig {
	__u8 ip[16];
	__u16 port;
	__u16 family; /* AF_INET or AF_INET6, as the application asked */
	__u32 pad;
};

/* Key of skiff_listeners: the proxy's inbound listener of one netns and family. */
struct skiff_listener_key {
	__u64 netns;
	__u32 family;
	__u32 pad;
};

/* A local TCP socket as it sees itself. Key of skiff_socks, the sockhash sk_msg
 * redirects through: a socket finds its peer under its own key with the two ends
 * swapped. */
struct skiff_sock_key {
	__u64 netns;
	__u8 local_ip[16];
	__u8 remote_ip[16];
	__u16 local_port;
	__u16 remote_port;
	__u32 pad;
};

/* skiff_event.kind */
enum skiff_event_kind {
	SKIFF_EV_REDIRECTED = 1,
	SKIFF_EV_EXCLUDED = 2,
	SKIFF_EV_INBOUND_ASSIGNED = 3,
	SKIFF_EV_LOOKUP_MISS = 4,
	SKIFF_EV_INBOUND_NO_LISTENER = 5,
};

/* skiff_event.reason for SKIFF_EV_EXCLUDED */
enum skiff_reason {
	SKIFF_R_NONE = 0,
	SKIFF_R_OWNER = 1,
	SKIFF_R_MARK = 2,
	SKIFF_R_PORT = 3,
	SKIFF_R_CIDR = 4,
	SKIFF_R_NOT_INCLUDED = 5,
	SKIFF_R_LOOP = 6,
};

/* One kernel event, sent through the skiff_events ring buffer. */
struct skiff_event {
	__u64 netns;
	__u32 kind;
	__u32 reason;
	__u8 ip[16]; /* the destination */
	__u16 port;
	__u16 pad;
	__u32 pid;
};

/* Indices of the skiff_stats per-CPU counters. */
enum skiff_stat {
	SKIFF_S_OUT_REDIRECTED = 0,
	SKIFF_S_OUT_EXCLUDED_OWNER,
	SKIFF_S_OUT_EXCLUDED_MARK,
	SKIFF_S_OUT_EXCLUDED_PORT,
	SKIFF_S_OUT_EXCLUDED_CIDR,
	SKIFF_S_OUT_NOT_INCLUDED,
	SKIFF_S_OUT_LOCAL,
	SKIFF_S_OUT_LOOP,
	SKIFF_S_ORIG_RECORDED,
	SKIFF_S_ORIG_DELETED,
	SKIFF_S_GETSOCKOPT_HIT,
	SKIFF_S_GETSOCKOPT_LOCAL,
	SKIFF_S_GETSOCKOPT_MISS,
	SKIFF_S_IN_ASSIGNED,
	SKIFF_S_IN_EXCLUDED,
	SKIFF_S_IN_NO_LISTENER,
	SKIFF_S_IN_ASSIGN_FAILED,
	SKIFF_S_LISTENER_REGISTERED,
	SKIFF_S_EVENTS_DROPPED,
	SKIFF_S_STORAGE_FAILED,
	SKIFF_S_SK_MSG_SOCKETS,    /* sockets put into skiff_socks */
	SKIFF_S_SK_MSG_REDIRECTED, /* messages handed straight to the peer socket */
	SKIFF_S_SK_MSG_PASSED,     /* messages sent through TCP: no peer (yet) */
	SKIFF_S_MAX,
};

#endif
