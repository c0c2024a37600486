/* l4lb: a layer-4 load balancer in the style of Katran.
 *
 * A packet to a VIP (address, protocol, port) belongs to a service. Its flow (the 5-tuple)
 * is looked up in the connection table; a new flow is hashed into the service's slice of
 * the Maglev ring (filled by control.py) to pick a backend, and the choice is remembered,
 * so established flows stay put when the backend set changes. Then, per service, either
 *   - ENCAP: an outer IPv4 (IPIP) or IPv6 (IP6IP6) header to the backend is pushed, the
 *     backend answers the client directly (direct server return), or
 *   - DNAT: the destination becomes the backend's address and port, and a reverse entry
 *     lets the backend's replies be translated back to the VIP (SNAT) on their way out.
 * Forwarded packets go to the host's stack (VK_PASS), which routes them.
 *
 * Every rule has a twin in model.py; struct layouts are packed by control.py. */
#define VNF_COUNTERS(X) X(malformed) X(non_ip) X(not_vip) X(vip_miss) X(frag_drop) X(frag_pass) \
    X(conn_hit) X(conn_miss) X(conn_expired) X(conn_stale) X(no_backend) X(encap4) X(encap6) \
    X(encap_fail) X(dnat) X(snat)
#include <vnfkit.h>

#define MAX_VIPS 1024
#define MAX_SERVICES 256
#define MAX_BACKENDS 4096
#define RING_CAP 65537          /* one production-size Maglev ring, or many small ones */
#define MAX_CONNS 65536

#define FAM_V4 4
#define FAM_V6 6
#define MODE_DNAT 1
#define MODE_ENCAP 2
#define ADDR_F_FRAG_PASS 1      /* fragments to this VIP address go to the stack */
#define ENCAP_TTL 64

#ifndef IPPROTO_IPIP
#define IPPROTO_IPIP 4
#endif
#ifndef IPPROTO_IPV6
#define IPPROTO_IPV6 41
#endif

struct vnf_config {
    __u32 hash_seed;         /* seeds the flow hash: LBs sharing a ring must share it */
    __u32 conn_timeout_ms;   /* idle flows older than this are scheduled again; 0: never */
    __be32 encap_src4;       /* outer IPv4 source of IPIP packets */
    __be32 encap_src6[4];    /* outer IPv6 source of IP6IP6 packets */
};
VK_USE_CONFIG;

/* All addresses are 16 bytes in network order (as 32-bit words, so they copy and compare
 * a word at a time); an IPv4 address fills the first 4 bytes, the rest are 0. */
struct vip_key {
    __be32 addr[4];
    __be16 port;             /* 0: every port of the protocol */
    __u8 proto;
    __u8 family;
};

struct vip_val {
    __u32 svc;               /* index into services */
    __u32 stat;              /* index into vip_stats */
};

struct addr_key {
    __be32 addr[4];
    __u8 family;
    __u8 pad[3];
};

struct addr_val {
    __u32 vips;              /* VIPs on this address (control.py's refcount) */
    __u32 flags;             /* ADDR_F_* */
};

struct service {
    __u32 ring_base;         /* the service's slice of ring: [base, base + size) */
    __u32 ring_size;         /* a prime; 0: no such service */
    __u8 mode;               /* MODE_DNAT or MODE_ENCAP */
    __u8 family;
    __u8 pad[2];
};

struct backend {
    __be32 addr[4];
    __be16 port;             /* DNAT: the port to translate to; 0 keeps the VIP's */
    __u8 family;             /* 0: removed (flows on it are scheduled again) */
    __u8 pad;
};

/* The 5-tuple as the connection and reverse-NAT tables key it; the hash reads it as ten
 * 32-bit words. */
struct flow_key {
    __be32 src[4];
    __be32 dst[4];
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 family;
    __u8 pad[2];
};

struct conn {
    __u32 backend;
    __u32 pad;
    __u64 last_ns;           /* vk_now() of the flow's last packet */
};

struct nat_rev {
    __be32 vip[4];
    __be16 vport;
    __u16 pad;
};

struct vip_stat {
    __u64 packets;
    __u64 bytes;
};

_Static_assert(sizeof(struct vip_key) == 20, "vip_key layout (control.py packs it)");
_Static_assert(sizeof(struct addr_key) == 20, "addr_key layout");
_Static_assert(sizeof(struct service) == 12, "service layout");
_Static_assert(sizeof(struct backend) == 20, "backend layout");
_Static_assert(sizeof(struct flow_key) == 40, "flow_key layout");
_Static_assert(sizeof(struct conn) == 16, "conn layout");
_Static_assert(sizeof(struct nat_rev) == 20, "nat_rev layout");

VK_HASH(vips, struct vip_key, struct vip_val, MAX_VIPS);
VK_HASH(vip_addrs, struct addr_key, struct addr_val, MAX_VIPS);
VK_ARRAY(services, struct service, MAX_SERVICES);
VK_ARRAY(ring, __u32, RING_CAP);                  /* Maglev slots -> backend id (0: none) */
VK_ARRAY(backends, struct backend, MAX_BACKENDS);
/* Per CPU, as Katran's stats: no atomic add, no cache line bouncing between CPUs; the
 * control plane reads the sum. Statistics only: nothing the fast path decides reads it. */
VK_PERCPU_ARRAY(vip_stats, struct vip_stat, MAX_VIPS);
VK_LRU_HASH(conns, struct flow_key, struct conn, MAX_CONNS);
VK_LRU_HASH(nat_revs, struct flow_key, struct nat_rev, MAX_CONNS);

/* MurmurHash3 (x86, 32-bit) of the 40-byte flow key as ten little-endian words: no
 * randomness, the same on every executor and in maglev.py, and well mixed for Maglev. */
static __always_inline __u32 flow_hash(const struct flow_key *k, __u32 seed)
{
    return vk_murmur3_words((const __u32 *)k, 10, seed);
}

/* The one's-complement difference a field's change makes to a checksum (RFC 1624,
 * eqn. 3: ~m + m'), summed over all the fields that change, so the L4 checksum is updated
 * once and without a branch per word. */
static __always_inline __u32 csum_diff4(__u32 acc, __be32 from, __be32 to)
{
    return acc + (__u16)~(from & 0xffff) + (__u16)~(from >> 16) + (to & 0xffff) + (to >> 16);
}

/* Apply a summed difference. UDP's 0 means "no checksum" and stays 0; a computed 0 is sent
 * as 0xffff (RFC 768; for UDP over IPv6 a 0 is invalid anyway, and left alone). */
static __always_inline void csum_apply(__sum16 *sum, __u32 diff, int is_udp)
{
    if (is_udp && *sum == 0)
        return;
    __u16 s = ~vk_csum_fold((__u16)~*sum + diff);
    if (is_udp && s == 0)
        s = 0xffff;
    *sum = s;
}

/* The L4 half of a rewrite: the port, then the checksum with the addresses' difference. */
#define REWRITE_L4(hdr_type, is_udp)                                \
    do {                                                            \
        hdr_type *h = VK_HDR(p, p->h.l4_off, hdr_type);             \
        if (!h)                                                     \
            return -1;                                              \
        __be16 *field = dst ? &h->dest : &h->source;                \
        diff += (__u16)~*field + (__u16)port;                       \
        *field = port;                                              \
        csum_apply(&h->check, diff, is_udp);                        \
    } while (0)

/* Rewrite one address (the source when `dst` is 0; a constant at every call) and its port,
 * fixing the IPv4 header checksum and the L4 checksum, whose pseudo-header covers the
 * addresses. Fields are reached from header pointers at constant offsets: a pointer picked
 * by a conditional expression loses its range in the verifier's eyes. */
static __always_inline int rewrite(struct vk_pkt *p, int dst, const __be32 *addr, __be16 port)
{
    __u32 diff = 0;
    if (!p->h.l4_off)
        return -1;
    struct iphdr *ip4 = vk_ipv4(p);
    struct ipv6hdr *ip6 = vk_ipv6(p);
    if (ip4) {
        __be32 *field = dst ? &ip4->daddr : &ip4->saddr;
        __be32 to = addr[0];
        diff = csum_diff4(diff, *field, to);
        vk_csum_replace4(&ip4->check, *field, to);
        *field = to;
    } else if (ip6) {
        __be32 *field = (__be32 *)(dst ? &ip6->daddr : &ip6->saddr);
        VK_UNROLL
        for (int i = 0; i < 4; i++) {
            __be32 to = addr[i];
            diff = csum_diff4(diff, field[i], to);
            field[i] = to;
        }
    } else {
        return -1;
    }
    if (p->h.l4_proto == IPPROTO_UDP)
        REWRITE_L4(struct udphdr, 1);
    else if (p->h.l4_proto == IPPROTO_TCP)
        REWRITE_L4(struct tcphdr, 0);
    else
        return -1;
    return 0;
}

static __always_inline int same_rev(const struct nat_rev *a, const struct nat_rev *b)
{
    const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
    return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

/* DNAT to the backend; make sure the backend's replies will find their way back. */
static __always_inline int do_dnat(struct vk_pkt *p, const struct flow_key *fk, const struct backend *be)
{
    __be16 port = be->port ? be->port : fk->dport;
    struct flow_key rk = {};
    struct nat_rev want = {};
    __builtin_memcpy(rk.src, be->addr, 16);
    __builtin_memcpy(rk.dst, fk->src, 16);
    rk.sport = port;
    rk.dport = fk->sport;
    rk.proto = fk->proto;
    rk.family = fk->family;
    __builtin_memcpy(want.vip, fk->dst, 16);
    want.vport = fk->dport;
    if (rewrite(p, 1, be->addr, port))
        return VK_ABORTED;  /* vk_parse found the L4 header the caller used: cannot happen */
    /* Written when missing or different, looked up (refreshing it in the LRU) otherwise:
     * an established flow keeps its reverse entry as warm as its connection entry. */
    struct nat_rev *have = vk_lookup(nat_revs, &rk);
    if (!have || !same_rev(have, &want))
        vk_update(nat_revs, &rk, &want, VK_ANY);
    vk_count(p, CTR_dnat);
    return VK_PASS;
}

/* The Ethernet header and up to two VLAN tags move to the front; the new IP header goes
 * between them and the original one. Fixed-size copies keep the verifier's job simple:
 * 22 bytes (the longest L2 header) always fit because the packet has an IP header. */
#define L2_MAX 22

static __always_inline int push_room(struct vk_pkt *p, int room)
{
    __u8 l2[L2_MAX];
    __u8 *head = vk_ptr(p, 0, L2_MAX);
    if (!head)
        return -1;
    __builtin_memcpy(l2, head, L2_MAX);
    if (vk_adjust_head(p, -room))
        return -1;
    head = vk_ptr(p, 0, L2_MAX);
    if (!head)
        return -1;
    /* With fewer than two tags the copy runs into where the outer header goes next. */
    __builtin_memcpy(head, l2, L2_MAX);
    return 0;
}

static __always_inline int encap4(struct vk_pkt *p, const struct backend *be, const struct vnf_config *cfg)
{
    struct iphdr *inner = vk_ipv4(p);
    if (!inner)
        return VK_ABORTED;
    __u16 tot_len = bpf_ntohs(inner->tot_len) + sizeof(struct iphdr);
    __u8 tos = inner->tos;
    __u32 l3 = p->h.l3_off;
    if (push_room(p, sizeof(struct iphdr))) {
        vk_count(p, CTR_encap_fail);
        return VK_DROP;
    }
    struct iphdr *o = VK_HDR(p, l3, struct iphdr);
    if (!o)
        return VK_ABORTED;
    o->version = 4;
    o->ihl = 5;
    o->tos = tos;
    o->tot_len = bpf_htons(tot_len);
    o->id = 0;
    o->frag_off = 0;  /* no DF: the stack may fragment the outer packet on a small link */
    o->ttl = ENCAP_TTL;
    o->protocol = IPPROTO_IPIP;
    o->check = 0;
    o->saddr = cfg->encap_src4;
    o->daddr = be->addr[0];
    o->check = vk_ipv4_csum(o);
    vk_count(p, CTR_encap4);
    return VK_PASS;
}

static __always_inline int encap6(struct vk_pkt *p, const struct backend *be, const struct vnf_config *cfg,
                                  __u32 hash)
{
    struct ipv6hdr *inner = vk_ipv6(p);
    if (!inner)
        return VK_ABORTED;
    __be32 first;
    __builtin_memcpy(&first, inner, 4);
    /* Keep the traffic class; the flow label carries the flow hash so routers on the way
     * to the backend can spread the tunnel's flows (RFC 6438). */
    __u32 word0 = (6u << 28) | (bpf_ntohl(first) & 0x0ff00000u) | (hash & 0xfffffu);
    __u16 payload_len = bpf_ntohs(inner->payload_len) + sizeof(struct ipv6hdr);
    __u32 l3 = p->h.l3_off;
    if (push_room(p, sizeof(struct ipv6hdr))) {
        vk_count(p, CTR_encap_fail);
        return VK_DROP;
    }
    struct ipv6hdr *o = VK_HDR(p, l3, struct ipv6hdr);
    if (!o)
        return VK_ABORTED;
    word0 = bpf_htonl(word0);
    __builtin_memcpy(o, &word0, 4);
    o->payload_len = bpf_htons(payload_len);
    o->nexthdr = IPPROTO_IPV6;
    o->hop_limit = ENCAP_TTL;
    __builtin_memcpy(&o->saddr, cfg->encap_src6, 16);
    __builtin_memcpy(&o->daddr, be->addr, 16);
    vk_count(p, CTR_encap6);
    return VK_PASS;
}

/* Not addressed to a VIP: a DNAT backend's reply is translated back to its VIP. */
static __always_inline int reverse(struct vk_pkt *p, const struct flow_key *fk, int has_ports)
{
    /* Fragments are never translated: the later ones carry no ports to find the flow by. */
    struct nat_rev *rv = has_ports && p->h.frag == VK_FRAG_NONE ? vk_lookup(nat_revs, fk) : NULL;
    if (!rv) {
        vk_count(p, CTR_not_vip);
        return VK_PASS;
    }
    if (rewrite(p, 0, rv->vip, rv->vport))
        return VK_ABORTED;
    vk_count(p, CTR_snat);
    return VK_PASS;
}

/* The backend for this flow: the connection table's choice while it is fresh and its
 * backend still exists, else the Maglev ring's (remembered for next time). */
static __always_inline const struct backend *schedule(struct vk_pkt *p, const struct flow_key *fk,
                                                      const struct service *svc, const struct vnf_config *cfg,
                                                      __u32 hash)
{
    __u64 now = vk_now();
    struct conn *c = vk_lookup(conns, fk);
    if (c) {
        /* Unsigned, as in the model: a clock that went backwards counts as expired. */
        if (cfg->conn_timeout_ms && now - c->last_ns > (__u64)cfg->conn_timeout_ms * 1000000ull) {
            vk_count(p, CTR_conn_expired);
        } else {
            __u32 id = c->backend;
            const struct backend *be = vk_lookup(backends, &id);
            if (be && be->family == svc->family) {
                c->last_ns = now;
                vk_count(p, CTR_conn_hit);
                return be;
            }
            vk_count(p, CTR_conn_stale);
        }
    }
    vk_count(p, CTR_conn_miss);
    __u32 slot = svc->ring_base + hash % svc->ring_size;
    __u32 *id = vk_lookup(ring, &slot);
    if (!id || !*id)
        return NULL;
    __u32 be_id = *id;
    const struct backend *be = vk_lookup(backends, &be_id);
    if (!be || be->family != svc->family)
        return NULL;
    struct conn nc = {.backend = be_id, .last_ns = now};
    vk_update(conns, fk, &nc, VK_ANY);
    return be;
}

static __always_inline int process(struct vk_pkt *p)
{
    const struct vnf_config *cfg = vk_config();
    if (!cfg)
        return VK_ABORTED;
    if (vk_parse(p) != VK_PARSE_OK) {
        vk_count(p, CTR_malformed);
        return VK_PASS;  /* not ours to judge: the stack drops what it cannot use */
    }

    struct flow_key fk = {};
    struct iphdr *ip4 = vk_ipv4(p);
    struct ipv6hdr *ip6 = vk_ipv6(p);
    if (ip4) {
        __builtin_memcpy(fk.src, &ip4->saddr, 4);
        __builtin_memcpy(fk.dst, &ip4->daddr, 4);
        fk.family = FAM_V4;
    } else if (ip6) {
        __builtin_memcpy(fk.src, &ip6->saddr, 16);
        __builtin_memcpy(fk.dst, &ip6->daddr, 16);
        fk.family = FAM_V6;
    } else {
        vk_count(p, CTR_non_ip);
        return VK_PASS;
    }
    fk.proto = p->h.l4_proto;
    /* TCP and UDP both start with the two ports; l4_off is 0 without an L4 header. */
    __be16 *ports = NULL;
    if (p->h.l4_off && (fk.proto == IPPROTO_TCP || fk.proto == IPPROTO_UDP))
        ports = vk_ptr(p, p->h.l4_off, 4);
    int has_ports = ports != NULL;
    if (ports) {
        fk.sport = ports[0];
        fk.dport = ports[1];
    }

    struct addr_key ak = {.family = fk.family};
    __builtin_memcpy(ak.addr, fk.dst, 16);
    struct addr_val *av = vk_lookup(vip_addrs, &ak);
    if (!av)
        return reverse(p, &fk, has_ports);

    /* Fragments to a VIP address: a first fragment could be scheduled by its ports, but the
     * later ones could not follow it, so all of them get the address's policy. */
    if (p->h.frag != VK_FRAG_NONE) {
        if (av->flags & ADDR_F_FRAG_PASS) {
            vk_count(p, CTR_frag_pass);
            return VK_PASS;
        }
        vk_count(p, CTR_frag_drop);
        return VK_DROP;
    }
    if (!has_ports) {
        vk_count(p, CTR_vip_miss);  /* ICMP, other protocols: the stack's business */
        return VK_PASS;
    }

    struct vip_key vk = {.port = fk.dport, .proto = fk.proto, .family = fk.family};
    __builtin_memcpy(vk.addr, fk.dst, 16);
    struct vip_val *vv = vk_lookup(vips, &vk);
    if (!vv) {
        vk.port = 0;  /* a VIP for every port of the protocol */
        vv = vk_lookup(vips, &vk);
    }
    if (!vv) {
        vk_count(p, CTR_vip_miss);
        return VK_PASS;
    }
    __u32 stat_id = vv->stat, svc_id = vv->svc;
    struct vip_stat *st = vk_lookup(vip_stats, &stat_id);
    if (st) {
        st->packets += 1;
        st->bytes += vk_len(p);
    }
    const struct service *svc = vk_lookup(services, &svc_id);
    if (!svc || !svc->ring_size || svc->family != fk.family) {
        vk_count(p, CTR_no_backend);
        return VK_DROP;
    }

    __u32 hash = flow_hash(&fk, cfg->hash_seed);
    const struct backend *be = schedule(p, &fk, svc, cfg, hash);
    if (!be) {
        vk_count(p, CTR_no_backend);
        return VK_DROP;
    }
    if (svc->mode == MODE_DNAT)
        return do_dnat(p, &fk, be);
    if (fk.family == FAM_V4)
        return encap4(p, be, cfg);
    return encap6(p, be, cfg, hash);
}

VNF_MAIN(process)
