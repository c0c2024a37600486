/* chain.h: what the chain's programs (classifier, forwarder, nsh_rx, proxy) share, declared once. */
#ifndef VNFKIT_CHAIN_H
#define VNFKIT_CHAIN_H

#include <vnfkit/bpf.h>

/* SPI/SI between local hops; the same layout as vnfkit.h's struct vk_meta. */
struct vk_meta {
    __u32 spi_si;   /* SPI << 8 | SI, host order */
    __u32 ttl;      /* hops left; the forwarder drops the packet at 0 */
};

/* Where a packet's vk_meta lives while it walks the local hops: a per-CPU slot, as Cilium
 * keeps its XDP scratch. Every hop of one packet is a tail call inside one XDP run, which
 * runs with bottom halves off on one CPU, so nothing else on that CPU can write the slot
 * between the entry that fills it (classifier, nsh_rx, proxy_in) and the last hop. XDP
 * metadata (bpf_xdp_adjust_meta) would need no map, but some kernels refuse that helper to
 * XDP programs (6.18.44-fc here: "program of this type cannot use helper"), and a hop
 * that leaves the XDP run (a user-space function, another host) carries a real NSH anyway.
 * The forwarder's object creates it; the classifier, nsh_rx, the proxy, user hops and
 * every function (as vk_chain_meta) reuse it. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, struct vk_meta);
    __uint(max_entries, 1);
} chain_meta SEC(".maps");

/* This CPU's vk_meta; never NULL in practice (a one-slot array), checked for the verifier. */
static __always_inline struct vk_meta *chain_meta_get(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&chain_meta, &zero);
}

struct counter {
    __u64 packets;
    __u64 bytes;
};

/* VXLAN-GPE (draft-ietf-nvo3-vxlan-gpe) and the outer headers around it. */
struct vxlan_gpe {
    __u8 flags;           /* I (VNI valid) and P (next protocol present) */
    __u8 reserved[2];
    __u8 next_proto;
    __be32 vni_reserved;
};

struct gpe_outer {
    struct ethhdr eth;
    struct iphdr ip;
    struct udphdr udp;
    struct vxlan_gpe gpe;
} __attribute__((packed));

/* A flow by its IPv4 5-tuple, ports 0 for protocols without them. */
struct flow_key {
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 pad[3];
};

/* The flow key of an Ethernet frame (one 802.1Q tag allowed) into *k: 0, or -1 when it is not
 * IPv4. Fragments, and packets too short for their ports, are keyed by addresses and protocol
 * alone: a later fragment has no ports, and every piece of a packet must get the same key. */
static __always_inline int chain_flow_key(void *data, void *end, struct flow_key *k)
{
    struct ethhdr *eth = data;
    __u32 off = sizeof(*eth);

    if ((void *)(eth + 1) > end)
        return -1;
    __be16 proto = eth->h_proto;
    if (proto == bpf_htons(ETH_P_8021Q)) {
        __be16 *inner = data + off + 2;
        if ((void *)(inner + 1) > end)
            return -1;
        proto = *inner;
        off += 4;
    }
    struct iphdr *ip = data + off;
    if (proto != bpf_htons(ETH_P_IP) || (void *)(ip + 1) > end || ip->ihl < 5)
        return -1;
    __builtin_memset(k, 0, sizeof(*k));
    k->saddr = ip->saddr;
    k->daddr = ip->daddr;
    k->proto = ip->protocol;
    if (ip->frag_off & bpf_htons(0x3fff))   /* MF or an offset: a fragment */
        return 0;
    if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
        __be16 *ports = (void *)ip + ip->ihl * 4;
        if ((void *)(ports + 2) <= end) {
            k->sport = ports[0];
            k->dport = ports[1];
        }
    }
    return 0;
}

/* Where the classifier starts a packet: the (SPI, SI) of its first hop, and its TTL. */
struct cls_path {
    __u32 spi_si;  /* SPI << 8 | SI of the path's first hop */
    __u32 ttl;
};

/* Symmetric chains (RFC 7665 section 2.2): at the end of a forward path the forwarder
 * records the reply's 5-tuple (the packet's as it leaves the path, reversed) with the
 * reverse path's start on this host; the classifier looks replies up here before its rules,
 * so a reply goes back through the same instances even after NAT or load balancing changed
 * its addresses. The forwarder's object creates it, the classifier reuses it. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __type(key, struct flow_key);
    __type(value, struct cls_path);
    __uint(max_entries, 65536);
} rev_flows SEC(".maps");

/* Start the packet on (spi_si, ttl): what a program does before tail-calling sff_entry.
 * 0, or -1 if the slot cannot be had (never). */
static __always_inline int chain_set_meta(__u32 spi_si, __u32 ttl)
{
    struct vk_meta *m = chain_meta_get();
    if (!m)
        return -1;
    m->spi_si = spi_si;
    m->ttl = ttl;
    return 0;
}

/* Slot 0 holds the forwarder. The forwarder's object creates it; the classifier, nsh_rx
 * and every function (as vk_chain) reuse it, so "go to the forwarder" is one tail call. */
struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
    __uint(max_entries, 1);
} sff_entry SEC(".maps");

#endif
