/* The XDP side of a user-space VNF: every frame of a queue that has an AF_XDP socket goes to
 * it (bpf_redirect_map on the XSKMAP, keyed by queue); a queue without one (no worker, or a
 * worker that died and whose socket the kernel took out of the map) passes to the stack.
 *
 * xsk_redirect_chain is the far end of a chain hop (chaining/user.py): only frames that carry
 * SPI/SI as XDP metadata (struct vk_meta, 8 bytes) are the chain's; AF_XDP's copy mode copies
 * the metadata in front of the frame, where the worker reads it. */
#include <vnfkit/bpf.h>

#define META_LEN 8  /* struct vk_meta */

enum xsk_counter { XSK_REDIRECTED, XSK_NO_SOCKET, XSK_NO_META, XSK_MAX };

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
    if ((void *)(long)ctx->data_meta + META_LEN > (void *)(long)ctx->data) {
        vnfkit_count(&xsk_counters, XSK_NO_META, ctx->data_end - ctx->data);
        return XDP_PASS;
    }
    return to_socket(ctx);
}

char LICENSE[] SEC("license") = "GPL";
