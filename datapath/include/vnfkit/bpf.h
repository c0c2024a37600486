/* vnfkit/bpf.h: what every vnfkit BPF program includes.
 *
 * Kernel UAPI and libbpf's helper declarations, plus the few conventions the engine relies
 * on (map declaration style, section names). The portable VNF API builds on this.
 */
#ifndef VNFKIT_BPF_H
#define VNFKIT_BPF_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Declare a BTF-typed map: the engine reads key and value types from BTF, so Python sees
 * them as numpy structured values without hand-written mirrors. */
#define VNFKIT_MAP(_name, _type, _key, _value, _max)    \
    struct {                                            \
        __uint(type, _type);                            \
        __type(key, _key);                              \
        __type(value, _value);                          \
        __uint(max_entries, _max);                      \
    } _name SEC(".maps")

/* Bump a per-CPU counter slot: no atomics needed, the engine sums CPUs on read. */
static __always_inline void vnfkit_count(void *map, __u32 slot, __u64 bytes)
{
    struct vnfkit_counter { __u64 packets; __u64 bytes; } *c = bpf_map_lookup_elem(map, &slot);
    if (c) {
        c->packets += 1;
        c->bytes += bytes;
    }
}

#endif
