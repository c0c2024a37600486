/* monitor: a passive flow monitor. Every frame is counted and passed on unchanged (PASS,
 * or NEXT inside a service chain); what it learns goes into tables the control plane
 * (control.py) reads:
 *
 *   flows       LRU hash, flow key -> packets, bytes, first/last seen, TCP flags, sizes
 *   sketch      count-min sketch, SKETCH_ROWS x SKETCH_COLS {packets, bytes} cells
 *   proto_hist  IP protocol -> {packets, bytes}
 *   size_hist   floor(log2(frame length)) -> {packets, bytes}
 *   vlan_hist   VID of the outer 802.1Q/802.1ad tag -> {packets, bytes}
 *
 * The flow table is exact while a flow stays resident; the sketch never forgets a flow
 * (until reset) and over-estimates by at most e/SKETCH_COLS of the total with probability
 * 1 - e^-SKETCH_ROWS. Statistics live in shared (not per-CPU) arrays with atomic adds, so
 * any number of CPUs give exactly the sums one CPU would. model.py is the twin of this
 * file, its hash functions included.
 */
#define VNF_COUNTERS(X)                                                                  \
    X(malformed) X(non_ip) X(ipv4) X(ipv6) X(fragment) X(icmp) X(no_ports) X(tagged)     \
    X(flow_new) X(flow_update) X(flow_lost)
#include <vnfkit.h>

struct vnf_config {
    __u32 sketch_seed;  /* seeds the sketch's hash family; change it only with a reset */
    __u8 chained;       /* 1: VK_NEXT (in a service chain), 0: VK_PASS */
};
VK_USE_CONFIG;

#define SKETCH_ROWS 4          /* d: the bound fails with probability e^-4 = 1.8 % */
#define SKETCH_COLS 2048       /* w, a power of two: over-estimate <= e/2048 = 0.13 % of the total */
#define SKETCH_PRIME 0x7fffffffu  /* 2^31 - 1, the Mersenne prime of the Carter-Wegman family */
#define GOLDEN 0x9e3779b9u

#define FLOW_F_FRAG 0x01       /* flow_key.flags: an IP fragment, keyed by L3 only */

/* 44 bytes, no implicit padding (the kernel, native and model tables compare key bytes).
 * Ports and VIDs are in host order so the control plane reads them as plain integers. */
struct flow_key {
    __u8 src[16];       /* IPv4: the 4 address bytes, then zeros; IPv6: 16 bytes */
    __u8 dst[16];
    __u16 sport;        /* TCP/UDP ports; 0 for fragments and protocols without ports */
    __u16 dport;        /* ICMP/ICMPv6: type << 8 | code (as NetFlow does) */
    __u16 vid[2];       /* VIDs of the outer and inner tag; 0 when absent */
    __u8 proto;         /* IP protocol after IPv6 extension headers */
    __u8 ipver;         /* 4 or 6 */
    __u8 vlans;         /* 0, 1 or 2 tags */
    __u8 flags;         /* FLOW_F_* */
} __attribute__((aligned(4)));  /* hashed as eleven 32-bit words */

#define FLOW_KEY_WORDS (sizeof(struct flow_key) / 4)
_Static_assert(sizeof(struct flow_key) == 44, "flow_key layout is shared with model.py");

struct flow_stats {
    __u64 packets;
    __u64 bytes;        /* frame bytes as XDP sees them: Ethernet header included */
    __u64 first_ns;     /* vk_now() of the first and of the latest packet */
    __u64 last_ns;
    __u32 tcp_flags;    /* OR of the flags byte of every TCP segment (FIN 0x01 .. CWR 0x80) */
    __u16 min_len;      /* smallest and largest frame, bytes (capped at 65535) */
    __u16 max_len;
};

struct mon_count {
    __u64 packets;
    __u64 bytes;
};

/* 65,536 flows: the LRU evicts the least recently seen flow when full (its counts stay in
 * the sketch). */
VK_LRU_HASH(flows, struct flow_key, struct flow_stats, 65536);
VK_ARRAY(sketch, struct mon_count, SKETCH_ROWS * SKETCH_COLS);  /* cell row * COLS + col */
VK_ARRAY(proto_hist, struct mon_count, 256);
VK_ARRAY(size_hist, struct mon_count, 32);
VK_ARRAY(vlan_hist, struct mon_count, 4096);

/* Atomic adds: statistics arrays are shared by every CPU. The results are not used, so
 * clang emits the BPF atomic add every kernel supports. */
#define MON_ADD(table, index, nbytes)                                   \
    do {                                                                \
        __u32 k__ = (index);                                            \
        struct mon_count *c__ = vk_lookup(table, &k__);                 \
        if (c__) {                                                      \
            __sync_fetch_and_add(&c__->packets, 1);                     \
            __sync_fetch_and_add(&c__->bytes, (nbytes));                \
        }                                                               \
    } while (0)

/* ---- the hash family (model.py has the same functions) ---- */

/* v mod (2^31 - 1) for v < 2^62, by folding (no division in the fast path). */
VK_INLINE __u32 mod_p(__u64 v)
{
    v = (v & SKETCH_PRIME) + (v >> 31);
    v = (v & SKETCH_PRIME) + (v >> 31);
    return v >= SKETCH_PRIME ? (__u32)(v - SKETCH_PRIME) : (__u32)v;
}

/* MurmurHash3 (x86, 32-bit) of the key: a seeded 32-bit fingerprint of the flow. */
VK_INLINE __u32 flow_hash(const struct flow_key *key, __u32 seed)
{
    return vk_murmur3_words((const __u32 *)key, (int)FLOW_KEY_WORDS, seed);
}

/* Row `row`'s column: h_row(x) = ((a x + b) mod p) mod w, a pairwise-independent
 * (Carter-Wegman) family, as the count-min bounds assume; a and b come from the seed. */
VK_INLINE __u32 sketch_col(__u32 seed, __u32 row, __u32 x)
{
    __u32 a = mod_p(vk_fmix32(seed ^ (GOLDEN * (2 * row + 1))));
    __u32 b = mod_p(vk_fmix32(seed ^ (GOLDEN * (2 * row + 2))));
    if (!a)
        a = 1;
    return mod_p((__u64)a * x + b) & (SKETCH_COLS - 1);
}

VK_INLINE void sketch_add(const struct flow_key *key, __u32 seed, __u32 nbytes)
{
    __u32 x = mod_p(flow_hash(key, seed));
    VK_UNROLL
    for (__u32 row = 0; row < SKETCH_ROWS; row++)
        MON_ADD(sketch, row * SKETCH_COLS + sketch_col(seed, row, x), nbytes);
}

/* 1 if v > limit, else 0, without a branch (the borrow of a 64-bit subtraction). */
VK_INLINE __u64 above(__u64 v, __u64 limit)
{
    return (limit - v) >> 63;
}

/* floor(log2(v)) for v > 0, branch-free: branches that each leave a different constant
 * bucket would multiply the verifier's states (it tracks constant array keys exactly). */
VK_INLINE __u32 log2_u32(__u32 value)
{
    __u64 v = value, r, s;
    r = above(v, 0xffff) << 4;
    v >>= r;
    s = above(v, 0xff) << 3;
    v >>= s;
    r |= s;
    s = above(v, 0xf) << 2;
    v >>= s;
    r |= s;
    s = above(v, 0x3) << 1;
    v >>= s;
    r |= s;
    return (__u32)(r | (v >> 1));
}

VK_INLINE void flow_touch(struct flow_stats *f, __u32 len, __u16 len16, __u32 tcp_flags, __u64 now)
{
    __sync_fetch_and_add(&f->packets, 1);
    __sync_fetch_and_add(&f->bytes, len);
    /* Plain stores: two CPUs racing on one flow may lose a flag or a min/max update,
     * never a packet or a byte. */
    f->last_ns = now;
    f->tcp_flags |= tcp_flags;
    if (len16 < f->min_len)
        f->min_len = len16;
    if (len16 > f->max_len)
        f->max_len = len16;
}

/* Everything after the key is built: the protocol histogram, the sketch and the flow
 * table. A global (non-inlined) function, so the verifier checks it once instead of once
 * per path through the parser, which keeps its processed-instruction count low. */
__attribute__((noinline)) int mon_account(const struct flow_key *key, __u32 len, __u32 tcp_flags, __u32 seed,
                                           __u32 how)
{
    if (!key)
        return -1;
    /* The family's counter and how the key was made (fragment, icmp, no_ports; VK_CTR_MAX:
     * from ports), counted here rather than on every path through the parser. */
    vk_count_n(key->ipver == 4 ? CTR_ipv4 : CTR_ipv6, len);
    if (how < VK_CTR_MAX)
        vk_count_n((enum vnf_counter)how, len);
    __u64 now = vk_now();
    __u16 len16 = len > 0xffff ? 0xffff : (__u16)len;
    MON_ADD(proto_hist, key->proto, len);
    /* The sketch before the flow table: a reader that takes the flow table first and the
     * sketch second always sees estimate >= exact count. */
    sketch_add(key, seed, len);
    struct flow_stats *f = vk_lookup(flows, key);
    if (!f) {
        struct flow_stats fresh = {.packets = 1, .bytes = len, .first_ns = now, .last_ns = now,
                                   .tcp_flags = tcp_flags, .min_len = len16, .max_len = len16};
        if (vk_update(flows, key, &fresh, VK_NOEXIST) == 0) {
            vk_count_n(CTR_flow_new, len);
            return 0;
        }
        /* Another CPU inserted it first (EEXIST), or the LRU found no node to free. */
        f = vk_lookup(flows, key);
        if (!f) {
            vk_count_n(CTR_flow_lost, len);
            return 0;
        }
    }
    flow_touch(f, len, len16, tcp_flags, now);
    vk_count_n(CTR_flow_update, len);
    return 0;
}

static __always_inline int process(struct vk_pkt *p)
{
    const struct vnf_config *cfg = vk_config();
    if (!cfg)
        return VK_ABORTED;
    /* PASS (1) or NEXT (3), computed rather than branched on: the verdict stays live to the
     * end, so a branch here would double every verifier state after it. */
    int verdict = VK_PASS + 2 * (cfg->chained & 1);
    __u32 len = vk_len(p);
    int parsed = vk_parse(p);

    /* Every frame, malformed ones too, is in the size histogram (it sums to rx) and, when
     * its first tag could be read, under the outer tag's VID. */
    MON_ADD(size_hist, log2_u32(len), len);
    if (p->h.vlans) {
        vk_count(p, CTR_tagged);
        MON_ADD(vlan_hist, p->h.vlan_tci[0] & 0x0fff, len);
    }
    if (parsed != VK_PARSE_OK) {
        vk_count(p, CTR_malformed);
        return verdict;
    }

    struct flow_key key;
    __builtin_memset(&key, 0, sizeof(key));
    struct iphdr *ip = vk_ipv4(p);
    struct ipv6hdr *ip6 = vk_ipv6(p);
    if (ip) {
        __builtin_memcpy(key.src, &ip->saddr, 4);
        __builtin_memcpy(key.dst, &ip->daddr, 4);
        key.ipver = 4;
    } else if (ip6) {
        __builtin_memcpy(key.src, &ip6->saddr, 16);
        __builtin_memcpy(key.dst, &ip6->daddr, 16);
        key.ipver = 6;
    } else {
        vk_count(p, CTR_non_ip);  /* ARP, NSH, ...: counted in size_hist and vlan_hist only */
        return verdict;
    }
    key.proto = p->h.l4_proto;
    key.vlans = p->h.vlans;
    key.vid[0] = p->h.vlan_tci[0] & 0x0fff;
    key.vid[1] = p->h.vlan_tci[1] & 0x0fff;

    /* Fragment policy: every fragment, the first one included, is keyed by L3 alone (ports
     * 0, FLOW_F_FRAG), so a fragmented datagram's bytes all land in one flow entry. */
    __u32 tcp_flags = 0, how = VK_CTR_MAX;  /* how: the counter of the key's kind, if any */
    __u8 proto = p->h.l4_proto;
    __u32 l4 = p->h.l4_off;  /* set only when the whole L4 header is in the frame */
    int is_icmp = (proto == IPPROTO_ICMP && ip) || (proto == IPPROTO_ICMPV6 && ip6);
    if (p->h.frag) {
        key.flags = FLOW_F_FRAG;
        how = CTR_fragment;
    } else if (l4 && proto == IPPROTO_TCP) {
        __u8 *h = vk_ptr(p, l4, 14);  /* ports at 0 and 2, flags at 13 */
        if (!h)
            return VK_ABORTED;  /* vk_parse saw the whole header: cannot happen */
        key.sport = (__u16)h[0] << 8 | h[1];
        key.dport = (__u16)h[2] << 8 | h[3];
        tcp_flags = h[13];
    } else if (l4 && proto == IPPROTO_UDP) {
        __u8 *h = vk_ptr(p, l4, 4);
        if (!h)
            return VK_ABORTED;
        key.sport = (__u16)h[0] << 8 | h[1];
        key.dport = (__u16)h[2] << 8 | h[3];
    } else if (l4 && is_icmp) {
        __u8 *h = vk_ptr(p, l4, 2);
        if (!h)
            return VK_ABORTED;
        key.dport = (__u16)h[0] << 8 | h[1];  /* type << 8 | code */
        how = CTR_icmp;
    } else {
        how = CTR_no_ports;  /* GRE, ESP, SCTP, ICMP in the other family, ... */
    }

    mon_account(&key, len, tcp_flags, cfg->sketch_seed, how);
    return verdict;
}

VNF_MAIN(process)
