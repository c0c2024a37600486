/* vnfkit/native_tables.h: the tables of the native executor.
 *
 * In the kernel a VNF's tables are BPF maps; in the native executor (the same fastpath.c
 * compiled as a shared object) they are these, in process memory, with the kernel's
 * semantics: the same types (numbered as BPF map types), sizes, return codes, LRU eviction
 * and per-CPU slots. Implemented in datapath/native/vk_tables.c.
 */
#ifndef VNFKIT_NATIVE_TABLES_H
#define VNFKIT_NATIVE_TABLES_H

#include <stdint.h>

enum vk_table_type {
    VK_T_HASH = 1,          /* BPF_MAP_TYPE_HASH */
    VK_T_ARRAY = 2,         /* BPF_MAP_TYPE_ARRAY */
    VK_T_PERCPU_ARRAY = 6,  /* BPF_MAP_TYPE_PERCPU_ARRAY */
    VK_T_LRU_HASH = 9,      /* BPF_MAP_TYPE_LRU_HASH */
    VK_T_LPM_TRIE = 11,     /* BPF_MAP_TYPE_LPM_TRIE */
};

/* Update flags, as BPF_ANY / BPF_NOEXIST / BPF_EXIST. */
#define VK_ANY 0
#define VK_NOEXIST 1
#define VK_EXIST 2

#define VK_MAX_CPUS 64

struct vk_table {
    const char *name;
    uint32_t type;          /* enum vk_table_type */
    uint32_t key_size;
    uint32_t value_size;
    uint32_t max_entries;
    uint32_t flags;
    void *impl;             /* owned by vk_tables.c; NULL until vk_table_init */
};

/* A region tables may take their storage from instead of libc: base..base+size, of which
 * `used` bytes are taken. It must start zeroed; nothing is ever given back to it. */
struct vk_arena {
    unsigned char *base;
    uint64_t size;
    uint64_t used;
};

/* Tables initialised from now on take their storage from `arena` (NULL: from libc again).
 * Their pointers then point into it: a process that maps the same memory at the same
 * address can use the tables (see datapath/xsk/vk_xsk.h). */
void vk_tables_set_arena(struct vk_arena *arena);

/* The CPU slot per-CPU tables use on this thread (the executor sets it per worker). */
extern __thread uint32_t vk_cpu;

/* Allocate storage for ncpus CPUs (1..VK_MAX_CPUS). 0, -EINVAL (bad sizes or type), -ENOMEM. */
int vk_table_init(struct vk_table *t, uint32_t ncpus);
void vk_table_free(struct vk_table *t);

/* The fast path's verbs, as bpf_map_lookup_elem / _update_elem / _delete_elem:
 * lookup returns a pointer to the value (this thread's CPU slot for per-CPU tables) that
 * stays valid while the entry exists, or NULL. update/delete return 0 or a negative errno:
 *   hash/LRU: -EEXIST (VK_NOEXIST, present), -ENOENT (VK_EXIST, absent), -E2BIG (hash full;
 *             LRU evicts its least recently used entry instead)
 *   arrays:   -E2BIG (index >= max_entries), -EEXIST (VK_NOEXIST), delete: -EINVAL
 *   LPM trie: -EINVAL (prefixlen > key bits), -ENOSPC (full), -ENOENT (delete absent)
 * For per-CPU tables update writes this thread's slot only. */
void *vk_table_lookup(struct vk_table *t, const void *key);
int vk_table_update(struct vk_table *t, const void *key, const void *value, uint64_t flags);
int vk_table_delete(struct vk_table *t, const void *key);

/* The control plane's verbs, as the bpf() syscall sees a map: values of per-CPU tables are
 * ncpus slots of round_up(value_size, 8) bytes. lookup copies out (0 / -ENOENT), update
 * writes all slots, next_key as BPF_MAP_GET_NEXT_KEY (key NULL or absent: the first key;
 * -ENOENT after the last). */
int vk_table_sys_lookup(struct vk_table *t, const void *key, void *values);
int vk_table_sys_update(struct vk_table *t, const void *key, const void *values, uint64_t flags);
int vk_table_next_key(struct vk_table *t, const void *key, void *next_key);

/* Array tables' storage, for zero-copy numpy views: max_entries values at a stride of
 * round_up(value_size, 8); per-CPU arrays have ncpus such blocks one after another
 * (block = max_entries * stride). NULL for other types. */
void *vk_table_array_base(struct vk_table *t);

#endif
