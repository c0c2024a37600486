/* firewall: ordered ACL rules (first match wins) over source and destination prefixes
 * (IPv4 and IPv6), protocol, source and destination port ranges and TCP flags, with a
 * default policy, per-rule hit counters and an optional stateful mode that lets the
 * replies of allowed flows back in.
 *
 * Classification is a linear bit vector search (LBVS, as bpf-iptables): every field is
 * looked up on its own and yields a bitmap of the rules that field allows; the first
 * matching rule is the lowest bit set in the AND of the bitmaps. Each bitmap carries a
 * summary (one bit per 64-rule word that is non-zero), so the AND first runs over the
 * summaries (3 words) and only then over the words every field has candidates in.
 *
 *   source, destination   LPM tries over {family, address}: the bitmap of the longest
 *                         matching prefix holds every rule whose prefix contains it
 *   protocol              array of 256 bitmaps
 *   TCP flags             array of 256 bitmaps (by flags byte) + "no TCP header" +
 *                         "later fragment"
 *   source/dest. port     sorted interval starts, searched in 15 branch-free steps, and
 *                         a hash of the intervals' (deduplicated) bitmaps
 *
 * control.py compiles the rules into these tables; model.py is the same logic in Python.
 */
#define VNF_COUNTERS(X)                                                                 \
    X(malformed) X(non_ip) X(frag_dropped) X(frag_passed) X(frag_l3)                     \
    X(rule_allowed) X(rule_denied) X(default_allowed) X(default_denied)                  \
    X(state_forward) X(state_reply) X(state_created) X(state_expired)
#include <vnfkit.h>

#define FW_MAX_RULES 10240                       /* a multiple of 64 */
#define FW_WORDS (FW_MAX_RULES / 64)             /* 160 words of 64 rules */
#define FW_SUM_WORDS ((FW_WORDS + 63) / 64)      /* 3 summary words */
#define FW_MAX_PREFIXES 16384                    /* distinct prefixes per address trie */
#define FW_MAX_BOUNDS (2 * FW_MAX_RULES + 2)     /* port intervals: two bounds per range */
#define FW_SEARCH_STEPS 15                       /* 2^15 > FW_MAX_BOUNDS */
/* Bitmaps of port intervals, both fields: 2 x (2 x 10,240 + 1) intervals + 4 specials. */
#define FW_MAX_BITMAPS 49152
#define FW_MAX_CONNS 65536
#define FW_FLAGS_NONE 256                        /* flag_rules slot: packet has no TCP header */
#define FW_FLAGS_FRAG 257                        /* flag_rules slot: a later fragment */
#define FW_NO_RULE 0xffffffffu                   /* conns.rule when the default policy allowed */

/* Hides a value from clang's range reasoning, so it checks the bound on the register it then
 * indexes with (otherwise it tests an equivalent copy and the verifier sees no bound). */
#define FW_OPAQUE(x) __asm__ __volatile__("" : "+r"(x))

#define FW_TCP_FIN 0x01
#define FW_TCP_SYN 0x02
#define FW_TCP_RST 0x04
#define FW_TCP_ACK 0x10

enum fw_frag_mode { FW_FRAG_MATCH = 0, FW_FRAG_DROP = 1, FW_FRAG_PASS = 2 };
enum fw_conn_state { FW_OPEN = 0, FW_CLOSING = 1 };

struct vnf_config {
    __u8 default_allow;         /* what happens to packets no rule matches: 1 pass, 0 drop */
    __u8 stateful;              /* 1: track allowed flows, let their replies in */
    __u8 frag_mode;             /* later fragments: 0 match by L3, 1 drop, 2 pass */
    __u8 non_ip_drop;           /* 1: drop frames that are neither IPv4 nor IPv6 (ARP!) */
    __u32 tcp_timeout;          /* seconds a TCP flow lives without packets */
    __u32 tcp_closing_timeout;  /* ... after a FIN or RST */
    __u32 udp_timeout;
    __u32 other_timeout;        /* ICMP and other protocols */
};
VK_USE_CONFIG;

/* {family, 3 zero bytes, address}: an IPv4 /n is prefix length 32 + n, an IPv6 /n also 32 + n
 * (family and padding first), a family on its own is 8, any address of any family 0. */
struct fw_lpm_key {
    __u32 prefixlen;
    __u8 family;      /* 4 or 6 */
    __u8 pad[3];
    __u8 addr[16];    /* IPv4: the first 4 bytes */
};

struct fw_bitmap {
    __u64 sum[FW_SUM_WORDS];  /* bit j: w[j] != 0 */
    __u64 w[FW_WORDS];        /* bit r % 64 of w[r / 64]: rule r */
};

/* One port field's elementary intervals: interval k is [lo[k], lo[k + 1]) with lo[0] = 0;
 * its rules are bitmap bm[k] of port_rules. Bitmap ids are 1-based; 0 means no rule. */
struct fw_ports {
    __u32 n;           /* intervals in use */
    __u32 none_bm;     /* packets without ports: rules that do not constrain this port */
    __u32 frag_bm;     /* later fragments: those, plus allow rules that do (see README) */
    __u32 pad;
    __u16 lo[FW_MAX_BOUNDS];
    __u32 bm[FW_MAX_BOUNDS];
};

/* Port fields no rule constrains: their bitmap would hold every rule, so classification
 * skips their search and hash lookup and ANDs the source bitmap again instead, an identity.
 * (Protocol and flags are array lookups, too cheap to be worth the verifier's extra paths.) */
enum fw_wild { FW_WILD_SPORT = 1, FW_WILD_DPORT = 2 };

struct fw_ruleset {
    __u32 count;              /* rules compiled in (informative) */
    __u32 wild;               /* enum fw_wild bits */
    __u64 allow[FW_WORDS];    /* bit set: the rule allows; clear: it denies */
};

struct fw_hits {
    __u64 packets;
    __u64 bytes;
};

/* A flow as its first allowed packet saw it. Ports in network order; ICMP echo uses the
 * identifier for both; other protocols 0. IPv4 addresses take the first 4 bytes. */
struct fw_conn_key {
    __u8 family;
    __u8 proto;
    __be16 sport;
    __be16 dport;
    __u16 pad;
    __u8 saddr[16];
    __u8 daddr[16];
};

struct fw_conn {
    __u64 last_seen;  /* vk_now() of the last packet, either direction */
    __u32 rule;       /* the rule that allowed the first packet, or FW_NO_RULE */
    __u8 state;       /* enum fw_conn_state */
    __u8 pad[3];
};

VK_LPM_TRIE(src_rules, struct fw_lpm_key, struct fw_bitmap, FW_MAX_PREFIXES);
VK_LPM_TRIE(dst_rules, struct fw_lpm_key, struct fw_bitmap, FW_MAX_PREFIXES);
VK_ARRAY(proto_rules, struct fw_bitmap, 256);
VK_ARRAY(flag_rules, struct fw_bitmap, 258);
VK_ARRAY(port_index, struct fw_ports, 2);   /* 0: source port, 1: destination port */
VK_TABLE(port_rules, VK_T_HASH, __u32, struct fw_bitmap, FW_MAX_BITMAPS, VK_F_NO_PREALLOC);
VK_ARRAY(ruleset, struct fw_ruleset, 1);
/* Shared, with atomic adds, not per-CPU: vnfkit's differential tests compare tables byte for
 * byte, and a per-CPU value is one slot per CPU (2 in the kernel, 1 natively). */
VK_ARRAY(rule_hits, struct fw_hits, FW_MAX_RULES);
VK_LRU_HASH(conns, struct fw_conn_key, struct fw_conn, FW_MAX_CONNS);

/* Index of the lowest set bit of x != 0, without branches or loops: the verifier walks a
 * single path through it, and BPF has no count-trailing-zeros instruction. */
VK_INLINE __u32 fw_ctz64(__u64 x)
{
    x = (x & -x) - 1;  /* the ones below the lowest set bit */
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
    return (__u32)((x * 0x0101010101010101ULL) >> 56);
}

/* The first rule all six bitmaps hold, or -1. Candidate words come from the AND of the
 * summaries, in ascending order, so the first non-zero AND of words holds the answer. */
VK_INLINE __s32 fw_first_match(const struct fw_bitmap *a, const struct fw_bitmap *b, const struct fw_bitmap *c,
                               const struct fw_bitmap *d, const struct fw_bitmap *e, const struct fw_bitmap *f)
{
    for (__u32 j = 0; j < FW_SUM_WORDS; j++) {
        __u64 cand = a->sum[j] & b->sum[j] & c->sum[j] & d->sum[j] & e->sum[j] & f->sum[j];
        for (__u32 k = 0; k < 64; k++) {
            if (!cand)
                break;
            /* 64-bit indices: a __u32 gets bounds-checked in a zero-extended copy, leaving
             * the register used for the access unbounded for the verifier. */
            __u64 i = j * 64 + fw_ctz64(cand);
            if (i >= FW_WORDS)
                break;  /* summary bits past the last word: never set by control.py */
            __u64 m = a->w[i] & b->w[i] & c->w[i] & d->w[i] & e->w[i] & f->w[i];
            if (m)
                return (__s32)(i * 64 + fw_ctz64(m));
            cand &= cand - 1;
        }
    }
    return -1;
}

/* The bitmap id of the interval holding `port`: the last k with lo[k] <= port, by a
 * branch-free binary search (a branch per step would give the verifier 2^15 paths). */
VK_INLINE __u32 fw_port_interval(const struct fw_ports *pi, __u32 port)
{
    __u64 n = pi->n;
    __u64 base = 0;
    if (n == 0 || n > FW_MAX_BOUNDS)
        return 0;
    for (__u32 step = 0; step < FW_SEARCH_STEPS; step++) {
        __u64 half = n >> 1;
        if (!half)
            break;
        __u64 mid = base + half;
        if (mid >= FW_MAX_BOUNDS)
            break;
        /* All ones when lo[mid] <= port (the difference is not negative), else zero. */
        __u64 le = ~(__u64)(((__s64)port - (__s64)pi->lo[mid]) >> 63);
        base += half & le;
        n -= half;
    }
    if (base >= FW_MAX_BOUNDS)
        return 0;
    return pi->bm[base];
}

VK_INLINE const struct fw_bitmap *fw_port_rules(__u32 field, int has_ports, int later, __u32 port)
{
    const struct fw_ports *pi = vk_lookup(port_index, &field);
    __u32 id;
    if (!pi)
        return NULL;
    if (later)
        id = pi->frag_bm;
    else if (!has_ports)
        id = pi->none_bm;
    else
        id = fw_port_interval(pi, port);
    return vk_lookup(port_rules, &id);
}

VK_INLINE __u64 fw_timeout_ns(const struct vnf_config *cfg, __u8 proto, __u8 state)
{
    __u32 s = cfg->other_timeout;
    if (proto == IPPROTO_TCP)
        s = state == FW_CLOSING ? cfg->tcp_closing_timeout : cfg->tcp_timeout;
    else if (proto == IPPROTO_UDP)
        s = cfg->udp_timeout;
    return (__u64)s * 1000000000ull;
}

/* What the rules and the flow table need from a packet, extracted by process(). */
struct fw_pkt {
    struct fw_conn_key key;  /* doubles as the flow key */
    __u32 len;               /* frame length, for byte counters */
    __u16 sport, dport;      /* host order; meaningful when has_ports */
    __u16 flags_slot;        /* flag_rules index: the TCP flags byte, FW_FLAGS_NONE or _FRAG */
    __u8 tcp_flags;          /* 0 unless TCP */
    __u8 has_ports;          /* TCP or UDP with its header */
    __u8 later;              /* a later fragment: no L4 header */
    __u8 pad[3];
};

/* Stateful: a packet of a known flow, in either direction, passes without the rules. */
VK_INLINE int fw_known_flow(const struct vnf_config *cfg, struct fw_pkt *fp, __u64 now)
{
    struct fw_conn_key rev;
    __builtin_memcpy(rev.saddr, fp->key.daddr, 16);
    __builtin_memcpy(rev.daddr, fp->key.saddr, 16);
    rev.family = fp->key.family;
    rev.proto = fp->key.proto;
    rev.sport = fp->key.dport;
    rev.dport = fp->key.sport;
    rev.pad = 0;
    int reply = 0;
    struct fw_conn *c = vk_lookup(conns, &fp->key);
    if (!c) {
        c = vk_lookup(conns, &rev);
        reply = 1;
    }
    if (!c)
        return 0;
    __u64 age = now > c->last_seen ? now - c->last_seen : 0;
    if (age > fw_timeout_ns(cfg, fp->key.proto, c->state)) {
        vk_delete(conns, reply ? &rev : &fp->key);
        vk_count_n(CTR_state_expired, fp->len);
        return 0;
    }
    c->last_seen = now;
    if (fp->tcp_flags & (FW_TCP_FIN | FW_TCP_RST))
        c->state = FW_CLOSING;
    else if (!reply && (fp->tcp_flags & (FW_TCP_SYN | FW_TCP_ACK)) == FW_TCP_SYN)
        c->state = FW_OPEN;  /* the same tuple, a new connection */
    vk_count_n(reply ? CTR_state_reply : CTR_state_forward, fp->len);
    return 1;
}

/* The first rule matching the packet, or -1. A missing bitmap means no rule can match.
 * Global, so verified once (see fw_decide), not once per path that leads here. */
__attribute__((noinline)) int fw_classify(const struct fw_pkt *fp)
{
    if (!fp)
        return -1;
    struct fw_lpm_key skey = {.prefixlen = 160, .family = fp->key.family};
    struct fw_lpm_key dkey = {.prefixlen = 160, .family = fp->key.family};
    __u32 pkey = fp->key.proto, fkey = fp->flags_slot;
    __u32 zero = 0;
    __builtin_memcpy(skey.addr, fp->key.saddr, 16);
    __builtin_memcpy(dkey.addr, fp->key.daddr, 16);
    const struct fw_ruleset *rs = vk_lookup(ruleset, &zero);
    const struct fw_bitmap *bs = vk_lookup(src_rules, &skey);
    const struct fw_bitmap *bd = vk_lookup(dst_rules, &dkey);
    if (!rs || !bs || !bd)
        return -1;
    __u32 wild = rs->wild;
    const struct fw_bitmap *bp = vk_lookup(proto_rules, &pkey);
    const struct fw_bitmap *bf = vk_lookup(flag_rules, &fkey);
    const struct fw_bitmap *bsp = bs, *bdp = bs;
    if (!(wild & FW_WILD_SPORT))
        bsp = fw_port_rules(0, fp->has_ports, fp->later, fp->sport);
    if (!(wild & FW_WILD_DPORT))
        bdp = fw_port_rules(1, fp->has_ports, fp->later, fp->dport);
    if (!bp || !bf || !bsp || !bdp)
        return -1;
    return fw_first_match(bs, bd, bp, bf, bsp, bdp);
}

/* Everything after extraction: fragment policy, flow table, rules, default policy.
 *
 * A global (not static) function: the verifier checks it once, for any fw_pkt, instead of
 * once for every path through the parser (dozens: VLAN tags, IPv4 options, IPv6
 * extension headers), which would take it past its 1M-instruction budget. */
__attribute__((noinline)) int fw_decide(struct fw_pkt *fp)
{
    const struct vnf_config *cfg = vk_config();
    if (!cfg || !fp)
        return VK_ABORTED;
    if (fp->later) {
        if (cfg->frag_mode == FW_FRAG_DROP) {
            vk_count_n(CTR_frag_dropped, fp->len);
            return VK_DROP;
        }
        if (cfg->frag_mode == FW_FRAG_PASS) {
            vk_count_n(CTR_frag_passed, fp->len);
            return VK_PASS;
        }
        vk_count_n(CTR_frag_l3, fp->len);  /* judged by the rules, on L3 and protocol */
    }

    /* Later fragments have no ports: they could never find their flow. The clock is only
     * read when flows are tracked: a VM's clock read costs as much as a map lookup. */
    int track = cfg->stateful && !fp->later;
    __u64 now = track ? vk_now() : 0;
    if (track && fw_known_flow(cfg, fp, now))
        return VK_PASS;

    __s32 rule = fw_classify(fp);
    int allow;
    if (rule >= 0) {
        __u32 r = (__u32)rule, zero = 0;
        __u64 word = r / 64;
        FW_OPAQUE(word);
        const struct fw_ruleset *rs = vk_lookup(ruleset, &zero);
        struct fw_hits *hits = vk_lookup(rule_hits, &r);
        if (hits) {
            __sync_fetch_and_add(&hits->packets, 1);
            __sync_fetch_and_add(&hits->bytes, fp->len);
        }
        allow = rs && word < FW_WORDS && ((rs->allow[word] >> (r % 64)) & 1);
        vk_count_n(allow ? CTR_rule_allowed : CTR_rule_denied, fp->len);
    } else {
        allow = cfg->default_allow;
        vk_count_n(allow ? CTR_default_allowed : CTR_default_denied, fp->len);
    }
    if (!allow)
        return VK_DROP;

    /* A new flow. A RST opens nothing; a FIN starts it closing. */
    if (track && !(fp->tcp_flags & FW_TCP_RST)) {
        struct fw_conn c = {.last_seen = now, .rule = rule >= 0 ? (__u32)rule : FW_NO_RULE,
                            .state = (fp->tcp_flags & FW_TCP_FIN) ? FW_CLOSING : FW_OPEN};
        vk_update(conns, &fp->key, &c, VK_ANY);
        vk_count_n(CTR_state_created, fp->len);
    }
    return VK_PASS;
}

/* Parse, refuse what lies about its lengths, extract the fields into an fw_pkt. */
static __always_inline int process(struct vk_pkt *p)
{
    const struct vnf_config *cfg = vk_config();
    if (!cfg)
        return VK_ABORTED;
    if (vk_parse(p) != VK_PARSE_OK) {
        vk_count(p, CTR_malformed);
        return VK_DROP;
    }

    struct fw_pkt fp = {.len = vk_len(p)};
    __u32 l3_end, bad = 0;
    __u8 proto = p->h.l4_proto;
    struct iphdr *ip = vk_ipv4(p);
    struct ipv6hdr *ip6 = vk_ipv6(p);
    if (ip) {
        l3_end = p->h.l3_off + bpf_ntohs(ip->tot_len);
        /* RFC 1858: a TCP fragment at offset 8 bytes can only be there to overwrite the
         * header (ports, flags) the first fragment was judged by. */
        bad = proto == IPPROTO_TCP && (bpf_ntohs(ip->frag_off) & 0x1fff) == 1;
        fp.key.family = 4;
        __builtin_memcpy(fp.key.saddr, &ip->saddr, 4);
        __builtin_memcpy(fp.key.daddr, &ip->daddr, 4);
    } else if (ip6) {
        l3_end = p->h.l3_off + sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
        /* Still an extension header after vk_parse's VK_MAX_IPV6_EXT: the chain is longer
         * than the parser walks, so the real protocol and ports are unknown; judging it by
         * the extension header's number would let it past deny rules (RFC 7112). */
        bad = p->h.frag != VK_FRAG_LATER && (proto == IPPROTO_HOPOPTS || proto == IPPROTO_ROUTING ||
                                             proto == IPPROTO_FRAGMENT || proto == IPPROTO_DSTOPTS ||
                                             proto == IPPROTO_AH);
        fp.key.family = 6;
        __builtin_memcpy(fp.key.saddr, &ip6->saddr, 16);
        __builtin_memcpy(fp.key.daddr, &ip6->daddr, 16);
    } else {
        /* ARP, NSH and the rest are not IP: the rules cannot judge them. */
        vk_count(p, CTR_non_ip);
        return cfg->non_ip_drop ? VK_DROP : VK_PASS;
    }
    /* A length field that claims more than the frame holds, or an L4 header that runs past
     * the IP packet's end: a lying or truncated packet, never judged by its ports. */
    if (bad || l3_end > vk_len(p) || p->h.payload_off > l3_end) {
        vk_count(p, CTR_malformed);
        return VK_DROP;
    }

    fp.key.proto = proto;
    fp.later = p->h.frag == VK_FRAG_LATER;
    fp.flags_slot = fp.later ? FW_FLAGS_FRAG : FW_FLAGS_NONE;
    /* Headers are copied out once: clang may otherwise recompute a header pointer for a
     * later read, one the verifier has no bounds check for. */
    struct tcphdr *tcp = vk_tcp(p);
    struct udphdr *udp = vk_udp(p);
    struct vk_icmp_hdr *icmp = vk_icmp(p);
    if (tcp) {
        __u8 *th = (__u8 *)tcp;
        fp.tcp_flags = th[13];
        fp.flags_slot = fp.tcp_flags;
        fp.has_ports = 1;
        __builtin_memcpy(&fp.key.sport, th, 4);  /* source and destination port */
    } else if (udp) {
        struct udphdr uh = *udp;
        /* A UDP length must fit the IP payload; fragments carry the whole datagram's. */
        __u32 ulen = bpf_ntohs(uh.len);
        if (p->h.frag == VK_FRAG_NONE && (ulen < sizeof(uh) || p->h.l4_off + ulen > l3_end)) {
            vk_count(p, CTR_malformed);
            return VK_DROP;
        }
        fp.has_ports = 1;
        fp.key.sport = uh.source;
        fp.key.dport = uh.dest;
    } else if (icmp) {
        /* Echo request and reply share the identifier: it stands in for both ports.
         * vk_icmp() has checked the 8 bytes an echo header needs. */
        struct vk_icmp_hdr ih = *icmp;
        if (fp.key.family == 4 ? ih.type == 8 || ih.type == 0 : ih.type == 128 || ih.type == 129) {
            fp.key.sport = ih.id;
            fp.key.dport = ih.id;
        }
    }
    if (fp.has_ports) {
        fp.sport = bpf_ntohs(fp.key.sport);
        fp.dport = bpf_ntohs(fp.key.dport);
    }
    return fw_decide(&fp);
}

VNF_MAIN(process)
