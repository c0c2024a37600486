/* crasher: passes everything; natively, a UDP datagram to crash_port writes through NULL. */
#define VNF_COUNTERS(X) X(udp)
#include <vnfkit.h>

struct vnf_config {
    __u16 crash_port;
};
VK_USE_CONFIG;

static __always_inline int process(struct vk_pkt *p)
{
    const struct vnf_config *cfg = vk_config();
    if (!cfg)
        return VK_ABORTED;
    if (vk_parse(p) != VK_PARSE_OK)
        return VK_PASS;
    struct udphdr *udp = vk_udp(p);
    if (!udp)
        return VK_PASS;
    vk_count(p, CTR_udp);
    if (bpf_ntohs(udp->dest) == cfg->crash_port) {
#ifdef VK_NATIVE
        volatile int *volatile bug = 0;  /* volatile: the compiler cannot see it is NULL */
        *bug = 1;                         /* the bug: a store through NULL */
#endif
        return VK_DROP;
    }
    return VK_PASS;
}

VNF_MAIN(process)
