/* Random loss for the emulator's links, at XDP (this kernel has no sch_netem): each frame is
 * dropped with probability loss_ppm / 10^6, the rest pass. It also serves as the pass-through
 * program a veth needs on the peer of an interface that XDP redirects into. */
#include <vnfkit/bpf.h>

struct impair {
    __u32 loss_ppm;   /* parts per million; 0 passes everything */
};

enum { IMPAIR_PASSED, IMPAIR_DROPPED, IMPAIR_MAX };

struct counter { __u64 packets; __u64 bytes; };

VNFKIT_MAP(impair_cfg, BPF_MAP_TYPE_ARRAY, __u32, struct impair, 1);
VNFKIT_MAP(impair_counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct counter, IMPAIR_MAX);

SEC("xdp")
int xdp_impair(struct xdp_md *ctx)
{
    __u64 len = ctx->data_end - ctx->data;
    __u32 zero = 0;
    struct impair *cfg = bpf_map_lookup_elem(&impair_cfg, &zero);

    if (cfg && cfg->loss_ppm && bpf_get_prandom_u32() % 1000000 < cfg->loss_ppm) {
        vnfkit_count(&impair_counters, IMPAIR_DROPPED, len);
        return XDP_DROP;
    }
    vnfkit_count(&impair_counters, IMPAIR_PASSED, len);
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
