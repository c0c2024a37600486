/* Count packets and bytes by protocol (per-CPU), then pass them on.
 * The demo and the engine's tests attach this to a veth and compare the counts with what
 * was sent. Slot numbers: see COUNT_SLOTS in datapath/builtin.py. */
#include <vnfkit/bpf.h>

enum slot { SLOT_ALL, SLOT_IPV4, SLOT_IPV6, SLOT_TCP, SLOT_UDP, SLOT_ICMP, SLOT_OTHER, SLOT_MAX };

struct counter { __u64 packets; __u64 bytes; };

VNFKIT_MAP(counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct counter, SLOT_MAX);

/* What to do with the packet after counting: XDP_PASS by default; tests set XDP_DROP to
 * make this a sink. Index 0 of a one-slot array, so user space can flip it live. */
VNFKIT_MAP(action, BPF_MAP_TYPE_ARRAY, __u32, __u32, 1);

static __always_inline int verdict(void)
{
    __u32 zero = 0;
    __u32 *a = bpf_map_lookup_elem(&action, &zero);
    return a && *a ? *a : XDP_PASS;
}

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u64 len = end - data;
    struct ethhdr *eth = data;
    __u8 proto = 0;

    vnfkit_count(&counters, SLOT_ALL, len);
    if ((void *)(eth + 1) > end)
        return verdict();
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end)
            return verdict();
        vnfkit_count(&counters, SLOT_IPV4, len);
        proto = ip->protocol;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return verdict();
        vnfkit_count(&counters, SLOT_IPV6, len);
        proto = ip6->nexthdr;
    }
    if (proto == IPPROTO_TCP)
        vnfkit_count(&counters, SLOT_TCP, len);
    else if (proto == IPPROTO_UDP)
        vnfkit_count(&counters, SLOT_UDP, len);
    else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6)
        vnfkit_count(&counters, SLOT_ICMP, len);
    else
        vnfkit_count(&counters, SLOT_OTHER, len);
    return verdict();
}

char LICENSE[] SEC("license") = "GPL";
