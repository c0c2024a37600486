/* nat: source NAT of inside networks to a pool of outside addresses, with per-flow port
 * allocation, port forwards (destination NAT), ICMP echo and ICMP error translation and
 * mapping timeouts. One program serves both sides of a router: the direction of a packet is
 * read from its addresses (source inside: outbound; destination in the pool: inbound), and
 * translated packets are PASSed for the router's stack to forward.
 *
 * A session is two halves in two tables with the same key layout: nat_fwd is keyed by the
 * inside flow (inside address and port, remote address and port, protocol) and holds the
 * outside address and port; nat_rev is keyed by the outside flow and holds the inside
 * address and port. Each half's value names the other half's key, so either half finds its
 * twin, and both carry last_seen. model.py is the same rules in Python; each function here
 * has a twin there. */
#define VNF_COUNTERS(X)                                                                   \
    X(malformed) X(ipv6) X(other_l3) X(not_nat) X(hairpin)                                \
    X(out_translated) X(in_translated) X(icmp_err_out) X(icmp_err_in) X(icmp_err_bad)     \
    X(frag_out) X(frag_in) X(frag_miss) X(frag_dropped)                                   \
    X(unsupported) X(inbound_miss) X(alloc_fail) X(created) X(dnat_created) X(expired)
#include <vnfkit.h>

struct vnf_config {
    __be32 pool_first;          /* first outside address of the pool */
    __u32 pool_count;           /* consecutive pool addresses; 0 turns translation off */
    __u32 hash_seed;            /* varies the pool address and port a flow gets */
    __u32 tcp_timeout;          /* seconds without a packet before a mapping may go */
    __u32 udp_timeout;
    __u32 icmp_timeout;
    __u32 frag_timeout;         /* seconds a first fragment's translation serves later ones */
    __u16 port_min;             /* the ports (and ICMP echo ids) allocated on the outside */
    __u16 port_max;
    __u8 max_probes;            /* ports tried per new flow before giving up (<= NAT_MAX_PROBES) */
    __u8 translate_fragments;   /* 0: drop every IPv4 fragment of NAT traffic */
    __u8 pass_unmatched;        /* 1: inbound packets nothing translates go to the stack */
};
VK_USE_CONFIG;

#define NAT_MAX_PROBES 16
#define NAT_EEXIST 17           /* errno.h is not available to BPF programs */
#define NAT_F_DNAT 1            /* the session was made by a port forward */
#define NAT_NS 1000000000ull

#define NAT_ICMP_ECHOREPLY 0
#define NAT_ICMP_DEST_UNREACH 3
#define NAT_ICMP_ECHO 8
#define NAT_ICMP_TIME_EXCEEDED 11
#define NAT_ICMP_PARAMETERPROB 12

/* One side of a session. Addresses and ports are as they sit in the packet (network order).
 * For ICMP echo, port is the echo identifier and rport is 0. */
struct nat_key {
    __be32 addr;                /* nat_fwd: the inside address; nat_rev: the pool address */
    __be32 remote;              /* the outside peer */
    __be16 port;                /* our side's port */
    __be16 rport;               /* the peer's port */
    __u8 proto;
    __u8 pad[3];
};

struct nat_val {
    __be32 addr;                /* what our side's address becomes: the other half's key */
    __be16 port;
    __u8 flags;                 /* NAT_F_* */
    __u8 pad;
    __u64 last_seen;            /* vk_now() of the last packet of the session */
};

/* An inbound first fragment's translation, for the later fragments of the same datagram. */
struct frag_key {
    __be32 remote;
    __be32 pool;
    __be16 id;                  /* the IPv4 identification */
    __u8 proto;
    __u8 pad;
};

struct frag_val {
    __be32 inside;
    __u32 pad;
    __u64 last_seen;
};

/* A port forward: outside address and port of one protocol to an inside address and port. */
struct pf_key {
    __be32 addr;
    __be16 port;
    __u8 proto;
    __u8 pad;
};

struct pf_val {
    __be32 addr;
    __be16 port;
    __u16 pad;
};

struct lpm_v4 {
    __u32 prefixlen;
    __u8 addr[4];
};

VK_HASH(nat_fwd, struct nat_key, struct nat_val, 65536);
VK_HASH(nat_rev, struct nat_key, struct nat_val, 65536);
VK_HASH(port_fwd, struct pf_key, struct pf_val, 1024);
VK_LPM_TRIE(inside, struct lpm_v4, __u32, 256);
/* LRU: a datagram whose last fragment never comes must not hold its entry for ever. */
VK_LRU_HASH(frags, struct frag_key, struct frag_val, 4096);

/* ---- hashing: deterministic, so every executor allocates the same port ---- */

VK_INLINE __u32 nat_mix(__u32 h, __u32 w)
{
    h ^= w;
    h *= 0x9e3779b1u;
    return h ^ (h >> 15);
}

/* An inside host always gets the same pool address ("paired" pooling, RFC 4787 REQ-2);
 * that is also what lets later fragments be translated by their addresses alone. */
VK_INLINE __be32 nat_pool_addr(const struct vnf_config *cfg, __be32 inside_addr)
{
    __u32 idx = vk_fmix32(nat_mix(cfg->hash_seed, inside_addr)) % cfg->pool_count;
    return bpf_htonl(bpf_ntohl(cfg->pool_first) + idx);
}

VK_INLINE __u32 nat_hash_flow(const struct vnf_config *cfg, const struct nat_key *k)
{
    __u32 h = nat_mix(cfg->hash_seed ^ 0x5bd1e995u, k->addr);
    h = nat_mix(h, k->remote);
    h = nat_mix(h, (__u32)k->port | ((__u32)k->rport << 16));
    h = nat_mix(h, k->proto);
    return vk_fmix32(h);
}

VK_INLINE int nat_in_pool(const struct vnf_config *cfg, __be32 addr)
{
    return bpf_ntohl(addr) - bpf_ntohl(cfg->pool_first) < cfg->pool_count;
}

VK_INLINE int nat_is_inside(__be32 addr)
{
    struct lpm_v4 key = {.prefixlen = 32};
    __builtin_memcpy(key.addr, &addr, 4);
    return vk_lookup(inside, &key) != NULL;
}

/* ---- time ---- */

VK_INLINE __u64 nat_timeout(const struct vnf_config *cfg, __u8 proto)
{
    __u32 s = proto == IPPROTO_TCP ? cfg->tcp_timeout : proto == IPPROTO_UDP ? cfg->udp_timeout : cfg->icmp_timeout;
    return (__u64)s * NAT_NS;
}

/* A clock that reads earlier than last_seen (never, in practice) keeps the entry alive. */
VK_INLINE int nat_expired(__u64 last_seen, __u64 now, __u64 timeout)
{
    return now > last_seen && now - last_seen > timeout;
}

/* ---- verdict helpers ---- */

VK_INLINE int nat_drop(struct vk_pkt *p, enum vnf_counter ctr)
{
    vk_count(p, ctr);
    return VK_DROP;
}

/* Inbound traffic nothing translates: dropped, or left to the stack (the pool may hold the
 * router's own address) when pass_unmatched is set. */
VK_INLINE int nat_unmatched(struct vk_pkt *p, const struct vnf_config *cfg, enum vnf_counter ctr)
{
    vk_count(p, ctr);
    return cfg->pass_unmatched ? VK_PASS : VK_DROP;
}

/* ---- sessions: `rev` picks the half (0: nat_fwd, 1: nat_rev); callers pass constants, so
 * the choice is made at compile time and the verifier sees one map per call ---- */

VK_INLINE struct nat_val *nat_lookup(int rev, const struct nat_key *k)
{
    return rev ? vk_lookup(nat_rev, k) : vk_lookup(nat_fwd, k);
}

VK_INLINE int nat_insert(int rev, const struct nat_key *k, const struct nat_val *v)
{
    return rev ? vk_update(nat_rev, k, v, VK_NOEXIST) : vk_update(nat_fwd, k, v, VK_NOEXIST);
}

VK_INLINE void nat_del(int rev, const struct nat_key *k)
{
    if (rev)
        vk_delete(nat_rev, k);
    else
        vk_delete(nat_fwd, k);
}

/* The key of the other half: the same flow with our side's address and port translated. */
VK_INLINE void nat_other_key(struct nat_key *o, const struct nat_key *k, const struct nat_val *v)
{
    *o = *k;
    o->addr = v->addr;
    o->port = v->port;
}

VK_INLINE int nat_points_back(const struct nat_val *v, const struct nat_key *k)
{
    return v->addr == k->addr && v->port == k->port;
}

/* Remove the half at k (value v, a copy) and its other half, but only if that other half
 * still points back to k: never a newer session that reuses its key. */
VK_INLINE void nat_remove(int rev, const struct nat_key *k, const struct nat_val *v)
{
    struct nat_key o;
    nat_other_key(&o, k, v);
    struct nat_val *ov = nat_lookup(!rev, &o);
    if (ov && nat_points_back(ov, k))
        nat_del(!rev, &o);
    nat_del(rev, k);
}

/* The live session whose half is at k: refresh both halves and copy the translation to *out.
 * A half that has timed out, or whose other half is gone or belongs to another session, is
 * removed and counted as expired. 1 if live. */
VK_INLINE int nat_touch(struct vk_pkt *p, const struct vnf_config *cfg, int rev, const struct nat_key *k,
                        __u64 now, struct nat_val *out)
{
    struct nat_val *v = nat_lookup(rev, k);
    if (!v)
        return 0;
    struct nat_val cur = *v;
    struct nat_key o;
    nat_other_key(&o, k, &cur);
    struct nat_val *ov = nat_lookup(!rev, &o);
    if (nat_expired(cur.last_seen, now, nat_timeout(cfg, k->proto)) || !ov || !nat_points_back(ov, k)) {
        nat_remove(rev, k, &cur);
        vk_count(p, CTR_expired);
        return 0;
    }
    v->last_seen = now;
    ov->last_seen = now;
    *out = cur;
    return 1;
}

/* Insert a half with VK_NOEXIST; if the key is taken by a session that has timed out, remove
 * that session (counted as expired) and insert again. A live session is never overwritten.
 * 0, -NAT_EEXIST (taken by a live session) or another negative errno (table full). */
VK_INLINE int nat_claim(struct vk_pkt *p, const struct vnf_config *cfg, int rev, const struct nat_key *k,
                        const struct nat_val *v, __u64 now)
{
    int ret = nat_insert(rev, k, v);
    if (ret != -NAT_EEXIST)
        return ret;
    struct nat_val *old = nat_lookup(rev, k);
    if (old) {
        struct nat_val cur = *old;
        if (!nat_expired(cur.last_seen, now, nat_timeout(cfg, k->proto)))
            return ret;
        nat_remove(rev, k, &cur);
        vk_count(p, CTR_expired);
    }
    return nat_insert(rev, k, v);
}

/* A new outbound flow: the pool address is the inside host's; the port starts where the
 * flow's hash points and moves up (wrapping) for at most max_probes ports, each claimed in
 * nat_rev with VK_NOEXIST, so two flows can never get the same outside 5-tuple. 1 if mapped. */
VK_INLINE int nat_allocate(struct vk_pkt *p, const struct vnf_config *cfg, const struct nat_key *k, __u64 now,
                           struct nat_val *out)
{
    if (!cfg->pool_count || cfg->port_max < cfg->port_min)
        return 0;
    __u32 range = (__u32)cfg->port_max - cfg->port_min + 1;
    __u32 probes = cfg->max_probes < range ? cfg->max_probes : range;
    __u32 off = nat_hash_flow(cfg, k) % range;
    struct nat_key rk = *k;
    rk.addr = nat_pool_addr(cfg, k->addr);
    struct nat_val rv;
    __builtin_memset(&rv, 0, sizeof(rv));
    rv.addr = k->addr;
    rv.port = k->port;
    rv.last_seen = now;
    int ret = -NAT_EEXIST;
    for (__u32 i = 0; i < NAT_MAX_PROBES && i < probes; i++) {
        rk.port = bpf_htons((__u16)(cfg->port_min + off));
        ret = nat_claim(p, cfg, 1, &rk, &rv, now);
        if (ret != -NAT_EEXIST)
            break;  /* claimed, or the table is full */
        off = off + 1 == range ? 0 : off + 1;
    }
    if (ret)
        return 0;
    struct nat_val fv;
    __builtin_memset(&fv, 0, sizeof(fv));
    fv.addr = rk.addr;
    fv.port = rk.port;
    fv.last_seen = now;
    if (nat_claim(p, cfg, 0, k, &fv, now)) {
        nat_del(1, &rk);  /* another CPU mapped this flow first: keep its mapping, drop ours */
        return 0;
    }
    vk_count(p, CTR_created);
    *out = fv;
    return 1;
}

/* A new inbound flow to a port forward: a session to the forward's inside address and port.
 * 1 made, 0 no forward, -1 a half could not be inserted (the inside flow is mapped already). */
VK_INLINE int nat_port_forward(struct vk_pkt *p, const struct vnf_config *cfg, const struct nat_key *rk,
                               __u64 now, struct nat_val *out)
{
    if (rk->proto != IPPROTO_TCP && rk->proto != IPPROTO_UDP)
        return 0;
    struct pf_key pk;
    __builtin_memset(&pk, 0, sizeof(pk));
    pk.addr = rk->addr;
    pk.port = rk->port;
    pk.proto = rk->proto;
    struct pf_val *pf = vk_lookup(port_fwd, &pk);
    if (!pf)
        return 0;
    struct nat_val rv, fv;
    __builtin_memset(&rv, 0, sizeof(rv));
    __builtin_memset(&fv, 0, sizeof(fv));
    rv.addr = pf->addr;
    rv.port = pf->port;
    rv.flags = NAT_F_DNAT;
    rv.last_seen = now;
    fv.addr = rk->addr;
    fv.port = rk->port;
    fv.flags = NAT_F_DNAT;
    fv.last_seen = now;
    struct nat_key fk;
    nat_other_key(&fk, rk, &rv);
    if (nat_claim(p, cfg, 1, rk, &rv, now))
        return -1;
    if (nat_claim(p, cfg, 0, &fk, &fv, now)) {
        nat_del(1, rk);
        return -1;
    }
    vk_count(p, CTR_dnat_created);
    *out = rv;
    return 1;
}

/* ---- packets ---- */

/* Where the fields a translation rewrites sit in a TCP, UDP or ICMP echo packet. */
struct nat_fields {
    __be32 *addr;               /* our side's address: the source outbound, the destination inbound */
    __be16 *port;               /* our side's port, or the ICMP echo identifier */
    __sum16 *csum;              /* the L4 checksum */
    __u8 pseudo;                /* the checksum covers the addresses (TCP, UDP) */
    __u8 udp;                   /* a zero checksum means none and stays zero */
};

enum { NAT_FLOW_OK, NAT_FLOW_ICMP_ERROR, NAT_FLOW_UNSUPPORTED, NAT_FLOW_SHORT };

/* The session key of a packet and the fields to rewrite, seen from our side: `out` packets
 * leave the inside (our side is the source), others arrive at the pool. */
VK_INLINE int nat_flow(struct vk_pkt *p, struct iphdr *ip, int out, struct nat_key *k, struct nat_fields *f)
{
    __builtin_memset(k, 0, sizeof(*k));
    __builtin_memset(f, 0, sizeof(*f));
    k->proto = ip->protocol;
    k->addr = out ? ip->saddr : ip->daddr;
    k->remote = out ? ip->daddr : ip->saddr;
    f->addr = out ? &ip->saddr : &ip->daddr;
    struct tcphdr *tcp = vk_tcp(p);
    if (tcp) {
        k->port = out ? tcp->source : tcp->dest;
        k->rport = out ? tcp->dest : tcp->source;
        f->port = out ? &tcp->source : &tcp->dest;
        f->csum = &tcp->check;
        f->pseudo = 1;
        return NAT_FLOW_OK;
    }
    struct udphdr *udp = vk_udp(p);
    if (udp) {
        k->port = out ? udp->source : udp->dest;
        k->rport = out ? udp->dest : udp->source;
        f->port = out ? &udp->source : &udp->dest;
        f->csum = &udp->check;
        f->pseudo = 1;
        f->udp = 1;
        return NAT_FLOW_OK;
    }
    if (p->h.l4_off && p->h.l4_proto == IPPROTO_ICMP) {
        struct vk_icmp_hdr *icmp = vk_icmp(p);
        if (!icmp)
            return NAT_FLOW_SHORT;  /* under 8 bytes: no identifier */
        if (icmp->type == NAT_ICMP_ECHO || icmp->type == NAT_ICMP_ECHOREPLY) {
            k->port = icmp->id;
            f->port = &icmp->id;
            f->csum = &icmp->checksum;
            return NAT_FLOW_OK;
        }
        if (icmp->type == NAT_ICMP_DEST_UNREACH || icmp->type == NAT_ICMP_TIME_EXCEEDED ||
            icmp->type == NAT_ICMP_PARAMETERPROB)
            return NAT_FLOW_ICMP_ERROR;
    }
    return NAT_FLOW_UNSUPPORTED;
}

/* Our side's address and port become addr and port; the IPv4 header checksum and the L4
 * checksum follow incrementally (RFC 1624). */
VK_INLINE void nat_rewrite(struct iphdr *ip, const struct nat_fields *f, __be32 addr, __be16 port)
{
    __be32 old_addr = *f->addr;
    __be16 old_port = *f->port;
    *f->addr = addr;
    *f->port = port;
    vk_csum_replace4(&ip->check, old_addr, addr);
    if (f->udp) {
        vk_udp_csum_replace4(f->csum, old_addr, addr);
        vk_udp_csum_replace2(f->csum, old_port, port);
        return;
    }
    if (f->pseudo)
        vk_csum_replace4(f->csum, old_addr, addr);
    vk_csum_replace2(f->csum, old_port, port);
}

/* An ICMP error (destination unreachable, time exceeded, parameter problem) quotes the packet
 * that caused it: its IPv4 header and at least 8 bytes of L4. That packet went the other way,
 * so our side is its source for inbound errors and its destination for outbound ones. The
 * quote is translated back with its own checksums (the IPv4 header's; the L4 one when quoted)
 * and every changed 16-bit word is carried into the outer ICMP checksum, which covers the
 * quote; then the outer address. Errors do not refresh a session. */
VK_INLINE int nat_icmp_error(struct vk_pkt *p, const struct vnf_config *cfg, struct iphdr *ip, int out)
{
    struct vk_icmp_hdr *icmp = vk_icmp(p);
    if (!icmp)
        goto bad;
    __u32 il3 = p->h.l4_off + 8;
    struct iphdr *iip = VK_HDR(p, il3, struct iphdr);
    if (!iip || iip->version != 4 || iip->ihl < 5 || (bpf_ntohs(iip->frag_off) & 0x1fff))
        goto bad;  /* a quoted later fragment has no ports to translate */
    __u32 il4 = il3 + iip->ihl * 4;
    __u8 *l4 = vk_ptr(p, il4, 8);
    if (!l4)
        goto bad;
    struct nat_key k;
    __builtin_memset(&k, 0, sizeof(k));
    k.proto = iip->protocol;
    __be32 *ours = out ? &iip->daddr : &iip->saddr;
    k.addr = *ours;
    k.remote = out ? iip->saddr : iip->daddr;
    __be16 *port;
    __sum16 *csum;
    __u8 pseudo = 1, udp = 0;
    if (k.proto == IPPROTO_TCP || k.proto == IPPROTO_UDP) {
        port = (__be16 *)(l4 + (out ? 2 : 0));
        k.port = *port;
        k.rport = *(__be16 *)(l4 + (out ? 0 : 2));
        if (k.proto == IPPROTO_UDP) {
            csum = (__sum16 *)(l4 + 6);
            udp = 1;
        } else {
            csum = vk_ptr(p, il4 + 16, 2);  /* only when the error quotes that much */
        }
    } else if (k.proto == IPPROTO_ICMP && (l4[0] == NAT_ICMP_ECHO || l4[0] == NAT_ICMP_ECHOREPLY)) {
        port = (__be16 *)(l4 + 4);
        k.port = *port;
        csum = (__sum16 *)(l4 + 2);
        pseudo = 0;
    } else {
        goto bad;
    }
    /* Outbound errors quote an inbound packet: its inside flow is a nat_fwd key. */
    struct nat_val *v = nat_lookup(!out, &k);
    if (!v || nat_expired(v->last_seen, vk_now(), nat_timeout(cfg, k.proto)))
        goto bad;
    __be32 to_addr = v->addr;
    __be16 to_port = v->port;
    __be32 from_addr = *ours;
    __be16 from_port = *port;

    __sum16 old_check = iip->check;
    *ours = to_addr;
    vk_csum_replace4(&iip->check, from_addr, to_addr);
    vk_csum_replace4(&icmp->checksum, from_addr, to_addr);
    vk_csum_replace2(&icmp->checksum, old_check, iip->check);

    *port = to_port;
    vk_csum_replace2(&icmp->checksum, from_port, to_port);
    if (csum) {
        __sum16 old_l4 = *csum;
        if (udp) {
            vk_udp_csum_replace4(csum, from_addr, to_addr);
            vk_udp_csum_replace2(csum, from_port, to_port);
        } else {
            if (pseudo)
                vk_csum_replace4(csum, from_addr, to_addr);
            vk_csum_replace2(csum, from_port, to_port);
        }
        vk_csum_replace2(&icmp->checksum, old_l4, *csum);
    }

    /* The outer address: for an error from an inside router it is that router's, and
     * becomes the session's pool address all the same (nothing else could route back). */
    __be32 *outer = out ? &ip->saddr : &ip->daddr;
    __be32 old_outer = *outer;
    *outer = to_addr;
    vk_csum_replace4(&ip->check, old_outer, to_addr);
    vk_count(p, out ? CTR_icmp_err_out : CTR_icmp_err_in);
    return VK_PASS;
bad:
    return out ? nat_drop(p, CTR_icmp_err_bad) : nat_unmatched(p, cfg, CTR_icmp_err_bad);
}

VK_INLINE int nat_outbound(struct vk_pkt *p, const struct vnf_config *cfg, struct iphdr *ip)
{
    struct nat_key k;
    struct nat_fields f;
    int kind = nat_flow(p, ip, 1, &k, &f);
    if (kind == NAT_FLOW_ICMP_ERROR)
        return nat_icmp_error(p, cfg, ip, 1);
    if (kind == NAT_FLOW_SHORT)
        return nat_drop(p, CTR_malformed);
    if (kind != NAT_FLOW_OK)
        return nat_drop(p, CTR_unsupported);  /* untranslated, it would leak an inside address */
    __u64 now = vk_now();
    struct nat_val v;
    if (!nat_touch(p, cfg, 0, &k, now, &v) && !nat_allocate(p, cfg, &k, now, &v))
        return nat_drop(p, CTR_alloc_fail);
    nat_rewrite(ip, &f, v.addr, v.port);
    vk_count(p, CTR_out_translated);
    return VK_PASS;
}

VK_INLINE int nat_inbound(struct vk_pkt *p, const struct vnf_config *cfg, struct iphdr *ip)
{
    struct nat_key k;
    struct nat_fields f;
    int kind = nat_flow(p, ip, 0, &k, &f);
    if (kind == NAT_FLOW_ICMP_ERROR)
        return nat_icmp_error(p, cfg, ip, 0);
    if (kind == NAT_FLOW_SHORT)
        return nat_drop(p, CTR_malformed);
    if (kind != NAT_FLOW_OK)
        return nat_unmatched(p, cfg, CTR_unsupported);
    __u64 now = vk_now();
    struct nat_val v;
    if (!nat_touch(p, cfg, 1, &k, now, &v)) {
        int made = nat_port_forward(p, cfg, &k, now, &v);
        if (made < 0)
            return nat_drop(p, CTR_alloc_fail);
        if (!made)
            return nat_unmatched(p, cfg, CTR_inbound_miss);
    }
    if (p->h.frag == VK_FRAG_FIRST) {
        /* Later fragments carry no ports: remember where this datagram goes. */
        struct frag_key fk;
        struct frag_val fv;
        __builtin_memset(&fk, 0, sizeof(fk));
        __builtin_memset(&fv, 0, sizeof(fv));
        fk.remote = ip->saddr;
        fk.pool = ip->daddr;
        fk.id = ip->id;
        fk.proto = ip->protocol;
        fv.inside = v.addr;
        fv.last_seen = now;
        vk_update(frags, &fk, &fv, VK_ANY);
    }
    nat_rewrite(ip, &f, v.addr, v.port);
    vk_count(p, CTR_in_translated);
    return VK_PASS;
}

/* A later fragment has no L4 header. Outbound, the source becomes the inside host's pool
 * address, which is the one its first fragment got. Inbound, the first fragment must have
 * passed first and left its translation in `frags`. */
VK_INLINE int nat_fragment(struct vk_pkt *p, const struct vnf_config *cfg, struct iphdr *ip, int out)
{
    if (out) {
        if (!cfg->pool_count)
            return nat_drop(p, CTR_alloc_fail);
        __be32 old = ip->saddr;
        __be32 to = nat_pool_addr(cfg, old);
        ip->saddr = to;
        vk_csum_replace4(&ip->check, old, to);
        vk_count(p, CTR_frag_out);
        return VK_PASS;
    }
    struct frag_key fk;
    __builtin_memset(&fk, 0, sizeof(fk));
    fk.remote = ip->saddr;
    fk.pool = ip->daddr;
    fk.id = ip->id;
    fk.proto = ip->protocol;
    struct frag_val *fv = vk_lookup(frags, &fk);
    if (!fv)
        return nat_unmatched(p, cfg, CTR_frag_miss);
    if (nat_expired(fv->last_seen, vk_now(), (__u64)cfg->frag_timeout * NAT_NS)) {
        vk_delete(frags, &fk);
        return nat_unmatched(p, cfg, CTR_frag_miss);
    }
    __be32 old = ip->daddr;
    __be32 to = fv->inside;
    ip->daddr = to;
    vk_csum_replace4(&ip->check, old, to);
    vk_count(p, CTR_frag_in);
    return VK_PASS;
}

static __always_inline int process(struct vk_pkt *p)
{
    const struct vnf_config *cfg = vk_config();
    if (!cfg)
        return VK_ABORTED;
    if (vk_parse(p) != VK_PARSE_OK)
        return nat_drop(p, CTR_malformed);
    if (p->h.l3_proto == ETH_P_IPV6) {
        vk_count(p, CTR_ipv6);  /* no NAT66: IPv6 passes untouched */
        return VK_PASS;
    }
    struct iphdr *ip = vk_ipv4(p);
    if (!ip) {
        vk_count(p, CTR_other_l3);  /* ARP, NSH, ...: the router's business */
        return VK_PASS;
    }
    int out;
    if (nat_is_inside(ip->saddr)) {
        if (nat_in_pool(cfg, ip->daddr)) {
            vk_count(p, CTR_hairpin);  /* inside to our own pool: not translated */
            return VK_PASS;
        }
        out = 1;
    } else if (nat_in_pool(cfg, ip->daddr)) {
        out = 0;
    } else {
        vk_count(p, CTR_not_nat);
        return VK_PASS;
    }
    if (p->h.frag != VK_FRAG_NONE && !cfg->translate_fragments)
        return nat_drop(p, CTR_frag_dropped);
    if (p->h.frag == VK_FRAG_LATER)
        return out ? nat_fragment(p, cfg, ip, 1) : nat_fragment(p, cfg, ip, 0);
    return out ? nat_outbound(p, cfg, ip) : nat_inbound(p, cfg, ip);
}

VNF_MAIN(process)
