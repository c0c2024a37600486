/* The TC twin of xdp_count: count packets and bytes (per-CPU) at a tc hook, then let them
 * through. Slot 0 counts everything, slot 1 IPv4 UDP. */
#include <vnfkit/bpf.h>

struct counter { __u64 packets; __u64 bytes; };

VNFKIT_MAP(counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct counter, 2);

SEC("tc")
int tc_count(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);

    vnfkit_count(&counters, 0, skb->len);
    if ((void *)(ip + 1) <= end && eth->h_proto == bpf_htons(ETH_P_IP) && ip->protocol == IPPROTO_UDP)
        vnfkit_count(&counters, 1, skb->len);
    return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
