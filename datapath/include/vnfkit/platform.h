/* vnfkit/platform.h: what differs between the kernel build (clang -target bpf) and the
 * native build (a shared object through cffi). Everything else in vnfkit.h is one source.
 *
 * Both builds use the kernel's UAPI header structs (ethhdr, iphdr, ...), so a VNF's C
 * means the same bytes in both. */
#ifndef VNFKIT_PLATFORM_H
#define VNFKIT_PLATFORM_H

#if defined(__bpf__)
#define VK_KERNEL 1
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#else
#define VK_NATIVE 1
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <linux/types.h>
#include <bpf/bpf_endian.h> /* plain byte-order macros; usable outside BPF */
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#define SEC(name)
#endif

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
/* Not linux/icmp.h: it pulls in libc's sys/socket.h, which a BPF build cannot use. */

#define VK_INLINE static __always_inline

/* The verifier needs every loop bounded; unrolling keeps its work small. gcc (native
 * builds) does not know clang's pragma and decides for itself. */
#if defined(__clang__)
#define VK_UNROLL _Pragma("unroll")
#else
#define VK_UNROLL
#endif

#ifndef ETH_P_NSH
#define ETH_P_NSH 0x894F
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

#endif
