/* A user-space function's slot in the forwarder's sff_progs (chaining/user.py): the frame,
 * with its XDP metadata (struct vk_meta: SPI/SI, TTL), leaves the kernel chain out of the near
 * end of the function's veth pair. veth keeps the metadata across the redirect; at the far end
 * the AF_XDP redirect program hands the frame to the function's worker. */
#include <vnfkit/bpf.h>

#ifndef NEAR_IFINDEX
#error "build with -DNEAR_IFINDEX=<the near end's ifindex>"
#endif

SEC("xdp")
int user_hop(struct xdp_md *ctx)
{
    return bpf_redirect(NEAR_IFINDEX, 0);
}

char LICENSE[] SEC("license") = "GPL";
