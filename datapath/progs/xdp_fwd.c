/* The forwarding floor: redirect every frame out of one interface and do nothing else.
 * The target is compiled in (-DIFINDEX=n), so not even a map lookup stands between the
 * driver and the redirect. Benchmarks report forwarding programs against this one. */
#include <vnfkit/bpf.h>

#ifndef IFINDEX
#error "build with -DIFINDEX=<target ifindex>"
#endif

SEC("xdp")
int xdp_fwd(struct xdp_md *ctx)
{
    return bpf_redirect(IFINDEX, 0);
}

char LICENSE[] SEC("license") = "GPL";
