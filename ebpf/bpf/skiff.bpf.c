// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * skiff's transparent redirection, without iptables.
 *
 * Outbound: cgroup/connect4 and connect6 rewrite an enrolled pod's TCP connect to the
 * proxy's outbound port on loopback and keep the original destination in socket storage.
 * sockops copies it, once the connection is established, into skiff_orig_dst keyed by
 * (netns, client, proxy); cgroup/getsockopt answers SO_ORIGINAL_DST from there on the
 * proxy's accepted socket, as conntrack would after an iptables REDIRECT. The entry is
 * deleted when the proxy's socket closes.
 *
 * Inbound: sk_lookup, attached to the pod's network namespace, hands connections for the
 * pod's addresses to the proxy's inbound listener, which sockops put into skiff_listeners
 * when it called listen(). The connection keeps its destination (the listener's accepted
 * socket has it as local address) and its source.
 *
 * Optionally (pods enrolled with --sk-msg), sockops puts both sockets of each local hop
 * (the application and the proxy's outbound port; the proxy from 127.0.0.6 and the
 * application) into skiff_socks, and skiff_sk_msg hands each message straight to the peer's
 * receive queue, past the loopback TCP stack.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/socket.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "skiff.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define SOCK_STREAM 1
#define SOL_SOCKET 1
#define SO_MARK 36
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80
#define IP6T_SO_ORIGINAL_DST 80
#define PAGE_SIZE 4096

/*
 * Context fields are read once each, at fixed offsets, before any branch: clang would
 * otherwise share one load between the IPv4 and IPv6 paths through a moved context
 * pointer, which the verifier refuses.
 */
#define LOAD(x) ({ __typeof__(x) __v = (x); asm volatile("" : "+r"(__v)); __v; })

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The network namespace an sk_lookup instance serves: set by the loader for each pod,
 * since sk_lookup programs cannot ask for the netns cookie. */
volatile const __u64 skiff_netns_cookie = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct skiff_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} skiff_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct skiff_tuple);
	__type(value, struct skiff_orig);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} skiff_orig_dst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct skiff_orig);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} skiff_sk_dst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 8192);
	__type(key, struct skiff_listener_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} skiff_listeners SEC(".maps");

/* The local sockets of redirected hops (app <-> proxy on loopback), for pods enrolled
 * with sk_msg: skiff_sk_msg hands a message straight to the peer's receive queue. The
 * kernel takes a socket out when it closes. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct skiff_sock_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} skiff_socks SEC(".maps");

/* Set on a socket of skiff_socks once one of its messages went through TCP: from then on
 * all of them do, so the peer never reads a redirected message before an earlier one. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} skiff_sk_msg_tcp SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SKIFF_S_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} skiff_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} skiff_events SEC(".maps");

static __always_inline void count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&skiff_stats, &stat);
	if (v)
		*v += 1;
}

static __always_inline void emit(const struct skiff_pod *pod, __u64 netns, __u32 kind,
				 __u32 reason, const __u8 ip[16], __u16 port)
{
	if (!(pod->flags & SKIFF_F_EVENTS))
		return;
	struct skiff_event *e = bpf_ringbuf_reserve(&skiff_events, sizeof(*e), 0);
	if (!e) {
		count(SKIFF_S_EVENTS_DROPPED);
		return;
	}
	e->netns = netns;
	e->kind = kind;
	e->reason = reason;
	__builtin_memcpy(e->ip, ip, 16);
	e->port = port;
	e->pad = 0;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void v4_mapped(__u8 out[16], __u32 be_addr)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &be_addr, 4);
}

static __always_inline void v6_copy(__u8 out[16], const __u32 words[4])
{
	__u32 w[4] = {words[0], words[1], words[2], words[3]};
	__builtin_memcpy(out, w, 16);
}

static __always_inline int is_v4_mapped(const __u8 a[16])
{
	for (int i = 0; i < 10; i++)
		if (a[i])
			return 0;
	return a[10] == 0xff && a[11] == 0xff;
}

static __always_inline int is_loopback(const __u8 a[16])
{
	if (is_v4_mapped(a))
		return a[12] == 127;
	for (int i = 0; i < 15; i++)
		if (a[i])
			return 0;
	return a[15] == 1;
}

/* ::6, the IPv6 source of the proxy's inbound passthrough (127.0.0.6 is loopback). */
static __always_inline int is_inbound_passthrough(const __u8 a[16])
{
	for (int i = 0; i < 15; i++)
		if (a[i])
			return 0;
	return a[15] == 6;
}

/* 127.0.0.6 or ::6: the proxy's side of its connection to the application. */
static __always_inline int is_passthrough_source(const __u8 a[16])
{
	if (is_v4_mapped(a))
		return a[12] == 127 && a[13] == 0 && a[14] == 0 && a[15] == 6;
	return is_inbound_passthrough(a);
}

static __always_inline int same_ip(const __u8 a[16], const __u8 b[16])
{
	for (int i = 0; i < 16; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

static __always_inline int in_cidr(const __u8 a[16], const struct skiff_cidr *c)
{
	__u32 prefix = c->prefix;
	for (int i = 0; i < 16; i++) {
		if (prefix == 0)
			return 1;
		__u8 mask = prefix >= 8 ? 0xff : (__u8)(0xff << (8 - prefix));
		if ((a[i] & mask) != (c->addr[i] & mask))
			return 0;
		prefix = prefix >= 8 ? prefix - 8 : 0;
	}
	return 1;
}

static __always_inline int in_ports(__u16 port, const __u16 *list, __u16 n)
{
	for (int i = 0; i < SKIFF_MAX_PORTS; i++) {
		if (i >= n)
			break;
		if (list[i] == port)
			return 1;
	}
	return 0;
}

static __always_inline int in_cidrs(const __u8 a[16], const struct skiff_cidr *list, __u32 n)
{
	for (int i = 0; i < SKIFF_MAX_CIDRS; i++) {
		if (i >= n)
			break;
		if (in_cidr(a, &list[i]))
			return 1;
	}
	return 0;
}

static __always_inline int in_ids(__u32 id, const __u32 *list, __u32 n)
{
	for (int i = 0; i < SKIFF_MAX_IDS; i++) {
		if (i >= n)
			break;
		if (list[i] == id)
			return 1;
	}
	return 0;
}

/*
 * Whether an enrolled pod's connect to dst:port goes to the proxy, with istio-iptables'
 * order: owner exemptions, loopback and the pod's own addresses, excluded ports (-o),
 * included ports (-q), excluded CIDRs (-x), then included CIDRs (-i).
 * Returns SKIFF_R_NONE to redirect, or why not.
 */
static __always_inline __u32 outbound_verdict(struct bpf_sock_addr *ctx,
					      const struct skiff_pod *pod, const __u8 dst[16],
					      __u16 port)
{
	__u64 ug = bpf_get_current_uid_gid();
	if (in_ids((__u32)ug, pod->uids, pod->n_uids) ||
	    in_ids((__u32)(ug >> 32), pod->gids, pod->n_gids)) {
		count(SKIFF_S_OUT_EXCLUDED_OWNER);
		return SKIFF_R_OWNER;
	}
	if (pod->mark) {
		__u32 mark = 0;
		if (bpf_getsockopt(ctx, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) == 0 &&
		    mark == pod->mark) {
			count(SKIFF_S_OUT_EXCLUDED_MARK);
			return SKIFF_R_MARK;
		}
	}
	if (is_loopback(dst)) {
		count(SKIFF_S_OUT_LOCAL);
		return SKIFF_R_NOT_INCLUDED;
	}
	for (int i = 0; i < SKIFF_MAX_POD_IPS; i++) {
		if (i >= pod->n_pod_ips)
			break;
		if (same_ip(dst, pod->pod_ips[i])) {
			count(SKIFF_S_OUT_LOCAL);
			return SKIFF_R_NOT_INCLUDED;
		}
	}
	if (port == pod->outbound_port || port == pod->inbound_port) {
		count(SKIFF_S_OUT_LOOP);
		return SKIFF_R_LOOP;
	}
	if (in_ports(port, pod->out_exclude_ports, pod->n_out_exclude_ports)) {
		count(SKIFF_S_OUT_EXCLUDED_PORT);
		return SKIFF_R_PORT;
	}
	if (in_ports(port, pod->out_ports, pod->n_out_ports))
		return SKIFF_R_NONE;
	if (in_cidrs(dst, pod->out_exclude_cidrs, pod->n_out_exclude_cidrs)) {
		count(SKIFF_S_OUT_EXCLUDED_CIDR);
		return SKIFF_R_CIDR;
	}
	if ((pod->flags & SKIFF_F_OUT_ALL_CIDRS) ||
	    in_cidrs(dst, pod->out_cidrs, pod->n_out_cidrs))
		return SKIFF_R_NONE;
	count(SKIFF_S_OUT_NOT_INCLUDED);
	return SKIFF_R_NOT_INCLUDED;
}

/* Decides and, when redirecting, remembers the destination; returns 1 to redirect. */
static __always_inline int outbound(struct bpf_sock_addr *ctx, const __u8 dst[16], __u16 port,
				    __u16 family, __u16 *proxy_port)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct skiff_pod *pod = bpf_map_lookup_elem(&skiff_pods, &netns);
	if (!pod)
		return 0;
	__u32 reason = outbound_verdict(ctx, pod, dst, port);
	if (reason != SKIFF_R_NONE) {
		if (reason != SKIFF_R_NOT_INCLUDED || !is_loopback(dst))
			emit(pod, netns, SKIFF_EV_EXCLUDED, reason, dst, port);
		return 0;
	}
	struct skiff_orig *o = bpf_sk_storage_get(&skiff_sk_dst, ctx->sk, 0,
						  BPF_SK_STORAGE_GET_F_CREATE);
	if (!o) {
		count(SKIFF_S_STORAGE_FAILED);
		return 0;
	}
	__builtin_memcpy(o->ip, dst, 16);
	o->port = port;
	o->family = family;
	o->pad = 0;
	*proxy_port = pod->outbound_port;
	count(SKIFF_S_OUT_REDIRECTED);
	emit(pod, netns, SKIFF_EV_REDIRECTED, SKIFF_R_NONE, dst, port);
	return 1;
}

SEC("cgroup/connect4")
int skiff_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM)
		return 1;
	__u8 dst[16];
	v4_mapped(dst, ctx->user_ip4);
	__u16 proxy_port = 0;
	if (outbound(ctx, dst, bpf_ntohs((__u16)ctx->user_port), AF_INET, &proxy_port)) {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(proxy_port);
	}
	return 1;
}

SEC("cgroup/connect6")
int skiff_connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM)
		return 1;
	__u32 w[4] = {LOAD(ctx->user_ip6[0]), LOAD(ctx->user_ip6[1]), LOAD(ctx->user_ip6[2]),
		      LOAD(ctx->user_ip6[3])};
	__u8 dst[16];
	v6_copy(dst, w);
	__u16 proxy_port = 0;
	int mapped = is_v4_mapped(dst);
	if (outbound(ctx, dst, bpf_ntohs((__u16)ctx->user_port), mapped ? AF_INET : AF_INET6,
		     &proxy_port)) {
		if (mapped) {
			/* ::ffff:127.0.0.1: the proxy's IPv4 listener takes it */
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
			ctx->user_ip6[3] = bpf_htonl(0x7f000001);
		} else {
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = 0;
			ctx->user_ip6[3] = bpf_htonl(1);
		}
		ctx->user_port = bpf_htons(proxy_port);
	}
	return 1;
}

/* Fills a 16-byte address from an IPv4 word and four IPv6 words, by family. */
static __always_inline void pick_addr(__u8 out[16], __u32 family, __u32 v4, __u32 w0, __u32 w1,
				      __u32 w2, __u32 w3)
{
	if (family == AF_INET) {
		v4_mapped(out, v4);
	} else {
		__u32 w[4] = {w0, w1, w2, w3};
		__builtin_memcpy(out, w, 16);
	}
}

/* Puts a socket of a local hop into skiff_socks, keyed as it sees itself. */
static __always_inline void sk_msg_insert(struct bpf_sock_ops *skops, __u64 netns,
					  const __u8 local[16], const __u8 remote[16],
					  __u16 local_port, __u16 remote_port)
{
	struct skiff_sock_key k = {.netns = netns, .local_port = local_port,
				   .remote_port = remote_port};
	__builtin_memcpy(k.local_ip, local, 16);
	__builtin_memcpy(k.remote_ip, remote, 16);
	if (bpf_sock_hash_update(skops, &skiff_socks, &k, BPF_NOEXIST) == 0)
		count(SKIFF_S_SK_MSG_SOCKETS);
}

SEC("sockops")
int skiff_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	if (op != BPF_SOCK_OPS_TCP_LISTEN_CB && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB)
		return 1;
	__u64 netns = bpf_get_netns_cookie(skops);
	struct skiff_pod *pod = bpf_map_lookup_elem(&skiff_pods, &netns);
	if (!pod)
		return 1;
	__u16 local_port = (__u16)skops->local_port;
	__u32 family = LOAD(skops->family);
	if (op == BPF_SOCK_OPS_TCP_LISTEN_CB) {
		/* The proxy's inbound listener: sk_lookup hands it the pod's connections. */
		if (local_port == pod->inbound_port) {
			struct skiff_listener_key k = {.netns = netns, .family = family};
			if (bpf_sock_hash_update(skops, &skiff_listeners, &k, BPF_ANY) == 0)
				count(SKIFF_S_LISTENER_REGISTERED);
		}
		return 1;
	}
	__u16 remote_port = (__u16)bpf_ntohl(skops->remote_port);
	struct skiff_tuple t = {};
	__u8 local[16], remote[16];
	pick_addr(local, family, LOAD(skops->local_ip4), LOAD(skops->local_ip6[0]),
		  LOAD(skops->local_ip6[1]), LOAD(skops->local_ip6[2]), LOAD(skops->local_ip6[3]));
	pick_addr(remote, family, LOAD(skops->remote_ip4), LOAD(skops->remote_ip6[0]),
		  LOAD(skops->remote_ip6[1]), LOAD(skops->remote_ip6[2]),
		  LOAD(skops->remote_ip6[3]));
	int sk_msg = pod->flags & SKIFF_F_SK_MSG;

	switch (op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		/* The application's redirected socket: publish its destination. */
		struct bpf_sock *sk = skops->sk;
		if (!sk)
			break;
		struct skiff_orig *o = bpf_sk_storage_get(&skiff_sk_dst, sk, 0, 0);
		if (!o) {
			/* The proxy's connection to the application: the other local hop. */
			if (sk_msg && is_passthrough_source(local))
				sk_msg_insert(skops, netns, local, remote, local_port, remote_port);
			break;
		}
		t.netns = netns;
		__builtin_memcpy(t.client_ip, local, 16);
		__builtin_memcpy(t.proxy_ip, remote, 16);
		t.client_port = local_port;
		t.proxy_port = remote_port;
		struct skiff_orig v = *o;
		if (bpf_map_update_elem(&skiff_orig_dst, &t, &v, BPF_ANY) == 0)
			count(SKIFF_S_ORIG_RECORDED);
		if (sk_msg)
			sk_msg_insert(skops, netns, local, remote, local_port, remote_port);
		break;
	}
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (local_port == pod->outbound_port) {
			/* The proxy's side of a redirected connection: forget it when it closes. */
			bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
			if (sk_msg && is_loopback(remote))
				sk_msg_insert(skops, netns, local, remote, local_port, remote_port);
		} else if (sk_msg && is_passthrough_source(remote)) {
			/* The application's side of the proxy's connection to it. */
			sk_msg_insert(skops, netns, local, remote, local_port, remote_port);
		}
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != BPF_TCP_CLOSE || local_port != pod->outbound_port)
			break;
		t.netns = netns;
		__builtin_memcpy(t.client_ip, remote, 16);
		__builtin_memcpy(t.proxy_ip, local, 16);
		t.client_port = remote_port;
		t.proxy_port = local_port;
		if (bpf_map_delete_elem(&skiff_orig_dst, &t) == 0)
			count(SKIFF_S_ORIG_DELETED);
		break;
	}
	return 1;
}

/*
 * A message sent on a socket of skiff_socks goes straight into its peer's receive queue
 * when the peer is there too. A socket whose peer was not there yet (the application can
 * write before the proxy's side is established) keeps TCP for good, so its peer never
 * sees messages out of order.
 */
SEC("sk_msg")
int skiff_sk_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	if (!sk)
		return SK_PASS;
	__u32 *tcp = bpf_sk_storage_get(&skiff_sk_msg_tcp, sk, 0, 0);
	if (tcp && *tcp) {
		count(SKIFF_S_SK_MSG_PASSED);
		return SK_PASS;
	}
	__u32 family = LOAD(msg->family);
	struct skiff_sock_key peer = {};
	peer.netns = bpf_get_netns_cookie(msg);
	pick_addr(peer.local_ip, family, LOAD(msg->remote_ip4), LOAD(msg->remote_ip6[0]),
		  LOAD(msg->remote_ip6[1]), LOAD(msg->remote_ip6[2]), LOAD(msg->remote_ip6[3]));
	pick_addr(peer.remote_ip, family, LOAD(msg->local_ip4), LOAD(msg->local_ip6[0]),
		  LOAD(msg->local_ip6[1]), LOAD(msg->local_ip6[2]), LOAD(msg->local_ip6[3]));
	peer.local_port = (__u16)bpf_ntohl(LOAD(msg->remote_port));
	peer.remote_port = (__u16)LOAD(msg->local_port);
	if (bpf_msg_redirect_hash(msg, &skiff_socks, &peer, BPF_F_INGRESS) == SK_PASS) {
		count(SKIFF_S_SK_MSG_REDIRECTED);
		return SK_PASS;
	}
	tcp = bpf_sk_storage_get(&skiff_sk_msg_tcp, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (tcp)
		*tcp = 1;
	count(SKIFF_S_SK_MSG_PASSED);
	return SK_PASS;
}

/* Writes a sockaddr for SO_ORIGINAL_DST; returns 0 when the caller's buffer is too small. */
static __always_inline int answer(struct bpf_sockopt *ctx, const __u8 ip[16], __u16 port,
				  int v6)
{
	void *optval = ctx->optval;
	void *end = ctx->optval_end;
	int len;
	if (v6) {
		struct sockaddr_in6 *sa = optval;
		if ((void *)(sa + 1) > end)
			return 0;
		sa->sin6_family = AF_INET6;
		sa->sin6_port = bpf_htons(port);
		sa->sin6_flowinfo = 0;
		__builtin_memcpy(&sa->sin6_addr, ip, 16);
		sa->sin6_scope_id = 0;
		len = sizeof(*sa);
	} else {
		struct sockaddr_in *sa = optval;
		if ((void *)(sa + 1) > end)
			return 0;
		sa->sin_family = AF_INET;
		sa->sin_port = bpf_htons(port);
		__builtin_memcpy(&sa->sin_addr, ip + 12, 4);
		__builtin_memset(sa->sin_zero, 0, sizeof(sa->sin_zero));
		len = sizeof(*sa);
	}
	ctx->optlen = len;
	/* Keep the two 4-byte context stores apart: merged into one 8-byte store, the
	 * verifier refuses them. */
	asm volatile("" ::: "memory");
	ctx->retval = 0;
	return 1;
}

SEC("cgroup/getsockopt")
int skiff_getsockopt(struct bpf_sockopt *ctx)
{
	int level = ctx->level, optname = ctx->optname;
	int v6;
	if (level == SOL_IP && optname == SO_ORIGINAL_DST)
		v6 = 0;
	else if (level == SOL_IPV6 && optname == IP6T_SO_ORIGINAL_DST)
		v6 = 1;
	else
		goto passthrough;
	if (ctx->retval == 0)
		goto passthrough; /* conntrack knew it (iptables REDIRECT): keep its answer */
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		goto passthrough;
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct skiff_pod *pod = bpf_map_lookup_elem(&skiff_pods, &netns);
	if (!pod)
		goto passthrough;

	struct skiff_tuple t = {};
	t.netns = netns;
	__u32 family = LOAD(sk->family);
	pick_addr(t.proxy_ip, family, LOAD(sk->src_ip4), LOAD(sk->src_ip6[0]),
		  LOAD(sk->src_ip6[1]), LOAD(sk->src_ip6[2]), LOAD(sk->src_ip6[3]));
	pick_addr(t.client_ip, family, LOAD(sk->dst_ip4), LOAD(sk->dst_ip6[0]),
		  LOAD(sk->dst_ip6[1]), LOAD(sk->dst_ip6[2]), LOAD(sk->dst_ip6[3]));
	t.proxy_port = (__u16)LOAD(sk->src_port);
	t.client_port = bpf_ntohs((__u16)LOAD(sk->dst_port));

	struct skiff_orig *o = bpf_map_lookup_elem(&skiff_orig_dst, &t);
	if (o) {
		if (answer(ctx, o->ip, o->port, v6))
			count(SKIFF_S_GETSOCKOPT_HIT);
		return 1;
	}
	/* A socket sk_lookup steered to the inbound listener keeps its destination as its
	 * local address: that is the original destination. A socket accepted on the
	 * proxy's own ports was not steered, and has none. */
	if (t.proxy_port != pod->inbound_port && t.proxy_port != pod->outbound_port &&
	    !is_loopback(t.proxy_ip)) {
		if (answer(ctx, t.proxy_ip, t.proxy_port, v6))
			count(SKIFF_S_GETSOCKOPT_LOCAL);
		return 1;
	}
	count(SKIFF_S_GETSOCKOPT_MISS);
	emit(pod, netns, SKIFF_EV_LOOKUP_MISS, SKIFF_R_NONE, t.client_ip, t.client_port);
	return 1;

passthrough:
	/* Anything else goes back as the kernel answered it; over a page, the program only
	 * saw the first page and must hand the kernel's buffer through. */
	if (ctx->optlen > PAGE_SIZE)
		ctx->optlen = 0;
	return 1;
}

/* Whether an inbound connection to this port goes to the proxy (-b, -d, and the proxy's
 * own ports, never). */
static __always_inline int inbound_port_captured(const struct skiff_pod *pod, __u16 port)
{
	if (port == pod->inbound_port || port == pod->outbound_port || port == pod->tunnel_port)
		return 0;
	if (pod->flags & SKIFF_F_IN_ALL_PORTS)
		return !in_ports(port, pod->in_exclude_ports, pod->n_in_exclude_ports);
	return in_ports(port, pod->in_ports, pod->n_in_ports);
}

SEC("sk_lookup")
int skiff_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	__u64 netns = skiff_netns_cookie;
	struct skiff_pod *pod = bpf_map_lookup_elem(&skiff_pods, &netns);
	if (!pod)
		return SK_PASS;
	__u8 local[16], remote[16];
	__u32 family = LOAD(ctx->family);
	pick_addr(local, family, LOAD(ctx->local_ip4), LOAD(ctx->local_ip6[0]),
		  LOAD(ctx->local_ip6[1]), LOAD(ctx->local_ip6[2]), LOAD(ctx->local_ip6[3]));
	pick_addr(remote, family, LOAD(ctx->remote_ip4), LOAD(ctx->remote_ip6[0]),
		  LOAD(ctx->remote_ip6[1]), LOAD(ctx->remote_ip6[2]), LOAD(ctx->remote_ip6[3]));
	__u16 port = (__u16)ctx->local_port;
	/* Loopback and the pod talking to itself stay local, as with iptables; the proxy's
	 * own connection to the application comes from 127.0.0.6 (::6) and is not steered
	 * back to itself. */
	if (is_loopback(local) || is_loopback(remote) || is_inbound_passthrough(remote) ||
	    same_ip(local, remote))
		return SK_PASS;
	if (!inbound_port_captured(pod, port)) {
		count(SKIFF_S_IN_EXCLUDED);
		return SK_PASS;
	}
	struct skiff_listener_key k = {.netns = netns, .family = family};
	struct bpf_sock *sk = bpf_map_lookup_elem(&skiff_listeners, &k);
	if (!sk && family == AF_INET) {
		k.family = AF_INET6; /* a dual-stack [::] listener takes IPv4 too */
		sk = bpf_map_lookup_elem(&skiff_listeners, &k);
	}
	if (!sk) {
		count(SKIFF_S_IN_NO_LISTENER);
		emit(pod, netns, SKIFF_EV_INBOUND_NO_LISTENER, SKIFF_R_NONE, local, port);
		return SK_PASS;
	}
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		count(SKIFF_S_IN_ASSIGN_FAILED);
		return SK_PASS;
	}
	count(SKIFF_S_IN_ASSIGNED);
	emit(pod, netns, SKIFF_EV_INBOUND_ASSIGNED, SKIFF_R_NONE, local, port);
	return SK_PASS;
}
