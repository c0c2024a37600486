/* vnfkit.h: the portable VNF API. A VNF's fastpath.c includes only this and compiles,
 * unchanged, to a BPF object (XDP and TC programs) and to a native shared object.
 *
 *   #define VNF_COUNTERS(X) X(allowed) X(denied)     custom counters (optional)
 *   #define VNF_PORTS(X) X(wan) X(lan)                 redirect targets (optional)
 *   #include <vnfkit.h>
 *
 *   struct vnf_config { __u32 limit; };              parameters from vnf.yaml (optional)
 *   VK_USE_CONFIG;
 *   VK_HASH(flows, struct flow_key, __u64, 1024);
 *
 *   static __always_inline int process(struct vk_pkt *p) { ...; return VK_PASS; }
 *   VNF_MAIN(process)
 *
 * See datapath/include/vnfkit/ for the pieces: packet access and parsing, checksums,
 * tables, hashes. This file holds verdicts, counters, configuration, head adjustment and the
 * entry points.
 */
#ifndef VNFKIT_H
#define VNFKIT_H

#include "vnfkit/platform.h"
#include "vnfkit/packet.h"
#include "vnfkit/csum.h"
#include "vnfkit/tables.h"
#include "vnfkit/hash.h"

/* ---- verdicts: the same numbers as datapath.verdict.Verdict in Python ---- */
enum vk_verdict {
    VK_DROP = 0,      /* discard */
    VK_PASS = 1,      /* to the host's network stack */
    VK_TX = 2,        /* back out of the interface it came in on */
    VK_NEXT = 3,      /* on to the next function of the chain */
    VK_REDIRECT = 4,  /* out of a named port (vk_redirect) */
    VK_ABORTED = 5,   /* a bug or impossible state: dropped and counted apart */
};

/* ---- counters: per-CPU {packets, bytes}; built-in ones first, then the VNF's ---- */
#ifndef VNF_COUNTERS
#define VNF_COUNTERS(X)
#endif
#define VK__COUNTER(name) CTR_##name,
enum vnf_counter {
    VK_CTR_RX = 0,
    VK_CTR_DROP, VK_CTR_PASS, VK_CTR_TX, VK_CTR_NEXT, VK_CTR_REDIRECT, VK_CTR_ABORTED,
    VNF_COUNTERS(VK__COUNTER)
    VK_CTR_MAX
};
#define VK_MAX_COUNTERS 64
_Static_assert(VK_CTR_MAX <= VK_MAX_COUNTERS, "too many counters");

struct vk_counter {
    __u64 packets;
    __u64 bytes;
};
VK_PERCPU_ARRAY(vk_counters, struct vk_counter, VK_MAX_COUNTERS);

/* ---- ports: named redirect targets; the control plane fills in their ifindexes ---- */
#ifndef VNF_PORTS
#define VNF_PORTS(X)
#endif
#define VK__PORT(name) PORT_##name,
enum vnf_port { VNF_PORTS(VK__PORT) VK_PORT_MAX };
#define VK_MAX_PORTS 16
VK_ARRAY(vk_ports, __u32, VK_MAX_PORTS);

/* ---- the last verdict, per CPU: lets test-run tell VK_NEXT from VK_PASS. Its enum
 * fields also keep enum vk_verdict, vnf_counter and vnf_port in BTF, where tools read
 * the verdict, counter and port names. ---- */
struct vk_state {
    enum vk_verdict verdict;
    enum vnf_port port;
    __u32 len;
    enum vnf_counter last_counter;
};
VK_PERCPU_ARRAY(vk_state, struct vk_state, 1);

/* ---- time: vk_now() is monotonic nanoseconds. When vk_clock[0] is non-zero it is the time
 * instead: the test harness sets it so the kernel, native and model executors see the
 * same clock, packet for packet. ---- */
VK_ARRAY(vk_clock, __u64, 1);

VK_INLINE __u64 vk_now(void)
{
    __u32 zero = 0;
    __u64 *t = vk_lookup(vk_clock, &zero);
    if (t && *t)
        return *t;
#ifdef VK_KERNEL
    return bpf_ktime_get_ns();
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (__u64)ts.tv_sec * 1000000000ull + (__u64)ts.tv_nsec;
#endif
}

VK_INLINE void vk_count_n(enum vnf_counter ctr, __u64 bytes)
{
    __u32 key = ctr;
    struct vk_counter *c = vk_lookup(vk_counters, &key);
    if (c) {
        c->packets += 1;
        c->bytes += bytes;
    }
}

/* Count this packet (its current length) in a counter. */
VK_INLINE void vk_count(const struct vk_pkt *p, enum vnf_counter ctr)
{
    vk_count_n(ctr, vk_len(p));
}

VK_INLINE int vk_redirect(struct vk_pkt *p, __u32 port)
{
    p->port = port;
    return VK_REDIRECT;
}

/* ---- configuration: struct vnf_config, read-only to the fast path ---- */
#define VK_USE_CONFIG VK_TABLE(vk_config, VK_T_ARRAY, __u32, struct vnf_config, 1, VK_F_RDONLY_PROG)
#define vk_config() ((const struct vnf_config *)vk__config_lookup(&vk_config))
#ifdef VK_KERNEL
#define vk__config_lookup(_t) ({ __u32 vk__zero = 0; bpf_map_lookup_elem((_t), &vk__zero); })
#else
#define vk__config_lookup(_t) ({ __u32 vk__zero = 0; vk_table_lookup((_t), &vk__zero); })
#endif

/* ---- head adjustment: delta < 0 grows the packet at the front (push a header), delta > 0
 * shrinks it (pop). Returns 0 or -1. Parse again afterwards: offsets have moved. ---- */
VK_INLINE int vk_adjust_head(struct vk_pkt *p, int delta)
{
#ifdef VK_KERNEL
    if (p->hook == VK_HOOK_XDP) {
        struct xdp_md *ctx = p->ctx;
        if (bpf_xdp_adjust_head(ctx, delta))
            return -1;
        p->data = (__u8 *)(long)ctx->data;
        p->end = (__u8 *)(long)ctx->data_end;
        return 0;
    }
    struct __sk_buff *skb = p->ctx;
    if (delta >= 0 || bpf_skb_change_head(skb, -delta, 0))
        return -1;  /* TC: push only (bpf_skb_change_head has no pop) */
    p->data = (__u8 *)(long)skb->data;
    p->end = (__u8 *)(long)skb->data_end;
    return 0;
#else
    __u8 *data = p->data + delta;
    if (data < p->buf || data + 14 > p->end)
        return -1;  /* out of headroom, or less than an Ethernet header left */
    p->data = data;
    return 0;
#endif
}

/* ---- entry points ---- */
#ifdef VK_KERNEL

/* In a service chain, the classifier puts the packet's SPI and SI in a per-CPU slot
 * (RFC 8300's service path header without the rest of NSH: local hops carry no header) and
 * the forwarder (chaining/progs/sff.c) tail-calls each function in turn; chain.h says why a
 * per-CPU slot and not XDP metadata. */
struct vk_meta {
    __u32 spi_si;   /* SPI << 8 | SI, host order */
    __u32 ttl;      /* hops left; the forwarder drops the packet at 0 */
};

/* Slot 0 holds the host's forwarder when this function runs in a chain; empty otherwise. */
struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
    __uint(max_entries, 1);
} vk_chain SEC(".maps");

/* In a chain, the chain's per-CPU SPI/SI slot (chain.h's chain_meta, reused at load); a
 * function on its own has one of its own that stays zero: SI 0, so "not in a chain". */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, struct vk_meta);
    __uint(max_entries, 1);
} vk_chain_meta SEC(".maps");

/* PASS or NEXT inside a chain: this function is done with the packet, so its SI goes down
 * by one (RFC 8300 section 2.3) and the forwarder takes it on. Returns only when the packet
 * is not in a chain (SI 0, or no forwarder), leaving the verdict to the caller. */
VK_INLINE void vk__chain_next(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct vk_meta *m = bpf_map_lookup_elem(&vk_chain_meta, &zero);
    if (!m || (m->spi_si & 0xff) == 0)
        return;  /* SI exhausted: the forwarder would drop it; the stack may still use it */
    m->spi_si -= 1;
    bpf_tail_call(ctx, &vk_chain, 0);
    m->spi_si += 1;  /* no forwarder: leave the slot as it was */
}

VK_INLINE int vk__finish(struct vk_pkt *p, int verdict)
{
    __u32 zero = 0;
    struct vk_state *st = bpf_map_lookup_elem(&vk_state, &zero);
    if ((__u32)verdict > VK_ABORTED)
        verdict = VK_ABORTED;
    vk_count(p, (enum vnf_counter)(VK_CTR_DROP + verdict));
    if (st) {
        st->verdict = verdict;
        st->port = p->port;
        st->len = vk_len(p);
    }
    return verdict;
}

VK_INLINE int vk__port_ifindex(__u32 port)
{
    __u32 *ifindex = bpf_map_lookup_elem(&vk_ports, &port);
    return ifindex ? *ifindex : 0;
}

/* PASS and NEXT continue along a chain when there is one (vk__chain_next), else the
 * packet goes to the host stack. */
#define VNF_MAIN(fn)                                                                \
    SEC("xdp") int vnf_xdp(struct xdp_md *ctx)                                      \
    {                                                                               \
        struct vk_pkt p = {.data = (__u8 *)(long)ctx->data,                         \
                           .end = (__u8 *)(long)ctx->data_end,                      \
                           .ctx = ctx, .hook = VK_HOOK_XDP};                        \
        vk_count(&p, VK_CTR_RX);                                                    \
        switch (vk__finish(&p, fn(&p))) {                                           \
        case VK_DROP: return XDP_DROP;                                              \
        case VK_PASS: case VK_NEXT: vk__chain_next(ctx); return XDP_PASS;           \
        case VK_TX: return XDP_TX;                                                  \
        case VK_REDIRECT: {                                                         \
            int ifindex = vk__port_ifindex(p.port);                                 \
            return ifindex ? bpf_redirect(ifindex, 0) : XDP_DROP;                   \
        }                                                                           \
        default: return XDP_ABORTED;                                                \
        }                                                                           \
    }                                                                               \
    SEC("tc") int vnf_tc(struct __sk_buff *skb)                                     \
    {                                                                               \
        struct vk_pkt p = {.data = (__u8 *)(long)skb->data,                         \
                           .end = (__u8 *)(long)skb->data_end,                      \
                           .ctx = skb, .hook = VK_HOOK_TC};                         \
        vk_count(&p, VK_CTR_RX);                                                    \
        switch (vk__finish(&p, fn(&p))) {                                           \
        case VK_PASS: case VK_NEXT: return TC_ACT_OK;                               \
        case VK_TX: return bpf_redirect(skb->ifindex, 0);                           \
        case VK_REDIRECT: {                                                         \
            int ifindex = vk__port_ifindex(p.port);                                 \
            return ifindex ? bpf_redirect(ifindex, 0) : TC_ACT_SHOT;                \
        }                                                                           \
        default: return TC_ACT_SHOT;                                                \
        }                                                                           \
    }                                                                               \
    char LICENSE[] SEC("license") = "GPL";

#else /* native: datapath/native/vk_native.c calls vnf_native_process */

#define VNF_MAIN(fn)                                                                \
    int vnf_native_process(struct vk_pkt *p) { return fn(p); }

#endif

#endif
