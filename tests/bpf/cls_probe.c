/* A stand-in forwarder for the classifier tests, put in sff_entry: it records the start the
 * classifier handed over in XDP metadata (the same layout as chain.h's struct vk_meta), the
 * last one and a count per distinct start, and drops the frame so the verdict tells it ran. */
#include <vnfkit/bpf.h>

struct start {
    __u32 spi_si;
    __u32 ttl;
};

VNFKIT_MAP(last, BPF_MAP_TYPE_ARRAY, __u32, struct start, 1);
VNFKIT_MAP(starts, BPF_MAP_TYPE_HASH, struct start, __u64, 64);

SEC("xdp")
int probe(struct xdp_md *ctx)
{
    struct start *m = (void *)(long)ctx->data_meta;
    if ((void *)(m + 1) > (void *)(long)ctx->data)
        return XDP_ABORTED;
    struct start s = {.spi_si = m->spi_si, .ttl = m->ttl};
    __u32 zero = 0;
    bpf_map_update_elem(&last, &zero, &s, BPF_ANY);
    __u64 *n = bpf_map_lookup_elem(&starts, &s);
    if (n) {
        __sync_fetch_and_add(n, 1);
    } else {
        __u64 one = 1;
        bpf_map_update_elem(&starts, &s, &one, BPF_NOEXIST);
    }
    return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
