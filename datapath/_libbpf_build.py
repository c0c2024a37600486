"""cffi (API mode) binding to Debian's libbpf 1.1: the only place vnfkit talks C to libbpf.

Built by setup.py through ``cffi_modules``; the result is the extension ``datapath._libbpf``.
API mode means the C compiler checks every declaration below against libbpf's own headers,
so a layout mismatch fails the build instead of corrupting memory at run time. Structs are
declared with ``...;`` so their real layout comes from the headers.

Only what the engine uses is declared. Kernel constants newer than Debian's 6.1 UAPI
headers (tcx attach types, live-frames flag) are defined in ``datapath/kernel.py``.
"""

from cffi import FFI

CDEF = r"""
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef int32_t __s32;

struct bpf_object;
struct bpf_program;
struct bpf_map;
struct btf;

enum libbpf_print_level { LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG };

/* ---- objects, programs, maps ---- */
struct bpf_object_open_opts {
    size_t sz;
    const char *object_name;
    const char *pin_root_path;
    char *kernel_log_buf;
    size_t kernel_log_size;
    __u32 kernel_log_level;
    ...;
};
struct bpf_object *bpf_object__open_file(const char *path, const struct bpf_object_open_opts *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
const char *bpf_object__name(const struct bpf_object *obj);
struct btf *bpf_object__btf(const struct bpf_object *obj);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);

const char *bpf_program__name(const struct bpf_program *prog);
const char *bpf_program__section_name(const struct bpf_program *prog);
int bpf_program__fd(const struct bpf_program *prog);
int bpf_program__type(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);

const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__type(const struct bpf_map *map);
__u32 bpf_map__key_size(const struct bpf_map *map);
__u32 bpf_map__value_size(const struct bpf_map *map);
__u32 bpf_map__max_entries(const struct bpf_map *map);
__u32 bpf_map__map_flags(const struct bpf_map *map);
__u32 bpf_map__btf_key_type_id(const struct bpf_map *map);
__u32 bpf_map__btf_value_type_id(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, __u32 max_entries);
int bpf_map__reuse_fd(struct bpf_map *map, int fd);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);
bool bpf_map__is_internal(const struct bpf_map *map);

int libbpf_num_possible_cpus(void);
int libbpf_strerror(int err, char *buf, size_t size);

/* ---- raw syscall wrappers ---- */
struct bpf_insn { __u8 code; __s32 imm; ...; };
struct bpf_prog_load_opts {
    size_t sz;
    int expected_attach_type;
    __u32 log_level;
    __u32 log_size;
    char *log_buf;
    ...;
};
int bpf_prog_load(int prog_type, const char *prog_name, const char *license,
                  const struct bpf_insn *insns, size_t insn_cnt, const struct bpf_prog_load_opts *opts);

int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);

struct bpf_map_batch_opts { size_t sz; __u64 elem_flags; __u64 flags; ...; };
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                         __u32 *count, const struct bpf_map_batch_opts *opts);
int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_delete_batch(int fd, const void *keys, __u32 *count, const struct bpf_map_batch_opts *opts);

int bpf_obj_pin(int fd, const char *pathname);
int bpf_obj_get(const char *pathname);
int bpf_prog_get_fd_by_id(__u32 id);
int bpf_link_get_fd_by_id(__u32 id);
int bpf_map_get_fd_by_id(__u32 id);

struct bpf_prog_info {
    __u32 type; __u32 id; __u8 tag[8]; __u32 nr_map_ids; __u64 map_ids; char name[16];
    __u32 ifindex; __u32 btf_id; __u64 run_time_ns; __u64 run_cnt; __u64 load_time;
    __u32 xlated_prog_len; __u32 jited_prog_len; __u32 verified_insns;
    ...;
};
struct bpf_map_info {
    __u32 type; __u32 id; __u32 key_size; __u32 value_size; __u32 max_entries; __u32 map_flags;
    char name[16]; __u32 btf_id; __u32 btf_key_type_id; __u32 btf_value_type_id;
    ...;
};
struct bpf_link_info { __u32 type; __u32 id; __u32 prog_id; ...; };
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);
/* The link_info union starts right after prog_id; its first two u32 are
   (ifindex, attach_type) for tcx links and (ifindex) for xdp links. */
__u32 vk_link_info_u32(const struct bpf_link_info *info, int word);

struct bpf_link_create_opts { size_t sz; __u32 flags; ...; };
int bpf_link_create(int prog_fd, int target_fd, int attach_type, const struct bpf_link_create_opts *opts);
int bpf_link_detach(int link_fd);

struct bpf_test_run_opts {
    size_t sz;
    const void *data_in; void *data_out; __u32 data_size_in; __u32 data_size_out;
    const void *ctx_in; void *ctx_out; __u32 ctx_size_in; __u32 ctx_size_out;
    __u32 retval; int repeat; __u32 duration; __u32 flags; __u32 cpu; __u32 batch_size;
    ...;
};
int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);
struct xdp_md {
    __u32 data; __u32 data_end; __u32 data_meta; __u32 ingress_ifindex; __u32 rx_queue_index; __u32 egress_ifindex;
};

int bpf_enable_stats(int type);

/* ---- XDP and TC (clsact) through netlink, used for queries and the clsact fallback ---- */
struct bpf_xdp_query_opts {
    size_t sz; __u32 prog_id; __u32 drv_prog_id; __u32 hw_prog_id; __u32 skb_prog_id; __u8 attach_mode; ...;
};
int bpf_xdp_query(int ifindex, int flags, struct bpf_xdp_query_opts *opts);

enum bpf_tc_attach_point { BPF_TC_INGRESS = 1, BPF_TC_EGRESS = 2, BPF_TC_CUSTOM = 4 };
struct bpf_tc_hook { size_t sz; int ifindex; enum bpf_tc_attach_point attach_point; __u32 parent; ...; };
struct bpf_tc_opts { size_t sz; int prog_fd; __u32 flags; __u32 prog_id; __u32 handle; __u32 priority; ...; };
int bpf_tc_hook_create(struct bpf_tc_hook *hook);
int bpf_tc_hook_destroy(struct bpf_tc_hook *hook);
int bpf_tc_attach(const struct bpf_tc_hook *hook, struct bpf_tc_opts *opts);
int bpf_tc_detach(const struct bpf_tc_hook *hook, const struct bpf_tc_opts *opts);
int bpf_tc_query(const struct bpf_tc_hook *hook, struct bpf_tc_opts *opts);

/* ---- BTF ---- */
struct btf_type { __u32 name_off; __u32 info; __u32 size; ...; };
struct btf_member { __u32 name_off; __u32 type; __u32 offset; };
struct btf_array { __u32 type; __u32 index_type; __u32 nelems; };
struct btf_enum { __u32 name_off; __s32 val; };
struct btf_ext;
struct btf *btf__load_from_kernel_by_id(__u32 id);
struct btf *btf__parse(const char *path, struct btf_ext **btf_ext);
__s32 btf__find_by_name_kind(const struct btf *btf, const char *type_name, __u32 kind);
void btf__free(struct btf *btf);
__u32 btf__type_cnt(const struct btf *btf);
const struct btf_type *btf__type_by_id(const struct btf *btf, __u32 id);
const char *btf__name_by_offset(const struct btf *btf, __u32 offset);
long btf__resolve_size(const struct btf *btf, __u32 type_id);

/* ---- libbpf's log, formatted in C and handed to Python (va_list cannot cross cffi) ---- */
extern "Python" void vk_on_libbpf_log(int level, const char *msg);
void vk_capture_libbpf_log(void);
"""

SOURCE = r"""
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <linux/bpf.h>
#include <linux/btf.h>

static void vk_on_libbpf_log(int level, const char *msg);

static int vk_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
    char *msg = NULL;
    if (vasprintf(&msg, fmt, args) < 0)
        return 0;
    vk_on_libbpf_log((int)level, msg);
    free(msg);
    return 0;
}

static void vk_capture_libbpf_log(void)
{
    libbpf_set_print(vk_print);
}

static __u32 vk_link_info_u32(const struct bpf_link_info *info, int word)
{
    const __u32 *u = (const __u32 *)&info->raw_tracepoint;
    return u[word];
}
"""


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source("datapath._libbpf", SOURCE, libraries=["bpf"])
    return ffi


ffibuilder = make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
