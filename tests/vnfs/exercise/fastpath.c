/* The SDK's exercise VNF: rewrites (TTL and MACs, with an RFC 1624 checksum update),
 * pushes and pops 802.1Q tags (head adjustment), drops and counts, using every table kind
 * the differential tests need. Each rule has a twin in model.py. */
#define VNF_COUNTERS(X) X(malformed) X(dropped) X(rewritten) X(pushed) X(popped) X(hits)
#define VNF_PORTS(X) X(out)
#include <vnfkit.h>

struct vnf_config {
    __u16 drop_port;   /* UDP destination port to drop */
    __u16 pop_vid;     /* a single 802.1Q tag with this VID is removed */
    __u8 ttl_min;      /* reflected packets at or below this TTL are dropped */
    __u8 redirect_proto; /* IPv6 next header sent to port "out" */
};
VK_USE_CONFIG;

struct lpm_v4 {
    __u32 prefixlen;
    __u8 addr[4];
};

struct push_val {
    __u16 vid;
    __u16 pad;
};

VK_HASH(push_vlan, __u16, struct push_val, 256);          /* UDP dst port -> VID to push */
VK_LPM_TRIE(reflect, struct lpm_v4, __u32, 1024);         /* dst prefix -> reflect (TX) */
VK_LRU_HASH(seen, __u32, __u64, 4096);                    /* IPv4 source -> packets */
VK_ARRAY(proto_hits, __u64, 256);                         /* IP protocol -> packets */
VK_PERCPU_ARRAY(len_hist, __u64, 16);                     /* frame length / 128 -> packets */

static __always_inline int pop_vlan(struct vk_pkt *p)
{
    __u8 macs[12];
    __u8 *eth = vk_ptr(p, 0, 12);
    if (!eth)
        return VK_ABORTED;
    __builtin_memcpy(macs, eth, 12);
    if (vk_adjust_head(p, 4))
        return VK_ABORTED;
    eth = vk_ptr(p, 0, 12);
    if (!eth)
        return VK_ABORTED;
    __builtin_memcpy(eth, macs, 12);
    vk_count(p, CTR_popped);
    return VK_PASS;
}

static __always_inline int push_vlan_tag(struct vk_pkt *p, __u16 vid)
{
    __u8 macs[12];
    __u8 *eth = vk_ptr(p, 0, 12);
    if (!eth)
        return VK_ABORTED;
    __builtin_memcpy(macs, eth, 12);
    if (vk_adjust_head(p, -4))
        return VK_ABORTED;
    __u8 *hdr = vk_ptr(p, 0, 16);
    if (!hdr)
        return VK_ABORTED;
    __builtin_memcpy(hdr, macs, 12);
    /* The tag goes between the MACs and the old ethertype: TPID, then TCI. */
    *(__be16 *)(hdr + 12) = bpf_htons(ETH_P_8021Q);
    *(__be16 *)(hdr + 14) = bpf_htons(vid & 0x0fff);
    vk_count(p, CTR_pushed);
    return VK_NEXT;
}

static __always_inline int process(struct vk_pkt *p)
{
    const struct vnf_config *cfg = vk_config();
    if (!cfg)
        return VK_ABORTED;
    __u32 bin = vk_len(p) / 128;
    if (bin > 15)
        bin = 15;
    __u64 *h = vk_lookup(len_hist, &bin);
    if (h)
        *h += 1;  /* per-CPU: no atomic needed */
    if (vk_parse(p) != VK_PARSE_OK) {
        vk_count(p, CTR_malformed);
        return VK_DROP;
    }
    if (p->h.vlans == 1 && (p->h.vlan_tci[0] & 0x0fff) == cfg->pop_vid)
        return pop_vlan(p);

    struct ipv6hdr *ip6 = vk_ipv6(p);
    if (ip6) {
        if (p->h.l4_proto == cfg->redirect_proto)
            return vk_redirect(p, PORT_out);
        return VK_PASS;
    }
    struct iphdr *ip = vk_ipv4(p);
    if (!ip)
        return VK_PASS;

    __u32 proto = ip->protocol;
    __u64 *ph = vk_lookup(proto_hits, &proto);
    if (ph)
        __sync_fetch_and_add(ph, 1);
    __u32 src = ip->saddr;
    __u64 *n = vk_lookup(seen, &src);
    if (n) {
        __sync_fetch_and_add(n, 1);
    } else {
        __u64 one = 1;
        vk_update(seen, &src, &one, VK_NOEXIST);
    }

    struct udphdr *udp = vk_udp(p);
    if (udp) {
        __u16 dport = bpf_ntohs(udp->dest);
        if (dport == cfg->drop_port) {
            vk_count(p, CTR_dropped);
            return VK_DROP;
        }
        struct push_val *pv = vk_lookup(push_vlan, &dport);
        if (pv)
            return push_vlan_tag(p, pv->vid);
    }

    struct lpm_v4 key = {.prefixlen = 32};
    __builtin_memcpy(key.addr, &ip->daddr, 4);
    if (vk_lookup(reflect, &key)) {
        vk_count(p, CTR_hits);
        if (ip->ttl <= cfg->ttl_min) {
            vk_count(p, CTR_dropped);
            return VK_DROP;
        }
        /* TTL shares a 16-bit checksum word with the protocol field. */
        __be16 old = *(__be16 *)&ip->ttl;
        ip->ttl -= 1;
        vk_csum_replace2(&ip->check, old, *(__be16 *)&ip->ttl);
        struct ethhdr *eth = vk_eth(p);
        if (!eth)
            return VK_ABORTED;
        __u8 tmp[ETH_ALEN];
        __builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
        __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
        __builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
        vk_count(p, CTR_rewritten);
        return VK_TX;
    }
    return VK_PASS;
}

VNF_MAIN(process)
