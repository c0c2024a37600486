"""cffi build of the socket packet generator (``datapath._sockgen``): the rate benchmarks'
traffic where the kernel refuses XDP live frames (``perf.traffic.SocketFrames``).

A Python loop of send() calls tops out near 0.5 Mpps here, far below the paths it would
measure; this loop sends batches with sendmmsg() on an AF_PACKET socket that bypasses the
qdisc, paced or not, without the interpreter in between. Built with the package
(``setup.py``'s ``cffi_modules``), like the libbpf binding.
"""

from __future__ import annotations

from cffi import FFI

CDEF = r"""
struct vk_sockgen_stats { uint64_t sent; uint64_t dropped; uint64_t first_ns; uint64_t last_ns; uint64_t late; };
int64_t vk_sockgen_send(int fd, const uint8_t *frames, uint32_t frame_len, uint32_t nframes, uint64_t count,
                        uint64_t interval_ns, volatile uint32_t *stop, struct vk_sockgen_stats *st);
"""

SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#define BATCH 64
#define CATCH_UP 64  /* as xdp_gen.c: a generator further behind restarts its schedule */

struct vk_sockgen_stats { uint64_t sent; uint64_t dropped; uint64_t first_ns; uint64_t last_ns; uint64_t late; };

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Send `count` frames (cycling over `nframes` frames of `frame_len` bytes) out of the bound
 * AF_PACKET socket `fd`, one per `interval_ns` when it is not 0, until `*stop`. A frame the
 * device refuses (ENOBUFS: the peer's ring is full) counts as sent and dropped: offered load,
 * as a NIC's generator would count it. Returns the frames sent, or -errno. */
int64_t vk_sockgen_send(int fd, const uint8_t *frames, uint32_t frame_len, uint32_t nframes, uint64_t count,
                        uint64_t interval_ns, volatile uint32_t *stop, struct vk_sockgen_stats *st)
{
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    uint64_t next_ns = 0;
    uint32_t at = 0;

    memset(st, 0, sizeof(*st));
    memset(msgs, 0, sizeof(msgs));
    while (st->sent < count && !*stop) {
        uint64_t n = count - st->sent < BATCH ? count - st->sent : BATCH;
        if (interval_ns) {
            uint64_t t = now_ns();
            if (!next_ns)
                next_ns = t;
            if (t < next_ns)
                continue;  /* not due yet: spin */
            if (t - next_ns > CATCH_UP * interval_ns) {
                next_ns = t;
                st->late++;
            }
            uint64_t due = (t - next_ns) / interval_ns + 1;
            if (due < n)
                n = due;
            next_ns += n * interval_ns;
        }
        for (uint64_t i = 0; i < n; i++) {
            iov[i].iov_base = (void *)(frames + (uint64_t)((at + i) % nframes) * frame_len);
            iov[i].iov_len = frame_len;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int r = sendmmsg(fd, msgs, (unsigned int)n, 0);
        if (r < 0) {
            if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR)
                return -errno;
            r = 1;  /* the first frame of the batch was refused: count it as offered */
            st->dropped++;
        }
        uint64_t t = now_ns();
        if (!st->sent)
            st->first_ns = t;
        st->last_ns = t;
        st->sent += (uint64_t)r;
        at = (uint32_t)((at + (uint32_t)r) % nframes);
    }
    return (int64_t)st->sent;
}
"""


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source("datapath._sockgen", SOURCE, extra_compile_args=["-O2"])
    return ffi


ffibuilder = make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
