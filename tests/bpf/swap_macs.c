/* Swap source and destination MAC and send the frame back (XDP_TX): the test-run test
 * predicts the output bytes with scapy. */
#include <vnfkit/bpf.h>

SEC("xdp")
int swap_macs(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    unsigned char tmp[ETH_ALEN];

    if ((void *)(eth + 1) > end)
        return XDP_DROP;
    __builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
    return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
