/* SPDX-License-Identifier: MIT */
/* The task context switch for x86-64 (System V ABI).  See src/runtime/ctx.h.
 *
 * aiot__ctx_swap(void **save_sp, void *new_sp) pushes what a callee must preserve
 * (rbp rbx r12-r15, plus the x87 control word and MXCSR, which the ABI makes
 * callee-saved too), stores rsp to *save_sp, loads new_sp and pops the same
 * layout from there.  The caller-saved registers need no saving: the C compiler
 * already treats the call as clobbering them.  No system call, no signal mask:
 * that is what makes it ~20x faster than swapcontext.
 *
 * Stack layout at a saved sp, lowest address first (struct initial_frame in
 * src/runtime/ctx.c builds the same for a new context):
 *   0 mxcsr(4) x87cw(2) pad(2) | 8 r15 | 16 r14 | 24 r13 | 32 r12 | 40 rbx | 48 rbp | 56 return address
 */

#if defined(__CET__) && (__CET__ & 1)
#define LANDING_PAD endbr64
#else
#define LANDING_PAD
#endif

/* How the switch resumes the other context.  A `ret` there always mispredicts:
 * the return stack buffer expects the caller of this call, not the other
 * context's.  An indirect jump is predicted from history instead, which learns
 * the alternation of a ping-pong: ~8 ns instead of ~11 ns per switch on the
 * development machine.  Under indirect branch tracking a jump needs a landing
 * pad at its target, which return addresses lack, so CET builds use `ret`. */
#if defined(__CET__) && (__CET__ & 1)
#define RESUME ret
#else
#define RESUME popq %rcx; jmp *%rcx
#endif

        .text

        .globl  aiot__ctx_swap
        .hidden aiot__ctx_swap
        .type   aiot__ctx_swap, @function
        .p2align 4
aiot__ctx_swap:
        .cfi_startproc
        LANDING_PAD
        pushq   %rbp
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        pushq   $0                      /* the pad: a new context's frame has 0 */
        stmxcsr (%rsp)
        fnstcw  4(%rsp)
        movq    %rsp, (%rdi)
        /* Two loads of the sizes just stored: one 8-byte load spanning both
         * stores could not be forwarded from them and would wait for the
         * stores to retire (~4 ns). */
        movl    (%rsp), %eax
        movzwl  4(%rsp), %ecx

        movq    %rsi, %rsp
        /* Loading MXCSR and the x87 control word costs more than the rest of the
         * switch; they almost never differ between contexts, so compare first. */
        cmpl    (%rsp), %eax
        jne     2f
        cmpw    4(%rsp), %cx
        jne     2f
1:      addq    $8, %rsp
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        popq    %rbp
        RESUME
2:      ldmxcsr (%rsp)
        fldcw   4(%rsp)
        jmp     1b
        .cfi_endproc
        .size   aiot__ctx_swap, .-aiot__ctx_swap

/* aiot__ctx_jump(void *new_sp): resumes the context saved at new_sp and saves
 * nothing, for the last switch away from a finished task (whose own registers
 * and FP modes need not be kept).  MXCSR is loaded without comparing first:
 * comparing needs stmxcsr, which costs ~4.2 ns on the AMD EPYC the benchmarks
 * run on (ldmxcsr ~0.4 ns; back-to-back loops): spawn + join ~41.5 -> ~38.5 ns
 * there.  The x87 control word is still compared (fnstcw is cheap): loading it
 * unconditionally made the end of a task whose successor's stack is cold ~20 %
 * slower (1 000 000 parked tasks woken and ended: fldcw waits for the cold
 * frame, and nothing after it runs meanwhile).  The red zone below the finished
 * task's rsp is free scratch. */
        .globl  aiot__ctx_jump
        .hidden aiot__ctx_jump
        .type   aiot__ctx_jump, @function
        .p2align 4
aiot__ctx_jump:
        .cfi_startproc
        LANDING_PAD
        fnstcw  -8(%rsp)
        movzwl  -8(%rsp), %ecx
        movq    %rdi, %rsp
        ldmxcsr (%rsp)
        cmpw    4(%rsp), %cx
        jne     3f
1:      addq    $8, %rsp
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        popq    %rbp
        RESUME
3:      fldcw   4(%rsp)
        jmp     1b
        .cfi_endproc
        .size   aiot__ctx_jump, .-aiot__ctx_jump

/* A new context's first return lands here, with rsp 16-byte aligned: call
 * entry(arg) from r13(r12).  The entry never returns (the task layer switches
 * away for the last time); ud2 traps if it does. */
        .globl  aiot__ctx_start
        .hidden aiot__ctx_start
        .type   aiot__ctx_start, @function
        .p2align 4
aiot__ctx_start:
        .cfi_startproc
        /* The outermost frame: debuggers and unwinders stop here. */
        .cfi_undefined rip
        LANDING_PAD
        movq    %r12, %rdi
        callq   *%r13
        ud2
        .cfi_endproc
        .size   aiot__ctx_start, .-aiot__ctx_start

        .section .note.GNU-stack, "", @progbits

#if defined(__CET__) && (__CET__ & 1)
/* Indirect branch tracking: the landing pads above make this object IBT-clean.
 * Shadow stacks are not claimed: a context switch returns to an address the
 * current shadow stack never saw. */
        .section .note.gnu.property, "a"
        .p2align 3
        .long   4                       /* name size */
        .long   16                      /* descriptor size */
        .long   5                       /* NT_GNU_PROPERTY_TYPE_0 */
        .asciz  "GNU"
        .long   0xc0000002              /* GNU_PROPERTY_X86_FEATURE_1_AND */
        .long   4
        .long   1                       /* GNU_PROPERTY_X86_FEATURE_1_IBT */
        .p2align 3
#endif
