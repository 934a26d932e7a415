/* SPDX-License-Identifier: MIT */
/* Task stacks: chunked mmap, guard regions that do not split mappings, a free
 * list for reuse, released stacks whose pages went back to the kernel, and the
 * overflow reporter.  See src/runtime/stack.h.
 *
 * A stack is in one of three states besides handed out.  Warm: on the free
 * list, its pages kept (the list's links live in the header at the stack's top,
 * a page the last task touched anyway).  Released: its pages given back with
 * MADV_DONTNEED, header included, so it costs no memory; its index waits in its
 * chunk's array of released slots (kept with the chunk's malloc'd record, since
 * nothing of the stack may be touched), and the guard below it stays as it was.
 * Never used: the rest of a chunk, handed out by bumping.  Get takes warm first,
 * then released, then a new slot.  A chunk whose used slots are all released
 * is unmapped: MADV_DONTNEED leaves the page tables (the guards are entries in
 * them, so the kernel cannot reclaim them as empty), 4 KiB per 2 MiB of stacks,
 * and only an unmap gives those back too.
 *
 * No step of getting or putting a stack looks at other stacks or mappings, so a
 * spawn costs the same with a million live tasks as with none; only the fault
 * handler walks every region, to tell a guard hit from any other SIGSEGV. */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "macro.h"
#include "stack.h"

#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define AIOT_HAVE_VALGRIND 1
#endif
#endif
#ifndef AIOT_HAVE_VALGRIND
#define VALGRIND_STACK_REGISTER(lo, hi) 0u
#define VALGRIND_STACK_DEREGISTER(id) ((void)(id))
#define VALGRIND_MAKE_MEM_UNDEFINED(p, n) ((void)(p), (void)(n))
#endif

#if defined(__SANITIZE_ADDRESS__)
#define AIOT_STACK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AIOT_STACK_ASAN 1
#endif
#endif
#ifdef AIOT_STACK_ASAN
#include <sanitizer/asan_interface.h>
#endif

/* Linux 6.13+: a range that faults on access without being a mapping of its own. */
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

#define DEFAULT_STACK_SIZE (256u * 1024u)
/* Bigger than a page so that a frame of a few KiB cannot step over it. */
#define GUARD_SIZE (16u * 1024u)
/* Target mapping size; the stacks per chunk are clamped to [MIN, MAX]. */
#define CHUNK_BYTES (16u * 1024u * 1024u)
#define CHUNK_MIN_STACKS 16u
#define CHUNK_MAX_STACKS 256u

/* Lives at the top of each stack (above the usable part), so it shares the page
 * the task touches first and costs no extra memory. */
struct stack_hdr {
        struct stack_hdr *next; /* free list */
        struct region *region;  /* a stack of its own (odd size): its region */
        struct chunk *chunk;    /* a stack of a chunk: that chunk */
        unsigned vg_id;         /* valgrind's stack id while handed out */
};
#define HDR_SIZE 64u
_Static_assert(sizeof(struct stack_hdr) <= HDR_SIZE, "header fits");
_Static_assert(CHUNK_MAX_STACKS <= 65536, "a slot index fits a chunk's released[]");

/* A mapping holding guarded stacks, as the fault handler sees it: slot i spans
 * [base + i * slot, + slot) and starts with its guard.  Regions are never freed,
 * only deactivated (len 0) and reused, so the handler can walk the list without a
 * lock while another thread adds or drops a region.
 *
 * Adding and dropping must not depend on how many regions exist (a million
 * parked tasks hold some 16 000 chunks): a dropped region goes on a free list of
 * its own, which the next add pops.  Only the fault handler walks every region,
 * and it runs once per process at most. */
struct region {
        struct region *_Atomic next; /* every region, walked by the handler */
        struct region *next_free;    /* dropped ones, under regions_lock */
        _Atomic uintptr_t base;
        _Atomic size_t len;
        _Atomic size_t slot;
};

static struct region *_Atomic regions;
static struct region *free_regions;
static pthread_mutex_t regions_lock = PTHREAD_MUTEX_INITIALIZER;

struct chunk {
        struct chunk *next, *prev;         /* every chunk of the pool */
        struct chunk *rel_next, *rel_prev; /* those with released slots */
        char *base;
        size_t len;
        size_t n_used; /* slots handed out at least once (bump allocation) */
        struct region *region;
        size_t n_released;
        uint16_t released[]; /* slot indices, n_per_chunk of room */
};

struct aiot__stack_pool {
        size_t usable; /* per stack, what get reports */
        size_t slot;   /* guard + stack + header */
        size_t n_per_chunk;
        struct chunk *chunks; /* the head is the one being bumped */
        struct chunk *rel_chunks; /* chunks with released slots */
        struct stack_hdr *free;
        size_t n_free;     /* on the free list */
        size_t n_free_low; /* the list's shortest since the last trim */
        size_t n_released;
        size_t outstanding;
};

const char *(*aiot__stack_overflow_namer)(void);

static size_t page_size;
static int light_guards = -1;
static struct sigaction old_segv, old_bus;
static int handler_installed;
static pthread_mutex_t setup_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int altstack_done;

static size_t round_up(size_t n, size_t to)
{
        return (n + to - 1) / to * to;
}

static struct region *region_add(uintptr_t base, size_t len, size_t slot)
{
        struct region *r;

        pthread_mutex_lock(&regions_lock);
        r = free_regions;
        if (r) {
                free_regions = r->next_free;
                r->next_free = NULL;
        } else {
                r = calloc(1, sizeof(*r));
                if (!r) {
                        pthread_mutex_unlock(&regions_lock);
                        return NULL;
                }
                atomic_store(&r->next, atomic_load(&regions));
                atomic_store(&regions, r);
        }
        atomic_store(&r->base, base);
        atomic_store(&r->slot, slot);
        atomic_store(&r->len, len); /* last: publishes the entry */
        pthread_mutex_unlock(&regions_lock);
        return r;
}

static void region_drop(struct region *r)
{
        pthread_mutex_lock(&regions_lock);
        atomic_store(&r->len, 0);
        r->next_free = free_regions;
        free_regions = r;
        pthread_mutex_unlock(&regions_lock);
}

/* Async-signal-safe: atomics only. */
static int in_guard(uintptr_t a)
{
        for (struct region *r = atomic_load(&regions); r; r = atomic_load(&r->next)) {
                uintptr_t base = atomic_load(&r->base);
                size_t len = atomic_load(&r->len), slot = atomic_load(&r->slot);

                if (len && slot && a >= base && a - base < len && (a - base) % slot < GUARD_SIZE)
                        return 1;
        }
        return 0;
}

/* Async-signal-safe.  Never returns. */
static void report_overflow(uintptr_t a)
{
        static const char pre[] = "stack overflow in task ";
        char buf[512];
        const char *name = aiot__stack_overflow_namer ? aiot__stack_overflow_namer() : NULL;
        size_t n = 0, nl;

        if (!name)
                name = "?";
        nl = strnlen(name, 256);
        memcpy(buf, pre, sizeof(pre) - 1);
        n += sizeof(pre) - 1;
        memcpy(buf + n, name, nl);
        n += nl;
        memcpy(buf + n, " (fault at ", 11);
        n += 11;
        n += aiot__fmt_hex(buf + n, a);
        memcpy(buf + n, ")\n", 2);
        n += 2;
        (void)!write(STDERR_FILENO, buf, n);
        abort();
}

/* Only a fault raised by an access (si_code > 0) has a meaningful si_addr; for a
 * signal sent with kill, raise or sigqueue (si_code <= 0) that field overlays the
 * sender's pid and uid, which may well look like a guard address. */
static int is_stack_overflow(const siginfo_t *si)
{
        return si->si_code > 0 && in_guard((uintptr_t)si->si_addr);
}

static int has_handler(const struct sigaction *sa)
{
        if (sa->sa_flags & SA_SIGINFO)
                return sa->sa_sigaction != NULL;
        return sa->sa_handler != SIG_DFL && sa->sa_handler != SIG_IGN && sa->sa_handler != SIG_ERR;
}

/* Ends the process by sig as if no handler had been installed: with the default
 * disposition back, the same signal (same siginfo, so a core dump records the
 * original cause) is queued again to this thread.  It is blocked while the
 * handler runs and is delivered as soon as the handler returns, with the
 * interrupted context restored, before a faulting access would even re-run. */
static void die_by_default(int sig, siginfo_t *si)
{
        struct sigaction dfl;

        memset(&dfl, 0, sizeof(dfl));
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        sigaction(sig, &dfl, NULL);
#ifdef SYS_rt_tgsigqueueinfo
        if (syscall(SYS_rt_tgsigqueueinfo, getpid(), (pid_t)syscall(SYS_gettid), sig, si) == 0)
                return;
#else
        (void)si;
#endif
        raise(sig);
}

static void on_fault(int sig, siginfo_t *si, void *uc)
{
        struct sigaction *old = sig == SIGBUS ? &old_bus : &old_segv;

        if (is_stack_overflow(si))
                report_overflow((uintptr_t)si->si_addr);
        /* Not ours: whoever handled the signal before us (ASan, say) gets it. */
        if (has_handler(old)) {
                if (old->sa_flags & SA_SIGINFO)
                        old->sa_sigaction(sig, si, uc);
                else
                        old->sa_handler(sig);
                return;
        }
        /* An ignored signal that was sent stays ignored; a real fault cannot be
         * ignored (the kernel would have forced the default). */
        if (old->sa_handler == SIG_IGN && !(old->sa_flags & SA_SIGINFO) && si->si_code <= 0)
                return;
        die_by_default(sig, si);
}

static int altstack_ensure(void)
{
        stack_t ss;
        size_t size = 64 * 1024;
        long min = sysconf(_SC_MINSIGSTKSZ);
        void *p;

        if (altstack_done)
                return 0;
        if (sigaltstack(NULL, &ss) < 0)
                return -errno;
        if (!(ss.ss_flags & SS_DISABLE)) {
                altstack_done = 1;
                return 0;
        }
        if (min > 0 && (size_t)min * 4 > size)
                size = round_up((size_t)min * 4, page_size);
        /* Kept for the thread's lifetime: the handler may run at any moment. */
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
                return -errno;
        ss = (stack_t){.ss_sp = p, .ss_size = size, .ss_flags = 0};
        if (sigaltstack(&ss, NULL) < 0) {
                int r = -errno;
                munmap(p, size);
                return r;
        }
        altstack_done = 1;
        return 0;
}

/* The handler goes in only where nobody else handles the signal; under ASan,
 * whose own SEGV handler would report a guard hit as an unknown crash, it goes in
 * first and passes foreign faults on. */
static void handler_install(int sig, struct sigaction *old)
{
        struct sigaction sa;

        if (sigaction(sig, NULL, old) < 0)
                return;
#ifndef AIOT_STACK_ASAN
        if ((old->sa_flags & SA_SIGINFO) || old->sa_handler != SIG_DFL)
                return;
#endif
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(sig, &sa, NULL);
}

static void probe_light_guards(void)
{
        const char *env = getenv("AIOTOOLS_STACK_GUARD");
        void *p;

        light_guards = 0;
        if (env && strcmp(env, "mprotect") == 0)
                return;
        p = mmap(NULL, 2 * page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
        if (p == MAP_FAILED)
                return;
        if (madvise(p, page_size, MADV_GUARD_INSTALL) == 0)
                light_guards = 1;
        munmap(p, 2 * page_size);
}

static int global_setup(void)
{
        pthread_mutex_lock(&setup_lock);
        if (!page_size)
                page_size = (size_t)sysconf(_SC_PAGESIZE);
        if (light_guards < 0)
                probe_light_guards();
        if (!handler_installed) {
                handler_install(SIGSEGV, &old_segv);
                handler_install(SIGBUS, &old_bus);
                handler_installed = 1;
        }
        pthread_mutex_unlock(&setup_lock);
        return altstack_ensure();
}

int aiot__stack_light_guards(void)
{
        return light_guards > 0;
}

/* Makes the slot's first GUARD_SIZE bytes fault on access. */
static int guard_install(char *slot)
{
        if (light_guards > 0)
                return madvise(slot, GUARD_SIZE, MADV_GUARD_INSTALL) < 0 ? -errno : 0;
        return mprotect(slot, GUARD_SIZE, PROT_NONE) < 0 ? -errno : 0;
}

int aiot__stack_pool_new(aiot__stack_pool **ret, size_t stack_size)
{
        aiot__stack_pool *p;
        size_t n;
        int r;

        aiot__return_if(!ret, -EINVAL);
        aiot__return_if(stack_size > ((size_t)1 << 40), -EINVAL);
        r = global_setup();
        if (r < 0)
                return r;
        if (stack_size == 0)
                stack_size = DEFAULT_STACK_SIZE;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->slot = GUARD_SIZE + round_up(stack_size + HDR_SIZE, page_size);
        p->usable = p->slot - GUARD_SIZE - HDR_SIZE;
        n = CHUNK_BYTES / p->slot;
        p->n_per_chunk = n < CHUNK_MIN_STACKS   ? CHUNK_MIN_STACKS
                         : n > CHUNK_MAX_STACKS ? CHUNK_MAX_STACKS
                                                : n;
        *ret = p;
        return 0;
}

void aiot__stack_pool_free(aiot__stack_pool *p)
{
        struct chunk *c, *next;

        if (!p)
                return;
        assert(p->outstanding == 0);
        for (c = p->chunks; c; c = next) {
                next = c->next;
                region_drop(c->region);
                munmap(c->base, c->len);
                free(c);
        }
        free(p);
}

size_t aiot__stack_pool_size(const aiot__stack_pool *p)
{
        return p->usable;
}

static int chunk_add(aiot__stack_pool *p)
{
        struct chunk *c = calloc(1, sizeof(*c) + p->n_per_chunk * sizeof(c->released[0]));
        void *base;

        if (!c)
                return -ENOMEM;
        c->len = p->slot * p->n_per_chunk;
        /* NORESERVE: untouched stack pages are neither resident nor committed. */
        base = mmap(NULL, c->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                    0);
        if (base == MAP_FAILED) {
                free(c);
                return -ENOMEM;
        }
        c->base = base;
        c->region = region_add((uintptr_t)base, c->len, p->slot);
        if (!c->region) {
                munmap(base, c->len);
                free(c);
                return -ENOMEM;
        }
        c->next = p->chunks;
        if (c->next)
                c->next->prev = c;
        p->chunks = c;
        return 0;
}

static void rel_link(aiot__stack_pool *p, struct chunk *c)
{
        c->rel_prev = NULL;
        c->rel_next = p->rel_chunks;
        if (c->rel_next)
                c->rel_next->rel_prev = c;
        p->rel_chunks = c;
}

static void rel_unlink(aiot__stack_pool *p, struct chunk *c)
{
        if (c->rel_prev)
                c->rel_prev->rel_next = c->rel_next;
        else
                p->rel_chunks = c->rel_next;
        if (c->rel_next)
                c->rel_next->rel_prev = c->rel_prev;
}

/* Unmaps a chunk none of whose stacks is warm or handed out. */
static void chunk_drop(aiot__stack_pool *p, struct chunk *c)
{
        if (c->n_released)
                rel_unlink(p, c);
        p->n_released -= c->n_released;
        if (c->prev)
                c->prev->next = c->next;
        else
                p->chunks = c->next;
        if (c->next)
                c->next->prev = c->prev;
        region_drop(c->region);
        munmap(c->base, c->len);
        free(c);
}

/* A released slot for get, from the chunk that released last. */
static struct stack_hdr *released_take(aiot__stack_pool *p)
{
        struct chunk *c = p->rel_chunks;
        char *slot = c->base + (size_t)c->released[--c->n_released] * p->slot;
        struct stack_hdr *h = (struct stack_hdr *)(slot + p->slot - HDR_SIZE);

        if (!c->n_released)
                rel_unlink(p, c);
        p->n_released--;
        /* Its header page is a fresh zero page now. */
        h->chunk = c;
        return h;
}

/* Marks [lo, lo + usable) as a stack for valgrind; the header above it carries
 * valgrind's id until put.  A reused stack still carries valgrind's view of the
 * previous task's frames (popped, so unaddressable, or defined from before):
 * whoever gets it starts from scratch, as with fresh memory.  (ASan's view is
 * reset at put.) */
static void stack_handout(struct stack_hdr *h, void *lo, size_t usable)
{
        h->next = NULL;
        h->region = NULL;
        h->vg_id = VALGRIND_STACK_REGISTER(lo, (char *)lo + usable);
        VALGRIND_MAKE_MEM_UNDEFINED(lo, usable);
}

static int stack_get_odd(aiot__stack_pool *p, size_t size, void **lo, size_t *usable)
{
        size_t len = GUARD_SIZE + round_up(size + HDR_SIZE, page_size);
        struct stack_hdr *h;
        struct region *region;
        char *base;

        base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED)
                return -ENOMEM;
        if (guard_install(base) < 0 || !(region = region_add((uintptr_t)base, len, len))) {
                munmap(base, len);
                return -ENOMEM;
        }
        *lo = base + GUARD_SIZE;
        *usable = len - GUARD_SIZE - HDR_SIZE;
        h = (struct stack_hdr *)(base + len - HDR_SIZE);
        stack_handout(h, *lo, *usable);
        /* Kept in the header, so put finds the region without a search. */
        h->region = region;
        p->outstanding++;
        return 0;
}

int aiot__stack_get(aiot__stack_pool *p, size_t size, void **lo, size_t *usable)
{
        struct stack_hdr *h;
        char *slot;
        int r;

        assert(p && lo && usable);
        if (size > ((size_t)1 << 40))
                return -EINVAL;
        if (size > p->usable)
                return stack_get_odd(p, size, lo, usable);

        h = p->free;
        if (h) {
                p->free = h->next;
                if (--p->n_free < p->n_free_low)
                        p->n_free_low = p->n_free;
                slot = (char *)h + HDR_SIZE - p->slot;
        } else if (p->rel_chunks) {
                h = released_take(p);
                slot = (char *)h + HDR_SIZE - p->slot;
        } else {
                if (!p->chunks || p->chunks->n_used == p->n_per_chunk) {
                        r = chunk_add(p);
                        if (r < 0)
                                return r;
                }
                slot = p->chunks->base + p->chunks->n_used * p->slot;
                r = guard_install(slot);
                if (r < 0)
                        return r == -ENOMEM ? r : -ENOMEM;
                p->chunks->n_used++;
                h = (struct stack_hdr *)(slot + p->slot - HDR_SIZE);
                h->chunk = p->chunks;
        }
        *lo = slot + GUARD_SIZE;
        *usable = p->usable;
        stack_handout(h, *lo, *usable);
        p->outstanding++;
        return 0;
}

/* What put and release share: valgrind and ASan forget the stack; an odd one
 * is unmapped (returns 1), one of the pool's is left to the caller (0). */
static inline __attribute__((always_inline)) int stack_return(aiot__stack_pool *p, void *lo, size_t usable)
{
        struct stack_hdr *h = (struct stack_hdr *)((char *)lo + usable);

        assert(p && lo && p->outstanding > 0);
        VALGRIND_STACK_DEREGISTER(h->vg_id);
#ifdef AIOT_STACK_ASAN
        /* A task that ended by switching away left its frames' redzones poisoned;
         * the next task on this stack must not trip over them. */
        ASAN_UNPOISON_MEMORY_REGION(lo, usable);
#endif
        p->outstanding--;
        if (usable != p->usable) {
                region_drop(h->region);
                munmap((char *)lo - GUARD_SIZE, GUARD_SIZE + usable + HDR_SIZE);
                return 1;
        }
        return 0;
}

static inline void free_push(aiot__stack_pool *p, struct stack_hdr *h)
{
        h->next = p->free;
        p->free = h;
        p->n_free++;
}

void aiot__stack_put(aiot__stack_pool *p, void *lo, size_t usable)
{
        if (stack_return(p, lo, usable))
                return;
        /* The pages stay: reuse is cheap, and trimming gives them back later if
         * nobody needs them.  LIFO, so the most recently used (warm) stack goes
         * out next. */
        free_push(p, (struct stack_hdr *)((char *)lo + usable));
}

/* Gives the pages of the stack with header h back (not its guard) and files
 * it as released in its chunk, which goes when that was its last stack in use. */
static void stack_release_hdr(aiot__stack_pool *p, struct stack_hdr *h)
{
        struct chunk *c = h->chunk;
        char *slot = (char *)h + HDR_SIZE - p->slot;

        if (c->n_released + 1 == c->n_used) {
                p->n_released++;
                c->n_released++;
                chunk_drop(p, c);
                return;
        }
        /* DONTNEED rather than FREE: the memory leaves the process's private
         * bytes at once, which is what a server's operator watches; the cost is
         * a zeroed page at the next touch, paid only by stacks that stood idle
         * for a whole trim interval. */
        (void)madvise(slot + GUARD_SIZE, p->slot - GUARD_SIZE, MADV_DONTNEED);
        if (!c->n_released)
                rel_link(p, c);
        c->released[c->n_released++] = (uint16_t)((size_t)(slot - c->base) / p->slot);
        p->n_released++;
}

void aiot__stack_release(aiot__stack_pool *p, void *lo, size_t usable)
{
        if (stack_return(p, lo, usable))
                return;
        stack_release_hdr(p, (struct stack_hdr *)((char *)lo + usable));
}

size_t aiot__stack_pool_trim(aiot__stack_pool *p, size_t keep, size_t max)
{
        size_t n = p->n_free_low > keep ? p->n_free_low - keep : 0, done = 0;
        struct stack_hdr **link = &p->free;

        if (n > max)
                n = max;
        /* The list never got shorter than n_free_low since the last trim, so
         * that many of its stacks were not needed meanwhile; which ones go makes
         * no difference to memory, and those below the first keep are the ones
         * least likely to be in the caches. */
        for (size_t i = 0; i < keep && *link; i++)
                link = &(*link)->next;
        for (; done < n && *link; done++) {
                struct stack_hdr *h = *link;

                *link = h->next;
                p->n_free--;
                stack_release_hdr(p, h);
        }
        p->n_free_low = p->n_free;
        return done;
}

size_t aiot__stack_pool_idle(const aiot__stack_pool *p)
{
        return p->n_free;
}

size_t aiot__stack_pool_released(const aiot__stack_pool *p)
{
        return p->n_released;
}
