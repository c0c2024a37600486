/* A user-space function's slot in the forwarder's sff_progs (chaining/user.py): the frame
 * leaves the kernel chain out of the near end of the function's veth pair under an RFC 8300
 * NSH (MD type 1, next protocol Ethernet) over Ethernet (0x894F) carrying its SPI, SI (this
 * function's: the worker takes one off) and TTL; at the far end the AF_XDP redirect program
 * hands it to the function's worker. The same header the worker sends back and a hop to
 * another host carries: one encoding across every boundary an XDP run cannot span. */
#include "chain.h"

#ifndef NEAR_IFINDEX
#error "build with -DNEAR_IFINDEX=<the near end's ifindex>"
#endif
#if !defined(NEAR_MAC) || !defined(FAR_MAC)
#error "build with -DNEAR_MAC=0x..,... -DFAR_MAC=0x..,... (the two ends' MACs, six bytes each)"
#endif

#define ETH_P_NSH 0x894F
#define NSH_MD1_LEN 24        /* base 4 + service path 4 + 16 context bytes: Length 6 */
#define NSH_NP_ETHERNET 3

enum uh_counter { UH_SENT, UH_NO_META, UH_NO_ROOM, UH_MAX };
VNFKIT_MAP(uh_counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct counter, UH_MAX);

static const __u8 near_mac[ETH_ALEN] = {NEAR_MAC};
static const __u8 far_mac[ETH_ALEN] = {FAR_MAC};

SEC("xdp")
int user_hop(struct xdp_md *ctx)
{
    __u64 len = ctx->data_end - ctx->data;
    struct vk_meta *m = chain_meta_get();
    if (!m || (m->spi_si & 0xff) == 0) {
        vnfkit_count(&uh_counters, UH_NO_META, len);
        return XDP_DROP;
    }
    if (bpf_xdp_adjust_head(ctx, -(int)(sizeof(struct ethhdr) + NSH_MD1_LEN))) {
        vnfkit_count(&uh_counters, UH_NO_ROOM, len);
        return XDP_DROP;
    }
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    __u8 *nsh = (void *)(eth + 1);
    if ((void *)nsh + NSH_MD1_LEN > end)
        return XDP_DROP;
    __builtin_memcpy(eth->h_dest, far_mac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, near_mac, ETH_ALEN);
    eth->h_proto = bpf_htons(ETH_P_NSH);
    /* Version 0, O 0, TTL (6 bits), Length 6 words; MD type 1; next protocol Ethernet. */
    *(__be16 *)nsh = bpf_htons(((m->ttl & 0x3f) << 6) | (NSH_MD1_LEN / 4));
    nsh[2] = 1;
    nsh[3] = NSH_NP_ETHERNET;
    *(__be32 *)(nsh + 4) = bpf_htonl(m->spi_si);
    __builtin_memset(nsh + 8, 0, NSH_MD1_LEN - 8);
    vnfkit_count(&uh_counters, UH_SENT, len);
    return bpf_redirect(NEAR_IFINDEX, 0);
}

char LICENSE[] SEC("license") = "GPL";
