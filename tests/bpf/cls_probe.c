/* A stand-in forwarder for the classifier tests, put in sff_entry: it records the start the
 * classifier handed over in the chain's per-CPU slot (chain_meta, reused from the forwarder's
 * object; the same layout as chain.h's struct vk_meta), the last one and a count per distinct
 * start, and drops the frame so the verdict tells it ran. */
#include <vnfkit/bpf.h>

struct start {
    __u32 spi_si;
    __u32 ttl;
};

VNFKIT_MAP(chain_meta, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct start, 1);
VNFKIT_MAP(last, BPF_MAP_TYPE_ARRAY, __u32, struct start, 1);
VNFKIT_MAP(starts, BPF_MAP_TYPE_HASH, struct start, __u64, 64);

SEC("xdp")
int probe(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct start *m = bpf_map_lookup_elem(&chain_meta, &zero);
    if (!m)
        return XDP_ABORTED;
    struct start s = {.spi_si = m->spi_si, .ttl = m->ttl};
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
