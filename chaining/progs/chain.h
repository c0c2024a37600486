/* chain.h: what the chain's programs (classifier, forwarder, nsh_rx, proxy) share, declared once. */
#ifndef VNFKIT_CHAIN_H
#define VNFKIT_CHAIN_H

#include <vnfkit/bpf.h>

/* SPI/SI in XDP metadata between local hops; the same layout as vnfkit.h's struct vk_meta. */
struct vk_meta {
    __u32 spi_si;   /* SPI << 8 | SI, host order */
    __u32 ttl;      /* hops left; the forwarder drops the packet at 0 */
};

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

/* Give the packet exactly one vk_meta, whatever metadata it had (none at a real ingress; a
 * repeated test-run hands the same buffer back with the last run's), holding spi_si and ttl:
 * 0, or -1 when there is no room. What a program does before tail-calling sff_entry. */
static __always_inline int chain_set_meta(struct xdp_md *ctx, __u32 spi_si, __u32 ttl)
{
    int metalen = (int)((long)ctx->data - (long)ctx->data_meta);
    if (bpf_xdp_adjust_meta(ctx, metalen - (int)sizeof(struct vk_meta)))
        return -1;
    struct vk_meta *m = (void *)(long)ctx->data_meta;
    if ((void *)(m + 1) > (void *)(long)ctx->data)
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
