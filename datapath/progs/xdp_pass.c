/* The floor: an XDP program that does nothing but return its verdict (XDP_PASS unless
 * built with -DVERDICT=...). Benchmarks report every other program against this one. */
#include <vnfkit/bpf.h>

#ifndef VERDICT
#define VERDICT XDP_PASS
#endif

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
    return VERDICT;
}

char LICENSE[] SEC("license") = "GPL";
