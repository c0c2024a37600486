/* vk_xsk.c: the AF_XDP runtime (see vk_xsk.h), on the kernel's raw socket API.
 *
 * Why not libxdp's xsk helpers: its socket set-up loads libxdp's own XDP program unless told
 * not to, and we load ours (datapath.objects) with the XSKMAP the parent owns; what remains
 * of it, the ring accessors, is forty lines of acquire/release loads and stores written out
 * below; and linking libxdp (with its libbpf) into every VNF's extension would buy nothing
 * the worker needs. The raw API also lets every failure name its step and errno.
 *
 * Frames: the UMEM is `frames` chunks of `frame_size` bytes. Each chunk is in exactly one
 * place at a time: the free stack here, the fill ring, the RX ring, this batch, the TX ring
 * or the kernel's transmit path, or the completion ring. The VNF runs on the frame in place
 * (its headroom is the chunk's bytes before the packet); a frame it passes goes back out on
 * the TX ring from where it lies, any other goes back to the free stack.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <linux/bpf.h>
#include <linux/if_xdp.h>

#include "vk_xsk.h"
#include "vk_runtime.h"

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define NSH_PUSH 38             /* outer Ethernet 14 + NSH MD type 1 24 (RFC 8300 2.4) */
#define DRAIN_QUIET_MS 10       /* RX looked empty this long after leaving the XSKMAP: done */
#define DRAIN_TX_MS 2000        /* at most this long for the kernel to complete our TX */
#define KERNEL_STATS_EVERY 4096 /* loop turns between XDP_STATISTICS reads */
#define POLL_MS 100             /* wake-up mode: poll() timeout, to see ctl.stop */

/* ---- rings ------------------------------------------------------------------------------ */

struct ring {
    uint32_t *producer, *consumer, *flags;
    void *desc;
    uint32_t mask, size;
    uint32_t cached_prod, cached_cons;
    void *map;
    size_t map_len;
};

/* Producer side (fill, TX): free entries, re-reading the consumer only when short. */
static uint32_t prod_free(struct ring *r, uint32_t want)
{
    uint32_t free = r->size - (r->cached_prod - r->cached_cons);
    if (free >= want)
        return free;
    r->cached_cons = __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE);
    return r->size - (r->cached_prod - r->cached_cons);
}

static void prod_submit(struct ring *r)
{
    __atomic_store_n(r->producer, r->cached_prod, __ATOMIC_RELEASE);
}

/* Consumer side (RX, completion): up to `want` entries ready, re-reading the producer only
 * when the cached ones are used up. */
static uint32_t cons_avail(struct ring *r, uint32_t want)
{
    uint32_t n = r->cached_prod - r->cached_cons;
    if (n == 0) {
        r->cached_prod = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE);
        n = r->cached_prod - r->cached_cons;
    }
    return n < want ? n : want;
}

static void cons_release(struct ring *r, uint32_t n)
{
    r->cached_cons += n;
    __atomic_store_n(r->consumer, r->cached_cons, __ATOMIC_RELEASE);
}

static inline uint64_t *addr_at(struct ring *r, uint32_t i)
{
    return &((uint64_t *)r->desc)[i & r->mask];
}

static inline struct xdp_desc *desc_at(struct ring *r, uint32_t i)
{
    return &((struct xdp_desc *)r->desc)[i & r->mask];
}

/* ---- the worker's state ----------------------------------------------------------------- */

struct xsk {
    struct vk_xsk_shm *shm;
    const struct vk_xsk_config *cfg;
    uint64_t *st;               /* shm->stats */
    int fd;
    uint8_t *umem;
    size_t umem_len;
    struct ring fill, comp, rx, tx;
    uint64_t *free_frames;
    uint32_t nfree;
    uint64_t chunk_mask;        /* ~(frame_size - 1) */
    uint32_t outstanding;       /* frames handed to TX, not completed yet */
    int zerocopy, need_wakeup, in_map;
};

static int fail(struct xsk *x, int err, const char *fmt, ...)
{
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(x->shm->error, VK_XSK_ERROR_LEN, fmt, ap);
    va_end(ap);
    if (n >= 0 && n < VK_XSK_ERROR_LEN - 2)
        snprintf(x->shm->error + n, VK_XSK_ERROR_LEN - n, ": %s", strerror(err));
    __atomic_store_n(&x->shm->ctl.state, VK_XSK_FAILED, __ATOMIC_RELEASE);
    return -err;
}

static void push_free(struct xsk *x, uint64_t addr)
{
    x->free_frames[x->nfree++] = addr & x->chunk_mask;
}

static int bpf_map_op(int cmd, int map_fd, const void *key, const void *value)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = (uint32_t)map_fd;
    attr.key = (uint64_t)(unsigned long)key;
    attr.value = (uint64_t)(unsigned long)value;
    attr.flags = BPF_ANY;
    return syscall(__NR_bpf, cmd, &attr, sizeof(attr)) < 0 ? -errno : 0;
}

static void kernel_stats(struct xsk *x)
{
    struct xdp_statistics s;
    socklen_t len = sizeof(s);
    if (getsockopt(x->fd, SOL_XDP, XDP_STATISTICS, &s, &len) < 0)
        return;
    x->st[VK_XSK_k_rx_dropped] = s.rx_dropped;
    x->st[VK_XSK_k_rx_invalid] = s.rx_invalid_descs;
    x->st[VK_XSK_k_tx_invalid] = s.tx_invalid_descs;
    x->st[VK_XSK_k_rx_ring_full] = s.rx_ring_full;
    x->st[VK_XSK_k_rx_fill_empty] = s.rx_fill_ring_empty_descs;
    x->st[VK_XSK_k_tx_ring_empty] = s.tx_ring_empty_descs;
}

/* ---- set-up ----------------------------------------------------------------------------- */

static int map_ring(struct xsk *x, struct ring *r, uint32_t entries, const struct xdp_ring_offset *off,
                    uint64_t pgoff, size_t desc_size, const char *what)
{
    size_t len = off->desc + (size_t)entries * desc_size;
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, x->fd, (off_t)pgoff);
    if (m == MAP_FAILED)
        return fail(x, errno, "mapping the %s ring (%u entries)", what, entries);
    r->map = m;
    r->map_len = len;
    r->producer = (uint32_t *)((uint8_t *)m + off->producer);
    r->consumer = (uint32_t *)((uint8_t *)m + off->consumer);
    r->flags = (uint32_t *)((uint8_t *)m + off->flags);
    r->desc = (uint8_t *)m + off->desc;
    r->size = entries;
    r->mask = entries - 1;
    r->cached_prod = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE);
    r->cached_cons = __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE);
    return 0;
}

static void close_socket(struct xsk *x)
{
    struct ring *rings[] = {&x->fill, &x->comp, &x->rx, &x->tx};
    for (unsigned i = 0; i < 4; i++) {
        if (rings[i]->map)
            munmap(rings[i]->map, rings[i]->map_len);
        memset(rings[i], 0, sizeof(*rings[i]));
    }
    if (x->fd >= 0)
        close(x->fd);
    x->fd = -1;
}

/* socket, UMEM registration, rings, bind. zc: ask for zero-copy (else copy mode). */
static int open_socket(struct xsk *x, int zc)
{
    const struct vk_xsk_config *c = x->cfg;
    x->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (x->fd < 0)
        return fail(x, errno, "socket(AF_XDP)");
    struct xdp_umem_reg reg = {.addr = (uint64_t)(unsigned long)x->umem, .len = x->umem_len,
                               .chunk_size = c->frame_size, .headroom = 0, .flags = 0};
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)) < 0)
        return fail(x, errno, "registering the UMEM (%u frames x %u B) with the socket", c->frames,
                    c->frame_size);
    struct { int opt; uint32_t n; const char *what; } sizes[] = {
        {XDP_UMEM_FILL_RING, c->fill_size, "fill"}, {XDP_UMEM_COMPLETION_RING, c->comp_size, "completion"},
        {XDP_RX_RING, c->rx_size, "RX"}, {XDP_TX_RING, c->tx_size, "TX"}};
    for (unsigned i = 0; i < 4; i++)
        if (setsockopt(x->fd, SOL_XDP, sizes[i].opt, &sizes[i].n, sizeof(sizes[i].n)) < 0)
            return fail(x, errno, "sizing the %s ring to %u entries", sizes[i].what, sizes[i].n);
    struct xdp_mmap_offsets off;
    socklen_t optlen = sizeof(off);
    if (getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &optlen) < 0)
        return fail(x, errno, "reading the ring offsets (XDP_MMAP_OFFSETS)");
    int err;
    if ((err = map_ring(x, &x->fill, c->fill_size, &off.fr, XDP_UMEM_PGOFF_FILL_RING, sizeof(uint64_t), "fill")) ||
        (err = map_ring(x, &x->comp, c->comp_size, &off.cr, XDP_UMEM_PGOFF_COMPLETION_RING, sizeof(uint64_t),
                        "completion")) ||
        (err = map_ring(x, &x->rx, c->rx_size, &off.rx, XDP_PGOFF_RX_RING, sizeof(struct xdp_desc), "RX")) ||
        (err = map_ring(x, &x->tx, c->tx_size, &off.tx, XDP_PGOFF_TX_RING, sizeof(struct xdp_desc), "TX")))
        return err;
    struct sockaddr_xdp sxdp = {.sxdp_family = AF_XDP, .sxdp_ifindex = c->ifindex, .sxdp_queue_id = c->queue};
    sxdp.sxdp_flags = (zc ? XDP_ZEROCOPY : XDP_COPY) | (c->busy_poll ? 0 : XDP_USE_NEED_WAKEUP);
    if (bind(x->fd, (struct sockaddr *)&sxdp, sizeof(sxdp)) < 0)
        return fail(x, errno, "binding to queue %u of ifindex %u in %s mode", c->queue, c->ifindex,
                    zc ? "zero-copy" : "copy");
    struct xdp_options opts;
    optlen = sizeof(opts);
    x->zerocopy = getsockopt(x->fd, SOL_XDP, XDP_OPTIONS, &opts, &optlen) == 0 &&
                  (opts.flags & XDP_OPTIONS_ZEROCOPY);
    x->need_wakeup = !c->busy_poll;
    return 0;
}

static int setup(struct xsk *x)
{
    const struct vk_xsk_config *c = x->cfg;
    x->umem_len = (size_t)c->frames * c->frame_size;
    x->chunk_mask = ~(uint64_t)(c->frame_size - 1);
    x->umem = mmap(NULL, x->umem_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (x->umem == MAP_FAILED) {
        x->umem = NULL;
        return fail(x, errno, "UMEM of %u frames x %u B (%.1f MiB) could not be allocated", c->frames,
                    c->frame_size, x->umem_len / 1048576.0);
    }
    x->free_frames = calloc(c->frames, sizeof(uint64_t));
    if (!x->free_frames)
        return fail(x, ENOMEM, "the free-frame stack (%u frames)", c->frames);
    for (uint32_t i = c->frames; i-- > 0;)
        push_free(x, (uint64_t)i * c->frame_size);
    int err = -EINVAL;
    if (c->zerocopy != VK_XSK_ZC_OFF) {
        err = open_socket(x, 1);
        if (err && c->zerocopy == VK_XSK_ZC_TRY) {
            close_socket(x);  /* the driver has no zero-copy: start again in copy mode */
            x->shm->error[0] = 0;
            __atomic_store_n(&x->shm->ctl.state, VK_XSK_STARTING, __ATOMIC_RELEASE);
            err = open_socket(x, 0);
        }
    } else {
        err = open_socket(x, 0);
    }
    if (err)
        return err;
    int fd = x->fd;
    if ((err = bpf_map_op(BPF_MAP_UPDATE_ELEM, c->xskmap_fd, &c->queue, &fd)))
        return fail(x, -err, "adding the socket to the XSKMAP at key %u", c->queue);
    x->in_map = 1;
    return 0;
}

/* ---- the loop --------------------------------------------------------------------------- */

static void complete_tx(struct xsk *x)
{
    uint32_t n = cons_avail(&x->comp, UINT32_MAX);
    for (uint32_t i = 0; i < n; i++)
        push_free(x, *addr_at(&x->comp, x->comp.cached_cons + i));
    if (n) {
        cons_release(&x->comp, n);
        x->st[VK_XSK_tx_completed] += n;
        x->outstanding -= n;
    }
}

static void refill(struct xsk *x)
{
    uint32_t room = prod_free(&x->fill, 1);
    if (!room)
        return;
    if (!x->nfree) {
        x->st[VK_XSK_fill_empty]++;
        return;
    }
    uint32_t n = room < x->nfree ? room : x->nfree;
    for (uint32_t i = 0; i < n; i++)
        *addr_at(&x->fill, x->fill.cached_prod + i) = x->free_frames[--x->nfree];
    x->fill.cached_prod += n;
    prod_submit(&x->fill);
    if (x->need_wakeup && (__atomic_load_n(x->fill.flags, __ATOMIC_ACQUIRE) & XDP_RING_NEED_WAKEUP)) {
        recvfrom(x->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
        x->st[VK_XSK_wakeups]++;
    }
}

/* Make the kernel send what is on the TX ring. Copy mode sends inside sendto(), at most a
 * few dozen frames a call (EAGAIN: more to do, or the completion ring is full), so keep
 * kicking, emptying the completion ring in between; zero-copy only needs the driver woken. */
static void kick_tx(struct xsk *x)
{
    if (x->need_wakeup && !(__atomic_load_n(x->tx.flags, __ATOMIC_ACQUIRE) & XDP_RING_NEED_WAKEUP))
        return;
    for (int i = 0; i < 64; i++) {
        x->st[VK_XSK_kicks]++;
        if (sendto(x->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0 || x->zerocopy)
            return;
        if (errno != EAGAIN && errno != EBUSY && errno != ENOBUFS && errno != EINTR)
            return;
        complete_tx(x);
    }
}

static int tx_pending(struct xsk *x)
{
    return __atomic_load_n(x->tx.consumer, __ATOMIC_ACQUIRE) != x->tx.cached_prod;
}

/* In a chain, the frame leaves with an NSH (MD type 1, next protocol Ethernet) whose SI is one
 * less than the one it came with: this function is done with it (RFC 8300 section 2.3). */
static void push_nsh(const struct vk_xsk_config *c, uint8_t *p, uint32_t spi_si, uint32_t ttl)
{
    memcpy(p, c->chain_dmac, 6);
    memcpy(p + 6, c->chain_smac, 6);
    p[12] = 0x89;  /* ETH_P_NSH */
    p[13] = 0x4f;
    uint8_t *nsh = p + 14;
    if (ttl > 63)
        ttl = 63;
    uint16_t w = (uint16_t)((ttl << 6) | (24 / 4));  /* version 0, O 0, TTL, Length 6 words */
    nsh[0] = (uint8_t)(w >> 8);
    nsh[1] = (uint8_t)w;
    nsh[2] = 1;    /* MD type 1 */
    nsh[3] = 3;    /* next protocol: Ethernet */
    uint32_t v = spi_si - 1;
    nsh[4] = (uint8_t)(v >> 24);
    nsh[5] = (uint8_t)(v >> 16);
    nsh[6] = (uint8_t)(v >> 8);
    nsh[7] = (uint8_t)v;
    memset(nsh + 8, 0, 16);  /* fixed-length context headers, unused */
}

/* Take up to `batch` frames off RX, run the VNF on them, send or recycle each. Returns how
 * many it took. */
static uint32_t run_batch(struct xsk *x, uint32_t batch)
{
    uint8_t *bufs[VK_XSK_MAX_BATCH];
    uint32_t offs[VK_XSK_MAX_BATCH], lens[VK_XSK_MAX_BATCH], meta[VK_XSK_MAX_BATCH][2];
    uint64_t chunks[VK_XSK_MAX_BATCH];
    struct vk_result res[VK_XSK_MAX_BATCH];
    const struct vk_xsk_config *c = x->cfg;
    uint32_t n = cons_avail(&x->rx, batch);
    if (!n)
        return 0;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct xdp_desc *d = desc_at(&x->rx, x->rx.cached_cons + i);
        chunks[i] = d->addr & x->chunk_mask;
        bufs[i] = x->umem + chunks[i];
        offs[i] = (uint32_t)(d->addr - chunks[i]);
        lens[i] = d->len;
        bytes += d->len;
        /* In a chain the frame comes under the NSH user_hop.c pushed (xsk_redirect_chain let
         * only those through): keep SPI/SI and TTL, give the VNF the inner frame. */
        meta[i][0] = meta[i][1] = 0;
        if (c->chain && lens[i] >= NSH_PUSH) {
            const uint8_t *nsh = bufs[i] + offs[i] + 14;
            meta[i][0] = (uint32_t)nsh[4] << 24 | (uint32_t)nsh[5] << 16 | (uint32_t)nsh[6] << 8 | nsh[7];
            meta[i][1] = (((uint32_t)nsh[0] << 8 | nsh[1]) >> 6) & 0x3f;
            offs[i] += NSH_PUSH;
            lens[i] -= NSH_PUSH;
        }
    }
    cons_release(&x->rx, n);
    x->st[VK_XSK_rx] += n;
    x->st[VK_XSK_rx_bytes] += bytes;

    vk_native_run_vec(bufs, offs, lens, n, res);

    uint32_t room = prod_free(&x->tx, n), ntx = 0;
    uint64_t tx_bytes = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t v = res[i].verdict, off = res[i].offset, len = res[i].len;
        if (v == VK_RT_DROP || v == VK_RT_ABORTED) {
            x->st[VK_XSK_dropped_verdict]++;
            push_free(x, chunks[i]);
            continue;
        }
        if (v == VK_RT_REDIRECT || (c->chain && v == VK_RT_TX)) {
            x->st[VK_XSK_dropped_unsupported]++;
            push_free(x, chunks[i]);
            continue;
        }
        if (c->chain) {
            if ((meta[i][0] & 0xff) == 0 || off < NSH_PUSH) {
                x->st[VK_XSK_dropped_chain]++;
                push_free(x, chunks[i]);
                continue;
            }
            off -= NSH_PUSH;
            len += NSH_PUSH;
            push_nsh(c, bufs[i] + off, meta[i][0], meta[i][1]);
        }
        if (ntx == room) {
            x->st[VK_XSK_dropped_tx_full]++;
            push_free(x, chunks[i]);
            continue;
        }
        struct xdp_desc *d = desc_at(&x->tx, x->tx.cached_prod + ntx);
        d->addr = chunks[i] + off;
        d->len = len;
        d->options = 0;
        ntx++;
        tx_bytes += len;
    }
    if (ntx) {
        x->tx.cached_prod += ntx;
        prod_submit(&x->tx);
        x->outstanding += ntx;
        x->st[VK_XSK_tx] += ntx;
        x->st[VK_XSK_tx_bytes] += tx_bytes;
        kick_tx(x);
    }
    x->st[VK_XSK_batches]++;
    return n;
}

static void sleep_us(long us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint32_t rx_waiting(struct xsk *x)
{
    return __atomic_load_n(x->rx.producer, __ATOMIC_ACQUIRE) - x->rx.cached_cons;
}

static void idle(struct xsk *x)
{
    x->st[VK_XSK_empty_polls]++;
    complete_tx(x);
    if (x->outstanding && tx_pending(x))
        kick_tx(x);
    if (x->cfg->busy_poll)
        return;
    struct pollfd p = {.fd = x->fd, .events = POLLIN};
    poll(&p, 1, POLL_MS);  /* EINTR (a signal) just ends the wait */
    x->st[VK_XSK_wakeups]++;
}

static void loop(struct xsk *x)
{
    struct vk_xsk_control *ctl = &x->shm->ctl;
    uint32_t turns = 0;
    while (!__atomic_load_n(&ctl->stop, __ATOMIC_ACQUIRE)) {
        if (++turns % KERNEL_STATS_EVERY == 0)
            kernel_stats(x);
        if (__atomic_load_n(&ctl->pause, __ATOMIC_ACQUIRE)) {
            complete_tx(x);
            if (x->outstanding && tx_pending(x))
                kick_tx(x);
            x->st[VK_XSK_rx_pending] = rx_waiting(x);
            __atomic_store_n(&ctl->paused, 1, __ATOMIC_RELEASE);
            sleep_us(200);
            continue;
        }
        if (__atomic_load_n(&ctl->paused, __ATOMIC_RELAXED))
            __atomic_store_n(&ctl->paused, 0, __ATOMIC_RELEASE);
        complete_tx(x);
        refill(x);
        uint32_t batch = __atomic_load_n(&ctl->batch, __ATOMIC_RELAXED);
        if (batch < 1)
            batch = 1;
        if (batch > VK_XSK_MAX_BATCH)
            batch = VK_XSK_MAX_BATCH;
        if (!run_batch(x, batch)) {
            x->st[VK_XSK_rx_pending] = 0;
            idle(x);
        }
    }
}

/* Stop RX (leave the XSKMAP: the XDP program falls back to XDP_PASS), take what already
 * arrived, wait for the kernel to complete every frame sent. */
static void drain(struct xsk *x)
{
    __atomic_store_n(&x->shm->ctl.state, VK_XSK_DRAINING, __ATOMIC_RELEASE);
    if (x->in_map && bpf_map_op(BPF_MAP_DELETE_ELEM, x->cfg->xskmap_fd, &x->cfg->queue, NULL) == 0)
        x->in_map = 0;
    uint64_t quiet_since = now_ms();
    while (now_ms() - quiet_since < DRAIN_QUIET_MS) {
        complete_tx(x);
        refill(x);
        if (run_batch(x, VK_XSK_MAX_BATCH))
            quiet_since = now_ms();
        else
            sleep_us(500);
    }
    uint64_t deadline = now_ms() + DRAIN_TX_MS;
    while (x->outstanding && now_ms() < deadline) {
        if (tx_pending(x))
            kick_tx(x);
        complete_tx(x);
        if (x->outstanding)
            sleep_us(500);
    }
    x->st[VK_XSK_tx_lost] = x->outstanding;
    x->st[VK_XSK_rx_pending] = rx_waiting(x);
    kernel_stats(x);
}

static uint32_t *vk__stop_word;

static void on_signal(int sig)
{
    (void)sig;
    if (vk__stop_word)
        __atomic_store_n(vk__stop_word, 1, __ATOMIC_RELEASE);
}

int vk_xsk_run(struct vk_xsk_shm *shm, const struct vk_xsk_config *cfg)
{
    struct xsk x = {.shm = shm, .cfg = cfg, .st = shm->stats, .fd = -1};
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;  /* no SA_RESTART: poll() returns at once */
    vk__stop_word = &shm->ctl.stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int err = setup(&x);
    if (!err) {
        shm->ctl.zerocopy = (uint32_t)x.zerocopy;
        shm->ctl.need_wakeup = (uint32_t)x.need_wakeup;
        __atomic_store_n(&shm->ctl.state, VK_XSK_RUNNING, __ATOMIC_RELEASE);
        loop(&x);
        drain(&x);
        __atomic_store_n(&shm->ctl.state, VK_XSK_EXITED, __ATOMIC_RELEASE);
    }
    if (x.in_map)
        bpf_map_op(BPF_MAP_DELETE_ELEM, cfg->xskmap_fd, &cfg->queue, NULL);
    close_socket(&x);
    if (x.umem)
        munmap(x.umem, x.umem_len);
    free(x.free_frames);
    return err;
}

/* ---- shared memory ---------------------------------------------------------------------- */

static size_t header_size(void)
{
    return (sizeof(struct vk_xsk_shm) + 4095) & ~(size_t)4095;
}

void *vk_xsk_shm_map(int fd, uint64_t size, uint64_t addr)
{
    int flags = MAP_SHARED | (addr ? MAP_FIXED_NOREPLACE : 0);
    void *p = mmap((void *)(unsigned long)addr, size, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (p == MAP_FAILED)
        return NULL;
    if (addr && p != (void *)(unsigned long)addr) {  /* a kernel without MAP_FIXED_NOREPLACE */
        munmap(p, size);
        errno = EEXIST;
        return NULL;
    }
    return p;
}

int vk_xsk_shm_unmap(void *addr, uint64_t size)
{
    return munmap(addr, size) < 0 ? -errno : 0;
}

int vk_xsk_shm_init(struct vk_xsk_shm *shm, uint64_t size, uint32_t ncpus)
{
    size_t hdr = header_size();
    int n = vk_native_table_count();
    if (size <= hdr)
        return -EINVAL;
    if (n > VK_XSK_MAX_TABLES)
        return -E2BIG;
    shm->magic = VK_XSK_MAGIC;
    shm->addr = (uint64_t)(unsigned long)shm;
    shm->size = size;
    shm->arena.base = (unsigned char *)shm + hdr;
    shm->arena.size = size - hdr;
    shm->arena.used = 0;
    shm->ctl.batch = 64;
    int err = 0;
    vk_tables_set_arena(&shm->arena);
    for (int i = 0; i < n && !err; i++) {
        struct vk_table *t = vk_native_table(i);
        if (strlen(t->name) >= VK_XSK_NAME_LEN) {
            err = -ENAMETOOLONG;
            break;
        }
        void *own = t->impl;  /* the module's own tables stay as they were */
        t->impl = NULL;
        err = vk_table_init(t, ncpus);
        strcpy(shm->tables[i].name, t->name);
        shm->tables[i].impl = (uint64_t)(unsigned long)t->impl;
        t->impl = own;
        shm->ntables = (uint32_t)i + 1;
    }
    vk_tables_set_arena(NULL);
    return err;
}

int vk_xsk_shm_attach(struct vk_xsk_shm *shm)
{
    if (shm->magic != VK_XSK_MAGIC || shm->addr != (uint64_t)(unsigned long)shm)
        return -EINVAL;
    for (int i = 0; i < vk_native_table_count(); i++) {
        struct vk_table *t = vk_native_table(i);
        uint32_t j = 0;
        while (j < shm->ntables && strcmp(shm->tables[j].name, t->name) != 0)
            j++;
        if (j == shm->ntables || !shm->tables[j].impl)
            return -ENOENT;
        t->impl = (void *)(unsigned long)shm->tables[j].impl;
    }
    return 0;
}

const char *vk_xsk_stat_name(int i)
{
#define VK_XSK__NAME(name) #name,
    static const char *const names[] = {VK_XSK_STATS(VK_XSK__NAME)};
    return i >= 0 && i < VK_XSK_NSTATS ? names[i] : NULL;
}

_Static_assert(VK_XSK_NSTATS <= VK_XSK_MAX_STATS, "too many runtime counters");
