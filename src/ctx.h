/* SPDX-License-Identifier: MIT */
/* The lowest layer of the task runtime: saving one execution context and resuming
 * another.  Internal: never installed.
 *
 * Two implementations behind one interface:
 *  - the default, a hand-written register switch in src/arch/switch-<cpu>.S that
 *    saves only what the calling convention says a callee must preserve (plus the
 *    FP control registers), and makes no system call;
 *  - AIOT_CONTEXT_UCONTEXT (configure --with-context=ucontext): glibc's
 *    makecontext/swapcontext, portable but ~20x slower (swapcontext calls
 *    sigprocmask on every switch).
 *
 * Under AddressSanitizer (__SANITIZE_ADDRESS__) every switch is announced with
 * __sanitizer_start_switch_fiber / __sanitizer_finish_switch_fiber, so ASan knows
 * which stack is live.  Valgrind registration is per stack, see stack.c. */
#ifndef AIOT_CTX_H
#define AIOT_CTX_H

#include <stddef.h>

#ifdef AIOT_CONTEXT_UCONTEXT
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define AIOT_CTX_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AIOT_CTX_ASAN 1
#endif
#endif

typedef void (*aiot__ctx_entry)(void *arg);

typedef struct aiot__ctx {
        /* The saved stack pointer (asm switch); must stay the first member. */
        void *sp;
        /* What aiot__ctx_make() was given, for the first-entry trampolines. */
        aiot__ctx_entry entry;
        void *arg;
#ifdef AIOT_CONTEXT_UCONTEXT
        ucontext_t uc;
#endif
#ifdef AIOT_CTX_ASAN
        /* The stack this context runs on, for ASan.  Zero for a thread's own
         * stack until the first switch back into it tells us its bounds. */
        const void *stack_lo;
        size_t stack_size;
        void *fake_stack;
#endif
} aiot__ctx;

/* Prepares c to run entry(arg) on [stack_lo, stack_lo + size).  The stack must be
 * 16-byte aligned at both ends (page-aligned stacks from stack.c are).  entry must
 * never return: the task layer switches away from a finished task for the last
 * time with aiot__ctx_switch_final(). */
void aiot__ctx_make(aiot__ctx *c, void *stack_lo, size_t size, aiot__ctx_entry entry, void *arg);

/* Saves the current context into from and resumes to.  from may be a
 * zero-initialised ctx standing for the thread's own stack (the scheduler). */
void aiot__ctx_switch(aiot__ctx *from, aiot__ctx *to);

/* The last switch away from a context that will never be resumed (a finished
 * task): releases what ASan keeps for it.  Same as aiot__ctx_switch otherwise. */
void aiot__ctx_switch_final(aiot__ctx *from, aiot__ctx *to);

/* A name for the implementation, for benchmarks and logs: "asm-x86_64",
 * "asm-aarch64" or "ucontext". */
const char *aiot__ctx_impl(void);

#ifndef AIOT_CONTEXT_UCONTEXT
/* The raw switch in src/arch/switch-<cpu>.S: pushes the callee-saved registers
 * and FP control state, stores the stack pointer to *save_sp, loads new_sp, pops,
 * returns.  No system call. */
void aiot__ctx_swap(void **save_sp, void *new_sp);

#ifndef AIOT_CTX_ASAN
/* Without ASan there is nothing to do around the raw switch: make a task switch
 * one call. */
#define aiot__ctx_switch(from, to) aiot__ctx_swap(&(from)->sp, (to)->sp)
#define aiot__ctx_switch_final(from, to) aiot__ctx_swap(&(from)->sp, (to)->sp)
#endif
#endif

#endif
