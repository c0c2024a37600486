/* {{name}}: drop IPv4 packets from sources in `blocklist`. One source for the kernel (XDP
 * and TC) and the native executor; model.py says the same in Python. */
#define VNF_COUNTERS(X) X(blocked) X(allowed)
#include <vnfkit.h>

struct vnf_config {
    __u8 enforce;  /* parameters in vnf.yaml are fields here, by name */
};
VK_USE_CONFIG;

/* Keyed by the source address as it sits in the packet (network byte order). */
VK_HASH(blocklist, __u32, __u8, 1024);

static __always_inline int process(struct vk_pkt *p)
{
    const struct vnf_config *cfg = vk_config();
    if (!cfg)
        return VK_ABORTED;
    if (vk_parse(p) != VK_PARSE_OK)
        return VK_PASS;  /* not ours to judge: let the stack see it */
    struct iphdr *ip = vk_ipv4(p);
    if (!ip)
        return VK_PASS;
    __u32 src = ip->saddr;
    if (vk_lookup(blocklist, &src)) {
        vk_count(p, CTR_blocked);
        return cfg->enforce ? VK_DROP : VK_PASS;
    }
    vk_count(p, CTR_allowed);
    return VK_PASS;
}

VNF_MAIN(process)
