/* gtp: the user plane of a mobile packet core gateway (S/P-GW-U, 5G UPF on N3/N6).
 *
 * Uplink: a GTP-U G-PDU (3GPP TS 29.281, UDP port 2152) addressed to the gateway whose TEID
 * names a session is decapsulated (outer IPv4, UDP and GTP-U headers removed, Ethernet header
 * and VLAN tags kept) and handed to the host stack, which routes the inner IPv4/IPv6 packet.
 * Downlink: an IPv4/IPv6 packet to a UE address with a session gets outer IPv4 + UDP + GTP-U
 * headers (and a PDU session container when the session has a 5G QFI) and is handed to the
 * stack, which routes the outer packet to the eNB/gNB. Echo requests are answered in place.
 *
 * Every decision has a counter; model.py is the same logic in Python, decision for decision.
 */
#define VNF_COUNTERS(X)                                                                       \
    X(malformed) X(passed)                                                                    \
    X(up_decap) X(up_unknown_teid) X(up_bad_gtp) X(up_bad_ext) X(up_bad_inner) X(up_spoofed)  \
    X(up_frag) X(up_other_msg) X(echo_passed) X(echo_answered)                                      \
    X(down_encap) X(down_no_session) X(down_too_big) X(down_bad_len)
#include <vnfkit.h>

#define GTPU_PORT 2152
#define GTP_V1_PT 0x30          /* flags: version 1 (top 3 bits), protocol type GTP (PT=1) */
#define GTP_E 0x04              /* an extension header follows the optional fields */
#define GTP_S 0x02              /* the sequence number is meaningful */
#define GTP_OPT 0x07            /* any of E, S, PN: the 4 optional bytes are present */
#define GTP_ECHO_REQ 1
#define GTP_ECHO_RSP 2
#define GTP_GPDU 255
#define GTP_EXT_PDU_SESSION 0x85  /* PDU session container (TS 38.415) */
#define GTP_EXT_REQUIRED 0x80     /* type bit 8: the receiver must understand the header */
#define GTP_MAX_EXT 4             /* extension headers walked; more are refused */
#define GTP_IE_RECOVERY 14
#define PDU_TYPE_UL 1             /* UL PDU SESSION INFORMATION */
#define OUTER_HLEN (sizeof(struct iphdr) + sizeof(struct udphdr))

#define SESS_V4 0x01              /* ue4 holds the UE's IPv4 address */
#define SESS_V6 0x02              /* ue6 holds the UE's IPv6 /64 prefix */

struct vnf_config {
    __be32 gw_addr;     /* the gateway's GTP-U address: uplink destination, downlink source */
    __u16 mtu;          /* largest outer IPv4 packet the encapsulation may produce */
    __u8 ttl;           /* TTL of the outer headers this VNF writes */
    __u8 echo_reply;    /* 1: answer echo requests here; 0: leave them to the stack */
    __u8 check_src;     /* 1: an uplink inner source must be the session's UE address */
    __u8 frag_pass;     /* 1: outer GTP-U fragments go to the stack; 0: they are dropped */
};
VK_USE_CONFIG;

struct gtp_hdr {
    __u8 flags;
    __u8 type;
    __be16 length;      /* bytes after these 8 */
    __be32 teid;
};

/* One PDU session, keyed by its uplink (local) TEID in host order. */
struct gtp_session {
    __u32 teid_down;    /* the eNB/gNB's TEID, host order: downlink G-PDUs carry it */
    __be32 peer;        /* the eNB/gNB's GTP-U address */
    __be32 ue4;         /* UE IPv4 address (SESS_V4) */
    __u8 ue6[8];        /* UE IPv6 /64 prefix (SESS_V6) */
    __u8 flags;         /* SESS_V4 | SESS_V6 */
    __u8 qfi;           /* 0: plain GTP-U (S1-U); 1..63: push a PDU session container (N3) */
    __u16 pad;
    __u64 up_packets;   /* per-session usage, for charging: inner (T-PDU) bytes */
    __u64 up_bytes;
    __u64 down_packets;
    __u64 down_bytes;
    __u64 last_seen;    /* vk_now() of the last packet either way: idle detection */
};

struct ue6_key {
    __u8 prefix[8];     /* the UE's /64: 3GPP gives every PDN connection its own */
};

struct lpm4 {
    __u32 prefixlen;
    __u8 addr[4];
};

struct lpm6 {
    __u32 prefixlen;
    __u8 addr[16];
};

VK_HASH(sessions, __u32, struct gtp_session, 16384);   /* uplink TEID -> session */
VK_HASH(ue4, __be32, __u32, 16384);                    /* UE IPv4 address -> uplink TEID */
VK_HASH(ue6, struct ue6_key, __u32, 16384);            /* UE IPv6 /64 -> uplink TEID */
VK_LPM_TRIE(pool4, struct lpm4, __u8, 256);            /* UE IPv4 pools: no session -> drop */
VK_LPM_TRIE(pool6, struct lpm6, __u8, 256);            /* UE IPv6 pools: no session -> drop */

/* The Ethernet header and up to two VLAN tags, kept aside while the head moves. Every frame
 * that reaches a head adjustment holds at least an IPv4 header after them, so 22 bytes are
 * always there to copy. */
struct l2_copy {
    __u8 b[22];
};

static __always_inline int l2_save(const struct vk_pkt *p, struct l2_copy *c)
{
    __u8 *src = vk_ptr(p, 0, sizeof(c->b));
    if (!src)
        return -1;
    __builtin_memcpy(c->b, src, sizeof(c->b));
    return 0;
}

/* Write the saved MACs (swapped for a reply) and tags at the new front of the frame, then
 * `proto` as the ethertype after the tags: the inner protocol may differ from the outer. */
static __always_inline int l2_restore(struct vk_pkt *p, const struct l2_copy *c, __u32 vlans, __u16 proto,
                                      int swap)
{
    __u8 *eth = vk_ptr(p, 0, 12);
    if (!eth)
        return -1;
    if (swap) {
        __builtin_memcpy(eth, c->b + 6, 6);
        __builtin_memcpy(eth + 6, c->b, 6);
    } else {
        __builtin_memcpy(eth, c->b, 12);
    }
    if (vlans >= 1) {
        __u8 *tag = vk_ptr(p, 12, 4);
        if (!tag)
            return -1;
        __builtin_memcpy(tag, c->b + 12, 4);
    }
    if (vlans >= 2) {
        __u8 *tag = vk_ptr(p, 16, 4);
        if (!tag)
            return -1;
        __builtin_memcpy(tag, c->b + 16, 4);
    }
    __be16 *type = VK_HDR(p, 12 + 4 * vlans, __be16);
    if (!type)
        return -1;
    *type = bpf_htons(proto);
    return 0;
}

static __always_inline int verdict(struct vk_pkt *p, enum vnf_counter ctr, int v)
{
    vk_count(p, ctr);
    return v;
}

/* An option-less IPv4 header for a packet this VNF sends: DF set, ID 0 (RFC 6864 allows it
 * for atomic datagrams), checksum computed. */
static __always_inline void outer_ipv4(struct iphdr *ip, __u8 tos, __u32 tot_len, __u8 ttl, __be32 src,
                                       __be32 dst)
{
    *(__u8 *)ip = 0x45;
    ip->tos = tos;
    ip->tot_len = bpf_htons(tot_len);
    ip->id = 0;
    ip->frag_off = bpf_htons(0x4000);
    ip->ttl = ttl;
    ip->protocol = IPPROTO_UDP;
    ip->saddr = src;
    ip->daddr = dst;
    ip->check = vk_ipv4_csum(ip);  /* sums every word but the checksum's own */
}

/* ---- downlink: IP packet to a UE -> outer IPv4 / UDP / GTP-U ---- */

static __always_inline int encap(struct vk_pkt *p, const struct vnf_config *cfg, struct gtp_session *s,
                                 __u32 inner_len, __u8 tos)
{
    __u32 ghlen = s->qfi ? 16 : 8;  /* + 4 optional bytes + a 4-byte PDU session container */
    __u32 push = OUTER_HLEN + ghlen;
    __u32 outer_len = push + inner_len;
    if (outer_len > cfg->mtu)
        return verdict(p, CTR_down_too_big, VK_DROP);  /* never fragmented: the next link's MTU */
    __u32 teid = s->teid_down;
    __be32 peer = s->peer;
    __u8 qfi = s->qfi;
    __u32 vlans = p->h.vlans, l2 = p->h.l3_off;
    struct l2_copy c;
    if (l2_save(p, &c) || vk_adjust_head(p, -(int)push) || l2_restore(p, &c, vlans, ETH_P_IP, 0))
        return VK_ABORTED;

    /* One constant-size bounds check for all the new headers (separate ones, merged by
     * clang, lose the verifier's track of which pointer was checked). 44 bytes are always
     * there: the frame now holds at least 36 pushed bytes and a 20-byte inner header. */
    __u8 *hdrs = vk_ptr(p, l2, OUTER_HLEN + 16);
    if (!hdrs)
        return VK_ABORTED;
    struct iphdr *ip = (struct iphdr *)hdrs;
    struct udphdr *udp = (struct udphdr *)(hdrs + sizeof(struct iphdr));
    struct gtp_hdr *gtp = (struct gtp_hdr *)(hdrs + OUTER_HLEN);
    /* The inner TOS/traffic class, ECN included, is copied out (RFC 6040 normal mode) so
     * the transport network sees the UE flow's marking. */
    outer_ipv4(ip, tos, outer_len, cfg->ttl, cfg->gw_addr, peer);
    udp->source = bpf_htons(GTPU_PORT);
    udp->dest = bpf_htons(GTPU_PORT);
    udp->len = bpf_htons(outer_len - sizeof(struct iphdr));
    udp->check = 0;  /* allowed over IPv4; the inner packet has its own checksums */
    gtp->flags = GTP_V1_PT;
    gtp->type = GTP_GPDU;
    gtp->length = bpf_htons(inner_len + ghlen - 8);
    gtp->teid = bpf_htonl(teid);
    if (ghlen == 16) {
        __u8 *opt = hdrs + OUTER_HLEN + 8;
        gtp->flags = GTP_V1_PT | GTP_E;
        /* sequence 0, N-PDU 0, next: PDU session container; then the container: length 1
         * (4 bytes), PDU type 0 (DL PDU SESSION INFORMATION), the QFI, no next header. */
        opt[0] = 0, opt[1] = 0, opt[2] = 0, opt[3] = GTP_EXT_PDU_SESSION;
        opt[4] = 1, opt[5] = 0, opt[6] = qfi & 0x3f, opt[7] = 0;
    }
    __sync_fetch_and_add(&s->down_packets, 1);
    __sync_fetch_and_add(&s->down_bytes, inner_len);
    s->last_seen = vk_now();
    return verdict(p, CTR_down_encap, VK_PASS);
}

static __always_inline int downlink4(struct vk_pkt *p, const struct vnf_config *cfg, struct iphdr *ip)
{
    __be32 dst = ip->daddr;
    __u32 *teid = vk_lookup(ue4, &dst);
    if (!teid) {
        struct lpm4 key = {.prefixlen = 32};
        __builtin_memcpy(key.addr, &dst, 4);
        if (vk_lookup(pool4, &key))
            return verdict(p, CTR_down_no_session, VK_DROP);
        return verdict(p, CTR_passed, VK_PASS);
    }
    __u32 key = *teid;
    struct gtp_session *s = vk_lookup(sessions, &key);
    if (!s)  /* the control plane is between writes */
        return verdict(p, CTR_down_no_session, VK_DROP);
    __u32 inner_len = bpf_ntohs(ip->tot_len);
    /* The header's length, not the frame's: Ethernet padding stays outside the tunnel. */
    if (inner_len > vk_len(p) - p->h.l3_off)
        return verdict(p, CTR_down_bad_len, VK_DROP);
    return encap(p, cfg, s, inner_len, ip->tos);
}

static __always_inline int downlink6(struct vk_pkt *p, const struct vnf_config *cfg, struct ipv6hdr *ip6)
{
    struct ue6_key k;
    __builtin_memcpy(k.prefix, &ip6->daddr, 8);
    __u32 *teid = vk_lookup(ue6, &k);
    if (!teid) {
        struct lpm6 key = {.prefixlen = 128};
        __builtin_memcpy(key.addr, &ip6->daddr, 16);
        if (vk_lookup(pool6, &key))
            return verdict(p, CTR_down_no_session, VK_DROP);
        return verdict(p, CTR_passed, VK_PASS);
    }
    __u32 key = *teid;
    struct gtp_session *s = vk_lookup(sessions, &key);
    if (!s)
        return verdict(p, CTR_down_no_session, VK_DROP);
    __u32 inner_len = sizeof(struct ipv6hdr) + bpf_ntohs(ip6->payload_len);
    if (inner_len > vk_len(p) - p->h.l3_off)
        return verdict(p, CTR_down_bad_len, VK_DROP);
    __u8 *b = (__u8 *)ip6;
    __u8 tclass = (__u8)((b[0] << 4) | (b[1] >> 4));
    return encap(p, cfg, s, inner_len, tclass);
}

/* ---- uplink: G-PDU to the gateway -> inner packet ---- */

static __always_inline int gpdu(struct vk_pkt *p, const struct vnf_config *cfg, struct gtp_hdr *gtp, __u32 g,
                                __u32 glen)
{
    __u32 teid = bpf_ntohl(gtp->teid);
    struct gtp_session *s = vk_lookup(sessions, &teid);
    if (!s)
        return verdict(p, CTR_up_unknown_teid, VK_DROP);

    __u32 hdr = 8;  /* GTP-U bytes before the T-PDU */
    if (gtp->flags & GTP_OPT) {
        __u8 *opt = vk_ptr(p, g + 8, 4);
        if (!opt)
            return verdict(p, CTR_up_bad_gtp, VK_DROP);
        hdr = 12;
        if (gtp->flags & GTP_E) {
            __u8 next = opt[3];
            VK_UNROLL
            for (int i = 0; i < GTP_MAX_EXT; i++) {
                if (!next)
                    break;
                /* Types with bit 8 clear may be skipped unread (TS 29.281 5.2.1); of the
                 * others only the PDU session container is understood. */
                if (next != GTP_EXT_PDU_SESSION && (next & GTP_EXT_REQUIRED))
                    return verdict(p, CTR_up_bad_ext, VK_DROP);
                __u8 *ext = vk_ptr(p, g + hdr, 4);
                if (!ext)
                    return verdict(p, CTR_up_bad_ext, VK_DROP);
                __u32 elen = (__u32)ext[0] * 4;
                if (!elen || (next == GTP_EXT_PDU_SESSION && (ext[1] >> 4) != PDU_TYPE_UL))
                    return verdict(p, CTR_up_bad_ext, VK_DROP);
                __u8 *last = vk_ptr(p, g + hdr + elen - 1, 1);
                if (!last)
                    return verdict(p, CTR_up_bad_ext, VK_DROP);
                next = *last;
                hdr += elen;
            }
            if (next)
                return verdict(p, CTR_up_bad_ext, VK_DROP);  /* more than GTP_MAX_EXT */
        }
    }
    if (hdr > glen + 8)
        return verdict(p, CTR_up_bad_ext, VK_DROP);  /* the headers overran the message */

    /* The T-PDU must be a whole IPv4 or IPv6 packet (it may be shorter than the message). */
    __u32 in = g + hdr, inner_len = glen + 8 - hdr;
    __u8 *first = vk_ptr(p, in, 1);
    if (!first || !inner_len)
        return verdict(p, CTR_up_bad_inner, VK_DROP);
    __u16 proto;
    if (*first >> 4 == 4) {
        struct iphdr *iip = VK_HDR(p, in, struct iphdr);
        if (!iip || inner_len < sizeof(*iip))
            return verdict(p, CTR_up_bad_inner, VK_DROP);
        __u32 tot = bpf_ntohs(iip->tot_len);
        if (iip->ihl < 5 || tot < iip->ihl * 4u || tot > inner_len)
            return verdict(p, CTR_up_bad_inner, VK_DROP);
        if (cfg->check_src && (!(s->flags & SESS_V4) || iip->saddr != s->ue4))
            return verdict(p, CTR_up_spoofed, VK_DROP);
        proto = ETH_P_IP;
    } else if (*first >> 4 == 6) {
        struct ipv6hdr *iip6 = VK_HDR(p, in, struct ipv6hdr);
        if (!iip6 || inner_len < sizeof(*iip6) || sizeof(*iip6) + bpf_ntohs(iip6->payload_len) > inner_len)
            return verdict(p, CTR_up_bad_inner, VK_DROP);
        __u64 src, ue;
        __builtin_memcpy(&src, &iip6->saddr, 8);
        __builtin_memcpy(&ue, s->ue6, 8);
        if (cfg->check_src && (!(s->flags & SESS_V6) || src != ue))
            return verdict(p, CTR_up_spoofed, VK_DROP);
        proto = ETH_P_IPV6;
    } else {
        return verdict(p, CTR_up_bad_inner, VK_DROP);
    }

    __u32 vlans = p->h.vlans;
    struct l2_copy c;
    if (l2_save(p, &c) || vk_adjust_head(p, (int)(in - p->h.l3_off)) || l2_restore(p, &c, vlans, proto, 0))
        return VK_ABORTED;
    __sync_fetch_and_add(&s->up_packets, 1);
    __sync_fetch_and_add(&s->up_bytes, inner_len);
    s->last_seen = vk_now();
    return verdict(p, CTR_up_decap, VK_PASS);
}

/* Echo request -> echo response (TS 29.281 7.2.2) in the same frame, sent back out: MACs,
 * addresses and ports swapped, and a Recovery IE (restart counter 0, as GTP-U sends it)
 * after the 12-byte header: 2 bytes more than the request, taken at the front. */
static __always_inline int echo(struct vk_pkt *p, const struct vnf_config *cfg, struct iphdr *ip,
                                struct udphdr *udp, struct gtp_hdr *gtp, __u32 g)
{
    if (!cfg->echo_reply || ip->ihl != 5 || !(gtp->flags & GTP_S))
        return verdict(p, CTR_echo_passed, VK_PASS);  /* for a userspace GTP-U daemon */
    __u8 *seq = vk_ptr(p, g + 8, 2);
    if (!seq)
        return verdict(p, CTR_up_bad_gtp, VK_DROP);
    __u8 seq0 = seq[0], seq1 = seq[1], tos = ip->tos;
    __be32 src = ip->saddr, dst = ip->daddr;
    __be16 sport = udp->source, dport = udp->dest;
    __u32 vlans = p->h.vlans, l2 = p->h.l3_off;
    struct l2_copy c;
    if (l2_save(p, &c) || vk_adjust_head(p, -2) || l2_restore(p, &c, vlans, ETH_P_IP, 1))
        return VK_ABORTED;

    __u8 *hdrs = vk_ptr(p, l2, OUTER_HLEN + 14);
    if (!hdrs)
        return VK_ABORTED;
    struct iphdr *rip = (struct iphdr *)hdrs;
    struct udphdr *rudp = (struct udphdr *)(hdrs + sizeof(struct iphdr));
    __u8 *rgtp = hdrs + OUTER_HLEN;
    outer_ipv4(rip, tos, OUTER_HLEN + 14, cfg->ttl, dst, src);
    rudp->source = dport;
    rudp->dest = sport;
    rudp->len = bpf_htons(sizeof(struct udphdr) + 14);
    rudp->check = 0;
    /* flags (v1, PT, S), type, length 6, TEID 0, the request's sequence, N-PDU 0, no
     * extension; then the Recovery IE. */
    rgtp[0] = GTP_V1_PT | GTP_S, rgtp[1] = GTP_ECHO_RSP, rgtp[2] = 0, rgtp[3] = 6;
    rgtp[4] = 0, rgtp[5] = 0, rgtp[6] = 0, rgtp[7] = 0;
    rgtp[8] = seq0, rgtp[9] = seq1, rgtp[10] = 0, rgtp[11] = 0;
    rgtp[12] = GTP_IE_RECOVERY, rgtp[13] = 0;
    return verdict(p, CTR_echo_answered, VK_TX);
}

static __always_inline int uplink(struct vk_pkt *p, const struct vnf_config *cfg, struct iphdr *ip,
                                  struct udphdr *udp)
{
    __u32 l4 = p->h.l4_off;
    __u32 udp_len = bpf_ntohs(udp->len);
    if (udp_len < sizeof(struct udphdr) + 8 || udp_len > vk_len(p) - l4)
        return verdict(p, CTR_up_bad_gtp, VK_DROP);
    __u32 g = l4 + sizeof(struct udphdr);
    struct gtp_hdr *gtp = VK_HDR(p, g, struct gtp_hdr);
    if (!gtp || (gtp->flags & 0xf0) != GTP_V1_PT)  /* bit 4 is spare: ignored, as the spec says */
        return verdict(p, CTR_up_bad_gtp, VK_DROP);
    __u32 glen = bpf_ntohs(gtp->length);
    if (glen + 16 > udp_len || ((gtp->flags & GTP_OPT) && glen < 4))
        return verdict(p, CTR_up_bad_gtp, VK_DROP);
    if (gtp->type == GTP_GPDU)
        return gpdu(p, cfg, gtp, g, glen);
    if (gtp->type == GTP_ECHO_REQ)
        return echo(p, cfg, ip, udp, gtp, g);
    /* Echo responses, error indications, end markers, ...: the control plane's business. */
    return verdict(p, CTR_up_other_msg, VK_PASS);
}

static __always_inline int process(struct vk_pkt *p)
{
    const struct vnf_config *cfg = vk_config();
    if (!cfg)
        return VK_ABORTED;
    if (vk_parse(p) != VK_PARSE_OK)
        return verdict(p, CTR_malformed, VK_DROP);

    struct iphdr *ip = vk_ipv4(p);
    if (ip) {
        if (ip->daddr == cfg->gw_addr && ip->protocol == IPPROTO_UDP) {
            struct udphdr *udp = vk_udp(p);
            int gtpu = udp && udp->dest == bpf_htons(GTPU_PORT);
            /* Outer fragments would need reassembly, which XDP cannot do: a first fragment
             * to the GTP-U port and every later UDP fragment to the gateway (it carries no
             * port) are dropped, or left to the stack with frag_pass. */
            if (p->h.frag == VK_FRAG_LATER || (p->h.frag == VK_FRAG_FIRST && gtpu))
                return verdict(p, CTR_up_frag, cfg->frag_pass ? VK_PASS : VK_DROP);
            if (gtpu)
                return uplink(p, cfg, ip, udp);
        }
        return downlink4(p, cfg, ip);
    }
    struct ipv6hdr *ip6 = vk_ipv6(p);
    if (ip6)
        return downlink6(p, cfg, ip6);
    return verdict(p, CTR_passed, VK_PASS);  /* ARP, NSH, ...: the host's */
}

VNF_MAIN(process)
