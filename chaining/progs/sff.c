/* The service function forwarder (RFC 7665) inside one host.
 *
 * A packet in a chain carries its SPI and SI as XDP metadata (struct vk_meta, written by
 * the classifier); each function, when done, decrements SI and tail-calls back here. The
 * forwarder looks (SPI, SI) up and either tail-calls the next function, hands the packet to
 * the host stack (end of the path) or redirects it out of an interface. Unknown (SPI, SI),
 * an exhausted TTL or a missing function are dropped and counted (RFC 8300 section 2.3). */
#include <vnfkit/bpf.h>

struct vk_meta {
    __u32 spi_si;
    __u32 ttl;
};

enum sff_action { SFF_LOCAL = 1, SFF_STACK = 2, SFF_EGRESS = 3 };

struct sff_next {
    __u32 action;  /* enum sff_action */
    __u32 arg;     /* LOCAL: slot in sff_progs; EGRESS: ifindex */
};

enum sff_counter { SFF_NO_META, SFF_UNKNOWN, SFF_TTL, SFF_NO_FUNCTION, SFF_DELIVERED, SFF_REDIRECTED, SFF_MAX };

struct counter {
    __u64 packets;
    __u64 bytes;
};

VNFKIT_MAP(sff_table, BPF_MAP_TYPE_HASH, __u32, struct sff_next, 4096);   /* SPI << 8 | SI */
VNFKIT_MAP(hop_stats, BPF_MAP_TYPE_PERCPU_HASH, __u32, struct counter, 4096);
VNFKIT_MAP(sff_counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct counter, SFF_MAX);

/* The functions of the host's chains, by slot. */
struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
    __uint(max_entries, 64);
} sff_progs SEC(".maps");

/* Slot 0 holds this program: every function's vk_chain and the classifier reuse this map,
 * so "go back to the forwarder" is one tail call. */
struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
    __uint(max_entries, 1);
} sff_entry SEC(".maps");

static __always_inline void hop_count(__u32 spi_si, __u64 len)
{
    struct counter *c = bpf_map_lookup_elem(&hop_stats, &spi_si);
    if (!c) {
        struct counter zero = {};
        bpf_map_update_elem(&hop_stats, &spi_si, &zero, BPF_NOEXIST);
        c = bpf_map_lookup_elem(&hop_stats, &spi_si);
        if (!c)
            return;
    }
    c->packets += 1;
    c->bytes += len;
}

SEC("xdp")
int sff(struct xdp_md *ctx)
{
    struct vk_meta *m = (void *)(long)ctx->data_meta;
    void *data = (void *)(long)ctx->data;
    __u64 len = (void *)(long)ctx->data_end - data;

    if ((void *)(m + 1) > data) {
        vnfkit_count(&sff_counters, SFF_NO_META, len);
        return XDP_PASS;
    }
    if (m->ttl == 0) {
        vnfkit_count(&sff_counters, SFF_TTL, len);
        return XDP_DROP;
    }
    m->ttl -= 1;
    __u32 key = m->spi_si;
    struct sff_next *next = bpf_map_lookup_elem(&sff_table, &key);
    if (!next) {
        vnfkit_count(&sff_counters, SFF_UNKNOWN, len);
        return XDP_DROP;
    }
    hop_count(key, len);
    if (next->action == SFF_LOCAL) {
        bpf_tail_call(ctx, &sff_progs, next->arg);
        vnfkit_count(&sff_counters, SFF_NO_FUNCTION, len);
        return XDP_DROP;
    }
    if (next->action == SFF_EGRESS) {
        vnfkit_count(&sff_counters, SFF_REDIRECTED, len);
        return bpf_redirect(next->arg, 0);
    }
    vnfkit_count(&sff_counters, SFF_DELIVERED, len);
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
