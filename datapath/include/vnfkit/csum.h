/* vnfkit/csum.h: incremental Internet checksum updates (RFC 1624, eqn. 3) and a full
 * IPv4 header checksum for headers a VNF builds. One's-complement sums do not depend on
 * byte order, so values are passed exactly as they sit in the packet (network order). */
#ifndef VNFKIT_CSUM_H
#define VNFKIT_CSUM_H

#include "platform.h"

VK_INLINE __u16 vk_csum_fold(__u32 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)sum;
}

/* HC' = ~(~HC + ~m + m') for one 16-bit field changing from `from` to `to`. */
VK_INLINE void vk_csum_replace2(__sum16 *sum, __be16 from, __be16 to)
{
    __u32 s = (__u16)~*sum;
    s += (__u16)~from;
    s += (__u16)to;
    *sum = (__sum16)~vk_csum_fold(s);
}

/* The same for a 32-bit field (an IPv4 address, a TCP sequence number). */
VK_INLINE void vk_csum_replace4(__sum16 *sum, __be32 from, __be32 to)
{
    __u32 s = (__u16)~*sum;
    s += (__u16)~(from & 0xffff);
    s += (__u16)~(from >> 16);
    s += to & 0xffff;
    s += to >> 16;
    *sum = (__sum16)~vk_csum_fold(s);
}

/* UDP over IPv4: a zero checksum means "none" and must stay zero; a computed zero is
 * sent as 0xffff (RFC 768). */
VK_INLINE void vk_udp_csum_replace2(__sum16 *sum, __be16 from, __be16 to)
{
    if (*sum == 0)
        return;
    vk_csum_replace2(sum, from, to);
    if (*sum == 0)
        *sum = (__sum16)0xffff;
}

VK_INLINE void vk_udp_csum_replace4(__sum16 *sum, __be32 from, __be32 to)
{
    if (*sum == 0)
        return;
    vk_csum_replace4(sum, from, to);
    if (*sum == 0)
        *sum = (__sum16)0xffff;
}

/* Checksum of an option-less IPv4 header (ihl == 5), e.g. an outer header just pushed. */
VK_INLINE __sum16 vk_ipv4_csum(const struct iphdr *ip)
{
    const __u16 *w = (const __u16 *)ip;
    __u32 s = 0;
    VK_UNROLL
    for (int i = 0; i < 10; i++)
        if (i != 5)
            s += w[i];
    return (__sum16)~vk_csum_fold(s);
}

#endif
