/* SPDX-License-Identifier: MIT */
/* Context creation and the C side of the switch: the initial frame the assembly
 * switch pops on first entry, the ucontext fallback, and the ASan and TSan annotations.
 * Built without config.h too (tests/ctx-standalone.c for the aarch64 cross run),
 * so it depends on nothing else in the tree. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"

#ifdef AIOT_CTX_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#ifdef AIOT_CTX_TSAN
#include <sanitizer/tsan_interface.h>

/* The fiber of a context that switched away for the last time, destroyed by
 * the context that runs next (a fiber cannot destroy itself while it runs). */
static __thread void *tsan_dead;

/* Macros, not functions: once __tsan_switch_to_fiber() has run, TSan counts
 * every instrumented function exit against the next fiber's shadow call stack,
 * so no instrumented function may return between it and the raw switch (a
 * helper's exit there popped a frame the new fiber never had: the crash the
 * first attempt saw).  The switch synchronises the two fibers (flags 0): they
 * run on one thread, one after the other.  A zeroed ctx (a thread's own stack)
 * learns its fiber here, at each switch away from it. */
#define TSAN_SWITCH(from, to)                                                                      \
        do {                                                                                       \
                (from)->tsan_fiber = __tsan_get_current_fiber();                                   \
                __tsan_switch_to_fiber((to)->tsan_fiber, 0);                                       \
        } while (0)
#define TSAN_SWITCH_FINAL(to)                                                                      \
        do {                                                                                       \
                tsan_dead = __tsan_get_current_fiber();                                            \
                __tsan_switch_to_fiber((to)->tsan_fiber, 0);                                       \
        } while (0)
#define TSAN_REAP()                                                                                \
        do {                                                                                       \
                if (tsan_dead) {                                                                   \
                        __tsan_destroy_fiber(tsan_dead);                                           \
                        tsan_dead = NULL;                                                          \
                }                                                                                  \
        } while (0)
#endif

#ifdef AIOT_CTX_ASAN
/* The context that switched last: the one a switch lands from.  ASan's finish
 * call reports that stack's bounds; a thread's own stack (a zeroed ctx) has no
 * known bounds until then. */
static __thread aiot__ctx *asan_from;

static void asan_finish(void *fake_stack)
{
        const void *lo;
        size_t size;

        __sanitizer_finish_switch_fiber(fake_stack, &lo, &size);
        if (asan_from && !asan_from->stack_lo) {
                asan_from->stack_lo = lo;
                asan_from->stack_size = size;
        }
}
#endif

/* Every context starts here (through the arch trampoline or makecontext) when
 * there is work to do before the entry function; otherwise the trampoline calls
 * the entry directly. */
__attribute__((unused)) static void ctx_first(void *p)
{
        aiot__ctx *c = p;

#ifdef AIOT_CTX_ASAN
        asan_finish(NULL);
#endif
#ifdef AIOT_CTX_TSAN
        TSAN_REAP();
#endif
        c->entry(c->arg);
        /* The entry must switch away for good; returning has nowhere to go. */
        abort();
}

#ifdef AIOT_CONTEXT_UCONTEXT

/* makecontext passes int arguments only: the ctx pointer travels as two halves. */
static void uc_start(int hi, int lo)
{
        uint64_t v = ((uint64_t)(unsigned)hi << 32) | (unsigned)lo;

        ctx_first((void *)(uintptr_t)v);
}

void aiot__ctx_make(aiot__ctx *c, void *stack_lo, size_t size, aiot__ctx_entry entry, void *arg)
{
        uint64_t v = (uintptr_t)c;

        memset(c, 0, sizeof(*c));
        c->entry = entry;
        c->arg = arg;
#ifdef AIOT_CTX_ASAN
        c->stack_lo = stack_lo;
        c->stack_size = size;
#endif
#ifdef AIOT_CTX_TSAN
        c->tsan_fiber = __tsan_create_fiber(0);
#endif
        /* getcontext only fills uc_mcontext/sigmask for makecontext to start from;
         * it cannot fail on Linux. */
        getcontext(&c->uc);
        c->uc.uc_stack.ss_sp = stack_lo;
        c->uc.uc_stack.ss_size = size;
        c->uc.uc_link = NULL;
        makecontext(&c->uc, (void (*)(void))uc_start, 2, (int)(unsigned)(v >> 32), (int)(unsigned)v);
}

static inline __attribute__((always_inline)) void raw_switch(aiot__ctx *from, aiot__ctx *to)
{
        swapcontext(&from->uc, &to->uc);
}

const char *aiot__ctx_impl(void)
{
        return "ucontext";
}

#else /* the assembly switch */

/* In src/runtime/arch/switch-<cpu>.S: moves the entry's argument into place and calls the
 * entry, both taken from callee-saved registers of the initial frame. */
void aiot__ctx_start(void);

#if defined(__x86_64__)
/* The frame aiot__ctx_swap pops, lowest address first. */
struct initial_frame {
        uint32_t mxcsr;
        uint16_t x87cw;
        uint16_t pad;
        uint64_t r15, r14, r13, r12, rbx, rbp;
        uint64_t ret;
};

/* Every field is written once (no memset first): this runs at every spawn. */
static void fill_frame(struct initial_frame *f, aiot__ctx_entry entry, void *arg)
{
        /* A new context starts with the creator's FP modes (rounding, masks). */
        __asm__ volatile("stmxcsr %0" : "=m"(f->mxcsr));
        __asm__ volatile("fnstcw %0" : "=m"(f->x87cw));
        f->pad = 0;
        f->r15 = f->r14 = f->rbx = f->rbp = 0;
        f->r13 = (uintptr_t)entry;
        f->r12 = (uintptr_t)arg;
        f->ret = (uintptr_t)aiot__ctx_start;
}

const char *aiot__ctx_impl(void)
{
        return "asm-x86_64";
}
#elif defined(__aarch64__)
struct initial_frame {
        uint64_t x19, x20, x21, x22, x23, x24, x25, x26, x27, x28, x29, x30;
        uint64_t d8, d9, d10, d11, d12, d13, d14, d15;
        uint64_t fpcr, pad;
};

static void fill_frame(struct initial_frame *f, aiot__ctx_entry entry, void *arg)
{
        uint64_t fpcr;

        memset(f, 0, sizeof(*f));
        __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
        f->fpcr = fpcr;
        f->x19 = (uintptr_t)arg;
        f->x20 = (uintptr_t)entry;
        f->x30 = (uintptr_t)aiot__ctx_start;
}

const char *aiot__ctx_impl(void)
{
        return "asm-aarch64";
}
#else
#error "no assembly context switch for this CPU: configure --with-context=ucontext"
#endif

_Static_assert(sizeof(struct initial_frame) % 16 == 0, "the initial frame keeps the stack 16-byte aligned");

void aiot__ctx_make(aiot__ctx *c, void *stack_lo, size_t size, aiot__ctx_entry entry, void *arg)
{
        uintptr_t top = ((uintptr_t)stack_lo + size) & ~(uintptr_t)15;
        struct initial_frame *f = (struct initial_frame *)(top - sizeof(*f));

#ifdef AIOT_CTX_HOOKED
        memset(c, 0, sizeof(*c));
        c->entry = entry;
        c->arg = arg;
#ifdef AIOT_CTX_ASAN
        c->stack_lo = stack_lo;
        c->stack_size = size;
#endif
#ifdef AIOT_CTX_TSAN
        c->tsan_fiber = __tsan_create_fiber(0);
#endif
        fill_frame(f, ctx_first, c);
#else
        /* The initial frame carries entry and arg: the trampoline calls the entry
         * straight from it, and c->entry / c->arg are never read. */
        fill_frame(f, entry, arg);
#endif
        c->sp = f;
}

static inline __attribute__((always_inline)) void raw_switch(aiot__ctx *from, aiot__ctx *to)
{
        aiot__ctx_swap(&from->sp, to->sp);
}

#endif

#if defined(AIOT_CONTEXT_UCONTEXT) || defined(AIOT_CTX_HOOKED)
/* Parenthesised names: ctx.h may define these as macros for the plain asm build. */
void(aiot__ctx_switch)(aiot__ctx *from, aiot__ctx *to)
{
#if defined(AIOT_CTX_TSAN)
        TSAN_SWITCH(from, to);
        raw_switch(from, to);
        TSAN_REAP();
#elif defined(AIOT_CTX_ASAN)
        asan_from = from;
        __sanitizer_start_switch_fiber(&from->fake_stack, to->stack_lo, to->stack_size);
        raw_switch(from, to);
        asan_finish(from->fake_stack);
#else
        raw_switch(from, to);
#endif
}

void(aiot__ctx_switch_final)(aiot__ctx *from, aiot__ctx *to)
{
#ifdef AIOT_CTX_ASAN
        asan_from = from;
        /* NULL: this context's fake stack frames are dead, let ASan drop them. */
        __sanitizer_start_switch_fiber(NULL, to->stack_lo, to->stack_size);
#endif
#ifdef AIOT_CTX_TSAN
        TSAN_SWITCH_FINAL(to);
#endif
        raw_switch(from, to);
        abort();
}
#else
/* Out-of-line versions of the macros in ctx.h, for callers that need a function. */
void(aiot__ctx_switch)(aiot__ctx *from, aiot__ctx *to)
{
        raw_switch(from, to);
}

void(aiot__ctx_switch_final)(aiot__ctx *from, aiot__ctx *to)
{
        raw_switch(from, to);
}
#endif
