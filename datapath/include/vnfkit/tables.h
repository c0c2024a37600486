/* vnfkit/tables.h: tables declared once. In the kernel each is a BPF map; natively a
 * struct vk_table with the same semantics (vnfkit/native_tables.h). The verbs are the
 * same on both: vk_lookup / vk_update / vk_delete, taking the table by name. */
#ifndef VNFKIT_TABLES_H
#define VNFKIT_TABLES_H

#include "platform.h"

#ifdef VK_KERNEL

#define VK_TABLE(_name, _type, _key, _value, _max, _flags)  \
    struct {                                                \
        __uint(type, _type);                                \
        __type(key, _key);                                  \
        __type(value, _value);                              \
        __uint(max_entries, _max);                          \
        __uint(map_flags, _flags);                          \
    } _name SEC(".maps")

#define VK_T_HASH BPF_MAP_TYPE_HASH
#define VK_T_LRU_HASH BPF_MAP_TYPE_LRU_HASH
#define VK_T_ARRAY BPF_MAP_TYPE_ARRAY
#define VK_T_PERCPU_ARRAY BPF_MAP_TYPE_PERCPU_ARRAY
#define VK_T_LPM_TRIE BPF_MAP_TYPE_LPM_TRIE
#define VK_ANY BPF_ANY
#define VK_NOEXIST BPF_NOEXIST
#define VK_EXIST BPF_EXIST
#define VK_F_NO_PREALLOC BPF_F_NO_PREALLOC
#define VK_F_RDONLY_PROG BPF_F_RDONLY_PROG

#define vk_lookup(_t, _key) bpf_map_lookup_elem(&(_t), (_key))
#define vk_update(_t, _key, _value, _flags) bpf_map_update_elem(&(_t), (_key), (_value), (_flags))
#define vk_delete(_t, _key) bpf_map_delete_elem(&(_t), (_key))

#else /* native */

#include "native_tables.h"

#define VK_F_NO_PREALLOC 0
#define VK_F_RDONLY_PROG 0

/* The key and value types only give sizes here; the Python side types the tables from the
 * kernel object's BTF, which the same declaration produced. Each table registers itself in
 * the vk_tables section so the runtime can find all of them. */
#define VK_TABLE(_name, _type, _key, _value, _max, _flags)                                   \
    struct vk_table _name = {#_name, _type, sizeof(_key), sizeof(_value), _max, _flags, 0};  \
    static struct vk_table *const vk__reg_##_name                                            \
        __attribute__((used, section("vk_tables"))) = &_name

#define vk_lookup(_t, _key) vk_table_lookup(&(_t), (_key))
#define vk_update(_t, _key, _value, _flags) vk_table_update(&(_t), (_key), (_value), (_flags))
#define vk_delete(_t, _key) vk_table_delete(&(_t), (_key))

#endif

#define VK_HASH(_name, _key, _value, _max) VK_TABLE(_name, VK_T_HASH, _key, _value, _max, 0)
#define VK_LRU_HASH(_name, _key, _value, _max) VK_TABLE(_name, VK_T_LRU_HASH, _key, _value, _max, 0)
#define VK_ARRAY(_name, _value, _max) VK_TABLE(_name, VK_T_ARRAY, __u32, _value, _max, 0)
#define VK_PERCPU_ARRAY(_name, _value, _max) VK_TABLE(_name, VK_T_PERCPU_ARRAY, __u32, _value, _max, 0)
/* LPM keys start with a __u32 prefix length (host order), then the address bytes. */
#define VK_LPM_TRIE(_name, _key, _value, _max) \
    VK_TABLE(_name, VK_T_LPM_TRIE, _key, _value, _max, VK_F_NO_PREALLOC)

#endif
