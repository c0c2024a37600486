/* vk_xsk.h: the AF_XDP runtime of a user-space VNF (datapath/xsk/vk_xsk.c).
 *
 * A VNF's fastpath.c, compiled natively (datapath/native.py) with this runtime, runs as a
 * worker process per queue: AF_XDP socket, UMEM, fill/completion/RX/TX rings, the VNF on
 * each batch of frames in place, then TX, drop or recycle; all in C.
 *
 * The worker and its parent share one mapping (struct vk_xsk_shm, then the tables' arena),
 * mapped at the same address in both, so the tables' internal pointers are valid in both:
 * the parent initialises the tables in it and reads and writes them while the worker runs;
 * the worker's runtime counters and the control words live in its header.
 */
#ifndef VK_XSK_H
#define VK_XSK_H

#include <stdint.h>

#include <vnfkit/native_tables.h>

#define VK_XSK_MAGIC 0x31766b73786b7631ULL  /* bumped when the layout changes */
#define VK_XSK_MAX_TABLES 64
#define VK_XSK_NAME_LEN 64
#define VK_XSK_MAX_BATCH 256
#define VK_XSK_MAX_STATS 64
#define VK_XSK_ERROR_LEN 256

/* The runtime's counters, in struct vk_xsk_shm.stats. One writer: the worker.
 *   rx ........... frames taken off the RX ring (every one ends in exactly one of: tx,
 *                  dropped_verdict, dropped_tx_full, dropped_unsupported, dropped_chain)
 *   tx ........... frames put on the TX ring; tx_completed: given back by the kernel;
 *                  tx_lost: never given back before exit (0 after a clean drain)
 *   dropped_verdict      the VNF said DROP or ABORTED
 *   dropped_tx_full      no room on the TX ring
 *   dropped_unsupported  a verdict this runtime cannot carry out (REDIRECT; TX in a chain)
 *   dropped_chain        in a chain: SI already 0, or no headroom for the NSH
 *   fill_empty ... times the fill ring had room but every frame was in flight
 *   k_* .......... the kernel's XDP_STATISTICS of the socket (frames lost before the ring)
 *   rx_pending ... frames waiting on the RX ring, sampled when idle or paused */
#define VK_XSK_STATS(X)                                                                    \
    X(rx) X(rx_bytes) X(tx) X(tx_bytes) X(tx_completed) X(tx_lost)                        \
    X(dropped_verdict) X(dropped_tx_full) X(dropped_unsupported) X(dropped_chain)         \
    X(batches) X(empty_polls) X(wakeups) X(kicks) X(fill_empty)                            \
    X(k_rx_dropped) X(k_rx_invalid) X(k_tx_invalid) X(k_rx_ring_full) X(k_rx_fill_empty)  \
    X(k_tx_ring_empty) X(rx_pending)

#define VK_XSK__STAT(name) VK_XSK_##name,
enum vk_xsk_stat { VK_XSK_STATS(VK_XSK__STAT) VK_XSK_NSTATS };

enum vk_xsk_state { VK_XSK_STARTING = 0, VK_XSK_RUNNING = 1, VK_XSK_DRAINING = 2, VK_XSK_EXITED = 3,
                    VK_XSK_FAILED = 4 };

struct vk_xsk_table_ref {
    char name[VK_XSK_NAME_LEN];
    uint64_t impl;              /* the table's storage, inside the arena */
};

/* Words the parent and the worker exchange. Each has one writer, named. */
struct vk_xsk_control {
    uint32_t stop;              /* parent (or the worker's signal handler): drain and exit */
    uint32_t pause;             /* parent: take no frames until cleared */
    uint32_t paused;            /* worker: 1 while pausing, its last batch finished */
    uint32_t batch;             /* parent: frames per batch, 1..VK_XSK_MAX_BATCH, read every loop */
    uint32_t state;             /* worker: enum vk_xsk_state */
    uint32_t zerocopy;          /* worker: 1 bound in zero-copy mode, 0 copy mode */
    uint32_t need_wakeup;       /* worker: 1 the kernel took XDP_USE_NEED_WAKEUP */
    uint32_t pad;
};

struct vk_xsk_shm {
    uint64_t magic;
    uint64_t addr;              /* where every process maps it */
    uint64_t size;
    struct vk_arena arena;      /* the tables' storage: the rest of the mapping */
    uint32_t ntables;
    uint32_t pad;
    struct vk_xsk_table_ref tables[VK_XSK_MAX_TABLES];
    struct vk_xsk_control ctl;
    uint64_t stats[VK_XSK_MAX_STATS];
    char error[VK_XSK_ERROR_LEN]; /* worker: why it failed (state VK_XSK_FAILED) */
};

enum vk_xsk_zc { VK_XSK_ZC_OFF = 0, VK_XSK_ZC_TRY = 1, VK_XSK_ZC_REQUIRE = 2 };

struct vk_xsk_config {
    uint32_t ifindex;
    uint32_t queue;
    uint32_t frames;            /* UMEM frames */
    uint32_t frame_size;        /* 2048 or 4096 */
    uint32_t fill_size, comp_size, rx_size, tx_size;  /* ring entries, powers of two */
    uint32_t busy_poll;         /* 1: spin on the rings; 0: poll() with XDP_USE_NEED_WAKEUP */
    uint32_t zerocopy;          /* enum vk_xsk_zc */
    uint32_t chain;             /* 1: a chain hop (NSH in, NSH out) */
    int32_t xskmap_fd;          /* the XSKMAP this socket goes in at key `queue` */
    uint8_t chain_dmac[6];      /* chain: outer Ethernet of the NSH frame sent back */
    uint8_t chain_smac[6];
};

/* Map `size` bytes of `fd` shared, at `addr` (0: anywhere). NULL with errno on failure;
 * EEXIST: something else already lives at addr in this process. */
void *vk_xsk_shm_map(int fd, uint64_t size, uint64_t addr);
int vk_xsk_shm_unmap(void *addr, uint64_t size);

/* Parent: lay out a fresh (zeroed) mapping and make every table of this module in its
 * arena for ncpus CPU slots, leaving the module's own tables as they were. 0 or -errno. */
int vk_xsk_shm_init(struct vk_xsk_shm *shm, uint64_t size, uint32_t ncpus);

/* Worker: point this module's tables at the storage the parent made. 0 or -errno
 * (-EINVAL: not a mapping of this layout or not at its address; -ENOENT: a table missing). */
int vk_xsk_shm_attach(struct vk_xsk_shm *shm);

/* Worker: set up the socket and run until ctl.stop; then drain. 0 after a clean stop, or
 * -errno with shm->error saying which step failed. SIGTERM and SIGINT set ctl.stop. */
int vk_xsk_run(struct vk_xsk_shm *shm, const struct vk_xsk_config *cfg);

/* The name of runtime counter i (enum vk_xsk_stat), or NULL past the last. */
const char *vk_xsk_stat_name(int i);

#endif
