/* The live-frames packet generator: run by BPF_PROG_TEST_RUN with
 * BPF_F_TEST_XDP_LIVE_FRAMES, it redirects every frame out of cfg.ifindex.
 *
 * With cfg.flows > 1 it rewrites the UDP source port on every run so the receiver sees
 * that many 5-tuples. Live-frames pages are recycled without re-initialising their data,
 * so the rewrite must happen on every run, never "once". The UDP checksum must be zero
 * (legal for IPv4), so the rewrite does not have to fix it.
 *
 * Pacing (cfg.interval_ns > 0): a run sends only when the clock has reached the next
 * send time and returns XDP_DROP (nothing leaves) otherwise, so a test-run of many
 * repetitions spins in the kernel and emits one frame per interval. The schedule is kept
 * even when the generator falls behind (the frames owed then leave back to back), unless
 * it is more than CATCH_UP intervals late: then it restarts from now and counts the skip
 * in state.late, so a stall never turns into a long line-rate burst. cfg.limit > 0 stops
 * sending after that many frames (the remaining repetitions return XDP_DROP). state
 * records what was sent and when, the offered rate measured by the sender itself.
 *
 * cfg.rewrite_head: copy the frame's first HEAD_BYTES (Ethernet, IPv4 and UDP headers) from
 * the head map on every run. A receiver whose XDP program rewrites the frame (NAT, DNAT, a
 * tunnel encapsulation) rewrites the generator's own page, which comes back to its page pool
 * as it was left: without this, every frame after the first pass of the pool would carry
 * the translated addresses. */
#include <vnfkit/bpf.h>

#define CATCH_UP 64
#define HEAD_BYTES 42  /* Ethernet + option-less IPv4 + UDP */

struct gen_cfg {
    __u32 ifindex;
    __u32 flows;
    __u16 base_port;
    __u64 interval_ns;  /* 0: as fast as possible */
    __u64 limit;        /* frames to send at most; 0: no limit */
    __u32 rewrite_head; /* 1: restore the headers from the head map on every run */
};

struct gen_head {
    __u8 bytes[HEAD_BYTES];
};

struct gen_state {
    __u64 next_ns;   /* when the next frame is due (paced runs) */
    __u64 sent;      /* frames handed to the redirect (paced or limited runs) */
    __u64 first_ns;  /* when the first and the last of them left */
    __u64 last_ns;
    __u64 late;      /* times the schedule was restarted because the generator fell behind */
};

VNFKIT_MAP(cfg, BPF_MAP_TYPE_ARRAY, __u32, struct gen_cfg, 1);
VNFKIT_MAP(seq, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, __u64, 1);
VNFKIT_MAP(state, BPF_MAP_TYPE_ARRAY, __u32, struct gen_state, 1);
VNFKIT_MAP(head, BPF_MAP_TYPE_ARRAY, __u32, struct gen_head, 1);

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct gen_cfg *c = bpf_map_lookup_elem(&cfg, &zero);
    __u64 *n = bpf_map_lookup_elem(&seq, &zero);
    if (!c || !n)
        return XDP_ABORTED;
    if (c->interval_ns || c->limit) {
        struct gen_state *s = bpf_map_lookup_elem(&state, &zero);
        if (!s)
            return XDP_ABORTED;
        if (c->limit && s->sent >= c->limit)
            return XDP_DROP;
        __u64 now = bpf_ktime_get_ns();
        if (c->interval_ns) {
            if (s->next_ns == 0)
                s->next_ns = now;
            if (now < s->next_ns)
                return XDP_DROP;  /* not due yet: spin */
            if (now - s->next_ns > CATCH_UP * c->interval_ns) {
                s->next_ns = now;
                s->late += 1;
            }
            s->next_ns += c->interval_ns;
        }
        if (s->sent == 0)
            s->first_ns = now;
        s->last_ns = now;
        s->sent += 1;
    }
    *n += 1;
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    if (c->rewrite_head) {
        struct gen_head *h = bpf_map_lookup_elem(&head, &zero);
        if (!h || data + HEAD_BYTES > end)
            return XDP_ABORTED;
        __builtin_memcpy(data, h->bytes, HEAD_BYTES);
    }
    if (c->flows > 1) {
        struct ethhdr *eth = data;
        struct iphdr *ip = (void *)(eth + 1);
        struct udphdr *udp = (void *)(ip + 1);  /* the generator sends option-less IPv4 */
        if ((void *)(udp + 1) <= end && eth->h_proto == bpf_htons(ETH_P_IP) && ip->protocol == IPPROTO_UDP)
            udp->source = bpf_htons(c->base_port + (__u16)(*n % c->flows));
    }
    return bpf_redirect(c->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
