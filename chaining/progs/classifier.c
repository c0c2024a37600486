/* The classifier (RFC 7665): starts matching ingress traffic on a service function path.
 *
 * Rules match the IPv4 destination by longest prefix (802.1Q-tagged frames included) and
 * give SPI and the first SI; the packet gets them as XDP metadata (no header is pushed:
 * hops inside the host cost a tail call, not an encapsulation) and goes to the forwarder.
 * Traffic no rule matches goes to the host stack untouched. */
#include "chain.h"

struct cls_key {
    __u32 prefixlen;
    __u8 daddr[4];
};

enum cls_counter { CLS_MATCHED, CLS_UNMATCHED, CLS_NOT_IPV4, CLS_NO_ROOM, CLS_NO_FORWARDER, CLS_REPLY, CLS_MAX };

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct cls_key);
    __type(value, struct cls_path);
    __uint(max_entries, 4096);
} cls_rules SEC(".maps");

VNFKIT_MAP(cls_counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct counter, CLS_MAX);

SEC("xdp")
int classifier(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u64 len = end - data;
    struct ethhdr *eth = data;
    __u32 off = sizeof(*eth);

    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    __u16 proto = eth->h_proto;
    if (proto == bpf_htons(ETH_P_8021Q)) {
        __be16 *inner = data + off + 2;
        if ((void *)(inner + 1) > end)
            return XDP_PASS;
        proto = *inner;
        off += 4;
    }
    struct iphdr *ip = data + off;
    if (proto != bpf_htons(ETH_P_IP) || (void *)(ip + 1) > end) {
        vnfkit_count(&cls_counters, CLS_NOT_IPV4, len);
        return XDP_PASS;
    }
    struct flow_key fk = {.saddr = ip->saddr, .daddr = ip->daddr, .proto = ip->protocol};
    __u32 hlen = ip->ihl * 4;
    if ((ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) && hlen >= sizeof(*ip) &&
        !(ip->frag_off & bpf_htons(0x1fff))) {
        __be16 *ports = (void *)ip + hlen;
        if ((void *)(ports + 2) > end)
            return XDP_PASS;
        fk.sport = ports[0];
        fk.dport = ports[1];
    }
    __u32 counter = CLS_REPLY;
    struct cls_path *path = bpf_map_lookup_elem(&rev_flows, &fk);
    if (!path) {
        struct cls_key key = {.prefixlen = 32};
        __builtin_memcpy(key.daddr, &ip->daddr, 4);
        path = bpf_map_lookup_elem(&cls_rules, &key);
        counter = CLS_MATCHED;
    }
    if (!path) {
        vnfkit_count(&cls_counters, CLS_UNMATCHED, len);
        return XDP_PASS;
    }
    __u32 spi_si = path->spi_si, ttl = path->ttl;
    /* Size the metadata to exactly one vk_meta, whatever was there: at a real ingress it is
     * empty, but a repeated test-run hands the same buffer back with last run's meta. */
    int metalen = (int)((long)ctx->data - (long)ctx->data_meta);
    if (bpf_xdp_adjust_meta(ctx, metalen - (int)sizeof(struct vk_meta))) {
        vnfkit_count(&cls_counters, CLS_NO_ROOM, len);
        return XDP_PASS;
    }
    struct vk_meta *m = (void *)(long)ctx->data_meta;
    if ((void *)(m + 1) > (void *)(long)ctx->data)
        return XDP_PASS;
    m->spi_si = spi_si;
    m->ttl = ttl;
    vnfkit_count(&cls_counters, counter, len);
    bpf_tail_call(ctx, &sff_entry, 0);
    vnfkit_count(&cls_counters, CLS_NO_FORWARDER, len);
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
