/* The native executor's runtime, compiled in the same translation unit as a VNF's
 * fastpath.c (after it), so it sees the VNF's tables and vnf_native_process().
 *
 * It does what the VNF_MAIN entry points do in the kernel: count RX, call the VNF, clamp
 * and count the verdict, record the last state. Batches run in one call with no Python
 * per packet. */
#include <vnfkit.h>

#include "vk_runtime.h"

_Static_assert(VK_RT_DROP == VK_DROP && VK_RT_PASS == VK_PASS && VK_RT_TX == VK_TX && VK_RT_NEXT == VK_NEXT &&
               VK_RT_REDIRECT == VK_REDIRECT && VK_RT_ABORTED == VK_ABORTED, "vk_runtime.h's verdicts");

extern struct vk_table *__start_vk_tables[];
extern struct vk_table *__stop_vk_tables[];

int vk_native_table_count(void)
{
    return (int)(__stop_vk_tables - __start_vk_tables);
}

struct vk_table *vk_native_table(int i)
{
    return (i >= 0 && i < vk_native_table_count()) ? __start_vk_tables[i] : NULL;
}

/* Allocate every table of the VNF for ncpus CPU slots. 0 or a negative errno. */
int vk_native_init(uint32_t ncpus)
{
    for (int i = 0; i < vk_native_table_count(); i++) {
        struct vk_table *t = __start_vk_tables[i];
        if (t->impl)
            continue;
        int err = vk_table_init(t, ncpus);
        if (err)
            return err;
    }
    return 0;
}

void vk_native_set_cpu(uint32_t cpu)
{
    vk_cpu = cpu;
}

static inline void vk__native_one(uint8_t *buf, uint32_t offset, uint32_t len, struct vk_result *res)
{
    struct vk_pkt p = {0};
    p.buf = buf;
    p.data = buf + offset;
    p.end = p.data + len;
    p.hook = VK_HOOK_NATIVE;
    vk_count(&p, VK_CTR_RX);
    int verdict = vnf_native_process(&p);
    if ((uint32_t)verdict > VK_ABORTED)
        verdict = VK_ABORTED;
    vk_count(&p, (enum vnf_counter)(VK_CTR_DROP + verdict));
    uint32_t zero = 0;
    struct vk_state *st = vk_table_lookup(&vk_state, &zero);
    if (st) {
        st->verdict = verdict;
        st->port = p.port;
        st->len = vk_len(&p);
    }
    res->verdict = verdict;
    res->port = p.port;
    res->offset = (uint32_t)(p.data - buf);
    res->len = vk_len(&p);
}

/* One packet of `len` bytes at buf + offset; the bytes before it are headroom. */
void vk_native_run(uint8_t *buf, uint32_t offset, uint32_t len, struct vk_result *res)
{
    vk__native_one(buf, offset, len, res);
}

/* n packets in one contiguous buffer of n slots of slot_size bytes; packet i is lens[i]
 * bytes at offsets[i] within its slot. Results (and moved heads) land in res[i]. */
void vk_native_run_batch(uint8_t *buf, uint32_t slot_size, uint32_t n, const uint32_t *offsets,
                         const uint32_t *lens, struct vk_result *res)
{
    for (uint32_t i = 0; i < n; i++)
        vk__native_one(buf + (size_t)i * slot_size, offsets[i], lens[i], &res[i]);
}

/* n packets anywhere: packet i is lens[i] bytes at bufs[i] + offsets[i] (the bytes before it
 * are its headroom). The AF_XDP runtime's batches: frames in place in the UMEM. */
void vk_native_run_vec(uint8_t *const *bufs, const uint32_t *offsets, const uint32_t *lens, uint32_t n,
                       struct vk_result *res)
{
    for (uint32_t i = 0; i < n; i++)
        vk__native_one(bufs[i], offsets[i], lens[i], &res[i]);
}
