/* SPDX-License-Identifier: MIT */
/* The context switch alone, with no libev, no Check and no config.h: built with
 * a cross compiler (aarch64-linux-gnu-gcc -static) and run under qemu-user by
 * tests/check-aarch64.sh, and natively as a smoke test.
 *
 * The ping-pong of tests/ctx-pingpong.h, between two contexts that each keep
 * many registers live and run with their own FP rounding mode.  Prints "ok" and
 * exits 0 on success. */
#include <fenv.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/ctx.h"
#include "ctx-pingpong.h"

#define ROUNDS 20000
#define STACK_SIZE (64 * 1024)

static aiot__ctx main_ctx;

int main(void)
{
        static struct side a = {.seed = 1000003, .round_mode = FE_UPWARD};
        static struct side b = {.seed = 7777777, .first = 5000000, .round_mode = FE_TONEAREST};
        void *sa = aligned_alloc(64, STACK_SIZE), *sb = aligned_alloc(64, STACK_SIZE);

        if (!sa || !sb)
                return 2;
        a.peer = &b;
        b.peer = &a;
        a.rounds = b.rounds = ROUNDS;
        a.home = b.home = &main_ctx;
        aiot__ctx_make(&a.ctx, sa, STACK_SIZE, side_main, &a);
        aiot__ctx_make(&b.ctx, sb, STACK_SIZE, side_main, &b);

        fesetround(FE_TOWARDZERO);
        /* a and b take turns, each switching to the other once per round. */
        aiot__ctx_switch(&main_ctx, &a.ctx);
        if (fegetround() != FE_TOWARDZERO) {
                fprintf(stderr, "main: rounding mode not preserved\n");
                return 1;
        }
        fesetround(FE_TONEAREST);
        printf("impl %s: a done %ld bad %d, b done %ld bad %d\n", aiot__ctx_impl(), a.done, a.bad, b.done,
               b.bad);
        if (pingpong_entered != 2 || a.arg_seen != &a || b.arg_seen != &b) {
                fprintf(stderr, "entry did not get its argument\n");
                return 1;
        }
        if (a.bad || b.bad || a.done != ROUNDS || b.done != ROUNDS) {
                fprintf(stderr, "registers or FP state not preserved\n");
                return 1;
        }
        printf("ok\n");
        return 0;
}
