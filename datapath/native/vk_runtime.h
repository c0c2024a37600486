/* vk_runtime.h: the native runtime's entry points (vk_runtime.c), for the C that drives it
 * from another translation unit (the AF_XDP runtime, datapath/xsk/vk_xsk.c). */
#ifndef VK_RUNTIME_H
#define VK_RUNTIME_H

#include <stdint.h>

#include <vnfkit/native_tables.h>

/* enum vk_verdict of vnfkit.h, which only a VNF's translation unit may include; vk_runtime.c
 * checks that the two agree. */
#define VK_RT_DROP 0
#define VK_RT_PASS 1
#define VK_RT_TX 2
#define VK_RT_NEXT 3
#define VK_RT_REDIRECT 4
#define VK_RT_ABORTED 5

struct vk_result {
    uint32_t verdict;
    uint32_t port;
    uint32_t offset;   /* where the output packet starts in its buffer (head adjusted) */
    uint32_t len;
};

int vk_native_init(uint32_t ncpus);
int vk_native_table_count(void);
struct vk_table *vk_native_table(int i);
void vk_native_set_cpu(uint32_t cpu);
void vk_native_run(uint8_t *buf, uint32_t offset, uint32_t len, struct vk_result *res);
void vk_native_run_batch(uint8_t *buf, uint32_t slot_size, uint32_t n, const uint32_t *offsets,
                         const uint32_t *lens, struct vk_result *res);
void vk_native_run_vec(uint8_t *const *bufs, const uint32_t *offsets, const uint32_t *lens, uint32_t n,
                       struct vk_result *res);

#endif
