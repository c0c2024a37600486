/* vk_tables.c: the native executor's tables, with the kernel's BPF map semantics.
 *
 * The same VNF fastpath.c runs in the kernel (tables are BPF maps) and natively through cffi
 * (tables are these). Differential tests demand identical results, so every verb follows the
 * kernel (6.x) map code: the same flag checks in the same order, the same errnos, the same
 * capacity rules, the same get_next_key rules (LPM tries even iterate in the kernel's order).
 *
 * Types: hash and LRU hash (chained buckets over a preallocated node pool with a free list;
 * the LRU keeps an exact recency list where the kernel's is approximate), array, per-CPU
 * array (ncpus blocks of max_entries values), LPM trie (the kernel's path-compressed binary
 * trie with intermediate nodes, over a pool of 2 * max_entries nodes).
 *
 * Values never move while their entry exists: the fast path keeps the pointer lookup returns
 * and writes through it (__sync_fetch_and_add(&val->packets, 1)). Updates of an existing
 * entry therefore copy into it in place (the kernel swaps in a fresh element instead; a
 * pointer held across a control-plane update sees the new value here, the old one there).
 * Values sit at 8-byte aligned addresses so 64-bit atomics on them are valid.
 *
 * Concurrency: none. One worker thread per table instance; the control-plane verbs must not
 * run while a worker uses the table. The global state is vk_cpu, which is per thread, and
 * the arena set by vk_tables_set_arena (set once, before any table is made).
 *
 * Storage comes from libc, or from an arena: a region the caller hands over (the AF_XDP
 * runtime gives a shared mapping, so a second process that maps it at the same address sees
 * the same tables, pointers included). Arena memory is handed out once, by a bump pointer,
 * and must start zeroed; vk_table_free gives nothing back to it.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <vnfkit/native_tables.h>

__thread uint32_t vk_cpu;

#define ROUND8(n) (((size_t)(n) + 7) & ~(size_t)7)
#define ROUND64(n) (((size_t)(n) + 63) & ~(size_t)63)

static struct vk_arena *vk__arena;  /* NULL: libc */

void vk_tables_set_arena(struct vk_arena *arena)
{
    vk__arena = arena;
}

/* calloc from the current source. Arena blocks are cache-line aligned, like malloc's big ones. */
static void *vk__calloc(size_t n, size_t size)
{
    struct vk_arena *a = vk__arena;
    if (!a)
        return calloc(n, size);
    if (size && n > SIZE_MAX / size)
        return NULL;
    size_t bytes = ROUND64(n * size), at = ROUND64(a->used);
    if (at > a->size || bytes > a->size - at)
        return NULL;
    a->used = at + bytes;
    return a->base + at;
}

/* Free what vk__calloc gave, unless it came from an arena (which is released whole). */
static void vk__free(int in_arena, void *p)
{
    if (!in_arena)
        free(p);
}

/* The kernel's own limits, so a table the kernel would refuse is refused here too. */
#define VK_HASH_KEY_MAX 512u      /* MAX_BPF_STACK */
#define VK_LPM_DATA_MAX 256u      /* LPM_DATA_SIZE_MAX */
#define VK_VALUE_MAX (1u << 20)   /* keeps every size computation far from overflow */
#define VK_LPM_IM 1u              /* an intermediate node: structure only, not an entry */

/* Every impl starts with this. native_tables.py reads ncpus from here (the header has no
 * getter) to check the ncpus it is given, so keep these two fields first and in this order. */
struct vk_impl {
    uint32_t type;
    uint32_t ncpus;
    uint32_t in_arena;  /* storage from an arena: nothing to free */
};

/* ---- hash and LRU hash ------------------------------------------------------------------ */

struct hnode {
    struct hnode *next;                 /* bucket chain; free list when unused */
    struct hnode *lru_prev, *lru_next;  /* recency list (LRU only): head = most recent */
    uint64_t hash;
    /* key bytes follow; the value starts at vk_hash.voff */
};

struct vk_hash {
    struct vk_impl h;
    uint32_t key_size, value_size, max_entries, count;
    int is_lru;
    size_t voff, node_size;
    uint64_t mask;                      /* buckets - 1 (a power of two) */
    struct hnode **buckets;
    unsigned char *pool;
    struct hnode *free;
    struct hnode lru;                   /* sentinel: lru.lru_next newest, lru.lru_prev oldest */
};

static inline unsigned char *hkey(struct hnode *n)
{
    return (unsigned char *)(n + 1);
}

static inline void *hval(const struct vk_hash *h, struct hnode *n)
{
    return (unsigned char *)n + h->voff;
}

static uint64_t hash_bytes(const unsigned char *p, size_t n)
{
    uint64_t x = 0xcbf29ce484222325ULL;  /* FNV-1a ... */
    for (size_t i = 0; i < n; i++) {
        x ^= p[i];
        x *= 0x100000001b3ULL;
    }
    /* ... whose low bits (the bucket index) are weak for short keys: finish with murmur3's
     * 64-bit avalanche so every key byte reaches every bit. */
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* The node holding key, and the link pointing at it (for unlinking), or NULL. */
static struct hnode *hash_find(struct vk_hash *h, const void *key, uint64_t hv, struct hnode ***link)
{
    struct hnode **pp = &h->buckets[hv & h->mask];
    for (struct hnode *n = *pp; n; pp = &n->next, n = n->next) {
        if (n->hash == hv && memcmp(hkey(n), key, h->key_size) == 0) {
            if (link)
                *link = pp;
            return n;
        }
    }
    return NULL;
}

static void lru_unlink(struct hnode *n)
{
    n->lru_prev->lru_next = n->lru_next;
    n->lru_next->lru_prev = n->lru_prev;
}

static void lru_push_front(struct vk_hash *h, struct hnode *n)
{
    n->lru_prev = &h->lru;
    n->lru_next = h->lru.lru_next;
    h->lru.lru_next->lru_prev = n;
    h->lru.lru_next = n;
}

static void lru_touch(struct vk_hash *h, struct hnode *n)
{
    if (h->is_lru && h->lru.lru_next != n) {
        lru_unlink(n);
        lru_push_front(h, n);
    }
}

/* Unlink n from its bucket and the recency list and return it to the free list. */
static void hash_release(struct vk_hash *h, struct hnode *n, struct hnode **link)
{
    if (!link) {
        link = &h->buckets[n->hash & h->mask];
        while (*link != n)
            link = &(*link)->next;
    }
    *link = n->next;
    if (h->is_lru)
        lru_unlink(n);
    n->next = h->free;
    h->free = n;
    h->count--;
}

static void hash_free(struct vk_hash *h)
{
    vk__free(h->h.in_arena, h->buckets);
    vk__free(h->h.in_arena, h->pool);
    vk__free(h->h.in_arena, h);
}

static int hash_init(struct vk_table *t, uint32_t ncpus)
{
    if (t->key_size > VK_HASH_KEY_MAX)
        return -EINVAL;
    struct vk_hash *h = vk__calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->h.in_arena = vk__arena != NULL;
    h->h.type = t->type;
    h->h.ncpus = ncpus;
    h->key_size = t->key_size;
    h->value_size = t->value_size;
    h->max_entries = t->max_entries;
    h->is_lru = t->type == VK_T_LRU_HASH;
    h->voff = ROUND8(sizeof(struct hnode) + t->key_size);
    h->node_size = h->voff + ROUND8(t->value_size);
    uint64_t nb = 1;
    while (nb < t->max_entries)  /* roundup_pow_of_two(max_entries), as the kernel sizes it */
        nb <<= 1;
    h->mask = nb - 1;
    h->lru.lru_next = h->lru.lru_prev = &h->lru;
    if (nb > SIZE_MAX / sizeof(*h->buckets) || t->max_entries > SIZE_MAX / h->node_size)
        goto nomem;
    h->buckets = vk__calloc((size_t)nb, sizeof(*h->buckets));
    h->pool = vk__calloc(t->max_entries, h->node_size);
    if (!h->buckets || !h->pool)
        goto nomem;
    /* Free list in pool order, so the first insert takes the first node. */
    for (uint32_t i = t->max_entries; i-- > 0;) {
        struct hnode *n = (struct hnode *)(h->pool + (size_t)i * h->node_size);
        n->next = h->free;
        h->free = n;
    }
    t->impl = h;
    return 0;
nomem:
    hash_free(h);
    return -ENOMEM;
}

static void *hash_lookup(struct vk_hash *h, const void *key, int touch)
{
    struct hnode *n = hash_find(h, key, hash_bytes(key, h->key_size), NULL);
    if (!n)
        return NULL;
    if (touch)
        lru_touch(h, n);
    return hval(h, n);
}

static int hash_update(struct vk_hash *h, const void *key, const void *value, uint64_t flags)
{
    if (flags > VK_EXIST)  /* unknown flags, or BPF_F_LOCK on a value without a spin lock */
        return -EINVAL;
    uint64_t hv = hash_bytes(key, h->key_size);
    struct hnode *n = hash_find(h, key, hv, NULL);
    /* The flags are checked before capacity, as the kernel does: VK_EXIST of an absent key
     * in a full table is -ENOENT, not -E2BIG. */
    if (n) {
        if (flags == VK_NOEXIST)
            return -EEXIST;
        memcpy(hval(h, n), value, h->value_size);  /* in place: held pointers stay valid */
        lru_touch(h, n);
        return 0;
    }
    if (flags == VK_EXIST)
        return -ENOENT;
    if (!h->free) {
        if (!h->is_lru)
            return -E2BIG;
        hash_release(h, h->lru.lru_prev, NULL);  /* evict the least recently used */
    }
    n = h->free;
    h->free = n->next;
    n->hash = hv;
    memcpy(hkey(n), key, h->key_size);
    memcpy(hval(h, n), value, h->value_size);
    struct hnode **b = &h->buckets[hv & h->mask];
    n->next = *b;
    *b = n;
    if (h->is_lru)
        lru_push_front(h, n);
    h->count++;
    return 0;
}

static int hash_delete(struct vk_hash *h, const void *key)
{
    struct hnode **link;
    struct hnode *n = hash_find(h, key, hash_bytes(key, h->key_size), &link);
    if (!n)
        return -ENOENT;
    hash_release(h, n, link);
    return 0;
}

/* Bucket order. An absent (or NULL) key restarts at the first key, as the kernel does. */
static int hash_next_key(struct vk_hash *h, const void *key, void *next_key)
{
    uint64_t b = 0;
    if (key) {
        struct hnode *n = hash_find(h, key, hash_bytes(key, h->key_size), NULL);
        if (n) {
            if (n->next) {
                memcpy(next_key, hkey(n->next), h->key_size);
                return 0;
            }
            b = (n->hash & h->mask) + 1;
        }
    }
    for (; b <= h->mask; b++) {
        if (h->buckets[b]) {
            memcpy(next_key, hkey(h->buckets[b]), h->key_size);
            return 0;
        }
    }
    return -ENOENT;
}


/* ---- array and per-CPU array ------------------------------------------------------------ */

struct vk_array {
    struct vk_impl h;
    uint32_t value_size, max_entries;
    size_t stride, block;               /* round8(value_size); max_entries * stride */
    unsigned char *base;                /* ncpus blocks for per-CPU arrays, else one */
};

static int array_init(struct vk_table *t, uint32_t ncpus)
{
    if (t->key_size != 4)
        return -EINVAL;
    struct vk_array *a = vk__calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->h.in_arena = vk__arena != NULL;
    a->h.type = t->type;
    a->h.ncpus = ncpus;
    a->value_size = t->value_size;
    a->max_entries = t->max_entries;
    a->stride = ROUND8(t->value_size);
    uint32_t blocks = t->type == VK_T_PERCPU_ARRAY ? ncpus : 1;
    if (t->max_entries > SIZE_MAX / a->stride / blocks) {
        vk__free(a->h.in_arena, a);
        return -ENOMEM;
    }
    a->block = (size_t)t->max_entries * a->stride;
    a->base = vk__calloc(blocks, a->block);  /* arrays start zeroed, like the kernel's */
    if (!a->base) {
        vk__free(a->h.in_arena, a);
        return -ENOMEM;
    }
    t->impl = a;
    return 0;
}

static inline uint32_t array_index(const void *key)
{
    uint32_t i;
    memcpy(&i, key, sizeof(i));  /* the key may be unaligned */
    return i;
}

/* The kernel's order of checks: flags, then bounds, then NOEXIST (every element exists). */
static int array_check_update(const struct vk_array *a, uint32_t index, uint64_t flags)
{
    if (flags > VK_EXIST)
        return -EINVAL;
    if (index >= a->max_entries)
        return -E2BIG;
    if (flags == VK_NOEXIST)
        return -EEXIST;
    return 0;
}

static int array_next_key(const struct vk_array *a, const void *key, void *next_key)
{
    uint32_t i = key ? array_index(key) : UINT32_MAX;
    if (i >= a->max_entries) {
        i = 0;
    } else if (i == a->max_entries - 1) {
        return -ENOENT;
    } else {
        i++;
    }
    memcpy(next_key, &i, sizeof(i));
    return 0;
}

static void array_free(struct vk_array *a)
{
    vk__free(a->h.in_arena, a->base);
    vk__free(a->h.in_arena, a);
}

/* ---- LPM trie --------------------------------------------------------------------------- */
/* Keys are { u32 prefixlen (host order); u8 data[] } with data compared MSB first (network
 * order). The structure is the kernel's lpm_trie.c: each node holds a prefix; a child's
 * prefix extends its parent's; child[b] follows bit b at position parent->prefixlen;
 * intermediate (IM) nodes exist only to fork and always have two children. n entries thus
 * need at most 2n - 1 nodes, so the pool never runs out before -ENOSPC. Nodes store the full
 * data bytes of the key that last wrote them (bits past the prefix included), because the
 * kernel returns exactly those from get_next_key. */

struct lnode {
    struct lnode *child[2];             /* child[0] doubles as the free-list link */
    uint32_t prefixlen;
    uint32_t flags;                     /* VK_LPM_IM */
    /* data bytes follow; the value starts at vk_lpm.voff */
};

struct vk_lpm {
    struct vk_impl h;
    uint32_t data_size, max_prefixlen, value_size, max_entries, n_entries;
    size_t voff, node_size;
    unsigned char *pool;
    struct lnode *free;
    struct lnode *root;
};

/* A path from the root visits strictly growing prefix lengths 0..max_prefixlen. */
#define VK_LPM_MAX_DEPTH (VK_LPM_DATA_MAX * 8 + 1)

static inline unsigned char *ldata(struct lnode *n)
{
    return (unsigned char *)(n + 1);
}

static inline void *lval(const struct vk_lpm *t, struct lnode *n)
{
    return (unsigned char *)n + t->voff;
}

static inline uint32_t lpm_prefixlen(const void *key)
{
    uint32_t p;
    memcpy(&p, key, sizeof(p));
    return p;
}

static inline unsigned extract_bit(const unsigned char *data, uint32_t index)
{
    return (data[index / 8] >> (7 - index % 8)) & 1;
}

/* How many leading bits of node and key agree, up to min(node's, key's prefix length).
 * The first `from` bits are known to agree already (they are the prefix of the node's
 * parent, which the key matched), so the walk down the trie costs O(key bits) in all. */
static uint32_t lpm_match(struct lnode *node, const unsigned char *data, uint32_t prefixlen, uint32_t from)
{
    uint32_t limit = node->prefixlen < prefixlen ? node->prefixlen : prefixlen;
    const unsigned char *nd = ldata(node);
    for (uint32_t i = from / 8, b = i * 8; b < limit; i++, b += 8) {
        unsigned diff = nd[i] ^ data[i];
        if (diff) {
            uint32_t m = b + (uint32_t)__builtin_clz(diff << 24);  /* diff is one byte, != 0 */
            return m < limit ? m : limit;
        }
    }
    return limit;
}

static int lpm_init(struct vk_table *t, uint32_t ncpus)
{
    /* The kernel's key_size bounds. It also insists on BPF_F_NO_PREALLOC; that is a kernel
     * allocation detail, so flags are not checked here. */
    if (t->key_size < 5 || t->key_size > 4 + VK_LPM_DATA_MAX)
        return -EINVAL;
    struct vk_lpm *l = vk__calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->h.in_arena = vk__arena != NULL;
    l->h.type = t->type;
    l->h.ncpus = ncpus;
    l->data_size = t->key_size - 4;
    l->max_prefixlen = l->data_size * 8;
    l->value_size = t->value_size;
    l->max_entries = t->max_entries;
    l->voff = ROUND8(sizeof(struct lnode) + l->data_size);
    l->node_size = l->voff + ROUND8(t->value_size);
    size_t nodes = 2 * (size_t)t->max_entries;
    if (nodes / 2 != t->max_entries || nodes > SIZE_MAX / l->node_size) {
        vk__free(l->h.in_arena, l);
        return -ENOMEM;
    }
    l->pool = vk__calloc(nodes, l->node_size);
    if (!l->pool) {
        vk__free(l->h.in_arena, l);
        return -ENOMEM;
    }
    for (size_t i = nodes; i-- > 0;) {
        struct lnode *n = (struct lnode *)(l->pool + i * l->node_size);
        n->child[0] = l->free;
        l->free = n;
    }
    t->impl = l;
    return 0;
}

static struct lnode *lpm_alloc(struct vk_lpm *l)
{
    struct lnode *n = l->free;  /* never NULL: see the 2n - 1 bound above */
    if (!n)
        abort();  /* a broken invariant: better a crash here than a corrupt trie */
    l->free = n->child[0];
    n->child[0] = n->child[1] = NULL;
    n->flags = 0;
    return n;
}

static void lpm_release(struct vk_lpm *l, struct lnode *n)
{
    n->child[0] = l->free;
    l->free = n;
}

/* The kernel's trie_check_add_elem: a new entry needs !VK_EXIST, then room. */
static int lpm_check_add(struct vk_lpm *l, uint64_t flags)
{
    if (flags == VK_EXIST)
        return -ENOENT;
    if (l->n_entries == l->max_entries)
        return -ENOSPC;
    l->n_entries++;
    return 0;
}

static void lpm_fill(struct vk_lpm *l, struct lnode *n, uint32_t prefixlen, const unsigned char *data,
                     const void *value)
{
    n->prefixlen = prefixlen;
    n->flags = 0;
    memcpy(ldata(n), data, l->data_size);
    memcpy(lval(l, n), value, l->value_size);
}

/* Longest-prefix match: the longest entry whose prefix length is <= the key's and whose
 * bits agree with the key's for that length (trie_lookup_elem). */
static void *lpm_lookup(struct vk_lpm *l, const void *key)
{
    uint32_t plen = lpm_prefixlen(key);
    const unsigned char *data = (const unsigned char *)key + 4;
    if (plen > l->max_prefixlen)
        return NULL;
    struct lnode *found = NULL;
    uint32_t from = 0;
    for (struct lnode *n = l->root; n;) {
        uint32_t m = lpm_match(n, data, plen, from);
        if (m < n->prefixlen)
            break;
        if (!(n->flags & VK_LPM_IM))
            found = n;
        if (n->prefixlen == plen)  /* also stops at max_prefixlen */
            break;
        from = n->prefixlen;
        n = n->child[extract_bit(data, n->prefixlen)];
    }
    return found ? lval(l, found) : NULL;
}

static int lpm_update(struct vk_lpm *l, const void *key, const void *value, uint64_t flags)
{
    if (flags > VK_EXIST)
        return -EINVAL;
    uint32_t plen = lpm_prefixlen(key);
    const unsigned char *data = (const unsigned char *)key + 4;
    if (plen > l->max_prefixlen)
        return -EINVAL;
    struct lnode **slot = &l->root, *node;
    uint32_t m = 0, from = 0;
    while ((node = *slot)) {
        m = lpm_match(node, data, plen, from);
        if (node->prefixlen != m || node->prefixlen == plen || node->prefixlen == l->max_prefixlen)
            break;
        from = node->prefixlen;
        slot = &node->child[extract_bit(data, node->prefixlen)];
    }
    int ret;
    if (!node) {  /* an empty slot: the new entry hangs here */
        if ((ret = lpm_check_add(l, flags)))
            return ret;
        node = lpm_alloc(l);
        lpm_fill(l, node, plen, data, value);
        *slot = node;
        return 0;
    }
    if (node->prefixlen == m) {  /* this very prefix: an entry, or an IM node to promote */
        if (!(node->flags & VK_LPM_IM)) {
            if (flags == VK_NOEXIST)
                return -EEXIST;
        } else if ((ret = lpm_check_add(l, flags))) {
            return ret;
        }
        /* In place, keeping the value's address and the children; the kernel stores the new
         * key's data bytes too, so get_next_key shows them. */
        lpm_fill(l, node, plen, data, value);
        return 0;
    }
    if ((ret = lpm_check_add(l, flags)))
        return ret;
    struct lnode *nn = lpm_alloc(l);
    lpm_fill(l, nn, plen, data, value);
    if (m == plen) {  /* the new prefix covers node: it becomes node's parent */
        nn->child[extract_bit(ldata(node), m)] = node;
        *slot = nn;
        return 0;
    }
    /* node and the new prefix diverge at bit m: fork them under an IM node of length m. */
    struct lnode *im = lpm_alloc(l);
    im->prefixlen = m;
    im->flags = VK_LPM_IM;
    memcpy(ldata(im), ldata(node), l->data_size);
    if (extract_bit(data, m)) {
        im->child[0] = node;
        im->child[1] = nn;
    } else {
        im->child[0] = nn;
        im->child[1] = node;
    }
    *slot = im;
    return 0;
}

/* Exact-prefix delete, restructuring as trie_delete_elem does. */
static int lpm_delete(struct vk_lpm *l, const void *key)
{
    uint32_t plen = lpm_prefixlen(key);
    const unsigned char *data = (const unsigned char *)key + 4;
    if (plen > l->max_prefixlen)
        return -EINVAL;
    struct lnode **trim = &l->root, **trim2 = trim, *parent = NULL, *node;
    uint32_t m = 0, from = 0;
    while ((node = *trim)) {
        m = lpm_match(node, data, plen, from);
        if (node->prefixlen != m || node->prefixlen == plen)
            break;
        parent = node;
        trim2 = trim;
        from = node->prefixlen;
        trim = &node->child[extract_bit(data, node->prefixlen)];
    }
    if (!node || node->prefixlen != plen || node->prefixlen != m || (node->flags & VK_LPM_IM))
        return -ENOENT;
    l->n_entries--;
    if (node->child[0] && node->child[1]) {  /* still needed as a fork */
        node->flags |= VK_LPM_IM;
        return 0;
    }
    if (parent && (parent->flags & VK_LPM_IM) && !node->child[0] && !node->child[1]) {
        /* A leaf under an IM node: the IM node has no reason left to exist either. */
        *trim2 = node == parent->child[0] ? parent->child[1] : parent->child[0];
        lpm_release(l, parent);
        lpm_release(l, node);
        return 0;
    }
    *trim = node->child[0] ? node->child[0] : node->child[1];
    lpm_release(l, node);
    return 0;
}

/* Postorder (children before their parent, child[0] first), exactly the kernel's order;
 * a NULL, absent or over-long key restarts at the first entry. */
static int lpm_next_key(struct vk_lpm *l, const void *key, void *next_key)
{
    struct lnode *stack[VK_LPM_MAX_DEPTH];
    struct lnode *node, *next = NULL, *search_root = l->root;
    const unsigned char *data = key ? (const unsigned char *)key + 4 : NULL;
    uint32_t plen = key ? lpm_prefixlen(key) : 0, m = 0, from = 0;
    int sp = -1;
    if (!key || plen > l->max_prefixlen)
        goto leftmost;
    for (node = l->root; node;) {
        stack[++sp] = node;
        m = lpm_match(node, data, plen, from);
        if (node->prefixlen != m || node->prefixlen == plen)
            break;
        from = node->prefixlen;
        node = node->child[extract_bit(data, node->prefixlen)];
    }
    if (!node || node->prefixlen != m || (node->flags & VK_LPM_IM))
        goto leftmost;
    while (sp > 0) {
        struct lnode *parent = stack[sp - 1];
        if (parent->child[0] == node && parent->child[1]) {
            search_root = parent->child[1];
            goto leftmost;
        }
        if (!(parent->flags & VK_LPM_IM)) {
            next = parent;
            goto copy;
        }
        node = parent;
        sp--;
    }
    return -ENOENT;
leftmost:
    /* The first entry in postorder under search_root: keep descending, left when possible;
     * the last entry passed is it (IM nodes have two children, so this ends at an entry). */
    for (node = search_root; node;) {
        if (node->flags & VK_LPM_IM) {
            node = node->child[0];
        } else {
            next = node;
            node = node->child[0] ? node->child[0] : node->child[1];
        }
    }
    if (!next)
        return -ENOENT;
copy:
    memcpy(next_key, &next->prefixlen, 4);
    memcpy((unsigned char *)next_key + 4, ldata(next), l->data_size);
    return 0;
}

static void lpm_free(struct vk_lpm *l)
{
    vk__free(l->h.in_arena, l->pool);
    vk__free(l->h.in_arena, l);
}

/* ---- the interface ---------------------------------------------------------------------- */

int vk_table_init(struct vk_table *t, uint32_t ncpus)
{
    /* Initialising twice would leak the first storage and orphan held value pointers. */
    if (!t || t->impl || ncpus < 1 || ncpus > VK_MAX_CPUS)
        return -EINVAL;
    if (t->key_size == 0 || t->value_size == 0 || t->value_size > VK_VALUE_MAX || t->max_entries == 0)
        return -EINVAL;
    switch (t->type) {
    case VK_T_HASH:
    case VK_T_LRU_HASH:
        return hash_init(t, ncpus);
    case VK_T_ARRAY:
    case VK_T_PERCPU_ARRAY:
        return array_init(t, ncpus);
    case VK_T_LPM_TRIE:
        return lpm_init(t, ncpus);
    default:
        return -EINVAL;
    }
}

void vk_table_free(struct vk_table *t)
{
    if (!t || !t->impl)
        return;
    switch (t->type) {
    case VK_T_HASH:
    case VK_T_LRU_HASH:
        hash_free(t->impl);
        break;
    case VK_T_ARRAY:
    case VK_T_PERCPU_ARRAY:
        array_free(t->impl);
        break;
    case VK_T_LPM_TRIE:
        lpm_free(t->impl);
        break;
    }
    t->impl = NULL;
}

/* The value of index i in this thread's CPU block, or NULL (out of range, or a vk_cpu the
 * table was not initialised for: a wrong slot must not become a write past the storage). */
static unsigned char *array_slot(struct vk_array *a, const void *key)
{
    uint32_t i = array_index(key);
    if (i >= a->max_entries)
        return NULL;
    size_t off = (size_t)i * a->stride;
    if (a->h.type == VK_T_PERCPU_ARRAY) {
        if (vk_cpu >= a->h.ncpus)
            return NULL;
        off += (size_t)vk_cpu * a->block;
    }
    return a->base + off;
}

void *vk_table_lookup(struct vk_table *t, const void *key)
{
    if (!t || !t->impl)
        return NULL;
    switch (t->type) {
    case VK_T_HASH:
    case VK_T_LRU_HASH:
        return hash_lookup(t->impl, key, 1);  /* the fast path's lookup refreshes LRU recency */
    case VK_T_ARRAY:
    case VK_T_PERCPU_ARRAY:
        return array_slot(t->impl, key);
    case VK_T_LPM_TRIE:
        return lpm_lookup(t->impl, key);
    default:
        return NULL;
    }
}

int vk_table_update(struct vk_table *t, const void *key, const void *value, uint64_t flags)
{
    if (!t || !t->impl)
        return -EINVAL;
    switch (t->type) {
    case VK_T_HASH:
    case VK_T_LRU_HASH:
        return hash_update(t->impl, key, value, flags);
    case VK_T_ARRAY:
    case VK_T_PERCPU_ARRAY: {
        struct vk_array *a = t->impl;
        int ret = array_check_update(a, array_index(key), flags);
        if (ret)
            return ret;
        unsigned char *slot = array_slot(a, key);
        if (!slot)  /* only a vk_cpu >= ncpus gets here */
            return -EINVAL;
        memcpy(slot, value, a->value_size);  /* per-CPU: this CPU's slot only */
        return 0;
    }
    case VK_T_LPM_TRIE:
        return lpm_update(t->impl, key, value, flags);
    default:
        return -EINVAL;
    }
}

int vk_table_delete(struct vk_table *t, const void *key)
{
    if (!t || !t->impl)
        return -EINVAL;
    switch (t->type) {
    case VK_T_HASH:
    case VK_T_LRU_HASH:
        return hash_delete(t->impl, key);
    case VK_T_LPM_TRIE:
        return lpm_delete(t->impl, key);
    default:
        return -EINVAL;  /* array elements cannot be deleted, as in the kernel */
    }
}

int vk_table_sys_lookup(struct vk_table *t, const void *key, void *values)
{
    if (!t || !t->impl)
        return -EINVAL;
    switch (t->type) {
    case VK_T_HASH:
    case VK_T_LRU_HASH:
    case VK_T_LPM_TRIE: {
        /* Like the kernel's *_lookup_elem_sys: reading from the control plane (iterating,
         * dumping) does not make LRU entries recent. */
        void *v = t->type == VK_T_LPM_TRIE ? lpm_lookup(t->impl, key) : hash_lookup(t->impl, key, 0);
        if (!v)
            return -ENOENT;
        memcpy(values, v, t->value_size);
        return 0;
    }
    case VK_T_ARRAY:
    case VK_T_PERCPU_ARRAY: {
        struct vk_array *a = t->impl;
        uint32_t i = array_index(key);
        if (i >= a->max_entries)
            return -ENOENT;
        if (t->type == VK_T_ARRAY) {
            memcpy(values, a->base + (size_t)i * a->stride, a->value_size);
            return 0;
        }
        /* Whole 8-byte slots, padding included, as bpf_percpu_array_copy does. */
        for (uint32_t c = 0; c < a->h.ncpus; c++)
            memcpy((unsigned char *)values + (size_t)c * a->stride,
                   a->base + (size_t)c * a->block + (size_t)i * a->stride, a->stride);
        return 0;
    }
    default:
        return -EINVAL;
    }
}

int vk_table_sys_update(struct vk_table *t, const void *key, const void *values, uint64_t flags)
{
    if (!t || !t->impl)
        return -EINVAL;
    if (t->type != VK_T_PERCPU_ARRAY)
        return vk_table_update(t, key, values, flags);
    struct vk_array *a = t->impl;
    uint32_t i = array_index(key);
    int ret = array_check_update(a, i, flags);
    if (ret)
        return ret;
    for (uint32_t c = 0; c < a->h.ncpus; c++)
        memcpy(a->base + (size_t)c * a->block + (size_t)i * a->stride,
               (const unsigned char *)values + (size_t)c * a->stride, a->stride);
    return 0;
}

int vk_table_next_key(struct vk_table *t, const void *key, void *next_key)
{
    if (!t || !t->impl)
        return -EINVAL;
    switch (t->type) {
    case VK_T_HASH:
    case VK_T_LRU_HASH:
        return hash_next_key(t->impl, key, next_key);
    case VK_T_ARRAY:
    case VK_T_PERCPU_ARRAY:
        return array_next_key(t->impl, key, next_key);
    case VK_T_LPM_TRIE:
        return lpm_next_key(t->impl, key, next_key);
    default:
        return -EINVAL;
    }
}

void *vk_table_array_base(struct vk_table *t)
{
    if (!t || !t->impl || (t->type != VK_T_ARRAY && t->type != VK_T_PERCPU_ARRAY))
        return NULL;
    return ((struct vk_array *)t->impl)->base;
}
