/* The SFC proxy (RFC 7665 section 4.6): an NSH-unaware function in a service path.
 *
 * The function is anything that takes IPv4 packets in on one interface and puts them out of
 * another: a network namespace that routes (and runs nftables, say), a process on a tap. It
 * cannot carry SPI/SI, so the proxy keeps them for it. One proxy object serves one function
 * instance, reached over two veths: "in" (packets enter the function there on a forward path)
 * and "out" (they leave by it).
 *
 *   proxy_out  sits in a slot of the forwarder's sff_progs like any function. It records the
 *              packet's 5-tuple -> where the path resumes (SI - 1: the proxy decrements SI on
 *              the function's behalf; TTL as the forwarder left it), readdresses the frame
 *              to the function's interface and redirects it there.
 *   proxy_in   is at XDP on the host-side ends of both veths, where the function's packets
 *              come back. The 5-tuple finds the path again; a miss (a function that rewrote
 *              the headers, e.g. NAT) takes the interface's default path if one is set; with
 *              neither, the packet goes to the host stack, counted. Back on the path it gets
 *              its SPI/SI again and goes to the forwarder.
 *
 * A path that runs through the function backwards (the reverse path of a symmetric chain)
 * enters it by "out" and comes back by "in": px_reverse names those SPIs. */
#include "chain.h"

enum px_side { PX_IN = 0, PX_OUT = 1, PX_SIDES };

/* Where proxy_out sends a packet into the function: the host-side end of a veth, and the
 * function-side end's MAC as the new destination (the function must take it as its own). */
struct px_port {
    __u32 ifindex;     /* host-side end */
    __u8 dmac[6];      /* the function-side end */
    __u8 smac[6];      /* the host-side end */
};

enum px_counter {
    PX_SENT,               /* proxy_out: into the function */
    PX_UNTRACKED,          /* ... of which without a flow entry (not IPv4, or the table refused) */
    PX_BAD_META,           /* proxy_out: dropped, SI already 0 */
    PX_RETURNED_BY_FLOW,   /* proxy_in: back on the path by the packet's 5-tuple */
    PX_RETURNED_BY_DEFAULT,/* ... by the interface's default path */
    PX_UNKNOWN,            /* ... neither: to the host stack */
    PX_NOT_IPV4,           /* ... not IPv4 (ARP of the function's stack): to the host stack */
    PX_NO_ROOM,            /* no SPI/SI slot (never): to the host stack */
    PX_NO_FORWARDER,       /* the tail call to the forwarder failed: to the host stack */
    PX_MAX
};

VNFKIT_MAP(px_ports, BPF_MAP_TYPE_ARRAY, __u32, struct px_port, PX_SIDES);       /* enum px_side */
VNFKIT_MAP(px_reverse, BPF_MAP_TYPE_HASH, __u32, __u32, 1024);                  /* SPI -> 1 */
/* The 5-tuple of a packet sent in -> where its path resumes (SPI << 8 | SI, TTL). */
VNFKIT_MAP(px_flows, BPF_MAP_TYPE_LRU_HASH, struct flow_key, struct cls_path, 65536);
/* By the ingress ifindex of proxy_in: the path a packet that misses px_flows resumes. */
VNFKIT_MAP(px_default, BPF_MAP_TYPE_HASH, __u32, struct cls_path, PX_SIDES);
VNFKIT_MAP(px_counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct counter, PX_MAX);

SEC("xdp")
int proxy_out(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u64 len = end - data;
    struct vk_meta *m = chain_meta_get();

    if (!m || (m->spi_si & 0xff) == 0) {
        vnfkit_count(&px_counters, PX_BAD_META, len);
        return XDP_DROP;
    }
    struct cls_path back = {.spi_si = m->spi_si - 1, .ttl = m->ttl};
    __u32 spi = m->spi_si >> 8;
    __u32 *reverse = bpf_map_lookup_elem(&px_reverse, &spi);
    __u32 side = reverse && *reverse ? PX_OUT : PX_IN;
    struct px_port *port = bpf_map_lookup_elem(&px_ports, &side);
    if (!port || !port->ifindex)   /* never: the control plane fills both before the slot */
        return XDP_DROP;

    struct flow_key key;
    int tracked = 0;
    if (chain_flow_key(data, end, &key) == 0) {
        /* Look before writing: most packets find their flow's entry as it is, and an LRU
         * update takes a fresh element every time. */
        struct cls_path *old = bpf_map_lookup_elem(&px_flows, &key);
        if (old && old->spi_si == back.spi_si && old->ttl == back.ttl)
            tracked = 1;
        else
            tracked = bpf_map_update_elem(&px_flows, &key, &back, BPF_ANY) == 0;
    }

    /* The function sees a plain frame, addressed to its own interface. */
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return XDP_DROP;
    __builtin_memcpy(eth->h_dest, port->dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, port->smac, ETH_ALEN);
    vnfkit_count(&px_counters, PX_SENT, len);
    if (!tracked)
        vnfkit_count(&px_counters, PX_UNTRACKED, len);
    return bpf_redirect(port->ifindex, 0);
}

SEC("xdp")
int proxy_in(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u64 len = end - data;
    struct flow_key key;

    if (chain_flow_key(data, end, &key)) {
        vnfkit_count(&px_counters, PX_NOT_IPV4, len);
        return XDP_PASS;
    }
    __u32 counter = PX_RETURNED_BY_FLOW;
    struct cls_path *path = bpf_map_lookup_elem(&px_flows, &key);
    if (!path) {
        __u32 ifindex = ctx->ingress_ifindex;
        counter = PX_RETURNED_BY_DEFAULT;
        path = bpf_map_lookup_elem(&px_default, &ifindex);
    }
    if (!path) {
        vnfkit_count(&px_counters, PX_UNKNOWN, len);
        return XDP_PASS;
    }
    /* TTL as it was when the packet went in: the forwarder takes one off at its visit. */
    if (chain_set_meta(path->spi_si, path->ttl)) {
        vnfkit_count(&px_counters, PX_NO_ROOM, len);
        return XDP_PASS;
    }
    vnfkit_count(&px_counters, counter, len);
    bpf_tail_call(ctx, &sff_entry, 0);
    vnfkit_count(&px_counters, PX_NO_FORWARDER, len);
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
