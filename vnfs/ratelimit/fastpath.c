/* ratelimit: token-bucket policing per source prefix and per flow.
 *
 * A packet's source address picks a prefix bucket through a longest-prefix match (src4 or
 * src6 -> bucket id -> buckets[id]); its 5-tuple picks a flow bucket in the LRU table
 * `flows`, all flows sharing the rate and burst from the config. A packet conforms when
 * every bucket that applies to it holds enough tokens; only then are tokens taken, from
 * all of them. An exceeding packet is dropped or marked (DSCP rewritten, ECN kept).
 *
 * Tokens are kept in nano-tokens (token x 1e9): refilling elapsed_ns at `rate` tokens/s adds
 * exactly elapsed_ns * rate, so the arithmetic is integer, exact, and identical in model.py.
 * Buckets are updated without locks, with compare-and-swap (see refill and take): on several
 * CPUs in the kernel policing is close but not exact (README.md says how close). Each rule
 * has a twin in model.py.
 */
#define VNF_COUNTERS(X)                                                                   \
    X(malformed) X(not_ip) X(frag_dropped) X(unmatched) X(no_bucket) X(flow_new)          \
    X(flow_untracked) X(conform) X(exceed_prefix) X(exceed_flow) X(exceed_drop) X(exceed_mark)
#include <vnfkit.h>

#define NSEC_PER_SEC 1000000000ull
#define MAX_BUCKETS 1024

enum rl_unit { UNIT_PACKETS = 0, UNIT_BYTES = 1 };
/* A bucket's exceed action; ACT_DEFAULT takes the config's exceed_action. */
enum rl_action { ACT_DEFAULT = 0, ACT_DROP = 1, ACT_MARK = 2 };

struct vnf_config {
    __u32 flow_rate;        /* per-flow tokens per second */
    __u32 flow_burst;       /* per-flow bucket size in tokens; 0 turns per-flow policing off */
    __u8 flow_unit;         /* enum rl_unit */
    __u8 exceed_action;     /* 0 drop, 1 mark: for flows and for buckets with ACT_DEFAULT */
    __u8 mark_dscp;         /* DSCP written into exceeding packets in mark mode */
    __u8 drop_later_frags;  /* 1: non-first fragments are dropped instead of policed */
};
VK_USE_CONFIG;

/* LPM keys: prefix length (host order), then the address as it sits in the packet. */
struct lpm_v4 {
    __u32 prefixlen;
    __u8 addr[4];
};

struct lpm_v6 {
    __u32 prefixlen;
    __u8 addr[16];
};

/* A prefix bucket: the control plane writes all of it (tokens 0 and last_ns 0, so the bucket
 * starts full on its next packet); the fast path then owns tokens and last_ns. */
struct bucket {
    __u64 tokens;    /* nano-tokens */
    __u64 last_ns;   /* vk_now() of the last refill; 0: never used, starts full */
    __u32 rate;      /* tokens per second */
    __u32 burst;     /* tokens; 0: not configured (the prefix is counted in no_bucket) */
    __u8 unit;       /* enum rl_unit */
    __u8 action;     /* enum rl_action */
    __u8 pad[6];
};

/* Per-bucket outcome statistics. A shared array with atomic adds, not a per-CPU one, so the
 * control plane reads exact totals and every executor holds the same values. */
struct bucket_stats {
    __u64 conform_packets;
    __u64 conform_bytes;
    __u64 exceed_packets;
    __u64 exceed_bytes;
};

/* Addresses in the first 4 bytes of src/dst for IPv4 (family 4), all 16 for IPv6 (family 6);
 * ports as they sit in the packet, 0 when there are none (later fragments, ICMP, ...). */
struct flow_key {
    __u8 src[16];
    __u8 dst[16];
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 family;
    __u16 pad;
};

struct flow_state {
    __u64 tokens;
    __u64 last_ns;
};

VK_LPM_TRIE(src4, struct lpm_v4, __u32, 4096);             /* IPv4 source prefix -> bucket id */
VK_LPM_TRIE(src6, struct lpm_v6, __u32, 4096);             /* IPv6 source prefix -> bucket id */
VK_ARRAY(buckets, struct bucket, MAX_BUCKETS);             /* bucket id -> rate, burst, state */
VK_ARRAY(bucket_stats, struct bucket_stats, MAX_BUCKETS);  /* bucket id -> outcomes */
VK_LRU_HASH(flows, struct flow_key, struct flow_state, 65536);

/* Buckets are shared by every CPU and updated without locks, with compare-and-swap so that
 * concurrent packets neither credit one interval of time twice nor lose a debit. A CAS
 * that keeps losing gives up after CAS_TRIES, on the strict side (no credit, no token).
 * On one CPU (and in model.py) every CAS succeeds at once and this is plain arithmetic. */
#define CAS_TRIES 4
#define READ_ONCE_U64(x) (*(volatile __u64 *)&(x))

/* The new token count: refilled for `elapsed` ns at `rate`, capped at `cap` (a lowered burst
 * cuts tokens down). Never overflows: tokens <= cap <= 2^32 * 1e9 < 2^63, and elapsed * rate
 * is only computed when it is at most cap - tokens. */
static __always_inline __u64 refilled(__u64 tokens, __u64 elapsed, __u32 rate, __u64 cap)
{
    if (tokens >= cap)
        return cap;
    if (!elapsed || !rate)
        return tokens;
    if (elapsed > (cap - tokens) / rate)
        return cap;
    return tokens + elapsed * rate;
}

/* Bring a bucket's tokens up to `now`. The CPU whose CAS moves last_ns forward owns the time
 * between and credits it; a clock behind last_ns (another CPU refilled with a later
 * timestamp) credits nothing and moves nothing back. last_ns 0: never used, starts full. */
static __always_inline void refill(__u64 *tokens, __u64 *last_ns, __u64 now, __u32 rate, __u64 cap)
{
    __u64 last = READ_ONCE_U64(*last_ns);
    __u64 elapsed = 0;
    if (last == 0) {
        if (__sync_val_compare_and_swap(last_ns, 0, now) == 0)
            *tokens = cap;
        return;
    }
    if (now > last && __sync_val_compare_and_swap(last_ns, last, now) == last)
        elapsed = now - last;
    VK_UNROLL
    for (int i = 0; i < CAS_TRIES; i++) {
        __u64 t = READ_ONCE_U64(*tokens);
        __u64 nt = refilled(t, elapsed, rate, cap);
        if (nt == t || __sync_val_compare_and_swap(tokens, t, nt) == t)
            return;
    }
}

/* Take `cost` nano-tokens: 1 if taken, 0 if the bucket holds fewer (or kept losing races). */
static __always_inline int take(__u64 *tokens, __u64 cost)
{
    VK_UNROLL
    for (int i = 0; i < CAS_TRIES; i++) {
        __u64 t = READ_ONCE_U64(*tokens);
        if (t < cost)
            return 0;
        if (__sync_val_compare_and_swap(tokens, t, t - cost) == t)
            return 1;
    }
    return 0;
}

/* Rewrite the DSCP (the top 6 bits of the IPv4 TOS / IPv6 Traffic Class), keeping ECN. */
static __always_inline void mark(struct iphdr *ip, struct ipv6hdr *ip6, __u8 dscp)
{
    dscp &= 0x3f;
    if (ip) {
        /* TOS shares its checksum word with version/IHL. */
        __be16 old = *(__be16 *)ip;
        ip->tos = (__u8)((dscp << 2) | (ip->tos & 3));
        vk_csum_replace2(&ip->check, old, *(__be16 *)ip);
    } else if (ip6) {
        /* Traffic Class straddles bytes 0 and 1: version:4 TC:8 flow label:20. */
        __u8 *b = (__u8 *)ip6;
        b[0] = (__u8)((b[0] & 0xf0) | (dscp >> 2));
        b[1] = (__u8)((b[1] & 0x3f) | ((dscp & 3) << 6));
    }
}

static __always_inline void bucket_account(__u32 id, int exceeded, __u64 bytes)
{
    struct bucket_stats *st = vk_lookup(bucket_stats, &id);
    if (!st)
        return;
    if (exceeded) {
        __sync_fetch_and_add(&st->exceed_packets, 1);
        __sync_fetch_and_add(&st->exceed_bytes, bytes);
    } else {
        __sync_fetch_and_add(&st->conform_packets, 1);
        __sync_fetch_and_add(&st->conform_bytes, bytes);
    }
}

static __always_inline int process(struct vk_pkt *p)
{
    const struct vnf_config *cfg = vk_config();
    if (!cfg)
        return VK_ABORTED;
    if (vk_parse(p) != VK_PARSE_OK) {
        /* Dropped, not passed: a header the parser cannot follow must not slip past policing. */
        vk_count(p, CTR_malformed);
        return VK_DROP;
    }

    struct flow_key fk;
    __builtin_memset(&fk, 0, sizeof(fk));
    __u32 *idp;
    struct iphdr *ip = vk_ipv4(p);
    struct ipv6hdr *ip6 = NULL;
    if (ip) {
        struct lpm_v4 k = {.prefixlen = 32};
        __builtin_memcpy(k.addr, &ip->saddr, 4);
        idp = vk_lookup(src4, &k);
        __builtin_memcpy(fk.src, &ip->saddr, 4);
        __builtin_memcpy(fk.dst, &ip->daddr, 4);
        fk.family = 4;
    } else {
        ip6 = vk_ipv6(p);
        if (!ip6) {
            vk_count(p, CTR_not_ip);  /* ARP, NSH, ...: not policed */
            return VK_PASS;
        }
        struct lpm_v6 k = {.prefixlen = 128};
        __builtin_memcpy(k.addr, &ip6->saddr, 16);
        idp = vk_lookup(src6, &k);
        __builtin_memcpy(fk.src, &ip6->saddr, 16);
        __builtin_memcpy(fk.dst, &ip6->daddr, 16);
        fk.family = 6;
    }
    if (p->h.frag == VK_FRAG_LATER && cfg->drop_later_frags) {
        vk_count(p, CTR_frag_dropped);
        return VK_DROP;
    }

    __u32 id = 0;
    struct bucket *b = NULL;
    if (idp) {
        id = *idp;
        b = vk_lookup(buckets, &id);
        if (b && b->burst == 0)
            b = NULL;
        if (!b)
            vk_count(p, CTR_no_bucket);  /* a prefix whose bucket was never configured */
    }

    struct flow_state fresh = {0, 0};
    struct flow_state *fs = NULL;
    int new_flow = 0;
    if (cfg->flow_burst) {
        fk.proto = p->h.l4_proto;
        struct tcphdr *tcp = vk_tcp(p);
        struct udphdr *udp = vk_udp(p);
        if (tcp) {
            fk.sport = tcp->source;
            fk.dport = tcp->dest;
        } else if (udp) {
            fk.sport = udp->source;
            fk.dport = udp->dest;
        }
        fs = vk_lookup(flows, &fk);
        if (!fs) {
            fs = &fresh;  /* stored after the decision, refilled (full) like any new bucket */
            new_flow = 1;
        }
    }
    if (!b && !fs) {
        vk_count(p, CTR_unmatched);
        return VK_PASS;
    }

    __u64 now = vk_now();
    __u64 l3_bytes = vk_len(p) - p->h.l3_off;  /* IP header to end of frame: tags not charged */
    __u64 bcost = 0, fcost = 0;
    __u8 dflt = cfg->exceed_action ? ACT_MARK : ACT_DROP, bact = dflt;
    int prefix_ok = 1, flow_ok = 1;
    if (b) {
        if (b->action == ACT_DROP || b->action == ACT_MARK)
            bact = b->action;
        bcost = (b->unit == UNIT_BYTES ? l3_bytes : 1) * NSEC_PER_SEC;
        refill(&b->tokens, &b->last_ns, now, b->rate, (__u64)b->burst * NSEC_PER_SEC);
        prefix_ok = READ_ONCE_U64(b->tokens) >= bcost;
    }
    if (fs) {
        fcost = (cfg->flow_unit == UNIT_BYTES ? l3_bytes : 1) * NSEC_PER_SEC;
        refill(&fs->tokens, &fs->last_ns, now, cfg->flow_rate, (__u64)cfg->flow_burst * NSEC_PER_SEC);
        flow_ok = READ_ONCE_U64(fs->tokens) >= fcost;
    }
    /* Tokens are taken only from a packet that every bucket admits, so one bucket's refusal
     * does not drain the others. Between the checks above and here another CPU may have
     * taken the last token: then the packet exceeds after all (and the prefix bucket gets
     * back what it gave). */
    if (prefix_ok && flow_ok) {
        if (b && !take(&b->tokens, bcost)) {
            prefix_ok = 0;
        } else if (fs && !take(&fs->tokens, fcost)) {
            flow_ok = 0;
            if (b)
                __sync_fetch_and_add(&b->tokens, bcost);
        }
    }
    int drop = 0;
    if (!prefix_ok) {
        vk_count(p, CTR_exceed_prefix);
        drop |= bact == ACT_DROP;
    }
    if (!flow_ok) {
        vk_count(p, CTR_exceed_flow);
        drop |= dflt == ACT_DROP;
    }
    int exceeded = !prefix_ok || !flow_ok;
    if (new_flow) {
        if (vk_update(flows, &fk, &fresh, VK_ANY))
            vk_count(p, CTR_flow_untracked);  /* the kernel could not allocate an entry */
        else
            vk_count(p, CTR_flow_new);
    }
    if (b)
        bucket_account(id, exceeded, vk_len(p));

    if (!exceeded) {
        vk_count(p, CTR_conform);
        return VK_PASS;
    }
    if (drop) {
        vk_count(p, CTR_exceed_drop);
        return VK_DROP;
    }
    mark(ip, ip6, cfg->mark_dscp);
    vk_count(p, CTR_exceed_mark);
    return VK_PASS;
}

VNF_MAIN(process)
