/* One hash lookup per packet, keyed by the IPv4 destination: the engine benchmark's
 * "one-lookup program". A hit counts into the entry's value (hits per destination). */
#include <vnfkit/bpf.h>

VNFKIT_MAP(dst_hits, BPF_MAP_TYPE_HASH, __u32, __u64, 65536);

SEC("xdp")
int xdp_lookup(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);

    if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;
    __u32 dst = ip->daddr;
    __u64 *hits = bpf_map_lookup_elem(&dst_hits, &dst);
    if (!hits)
        return XDP_PASS;
    __sync_fetch_and_add(hits, 1);
    return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
