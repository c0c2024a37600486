/* backend_decap.c: the backend's half of l4lb's encap mode, like Katran's decap program.
 *
 * Attached at XDP on a backend's interface, it strips the outer IPv4 (IPIP) or IPv6
 * (IP6IP6) header l4lb pushed, so the inner packet, addressed to the VIP the backend holds on
 * its loopback, goes up its stack. It stands in for an ipip / ip6tnl device on kernels
 * built without them (CONFIG_NET_IPIP, CONFIG_IPV6_TUNNEL). Everything else passes. */
#define VNF_COUNTERS(X) X(decap4) X(decap6)
#include <vnfkit.h>

#ifndef IPPROTO_IPIP
#define IPPROTO_IPIP 4
#endif
#ifndef IPPROTO_IPV6
#define IPPROTO_IPV6 41
#endif

/* Move the l3-byte L2 header (Ethernet and 0 to 2 tags) `room` bytes forward, over the outer
 * header, then drop the bytes in front. Constant-size copies, one per L2 length. */
#define POP(l2len)                                          \
    do {                                                    \
        __u8 l2[l2len];                                     \
        __u8 *at = vk_ptr(p, 0, (l2len));                   \
        if (!at)                                            \
            return VK_ABORTED;                              \
        __builtin_memcpy(l2, at, (l2len));                  \
        if (vk_adjust_head(p, room))                        \
            return VK_ABORTED;                              \
        at = vk_ptr(p, 0, (l2len));                         \
        if (!at)                                            \
            return VK_ABORTED;                              \
        __builtin_memcpy(at, l2, (l2len));                  \
    } while (0)

static __always_inline int process(struct vk_pkt *p)
{
    if (vk_parse(p) != VK_PARSE_OK)
        return VK_PASS;
    struct iphdr *ip4 = vk_ipv4(p);
    struct ipv6hdr *ip6 = vk_ipv6(p);
    int room;
    enum vnf_counter ctr;
    if (ip4 && ip4->protocol == IPPROTO_IPIP && ip4->ihl == 5 && p->h.frag == VK_FRAG_NONE) {
        room = sizeof(struct iphdr);
        ctr = CTR_decap4;
    } else if (ip6 && ip6->nexthdr == IPPROTO_IPV6) {
        room = sizeof(struct ipv6hdr);
        ctr = CTR_decap6;
    } else {
        return VK_PASS;
    }
    if (p->h.l3_off == 14)
        POP(14);
    else if (p->h.l3_off == 18)
        POP(18);
    else
        POP(22);
    vk_count(p, ctr);
    return VK_PASS;
}

VNF_MAIN(process)
