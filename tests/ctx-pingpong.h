/* SPDX-License-Identifier: MIT */
/* The register-preservation ping-pong of tests/check_ctx.c and
 * tests/ctx-standalone.c (which is cross-built for aarch64 without Check or
 * libev, so this header needs neither).
 *
 * Two contexts ping-pong many times while each keeps many integer and double
 * values live across every switch, and each runs with its own FP rounding mode;
 * any register or FP mode the switch fails to preserve shows up as a mismatch.
 * A test sets up two struct side that name each other as peer and the same
 * home, makes a context running side_main() for each, and switches to one. */
#ifndef AIOT_TESTS_CTX_PINGPONG_H
#define AIOT_TESTS_CTX_PINGPONG_H

#include <fenv.h>
#include <stdlib.h>

#include "runtime/ctx.h"

/* The compiler must not know the value any more, so it has to keep it alive
 * (in a callee-saved register, or spilled) across the switch. */
#define OPAQUE(x) __asm__ volatile("" : "+r"(x))
#if defined(__aarch64__)
#define OPAQUE_F(x) __asm__ volatile("" : "+w"(x)) /* in a v register: d8-d15 must survive */
#elif defined(__x86_64__)
#define OPAQUE_F(x) __asm__ volatile("" : "+x"(x))
#else
#define OPAQUE_F(x) __asm__ volatile("" : "+g"(x))
#endif

/* Every callee-saved register the ABI names, pinned to a known value across the
 * switch (the compiler may otherwise choose to spill what it keeps, leaving some
 * register untested).  rbp / x29 stay out: they may be the frame pointer. */
#if defined(__x86_64__)
#define PINNED_DECL(v)                                                                                      \
        register long p0 __asm__("rbx") = (v) + 1, p1 __asm__("r12") = (v) + 2,                             \
                         p2 __asm__("r13") = (v) + 3;                                                       \
        register long p3 __asm__("r14") = (v) + 4, p4 __asm__("r15") = (v) + 5
#define PINNED_PIN() __asm__ volatile("" : "+r"(p0), "+r"(p1), "+r"(p2), "+r"(p3), "+r"(p4))
#define PINNED_OK(v) (p0 == (v) + 1 && p1 == (v) + 2 && p2 == (v) + 3 && p3 == (v) + 4 && p4 == (v) + 5)
#elif defined(__aarch64__)
#define PINNED_DECL(v)                                                                                      \
        register long p0 __asm__("x19") = (v) + 1, p1 __asm__("x20") = (v) + 2,                             \
                         p2 __asm__("x21") = (v) + 3;                                                       \
        register long p3 __asm__("x22") = (v) + 4, p4 __asm__("x23") = (v) + 5,                             \
                         p5 __asm__("x24") = (v) + 6;                                                       \
        register long p6 __asm__("x25") = (v) + 7, p7 __asm__("x26") = (v) + 8,                             \
                         p8 __asm__("x27") = (v) + 9;                                                       \
        register long p9 __asm__("x28") = (v) + 10;                                                         \
        register double f0 __asm__("d8") = (double)(v) + 0.5, f1 __asm__("d9") = (double)(v) + 1.5;         \
        register double f2 __asm__("d10") = (double)(v) + 2.5, f3 __asm__("d11") = (double)(v) + 3.5;       \
        register double f4 __asm__("d12") = (double)(v) + 4.5, f5 __asm__("d13") = (double)(v) + 5.5;       \
        register double f6 __asm__("d14") = (double)(v) + 6.5, f7 __asm__("d15") = (double)(v) + 7.5
#define PINNED_PIN()                                                                                        \
        do {                                                                                                \
                __asm__ volatile(""                                                                         \
                                 : "+r"(p0), "+r"(p1), "+r"(p2), "+r"(p3), "+r"(p4), "+r"(p5), "+r"(p6));   \
                __asm__ volatile("" : "+r"(p7), "+r"(p8), "+r"(p9), "+w"(f0), "+w"(f1), "+w"(f2));          \
                __asm__ volatile("" : "+w"(f3), "+w"(f4), "+w"(f5), "+w"(f6), "+w"(f7));                    \
        } while (0)
#define PINNED_OK(v)                                                                                        \
        (p0 == (v) + 1 && p1 == (v) + 2 && p2 == (v) + 3 && p3 == (v) + 4 && p4 == (v) + 5 &&               \
         p5 == (v) + 6 && p6 == (v) + 7 && p7 == (v) + 8 && p8 == (v) + 9 && p9 == (v) + 10 &&              \
         f0 == (double)(v) + 0.5 && f1 == (double)(v) + 1.5 && f2 == (double)(v) + 2.5 &&                   \
         f3 == (double)(v) + 3.5 && f4 == (double)(v) + 4.5 && f5 == (double)(v) + 5.5 &&                   \
         f6 == (double)(v) + 6.5 && f7 == (double)(v) + 7.5)
#else
#define PINNED_DECL(v) long p0 = (v)
#define PINNED_PIN() __asm__ volatile("" : "+r"(p0))
#define PINNED_OK(v) (p0 == (v))
#endif

/* One switch with every callee-saved register holding a value of this side. */
__attribute__((noinline)) static int switch_pinned(aiot__ctx *from, aiot__ctx *to, long v)
{
        PINNED_DECL(v);
        PINNED_PIN();
        aiot__ctx_switch(from, to);
        PINNED_PIN();
        return PINNED_OK(v);
}

struct side {
        aiot__ctx ctx;
        struct side *peer;
        aiot__ctx *home; /* where the last one out switches to */
        long rounds;
        long seed;
        long first; /* the sides count from different values: no register may hold the same in both */
        int round_mode;
        long done;
        int bad;
        void *arg_seen;
};

/* How many sides have started: each entry runs once. */
static volatile long pingpong_entered;

/* The entry of both contexts: s->rounds switches to the peer, each checking
 * afterwards that nothing it kept live changed.  s->bad collects what did:
 * 1 integers, 2 doubles, 4 stack slots, 8 the FP rounding mode, 16 a pinned
 * callee-saved register. */
static void side_main(void *arg)
{
        struct side *s = arg;

        s->arg_seen = arg;
        pingpong_entered++;
        fesetround(s->round_mode);
        for (long i = s->first; i < s->first + s->rounds; i++) {
                long a0 = s->seed + i, a1 = s->seed * 3 + i, a2 = s->seed * 5 - i, a3 = s->seed ^ i;
                long a4 = s->seed * 7 + 2 * i, a5 = s->seed - 3 * i, a6 = s->seed * 11, a7 = i * i;
                double d0 = (double)s->seed + i + 0.25, d1 = d0 * 2, d2 = d0 * 3, d3 = d0 * 4;
                double d4 = d0 * 5, d5 = d0 * 6, d6 = d0 * 7, d7 = d0 * 8;
                double e0 = d0 * 9, e1 = d0 * 10, e2 = d0 * 11, e3 = d0 * 12;
                volatile long vl = s->seed * 13 + i;
                volatile double vd = (double)s->seed / 3 + i;

                OPAQUE(a0);
                OPAQUE(a1);
                OPAQUE(a2);
                OPAQUE(a3);
                OPAQUE(a4);
                OPAQUE(a5);
                OPAQUE(a6);
                OPAQUE(a7);
                OPAQUE_F(d0);
                OPAQUE_F(d1);
                OPAQUE_F(d2);
                OPAQUE_F(d3);
                OPAQUE_F(d4);
                OPAQUE_F(d5);
                OPAQUE_F(d6);
                OPAQUE_F(d7);
                OPAQUE_F(e0);
                OPAQUE_F(e1);
                OPAQUE_F(e2);
                OPAQUE_F(e3);

                /* Odd rounds pin every callee-saved register, even rounds test what
                 * the compiler keeps live on its own (registers and stack slots). */
                if (i & 1) {
                        if (!switch_pinned(&s->ctx, &s->peer->ctx, s->seed * 31 + i))
                                s->bad |= 16;
                } else {
                        aiot__ctx_switch(&s->ctx, &s->peer->ctx);
                }

                if (a0 != s->seed + i || a1 != s->seed * 3 + i || a2 != s->seed * 5 - i ||
                    a3 != (s->seed ^ i) || a4 != s->seed * 7 + 2 * i || a5 != s->seed - 3 * i ||
                    a6 != s->seed * 11 || a7 != i * i)
                        s->bad |= 1;
                if (d0 != (double)s->seed + i + 0.25 || d1 != d0 * 2 || d2 != d0 * 3 || d3 != d0 * 4 ||
                    d4 != d0 * 5 || d5 != d0 * 6 || d6 != d0 * 7 || d7 != d0 * 8 || e0 != d0 * 9 ||
                    e1 != d0 * 10 || e2 != d0 * 11 || e3 != d0 * 12)
                        s->bad |= 2;
                if (vl != s->seed * 13 + i || vd != (double)s->seed / 3 + i)
                        s->bad |= 4;
                if (fegetround() != s->round_mode)
                        s->bad |= 8;
                s->done++;
        }
        /* The peer still waits in its last switch: let it finish, the last one
         * out goes home. */
        aiot__ctx_switch_final(&s->ctx, s->peer->done < s->peer->rounds ? &s->peer->ctx : s->home);
        abort();
}

#endif
