/* The service function forwarder (RFC 7665) inside one host.
 *
 * A packet in a chain carries its SPI and SI in this CPU's chain_meta slot (struct vk_meta,
 * chain.h; written by the classifier, nsh_rx or the proxy); each function, when done,
 * decrements SI and tail-calls back here. The
 * forwarder looks (SPI, SI) up and either tail-calls the next function, hands the packet to
 * the host stack (end of the path) or redirects it out of an interface. Unknown (SPI, SI),
 * an exhausted TTL or a missing function are dropped and counted (RFC 8300 section 2.3).
 *
 * When the next hop is on another host (REMOTE), SPI/SI/TTL become a real NSH on the
 * wire (RFC 8300, MD type 1, next protocol Ethernet: the whole frame travels) under an
 * outer Ethernet header (ethertype 0x894F) or Ethernet + IPv4 + UDP 4790 + VXLAN-GPE, and
 * the packet is redirected out of the underlay; the peer's nsh_rx.c reads it back. */
#include "chain.h"
#include <vnfkit/csum.h>

enum sff_action { SFF_LOCAL = 1, SFF_STACK = 2, SFF_EGRESS = 3, SFF_REMOTE = 4 };

struct sff_next {
    __u32 action;  /* enum sff_action */
    __u32 arg;     /* LOCAL: slot in sff_progs; EGRESS: ifindex; REMOTE: unused (sff_remote) */
    __u32 stats;   /* this hop's slot in hop_stats, given by the control plane */
    /* STACK/EGRESS of a symmetric path: where replies start (the reverse path's first hop
     * on this host, SPI << 8 | SI) and their TTL; 0 for a one-way path. */
    __u32 reverse_spi_si;
    __u32 reverse_ttl;
};

enum sff_encap { SFF_ENCAP_ETH = 1, SFF_ENCAP_VXLAN_GPE = 2 };

/* A hop on another host, keyed like sff_table (SPI << 8 | SI). Addresses are kept as
 * bytes in network order so the control plane writes them exactly as they go on the wire. */
struct sff_remote {
    __u32 ifindex;    /* the underlay interface to redirect out of */
    __u8 encap;       /* enum sff_encap */
    __u8 mdtype;      /* 1, or 2: then one context TLV if tlv_class/tlv_type are not 0 */
    __u16 sport;      /* VXLAN-GPE: UDP source port base (host order) */
    __u8 dmac[6];     /* the peer host's underlay MAC */
    __u8 smac[6];     /* ours */
    __u8 saddr[4];    /* VXLAN-GPE outer IPv4 source and destination */
    __u8 daddr[4];
    __be16 tlv_class; /* MD type 2: the context header's class, type and 4-byte value, */
    __u8 tlv_type;    /* in network order (a tenant or service id, say) */
    __u8 pad;
    __u8 tlv_value[4];
};

#define ETH_P_NSH 0x894F
#define VXLAN_GPE_PORT 4790
#define NSH_MD1_LEN 24        /* base 4 + service path 4 + 16 context bytes: Length 6 */
#define NSH_BASE_LEN 8        /* MD type 2 without context: Length 2 */
#define NSH_TLV_LEN 8         /* one MD type 2 context header with a 4-byte value */
#define NSH_NP_ETHERNET 3
#define GPE_NP_NSH 4

struct nsh_base {
    __be16 ver_ttl_len;   /* Ver(2) O(1) U(1) TTL(6) Length(6) */
    __u8 mdtype;          /* U(4) MD type(4) */
    __u8 next_proto;
    __be32 spi_si;
};

struct nsh_tlv {
    __be16 md_class;
    __u8 type;
    __u8 len;             /* U(1) Length(7): bytes of value */
    __u8 value[4];
};

enum sff_counter { SFF_NO_META, SFF_UNKNOWN, SFF_TTL, SFF_NO_FUNCTION, SFF_DELIVERED, SFF_REDIRECTED,
                   SFF_REMOTE_SENT, SFF_NO_REMOTE, SFF_NO_ROOM, SFF_MAX };

VNFKIT_MAP(sff_table, BPF_MAP_TYPE_HASH, __u32, struct sff_next, 4096);   /* SPI << 8 | SI */
VNFKIT_MAP(sff_remote, BPF_MAP_TYPE_HASH, __u32, struct sff_remote, 4096);   /* SPI << 8 | SI */
/* Per-hop counters by slot: a per-CPU array lookup, where a per-CPU hash keyed by SPI/SI
 * cost ~28 ns a hop (measured by perf chains). */
VNFKIT_MAP(hop_stats, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct counter, 4096);
VNFKIT_MAP(sff_counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct counter, SFF_MAX);

/* The functions of the host's chains, by slot. */
struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
    __uint(max_entries, 64);
} sff_progs SEC(".maps");

static __always_inline void hop_count(__u32 slot, __u64 len)
{
    struct counter *c = bpf_map_lookup_elem(&hop_stats, &slot);
    if (c) {
        c->packets += 1;
        c->bytes += len;
    }
}

/* Push NSH (+ outer headers) in front of the frame and redirect it to the next host. */
static __always_inline int sff_remote_send(struct xdp_md *ctx, __u32 spi_si, __u32 ttl, __u64 len)
{
    struct sff_remote *r = bpf_map_lookup_elem(&sff_remote, &spi_si);
    if (!r) {
        vnfkit_count(&sff_counters, SFF_NO_REMOTE, len);
        return XDP_DROP;
    }
    __u32 ifindex = r->ifindex;
    int gpe = r->encap == SFF_ENCAP_VXLAN_GPE;
    int outer = gpe ? (int)sizeof(struct gpe_outer) : (int)sizeof(struct ethhdr);
    int md2 = r->mdtype == 2, tlv = md2 && (r->tlv_class || r->tlv_type);
    int nsh_len = !md2 ? NSH_MD1_LEN : tlv ? NSH_BASE_LEN + NSH_TLV_LEN : NSH_BASE_LEN;

    /* A short flow hash for the outer UDP source port (RFC 7348's advice: underlay ECMP
     * and RSS spread tunnels by it), taken from the inner IPv4 addresses when present. */
    __u16 sport = r->sport;
    if (gpe) {
        void *data = (void *)(long)ctx->data;
        struct ethhdr *ie = data;
        struct iphdr *iip = (void *)(ie + 1);
        if ((void *)(iip + 1) <= (void *)(long)ctx->data_end && ie->h_proto == bpf_htons(ETH_P_IP)) {
            __u32 h = iip->saddr ^ iip->daddr;
            h ^= h >> 16;
            sport = (__u16)(sport + (h & 0x3fff));
        }
    }
    if (bpf_xdp_adjust_head(ctx, -(outer + nsh_len))) {
        vnfkit_count(&sff_counters, SFF_NO_ROOM, len);
        return XDP_DROP;
    }
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) + NSH_MD1_LEN > end)
        return XDP_DROP;
    /* r still points into the map: a map value is not invalidated by moving the packet. */
    __builtin_memcpy(eth->h_dest, r->dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, r->smac, ETH_ALEN);
    __u16 inner_len = (__u16)len;   /* the frame as the forwarder got it */
    struct nsh_base *nsh;
    if (gpe) {
        struct gpe_outer *o = data;
        if ((void *)(o + 1) + NSH_MD1_LEN > end)
            return XDP_DROP;
        /* Fields through their own (aligned-enough) pointers rather than the packed
         * struct's members: the checksum helper wants an iphdr pointer. */
        struct iphdr *ip = (void *)eth + sizeof(struct ethhdr);
        struct udphdr *udp = (void *)(ip + 1);
        struct vxlan_gpe *g = (void *)(udp + 1);
        eth->h_proto = bpf_htons(ETH_P_IP);
        ip->version = 4;
        ip->ihl = 5;
        ip->tos = 0;
        ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*udp) + sizeof(*g) + nsh_len + inner_len);
        ip->id = 0;
        ip->frag_off = bpf_htons(0x4000);  /* DF: an overlay must not fragment silently */
        ip->ttl = 64;
        ip->protocol = IPPROTO_UDP;
        ip->check = 0;
        __builtin_memcpy(&ip->saddr, r->saddr, 4);
        __builtin_memcpy(&ip->daddr, r->daddr, 4);
        ip->check = vk_ipv4_csum(ip);
        udp->source = bpf_htons(sport);
        udp->dest = bpf_htons(VXLAN_GPE_PORT);
        udp->len = bpf_htons(sizeof(*udp) + sizeof(*g) + nsh_len + inner_len);
        udp->check = 0;  /* allowed for UDP over IPv4 tunnels (RFC 7348 section 5) */
        g->flags = 0x0C;  /* I and P */
        g->reserved[0] = 0;
        g->reserved[1] = 0;
        g->next_proto = GPE_NP_NSH;
        g->vni_reserved = 0;
        nsh = (void *)(g + 1);
    } else {
        eth->h_proto = bpf_htons(ETH_P_NSH);
        nsh = (void *)(eth + 1);
    }
    /* The longest NSH we write: every shorter one is followed by at least an inner Ethernet
     * header, so this one check covers them all. */
    if ((void *)nsh + NSH_MD1_LEN > end)
        return XDP_DROP;
    /* Version 0, O 0, TTL, Length in 4-byte words, MD type, next protocol Ethernet. */
    nsh->ver_ttl_len = bpf_htons(((ttl & 0x3f) << 6) | (nsh_len / 4));
    nsh->mdtype = md2 ? 2 : 1;
    nsh->next_proto = NSH_NP_ETHERNET;
    nsh->spi_si = bpf_htonl(spi_si);
    if (!md2) {
        __builtin_memset((void *)(nsh + 1), 0, NSH_MD1_LEN - NSH_BASE_LEN);
    } else if (tlv) {
        struct nsh_tlv *t = (void *)(nsh + 1);
        t->md_class = r->tlv_class;
        t->type = r->tlv_type;
        t->len = sizeof(t->value);
        __builtin_memcpy(t->value, r->tlv_value, sizeof(t->value));
    }
    vnfkit_count(&sff_counters, SFF_REMOTE_SENT, len);
    return bpf_redirect(ifindex, 0);
}

/* Remember where this flow's replies start (see rev_flows in chain.h). Only IPv4, as the
 * classifier matches; the entry is written only when missing or changed, since an LRU
 * update on every packet costs more than the lookup. */
static __always_inline void reverse_record(struct xdp_md *ctx, const struct sff_next *next)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    __u32 off = sizeof(*eth);

    if ((void *)(eth + 1) > end)
        return;
    __u16 proto = eth->h_proto;
    if (proto == bpf_htons(ETH_P_8021Q)) {
        __be16 *inner = data + off + 2;
        if ((void *)(inner + 1) > end)
            return;
        proto = *inner;
        off += 4;
    }
    struct iphdr *ip = data + off;
    if (proto != bpf_htons(ETH_P_IP) || (void *)(ip + 1) > end)
        return;
    struct flow_key key = {.saddr = ip->daddr, .daddr = ip->saddr, .proto = ip->protocol};
    __u32 hlen = ip->ihl * 4;
    if ((ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) && hlen >= sizeof(*ip) &&
        !(ip->frag_off & bpf_htons(0x1fff))) {
        __be16 *ports = (void *)ip + hlen;
        if ((void *)(ports + 2) > end)
            return;
        key.sport = ports[1];
        key.dport = ports[0];
    }
    struct cls_path *have = bpf_map_lookup_elem(&rev_flows, &key);
    if (have && have->spi_si == next->reverse_spi_si && have->ttl == next->reverse_ttl)
        return;
    struct cls_path want = {.spi_si = next->reverse_spi_si, .ttl = next->reverse_ttl};
    bpf_map_update_elem(&rev_flows, &key, &want, BPF_ANY);
}

SEC("xdp")
int sff(struct xdp_md *ctx)
{
    struct vk_meta *m = chain_meta_get();
    void *data = (void *)(long)ctx->data;
    __u64 len = (void *)(long)ctx->data_end - data;

    if (!m) {   /* never: a one-slot array */
        vnfkit_count(&sff_counters, SFF_NO_META, len);
        return XDP_PASS;
    }
    if (m->ttl == 0) {
        vnfkit_count(&sff_counters, SFF_TTL, len);
        return XDP_DROP;
    }
    m->ttl -= 1;
    __u32 key = m->spi_si;
    struct sff_next *next = bpf_map_lookup_elem(&sff_table, &key);
    if (!next) {
        vnfkit_count(&sff_counters, SFF_UNKNOWN, len);
        return XDP_DROP;
    }
    hop_count(next->stats, len);
    if (next->action == SFF_LOCAL) {
        bpf_tail_call(ctx, &sff_progs, next->arg);
        vnfkit_count(&sff_counters, SFF_NO_FUNCTION, len);
        return XDP_DROP;
    }
    if (next->action == SFF_REMOTE)
        return sff_remote_send(ctx, key, m->ttl, len);
    if (next->reverse_spi_si)
        reverse_record(ctx, next);
    if (next->action == SFF_EGRESS) {
        vnfkit_count(&sff_counters, SFF_REDIRECTED, len);
        return bpf_redirect(next->arg, 0);
    }
    vnfkit_count(&sff_counters, SFF_DELIVERED, len);
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
