/* SPDX-License-Identifier: MIT */
/* The task context switch for aarch64 (AAPCS64).  See src/runtime/ctx.h.
 *
 * aiot__ctx_swap(void **save_sp, void *new_sp) saves what a callee must preserve
 * (x19-x28, the frame pointer x29, the link register x30, the low halves d8-d15
 * of v8-v15, and FPCR, the FP mode register), stores sp to *save_sp, loads new_sp
 * and restores the same layout from there, returning through the restored x30.
 * No system call.
 *
 * Stack layout at a saved sp, lowest address first (struct initial_frame in
 * src/runtime/ctx.c builds the same for a new context):
 *   0 x19 x20 .. 80 x29 88 x30 | 96 d8 .. 152 d15 | 160 fpcr | 168 pad   (176 bytes)
 */

#if defined(__ARM_FEATURE_BTI_DEFAULT) && __ARM_FEATURE_BTI_DEFAULT
#define LANDING_PAD hint #34            /* bti c */
#define GNU_PROPERTY_BTI 1
#else
#define LANDING_PAD
#define GNU_PROPERTY_BTI 0
#endif

        .text

        .globl  aiot__ctx_swap
        .hidden aiot__ctx_swap
        .type   aiot__ctx_swap, %function
        .p2align 4
aiot__ctx_swap:
        .cfi_startproc
        LANDING_PAD
        sub     sp, sp, #176
        stp     x19, x20, [sp, #0]
        stp     x21, x22, [sp, #16]
        stp     x23, x24, [sp, #32]
        stp     x25, x26, [sp, #48]
        stp     x27, x28, [sp, #64]
        stp     x29, x30, [sp, #80]
        stp     d8, d9, [sp, #96]
        stp     d10, d11, [sp, #112]
        stp     d12, d13, [sp, #128]
        stp     d14, d15, [sp, #144]
        mrs     x9, fpcr
        str     x9, [sp, #160]
        mov     x10, sp
        str     x10, [x0]

        mov     sp, x1
        ldp     x19, x20, [sp, #0]
        ldp     x21, x22, [sp, #16]
        ldp     x23, x24, [sp, #32]
        ldp     x25, x26, [sp, #48]
        ldp     x27, x28, [sp, #64]
        ldp     x29, x30, [sp, #80]
        ldp     d8, d9, [sp, #96]
        ldp     d10, d11, [sp, #112]
        ldp     d12, d13, [sp, #128]
        ldp     d14, d15, [sp, #144]
        /* Writing FPCR can be slow on some cores, and it almost never differs. */
        ldr     x10, [sp, #160]
        cmp     x9, x10
        b.eq    1f
        msr     fpcr, x10
1:      add     sp, sp, #176
        ret
        .cfi_endproc
        .size   aiot__ctx_swap, .-aiot__ctx_swap

/* A new context's first return lands here (through x30), with sp 16-byte
 * aligned: call entry(arg) from x20(x19).  The entry never returns. */
        .globl  aiot__ctx_start
        .hidden aiot__ctx_start
        .type   aiot__ctx_start, %function
        .p2align 4
aiot__ctx_start:
        .cfi_startproc
        .cfi_undefined x30
        LANDING_PAD
        mov     x0, x19
        blr     x20
        brk     #1
        .cfi_endproc
        .size   aiot__ctx_start, .-aiot__ctx_start

        .section .note.GNU-stack, "", %progbits

#if GNU_PROPERTY_BTI
/* Branch target identification: every indirect-branch target above has a
 * landing pad. */
        .section .note.gnu.property, "a"
        .p2align 3
        .long   4                       /* name size */
        .long   16                      /* descriptor size */
        .long   5                       /* NT_GNU_PROPERTY_TYPE_0 */
        .asciz  "GNU"
        .long   0xc0000000              /* GNU_PROPERTY_AARCH64_FEATURE_1_AND */
        .long   4
        .long   1                       /* GNU_PROPERTY_AARCH64_FEATURE_1_BTI */
        .p2align 3
#endif
