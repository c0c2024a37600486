/* vnfkit/packet.h: bounds-checked packet access and the parser.
 *
 * Every access goes through vk_ptr(), whose check is the one the verifier needs in the
 * kernel and a plain pointer comparison natively. Offsets are bounded by VK_MAX_OFF so the
 * verifier can prove `data + off` stays inside the packet's range.
 */
#ifndef VNFKIT_PACKET_H
#define VNFKIT_PACKET_H

#include "platform.h"

#define VK_MAX_OFF 1024          /* headers must start within the first KiB */
#define VK_MAX_VLANS 2
#define VK_MAX_IPV6_EXT 6

enum vk_hook { VK_HOOK_XDP = 1, VK_HOOK_TC = 2, VK_HOOK_NATIVE = 3 };

enum vk_frag { VK_FRAG_NONE = 0, VK_FRAG_FIRST = 1, VK_FRAG_LATER = 2 };

/* What vk_parse() found. Offsets are from the start of the frame; 0 means absent (no
 * header can start at 0 but Ethernet). Numbers are in host order. */
struct vk_hdrs {
    __u16 l3_proto;     /* ETH_P_IP, ETH_P_IPV6, ETH_P_NSH, ETH_P_ARP, ... after VLAN tags */
    __u16 l3_off;
    __u16 l4_off;       /* 0 when no L4 header (non-first fragment, unknown protocol) */
    __u16 payload_off;  /* after the L4 header; 0 when none */
    __u8 l4_proto;      /* IPPROTO_* (after IPv6 extension headers) */
    __u8 vlans;         /* 0, 1 or 2 tags */
    __u8 frag;          /* enum vk_frag */
    __u8 ip_hlen;       /* IPv4 header length in bytes (options included); 40 for IPv6 */
    __u16 vlan_tci[VK_MAX_VLANS];
};

struct vk_pkt {
    __u8 *data;
    __u8 *end;
#ifdef VK_KERNEL
    void *ctx;          /* struct xdp_md * or struct __sk_buff * */
#else
    __u8 *buf;          /* start of the buffer: the headroom vk_adjust_head may use */
#endif
    __u32 hook;
    __u32 port;         /* the port vk_redirect() chose */
    struct vk_hdrs h;
};

VK_INLINE __u32 vk_len(const struct vk_pkt *p)
{
    return (__u32)(p->end - p->data);
}

/* A pointer to `len` bytes at `off`, or NULL if they are not all inside the packet. */
VK_INLINE void *vk_ptr(const struct vk_pkt *p, __u32 off, __u32 len)
{
    __u8 *ptr;
    if (off > VK_MAX_OFF)
        return NULL;
    ptr = p->data + off;
    if (ptr + len > p->end)
        return NULL;
    return ptr;
}

#define VK_HDR(p, off, type) ((type *)vk_ptr((p), (off), sizeof(type)))

/* ICMP and ICMPv6 share this layout for the fields VNFs touch (echo id and sequence). */
struct vk_icmp_hdr {
    __u8 type;
    __u8 code;
    __sum16 checksum;
    __be16 id;
    __be16 sequence;
};

struct vk_vlan_hdr {
    __be16 tci;
    __be16 proto;
};

/* NSH base + service path headers (RFC 8300 section 2.2, 2.3). */
struct vk_nsh_hdr {
    __be16 ver_flags_len;   /* ver:2 O:1 U:1 TTL:6 length:6 (in 4-byte words) */
    __u8 md_type;           /* low 4 bits */
    __u8 next_proto;        /* 1 IPv4, 2 IPv6, 3 Ethernet, 4 NSH, 5 MPLS */
    __be32 spi_si;          /* SPI:24 SI:8 */
};

enum vk_parse_result {
    VK_PARSE_OK = 0,
    VK_PARSE_TRUNCATED = -1,  /* a header ran past the end of the frame */
    VK_PARSE_BAD = -2,        /* a header's own fields are inconsistent (ihl < 5, ...) */
};

VK_INLINE int vk_parse_l4(struct vk_pkt *p, __u32 off, __u8 proto)
{
    __u32 hlen = 0;
    p->h.l4_proto = proto;
    if (proto == IPPROTO_TCP) {
        struct tcphdr *tcp = VK_HDR(p, off, struct tcphdr);
        if (!tcp)
            return VK_PARSE_TRUNCATED;
        hlen = tcp->doff * 4;
        if (hlen < sizeof(*tcp))
            return VK_PARSE_BAD;
    } else if (proto == IPPROTO_UDP) {
        hlen = sizeof(struct udphdr);
    } else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
        hlen = 4;  /* type, code, checksum; the rest depends on the type */
    } else {
        return VK_PARSE_OK;  /* an L4 vnfkit does not parse: l4_off stays 0 */
    }
    if (!vk_ptr(p, off, hlen))
        return VK_PARSE_TRUNCATED;
    p->h.l4_off = off;
    p->h.payload_off = off + hlen;
    return VK_PARSE_OK;
}

VK_INLINE int vk_parse_ipv4(struct vk_pkt *p, __u32 off)
{
    struct iphdr *ip = VK_HDR(p, off, struct iphdr);
    __u32 hlen;
    if (!ip)
        return VK_PARSE_TRUNCATED;
    hlen = ip->ihl * 4;
    if (ip->version != 4 || hlen < sizeof(*ip) || bpf_ntohs(ip->tot_len) < hlen)
        return VK_PARSE_BAD;
    if (!vk_ptr(p, off, hlen))  /* options included */
        return VK_PARSE_TRUNCATED;
    p->h.ip_hlen = hlen;
    __u16 frag = bpf_ntohs(ip->frag_off);
    if (frag & 0x1fff) {
        p->h.frag = VK_FRAG_LATER;  /* no L4 header in a later fragment */
        p->h.l4_proto = ip->protocol;
        return VK_PARSE_OK;
    }
    if (frag & 0x2000)
        p->h.frag = VK_FRAG_FIRST;
    return vk_parse_l4(p, off + hlen, ip->protocol);
}

VK_INLINE int vk_parse_ipv6(struct vk_pkt *p, __u32 off)
{
    struct ipv6hdr *ip6 = VK_HDR(p, off, struct ipv6hdr);
    if (!ip6)
        return VK_PARSE_TRUNCATED;
    if (ip6->version != 6)
        return VK_PARSE_BAD;
    p->h.ip_hlen = sizeof(*ip6);
    __u8 next = ip6->nexthdr;
    off += sizeof(*ip6);
    /* Hop-by-hop, routing, fragment, destination options and AH, a bounded number. */
    VK_UNROLL
    for (int i = 0; i < VK_MAX_IPV6_EXT; i++) {
        if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_FRAGMENT &&
            next != IPPROTO_DSTOPTS && next != IPPROTO_AH)
            break;
        __u8 *ext = vk_ptr(p, off, 8);
        if (!ext)
            return VK_PARSE_TRUNCATED;
        if (next == IPPROTO_FRAGMENT) {
            __u16 fo = ((__u16)ext[2] << 8) | ext[3];
            next = ext[0];
            off += 8;
            if (fo & 0xfff8) {
                p->h.frag = VK_FRAG_LATER;
                p->h.l4_proto = next;
                return VK_PARSE_OK;
            }
            if (fo & 1)
                p->h.frag = VK_FRAG_FIRST;
            continue;
        }
        __u32 len = next == IPPROTO_AH ? ((__u32)ext[1] + 2) * 4 : ((__u32)ext[1] + 1) * 8;
        next = ext[0];
        off += len;
    }
    return vk_parse_l4(p, off, next);
}

/* Parse Ethernet, up to two VLAN tags, then IPv4 / IPv6 / NSH, then TCP / UDP / ICMP /
 * ICMPv6. The result is in p->h; call again after vk_adjust_head(). */
VK_INLINE int vk_parse(struct vk_pkt *p)
{
    struct ethhdr *eth = VK_HDR(p, 0, struct ethhdr);
    __builtin_memset(&p->h, 0, sizeof(p->h));
    if (!eth)
        return VK_PARSE_TRUNCATED;
    __u16 proto = bpf_ntohs(eth->h_proto);
    __u32 off = sizeof(*eth);
    VK_UNROLL
    for (int i = 0; i < VK_MAX_VLANS; i++) {
        if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
            break;
        struct vk_vlan_hdr *vlan = VK_HDR(p, off, struct vk_vlan_hdr);
        if (!vlan)
            return VK_PARSE_TRUNCATED;
        p->h.vlan_tci[i] = bpf_ntohs(vlan->tci);
        p->h.vlans = i + 1;
        proto = bpf_ntohs(vlan->proto);
        off += sizeof(*vlan);
    }
    p->h.l3_proto = proto;
    p->h.l3_off = off;
    if (proto == ETH_P_IP)
        return vk_parse_ipv4(p, off);
    if (proto == ETH_P_IPV6)
        return vk_parse_ipv6(p, off);
    if (proto == ETH_P_NSH) {
        struct vk_nsh_hdr *nsh = VK_HDR(p, off, struct vk_nsh_hdr);
        if (!nsh)
            return VK_PARSE_TRUNCATED;
        __u32 words = bpf_ntohs(nsh->ver_flags_len) & 0x3f;
        if (words < 2)
            return VK_PARSE_BAD;
        if (!vk_ptr(p, off, words * 4))
            return VK_PARSE_TRUNCATED;
    }
    return VK_PARSE_OK;
}

/* Header accessors: NULL when the packet has no such header (parse first). */
VK_INLINE struct ethhdr *vk_eth(const struct vk_pkt *p) { return VK_HDR(p, 0, struct ethhdr); }

VK_INLINE struct iphdr *vk_ipv4(const struct vk_pkt *p)
{
    return p->h.l3_proto == ETH_P_IP ? VK_HDR(p, p->h.l3_off, struct iphdr) : NULL;
}

VK_INLINE struct ipv6hdr *vk_ipv6(const struct vk_pkt *p)
{
    return p->h.l3_proto == ETH_P_IPV6 ? VK_HDR(p, p->h.l3_off, struct ipv6hdr) : NULL;
}

VK_INLINE struct tcphdr *vk_tcp(const struct vk_pkt *p)
{
    return p->h.l4_off && p->h.l4_proto == IPPROTO_TCP ? VK_HDR(p, p->h.l4_off, struct tcphdr) : NULL;
}

VK_INLINE struct udphdr *vk_udp(const struct vk_pkt *p)
{
    return p->h.l4_off && p->h.l4_proto == IPPROTO_UDP ? VK_HDR(p, p->h.l4_off, struct udphdr) : NULL;
}

/* The ICMP (IPv4) or ICMPv6 header: 4 bytes are guaranteed by the parser; id and
 * sequence (echo) need a vk_ptr check of 8 bytes, which this does. */
VK_INLINE struct vk_icmp_hdr *vk_icmp(const struct vk_pkt *p)
{
    if (!p->h.l4_off)
        return NULL;
    if ((p->h.l4_proto == IPPROTO_ICMP && p->h.l3_proto == ETH_P_IP) ||
        (p->h.l4_proto == IPPROTO_ICMPV6 && p->h.l3_proto == ETH_P_IPV6))
        return VK_HDR(p, p->h.l4_off, struct vk_icmp_hdr);
    return NULL;
}

VK_INLINE struct vk_nsh_hdr *vk_nsh(const struct vk_pkt *p)
{
    return p->h.l3_proto == ETH_P_NSH ? VK_HDR(p, p->h.l3_off, struct vk_nsh_hdr) : NULL;
}

VK_INLINE __u32 vk_nsh_spi(const struct vk_nsh_hdr *n) { return bpf_ntohl(n->spi_si) >> 8; }
VK_INLINE __u8 vk_nsh_si(const struct vk_nsh_hdr *n) { return bpf_ntohl(n->spi_si) & 0xff; }

#endif
