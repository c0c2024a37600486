/* The live-frames packet generator: run by BPF_PROG_TEST_RUN with
 * BPF_F_TEST_XDP_LIVE_FRAMES, it redirects every frame out of cfg.ifindex.
 *
 * With cfg.flows > 1 it rewrites the UDP source port on every run so the receiver sees
 * that many 5-tuples. Live-frames pages are recycled without re-initialising their data,
 * so the rewrite must happen on every run, never "once". The UDP checksum must be zero
 * (legal for IPv4), so the rewrite does not have to fix it. */
#include <vnfkit/bpf.h>

struct gen_cfg {
    __u32 ifindex;
    __u32 flows;
    __u16 base_port;
};

VNFKIT_MAP(cfg, BPF_MAP_TYPE_ARRAY, __u32, struct gen_cfg, 1);
VNFKIT_MAP(seq, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, __u64, 1);

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct gen_cfg *c = bpf_map_lookup_elem(&cfg, &zero);
    __u64 *n = bpf_map_lookup_elem(&seq, &zero);
    if (!c || !n)
        return XDP_ABORTED;
    *n += 1;
    if (c->flows > 1) {
        void *data = (void *)(long)ctx->data;
        void *end = (void *)(long)ctx->data_end;
        struct ethhdr *eth = data;
        struct iphdr *ip = (void *)(eth + 1);
        struct udphdr *udp = (void *)(ip + 1);  /* the generator sends option-less IPv4 */
        if ((void *)(udp + 1) <= end && eth->h_proto == bpf_htons(ETH_P_IP) && ip->protocol == IPPROTO_UDP)
            udp->source = bpf_htons(c->base_port + (__u16)(*n % c->flows));
    }
    return bpf_redirect(c->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
