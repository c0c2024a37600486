"""The AF_XDP runtime's build: a VNF's fastpath.c with ``vk_xsk.c``, one cffi extension.

``datapath.native.build_native`` does the work; this names the runtime's sources and the
entry points it adds (``vk_xsk.h``, spelled out for cffi).
"""

from __future__ import annotations

import os
from pathlib import Path

from datapath.native import Runtime, build_native

XSK_DIR = Path(__file__).parent

# API mode checks every declaration here against vk_xsk.h when the extension is built.
XSK_CDEF = r"""
struct vk_xsk_table_ref { char name[64]; uint64_t impl; };
struct vk_xsk_control {
    uint32_t stop; uint32_t pause; uint32_t paused; uint32_t batch;
    uint32_t state; uint32_t zerocopy; uint32_t need_wakeup; uint32_t pad;
};
struct vk_xsk_shm {
    uint64_t magic;
    uint64_t addr;
    uint64_t size;
    struct vk_arena arena;
    uint32_t ntables;
    uint32_t pad;
    struct vk_xsk_table_ref tables[64];
    struct vk_xsk_control ctl;
    uint64_t stats[64];
    char error[256];
};
enum vk_xsk_state { VK_XSK_STARTING = 0, VK_XSK_RUNNING = 1, VK_XSK_DRAINING = 2, VK_XSK_EXITED = 3,
                    VK_XSK_FAILED = 4 };
enum vk_xsk_zc { VK_XSK_ZC_OFF = 0, VK_XSK_ZC_TRY = 1, VK_XSK_ZC_REQUIRE = 2 };
struct vk_xsk_config {
    uint32_t ifindex;
    uint32_t queue;
    uint32_t frames;
    uint32_t frame_size;
    uint32_t fill_size, comp_size, rx_size, tx_size;
    uint32_t busy_poll;
    uint32_t zerocopy;
    uint32_t chain;
    int32_t xskmap_fd;
    uint8_t chain_dmac[6];
    uint8_t chain_smac[6];
};
#define VK_XSK_MAX_BATCH 256
void *vk_xsk_shm_map(int fd, uint64_t size, uint64_t addr);
int vk_xsk_shm_unmap(void *addr, uint64_t size);
int vk_xsk_shm_init(struct vk_xsk_shm *shm, uint64_t size, uint32_t ncpus);
int vk_xsk_shm_attach(struct vk_xsk_shm *shm);
int vk_xsk_run(struct vk_xsk_shm *shm, const struct vk_xsk_config *cfg);
const char *vk_xsk_stat_name(int i);
"""

XSK_RUNTIME = Runtime("_xsk", (XSK_DIR / "vk_xsk.c",), (XSK_DIR / "vk_xsk.h",), XSK_CDEF, (XSK_DIR,))


def build_xsk(source: str | os.PathLike[str]) -> Path:
    """The extension of ``source`` (a VNF's fastpath.c) with the AF_XDP runtime; its path."""
    return build_native(source, runtime=XSK_RUNTIME)
