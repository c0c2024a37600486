/* vnfkit/hash.h: deterministic hashes for the fast path. No randomness: the kernel, native
 * and model executors must pick the same backend, port or sketch cell for the same packet.
 * vnfkit.model.fmix32 / murmur3_words are the Python twins. */
#ifndef VNFKIT_HASH_H
#define VNFKIT_HASH_H

#include "platform.h"

VK_INLINE __u32 vk_rotl32(__u32 x, int r)
{
    return (x << r) | (x >> (32 - r));
}

/* MurmurHash3's finaliser: every input bit reaches every output bit. */
VK_INLINE __u32 vk_fmix32(__u32 h)
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

/* MurmurHash3 (x86, 32-bit) of `n` little-endian 32-bit words (a key whose size is a
 * multiple of 4); `n` must be a compile-time constant so the loop unrolls. */
VK_INLINE __u32 vk_murmur3_words(const __u32 *w, int n, __u32 seed)
{
    __u32 h = seed;
    VK_UNROLL
    for (int i = 0; i < n; i++) {
        __u32 k = w[i] * 0xcc9e2d51u;
        k = vk_rotl32(k, 15) * 0x1b873593u;
        h = vk_rotl32(h ^ k, 13) * 5 + 0xe6546b64u;
    }
    return vk_fmix32(h ^ (__u32)(n * 4));
}

#endif
