/* The XDP side of a user-space VNF: every frame of a queue that has an AF_XDP socket goes to
 * it (bpf_redirect_map on the XSKMAP, keyed by queue); a queue without one (no worker, or a
 * worker that died and whose socket the kernel took out of the map) passes to the stack.
 *
 * xsk_redirect_chain is the far end of a chain hop (chaining/user.py): only frames under the
 * NSH that chaining/progs/user_hop.c pushes (Ethernet 0x894F, MD type 1, Length 6, next
 * protocol Ethernet) are the chain's; the worker reads SPI/SI/TTL from that header. */
#include <vnfkit/bpf.h>

#define ETH_P_NSH 0x894F
#define NSH_MD1_LEN 24
#define NSH_NP_ETHERNET 3

enum xsk_counter { XSK_REDIRECTED, XSK_NO_SOCKET, XSK_NOT_NSH, XSK_MAX };

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
    __uint(max_entries, 64);
} xsks SEC(".maps");

VNFKIT_MAP(xsk_counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct { __u64 packets; __u64 bytes; }, XSK_MAX);

static __always_inline int to_socket(struct xdp_md *ctx)
{
    __u32 q = ctx->rx_queue_index;
    __u64 len = ctx->data_end - ctx->data;
    if (!bpf_map_lookup_elem(&xsks, &q)) {
        vnfkit_count(&xsk_counters, XSK_NO_SOCKET, len);
        return XDP_PASS;
    }
    vnfkit_count(&xsk_counters, XSK_REDIRECTED, len);
    return bpf_redirect_map(&xsks, q, XDP_PASS);
}

SEC("xdp")
int xsk_redirect(struct xdp_md *ctx)
{
    return to_socket(ctx);
}

SEC("xdp")
int xsk_redirect_chain(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    __u8 *nsh = (void *)(eth + 1);
    /* The whole NSH and an inner Ethernet header; version 0 and Length 6 in the first two
     * bytes' low 6 + top 2 bits, MD type 1, next protocol Ethernet. */
    if ((void *)nsh + NSH_MD1_LEN + sizeof(struct ethhdr) > end || eth->h_proto != bpf_htons(ETH_P_NSH) ||
        (nsh[0] >> 6) != 0 || (bpf_ntohs(*(__be16 *)nsh) & 0x3f) != NSH_MD1_LEN / 4 ||
        (nsh[2] & 0x0f) != 1 || nsh[3] != NSH_NP_ETHERNET) {
        vnfkit_count(&xsk_counters, XSK_NOT_NSH, end - data);
        return XDP_PASS;
    }
    return to_socket(ctx);
}

char LICENSE[] SEC("license") = "GPL";
