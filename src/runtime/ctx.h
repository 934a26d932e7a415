/* SPDX-License-Identifier: MIT */
/* The lowest layer of the task runtime: saving one execution context and resuming
 * another.  Internal: never installed.
 *
 * Two implementations behind one interface:
 *  - the default, a hand-written register switch in src/runtime/arch/switch-<cpu>.S (on
 *    x86-64 also inlined into its callers, see aiot__ctx_swap_inline) that
 *    saves only what the calling convention says a callee must preserve (plus the
 *    FP control registers), and makes no system call;
 *  - AIOT_CONTEXT_UCONTEXT (configure --with-context=ucontext): glibc's
 *    makecontext/swapcontext, portable but ~20x slower (swapcontext calls
 *    sigprocmask on every switch).
 *
 * Under AddressSanitizer (__SANITIZE_ADDRESS__) every switch is announced with
 * __sanitizer_start_switch_fiber / __sanitizer_finish_switch_fiber, so ASan knows
 * which stack is live.  Under ThreadSanitizer every context is a TSan fiber
 * (__tsan_create_fiber) and every switch names the fiber that runs next, so that
 * TSan keeps one shadow call stack per task instead of seeing one thread's call
 * stack jump between tasks (its function entry/exit records would not balance).
 * Valgrind registration is per stack, see stack.c. */
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

#if defined(__SANITIZE_THREAD__)
#define AIOT_CTX_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define AIOT_CTX_TSAN 1
#endif
#endif

/* A sanitizer must hear of every switch: no inlined raw switch then. */
#if defined(AIOT_CTX_ASAN) || defined(AIOT_CTX_TSAN)
#define AIOT_CTX_HOOKED 1
#endif

typedef void (*aiot__ctx_entry)(void *arg);

typedef struct aiot__ctx {
        /* The saved stack pointer (asm switch); must stay the first member. */
        void *sp;
        /* What aiot__ctx_make() was given, for ctx_first() (ucontext and ASan
         * builds; the plain assembly build keeps both in the initial frame and
         * leaves these unset). */
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
#ifdef AIOT_CTX_TSAN
        /* The TSan fiber this context runs as: made by aiot__ctx_make(), or for
         * a thread's own stack (a zeroed ctx) the current fiber, taken at each
         * switch away from it. */
        void *tsan_fiber;
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
/* The raw switch in src/runtime/arch/switch-<cpu>.S: pushes the callee-saved registers
 * and FP control state, stores the stack pointer to *save_sp, loads new_sp, pops,
 * returns.  No system call. */
void aiot__ctx_swap(void **save_sp, void *new_sp);

#if !defined(AIOT_CTX_HOOKED) && defined(__x86_64__) && !(defined(__CET__) && (__CET__ & 1))
/* The same switch as aiot__ctx_swap, same saved layout, but inline and without a
 * `call`.  Why: a `call` pushes an entry on the CPU's return stack buffer which
 * the switch never pops (it resumes with an indirect jump, predicted from
 * history), so after every switch each `ret` up the task's call chain is
 * predicted one entry off and mispredicts: ~4 ns per aiot_yield().  Here the
 * return address is pushed by hand, the return stack stays balanced, and the
 * other context's `ret`s are predicted whenever the two call chains match (a
 * ping-pong): 7.8 instead of 12.9 ns per aiot_yield() switch on the development
 * machine.  The 128-byte step keeps the pushes off the red zone; the
 * caller-saved registers are declared clobbered, as a call would clobber them.
 * MXCSR and the x87 control word are compared as in the .S file (two loads of
 * the stored sizes, so both forward from the stores).  Contexts saved here are
 * resumed by aiot__ctx_swap and vice versa. */
static inline __attribute__((always_inline)) void aiot__ctx_swap_inline(void **save_sp, void *new_sp)
{
        __asm__ volatile("leaq -128(%%rsp), %%rsp\n\t"
                         "leaq 1f(%%rip), %%rax\n\t"
                         "pushq %%rax\n\t"
                         "pushq %%rbp\n\t"
                         "pushq %%rbx\n\t"
                         "pushq %%r12\n\t"
                         "pushq %%r13\n\t"
                         "pushq %%r14\n\t"
                         "pushq %%r15\n\t"
                         "pushq $0\n\t"
                         "stmxcsr (%%rsp)\n\t"
                         "fnstcw 4(%%rsp)\n\t"
                         "movq %%rsp, (%0)\n\t"
                         "movl (%%rsp), %%eax\n\t"
                         "movzwl 4(%%rsp), %%ecx\n\t"
                         "movq %1, %%rsp\n\t"
                         "cmpl (%%rsp), %%eax\n\t"
                         "jne 3f\n\t"
                         "cmpw 4(%%rsp), %%cx\n\t"
                         "jne 3f\n"
                         "2:\n\t"
                         "addq $8, %%rsp\n\t"
                         "popq %%r15\n\t"
                         "popq %%r14\n\t"
                         "popq %%r13\n\t"
                         "popq %%r12\n\t"
                         "popq %%rbx\n\t"
                         "popq %%rbp\n\t"
                         "popq %%rcx\n\t"
                         "jmp *%%rcx\n"
                         "3:\n\t"
                         "ldmxcsr (%%rsp)\n\t"
                         "fldcw 4(%%rsp)\n\t"
                         "jmp 2b\n"
                         "1:\n\t"
                         "leaq 128(%%rsp), %%rsp"
                         : "+D"(save_sp), "+S"(new_sp)
                         :
                         : "rax", "rcx", "rdx", "r8", "r9", "r10", "r11", "memory", "cc",
                           "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                           "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
#ifdef __AVX512F__
                           "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23",
                           "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31",
                           "k1", "k2", "k3", "k4", "k5", "k6", "k7",
#endif
                           "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)");
}
#define aiot__ctx_switch(from, to) aiot__ctx_swap_inline(&(from)->sp, (to)->sp)
/* The last switch of a task saves nothing (see aiot__ctx_jump in the .S file):
 * it never returns, so there is no `ret` to keep predicted.  Inlining the full
 * switch there made aiot_cancel_and_wait() of a parked task ~45 ns slower
 * (measured; the dead frame it pushed below the red zone of a stack that is
 * reused at once seemed to be the cause); the jump pushes no frame at all. */
void aiot__ctx_jump(void *new_sp);
#define aiot__ctx_switch_final(from, to) ((void)(from), aiot__ctx_jump((to)->sp))
#elif !defined(AIOT_CTX_HOOKED)
/* Without a sanitizer there is nothing to do around the raw switch: make a task switch
 * one call. */
#define aiot__ctx_switch(from, to) aiot__ctx_swap(&(from)->sp, (to)->sp)
#define aiot__ctx_switch_final(from, to) aiot__ctx_swap(&(from)->sp, (to)->sp)
#endif
#endif

#endif
