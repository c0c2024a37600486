/* One of each map type the engine must round-trip; the program itself only exists so the
 * object loads. */
#include <vnfkit/bpf.h>

struct flow_key { __u32 saddr; __u32 daddr; __u16 sport; __u16 dport; __u8 proto; __u8 pad[3]; };
struct flow_val { __u64 packets; __u64 bytes; char label[8]; };
struct lpm_v4 { __u32 prefixlen; __u8 addr[4]; };

VNFKIT_MAP(flows, BPF_MAP_TYPE_HASH, struct flow_key, struct flow_val, 1024);
VNFKIT_MAP(slots, BPF_MAP_TYPE_ARRAY, __u32, __u64, 16);
VNFKIT_MAP(pcpu, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct flow_val, 4);
VNFKIT_MAP(recent, BPF_MAP_TYPE_LRU_HASH, __u32, __u32, 128);

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(map_flags, BPF_F_NO_PREALLOC);  /* the kernel requires it of LPM tries */
    __type(key, struct lpm_v4);
    __type(value, __u32);
    __uint(max_entries, 64);
} routes SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, __u32);
    __uint(max_entries, 8);
} shared SEC(".maps");

/* Route the packet's IPv4 destination through `routes` and write the next hop id into
 * slots[0]: lets a test check an LPM entry written from Python is what the kernel sees. */
SEC("xdp")
int use_maps(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;
    struct lpm_v4 key = { .prefixlen = 32 };
    __builtin_memcpy(key.addr, &ip->daddr, 4);
    __u32 *hop = bpf_map_lookup_elem(&routes, &key);
    __u32 zero = 0;
    __u64 value = hop ? *hop : 0xffff;
    bpf_map_update_elem(&slots, &zero, &value, BPF_ANY);
    __u32 *s = bpf_map_lookup_elem(&shared, &zero);
    if (s)
        __sync_fetch_and_add(s, 1);
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
