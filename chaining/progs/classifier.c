/* The classifier (RFC 7665): starts matching ingress traffic on a service function path.
 *
 * A packet is first looked up by its IPv4 5-tuple in rev_flows (chain.h): a reply of a
 * flow the forwarder saw leave a symmetric path starts on that path's reverse. Otherwise the
 * rules are scanned in order, first match wins; the control plane (chaining/classifier.py)
 * writes them most specific first, so the first match is the most specific one. A rule
 * matches IPv4 source and destination prefixes, the IP protocol, source and destination
 * port ranges (TCP, UDP and SCTP; a rule with ports matches no other protocol and no
 * non-first fragment), an 802.1Q VLAN id (a rule without one matches tagged and untagged
 * frames) and the ingress ifindex (0: any). The start (SPI, SI, TTL) goes to the forwarder
 * in its per-CPU chain_meta slot (chain.h; no header is pushed: hops inside the host cost a
 * tail call, not an encapsulation). Traffic nothing matches goes to the host stack untouched.
 *
 * The rule set is swapped atomically: two banks, each a whole rule set in one map value,
 * and cls_active, an array of maps whose one slot points at the bank in use. The control
 * plane writes the other bank, then repoints the slot (one pointer exchange); the kernel
 * returns from that update only when no program still runs with the old pointer
 * (synchronize_rcu for map-in-map updates), so the old bank may then be rewritten. A packet
 * reads the slot once and sees one whole rule set.
 *
 * The VLAN tag must be in the frame: a NIC that strips it into receive metadata (rx VLAN
 * offload) hides it from XDP; turn that off (`ethtool -K IF rxvlan off`) where rules use VLANs. */
#include "chain.h"

#define CLS_MAX_RULES 256

/* One rule (48 bytes), every field a masked compare (ports: a range compare done in
 * arithmetic), so a rule costs two branches: its addresses, then all the rest at once. The
 * packet's side is struct cls_pkt; a mask of 0 (ports: lo 0 and the full span) matches
 * anything. Scanning costs about 1 ns a rule, 2 when addresses match (perf/classifier.py). */
struct cls_rule {
    __be32 saddr;      /* prefix, already masked */
    __be32 smask;
    __be32 daddr;
    __be32 dmask;
    /* The ingress ifindex, VLAN key and protocol as one word (struct cls_pkt's `misc`) under
     * a mask: ifindex << 32 | VLAN key << 8 | protocol, a field's mask 0 where it is any. */
    __u64 misc;
    __u64 misc_mask;
    /* Ports on the packet's port key (1 << 16 | port, or 0 without ports): it matches when
     * key - lo <= span. Any port and no port at all: lo 0, span 0x1ffff; a range lo-hi:
     * lo 0x10000 | lo, span hi - lo, which a packet without ports (key 0) never meets. */
    __u32 sport_lo;
    __u32 sport_span;
    __u32 dport_lo;
    __u32 dport_span;
};

/* What a matching rule does, beside the rules so the scan reads only what it compares. */
struct cls_action {
    struct cls_path path;
    __u32 stats;       /* the rule's slot in cls_rule_stats, given by the control plane */
};

struct cls_bank {
    __u32 count;
    __u32 pad;
    struct cls_rule rules[CLS_MAX_RULES];
    struct cls_action actions[CLS_MAX_RULES];
};

enum cls_counter { CLS_MATCHED, CLS_UNMATCHED, CLS_NOT_IPV4, CLS_NO_ROOM, CLS_NO_FORWARDER, CLS_REPLY,
                   CLS_MAX };

struct cls_bank_map {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, struct cls_bank);
    __uint(max_entries, 1);
};

struct cls_bank_map cls_bank0 SEC(".maps"), cls_bank1 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
    __type(key, __u32);
    __uint(max_entries, 1);
    __array(values, struct cls_bank_map);
} cls_active SEC(".maps") = {
    .values = { [0] = &cls_bank0 },
};

VNFKIT_MAP(cls_counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct counter, CLS_MAX);
/* By the slot the control plane gives each rule: the set installed and the set replacing it
 * may both be counting while a swap is in flight, so two sets' worth. */
VNFKIT_MAP(cls_rule_stats, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct counter, 2 * CLS_MAX_RULES);

#define IP_OFFSET_MASK 0x1fff
#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

#define CLS_UNTAGGED 0x1000  /* the VLAN key of an untagged frame: no VLAN id is this */
#define CLS_HAS_PORTS 0x10000

/* What the rules look at, taken from the packet once, in the rules' encoding. */
struct cls_pkt {
    __be32 saddr;
    __be32 daddr;
    __u64 misc;        /* ingress ifindex << 32 | VLAN key << 8 | protocol; VLAN key: id or CLS_UNTAGGED */
    __u32 sport;       /* CLS_HAS_PORTS | port (host order), or 0 without ports */
    __u32 dport;
};

/* 1 when the port key is outside [lo, lo + span]: the sign of span - (key - lo) in 64 bits,
 * arithmetic rather than a branch (BPF has no conditional set). */
static __always_inline __u64 port_miss(__u32 key, __u32 lo, __u32 span)
{
    return ((__u64)span - (__u32)(key - lo)) >> 63;
}

static __always_inline int rule_matches(const struct cls_rule *r, const struct cls_pkt *p)
{
    /* Addresses first, alone: they tell most rules apart, and leaving early is cheaper. */
    if (((p->saddr & r->smask) ^ r->saddr) | ((p->daddr & r->dmask) ^ r->daddr))
        return 0;
    __u64 miss = (p->misc & r->misc_mask) ^ r->misc;
    miss |= port_miss(p->sport, r->sport_lo, r->sport_span) | port_miss(p->dport, r->dport_lo, r->dport_span);
    return !miss;
}

SEC("xdp")
int classifier(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u64 len = end - data;
    struct ethhdr *eth = data;
    __u32 off = sizeof(*eth);
    struct cls_pkt p = {};
    __u32 vlan = CLS_UNTAGGED;

    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    __u16 proto = eth->h_proto;
    if (proto == bpf_htons(ETH_P_8021Q)) {
        __be16 *tag = data + off;
        if ((void *)(tag + 2) > end)
            return XDP_PASS;
        vlan = bpf_ntohs(tag[0]) & 0x0fff;
        proto = tag[1];
        off += 4;
    }
    struct iphdr *ip = data + off;
    if (proto != bpf_htons(ETH_P_IP) || (void *)(ip + 1) > end) {
        vnfkit_count(&cls_counters, CLS_NOT_IPV4, len);
        return XDP_PASS;
    }
    p.saddr = ip->saddr;
    p.daddr = ip->daddr;
    __u8 l4 = ip->protocol;
    p.misc = (__u64)ctx->ingress_ifindex << 32 | vlan << 8 | l4;
    /* Ports of TCP, UDP and SCTP (all three start with them), in a first fragment only. */
    __u32 hlen = ip->ihl * 4;
    if ((l4 == IPPROTO_TCP || l4 == IPPROTO_UDP || l4 == IPPROTO_SCTP) &&
        !(ip->frag_off & bpf_htons(IP_OFFSET_MASK)) && hlen >= sizeof(*ip) && hlen <= 60) {
        __be16 *ports = (void *)ip + hlen;
        if ((void *)(ports + 2) <= end) {
            p.sport = CLS_HAS_PORTS | bpf_ntohs(ports[0]);
            p.dport = CLS_HAS_PORTS | bpf_ntohs(ports[1]);
        }
    }

    __u32 spi_si, ttl, how = CLS_REPLY, stats = 0;
    struct flow_key fk = {.saddr = p.saddr, .daddr = p.daddr, .proto = l4};
    fk.sport = bpf_htons((__u16)p.sport);  /* 0 without ports */
    fk.dport = bpf_htons((__u16)p.dport);
    struct cls_path *back = bpf_map_lookup_elem(&rev_flows, &fk);
    if (back) {
        spi_si = back->spi_si;
        ttl = back->ttl;
    } else {
        __u32 zero = 0;
        void *bank_map = bpf_map_lookup_elem(&cls_active, &zero);
        if (!bank_map)
            return XDP_PASS;
        struct cls_bank *bank = bpf_map_lookup_elem(bank_map, &zero);
        if (!bank)
            return XDP_PASS;
        __u32 n = bank->count, i;
        for (i = 0; i < CLS_MAX_RULES; i++) {
            if (i >= n || rule_matches(&bank->rules[i], &p))
                break;
        }
        if (i >= n || i >= CLS_MAX_RULES) {
            vnfkit_count(&cls_counters, CLS_UNMATCHED, len);
            return XDP_PASS;
        }
        struct cls_action *hit = &bank->actions[i];
        spi_si = hit->path.spi_si;
        ttl = hit->path.ttl;
        stats = hit->stats;
        how = CLS_MATCHED;
    }
    if (chain_set_meta(spi_si, ttl)) {
        vnfkit_count(&cls_counters, CLS_NO_ROOM, len);
        return XDP_PASS;
    }
    if (how == CLS_MATCHED)
        vnfkit_count(&cls_rule_stats, stats, len);
    vnfkit_count(&cls_counters, how, len);
    bpf_tail_call(ctx, &sff_entry, 0);
    vnfkit_count(&cls_counters, CLS_NO_FORWARDER, len);
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
