/* NSH receive (RFC 8300) at XDP on a host's underlay interface: the other half of the
 * forwarder's REMOTE action.
 *
 * Recognises NSH over Ethernet (ethertype 0x894F) and over VXLAN-GPE (IPv4/UDP 4790, next
 * protocol NSH), checks the header (version 0, MD type 1 or 2, Length consistent with the MD
 * type and the packet, next protocol Ethernet), decrements TTL and drops at 0 (section 2.2),
 * pops outer headers and NSH, points the inner frame's destination MAC at this interface
 * (the frame was addressed to the previous host's gateway; at the end of the path our stack
 * must take it as its own), and hands SPI/SI/TTL to the forwarder in chain_meta. Every
 * malformed frame is dropped and counted by its reason; non-NSH traffic passes untouched. */
#include "chain.h"

#define ETH_P_NSH 0x894F
#define VXLAN_GPE_PORT 4790
#define GPE_FLAG_P 0x04      /* next protocol field present */
#define GPE_NP_NSH 4
#define NSH_NP_ETHERNET 3
#define NSH_MD1_WORDS 6

struct nsh_base {
    __be16 ver_ttl_len;   /* Ver(2) O(1) U(1) TTL(6) Length(6) */
    __u8 mdtype;          /* U(4) MD type(4) */
    __u8 next_proto;
    __be32 spi_si;
};

struct rx_mac {
    __u8 addr[6];
};

enum rx_counter {
    RX_NOT_NSH, RX_ETH, RX_VXLAN_GPE,              /* passed on, by encapsulation */
    RX_BAD_VERSION, RX_BAD_LENGTH, RX_MDTYPE_RESERVED, RX_MDTYPE_UNKNOWN, RX_BAD_NEXTPROTO,
    RX_TTL_EXPIRED,                                /* dropped: malformed or expired */
    RX_NO_MAC, RX_NO_ROOM, RX_NO_FORWARDER,        /* dropped: our own configuration */
    RX_MAX
};

/* The receiving interface's own MAC, by ifindex: the inner frame's new destination. */
VNFKIT_MAP(rx_ifmac, BPF_MAP_TYPE_HASH, __u32, struct rx_mac, 64);
VNFKIT_MAP(rx_counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct counter, RX_MAX);

static __always_inline int rx_drop(__u32 reason, __u64 len)
{
    vnfkit_count(&rx_counters, reason, len);
    return XDP_DROP;
}

SEC("xdp")
int nsh_rx(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u64 len = end - data;
    struct ethhdr *eth = data;
    struct nsh_base *nsh;
    __u32 outer;          /* bytes in front of the NSH */
    __u32 kind;           /* RX_ETH or RX_VXLAN_GPE */

    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    if (eth->h_proto == bpf_htons(ETH_P_NSH)) {
        outer = sizeof(struct ethhdr);
        kind = RX_ETH;
        nsh = (void *)(eth + 1);
    } else if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct gpe_outer *o = data;
        /* Only what the forwarder sends: an option-less, unfragmented IPv4 header. Anything
         * else on UDP 4790 is left to the stack rather than half-parsed here. */
        if ((void *)(o + 1) > end || o->ip.ihl != 5 || o->ip.protocol != IPPROTO_UDP ||
            (o->ip.frag_off & bpf_htons(0x3fff)) || o->udp.dest != bpf_htons(VXLAN_GPE_PORT) ||
            !(o->gpe.flags & GPE_FLAG_P) || o->gpe.next_proto != GPE_NP_NSH)
            goto not_nsh;
        outer = sizeof(struct gpe_outer);
        kind = RX_VXLAN_GPE;
        nsh = (void *)(o + 1);
    } else {
        goto not_nsh;
    }

    if ((void *)(nsh + 1) > end)
        return rx_drop(RX_BAD_LENGTH, len);
    __u16 w = bpf_ntohs(nsh->ver_ttl_len);
    __u32 version = w >> 14, ttl = (w >> 6) & 0x3f, words = w & 0x3f;
    __u32 mdtype = nsh->mdtype & 0x0f;
    if (version != 0)
        return rx_drop(RX_BAD_VERSION, len);
    /* MD type 0 is reserved (RFC 8300 section 2.5); 0xF is experimental and the rest are
     * unassigned: none of them is something we know how to skip safely. */
    if (mdtype == 0)
        return rx_drop(RX_MDTYPE_RESERVED, len);
    if (mdtype != 1 && mdtype != 2)
        return rx_drop(RX_MDTYPE_UNKNOWN, len);
    if (words < 2 || (mdtype == 1 && words != NSH_MD1_WORDS))
        return rx_drop(RX_BAD_LENGTH, len);
    __u32 nsh_len = words * 4;   /* at most 252: words has 6 bits */
    /* The header must fit, and an inner Ethernet header must follow it. */
    if ((void *)nsh + nsh_len + sizeof(struct ethhdr) > end)
        return rx_drop(RX_BAD_LENGTH, len);
    if (nsh->next_proto != NSH_NP_ETHERNET)
        return rx_drop(RX_BAD_NEXTPROTO, len);
    if (ttl <= 1)   /* 0 after this hop's decrement */
        return rx_drop(RX_TTL_EXPIRED, len);
    ttl -= 1;
    __u32 spi_si = bpf_ntohl(nsh->spi_si);

    __u32 ifindex = ctx->ingress_ifindex;
    struct rx_mac *mac = bpf_map_lookup_elem(&rx_ifmac, &ifindex);
    if (!mac)
        return rx_drop(RX_NO_MAC, len);

    if (bpf_xdp_adjust_head(ctx, (int)(outer + nsh_len)))
        return rx_drop(RX_NO_ROOM, len);
    data = (void *)(long)ctx->data;
    end = (void *)(long)ctx->data_end;
    eth = data;
    if ((void *)(eth + 1) > end)
        return XDP_DROP;
    __builtin_memcpy(eth->h_dest, mac->addr, ETH_ALEN);

    if (chain_set_meta(spi_si, ttl))
        return rx_drop(RX_NO_ROOM, len);
    vnfkit_count(&rx_counters, kind, len);
    bpf_tail_call(ctx, &sff_entry, 0);
    return rx_drop(RX_NO_FORWARDER, len);

not_nsh:
    vnfkit_count(&rx_counters, RX_NOT_NSH, len);
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
