/* SPDX-License-Identifier: MIT */
/* ctx + stack: the context switch keeps registers and FP state, stacks are
 * pooled, guarded and cheap enough for 100 000 at once, and an overflow is
 * reported by name before the process aborts. */
#include <errno.h>
#include <fenv.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctx.h"
#include "stack.h"
#include "testutil.h"

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

/* The compiler must forget the value, so it has to keep it alive across the
 * switch (in a callee-saved register, or spilled to the stack). */
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

static aiot__ctx main_ctx;

/* ---- ping-pong between two contexts */

#define ROUNDS 10000

struct side {
        aiot__ctx ctx;
        struct side *peer;
        long seed;
        long first; /* the sides count from different values: no register may hold the same in both */
        int round_mode;
        long done;
        int bad;
        void *arg_seen;
};

static void side_main(void *arg)
{
        struct side *s = arg;

        s->arg_seen = arg;
        fesetround(s->round_mode);
        for (long i = s->first; i < s->first + ROUNDS; i++) {
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
        /* The peer still waits in its last switch; the last one out goes home. */
        aiot__ctx_switch_final(&s->ctx, s->peer->done < ROUNDS ? &s->peer->ctx : &main_ctx);
        abort();
}

START_TEST(test_pingpong_preserves_state)
{
        static struct side a = {.seed = 1000003, .round_mode = FE_UPWARD};
        static struct side b = {.seed = 7777777, .first = 5000000, .round_mode = FE_DOWNWARD};
        aiot__stack_pool *pool;
        void *sa, *sb;
        size_t ua, ub;

        ck_assert_int_eq(aiot__stack_pool_new(&pool, 64 * 1024), 0);
        ck_assert_int_eq(aiot__stack_get(pool, 0, &sa, &ua), 0);
        ck_assert_int_eq(aiot__stack_get(pool, 0, &sb, &ub), 0);
        a.peer = &b;
        b.peer = &a;
        aiot__ctx_make(&a.ctx, sa, ua, side_main, &a);
        aiot__ctx_make(&b.ctx, sb, ub, side_main, &b);

        fesetround(FE_TOWARDZERO);
        aiot__ctx_switch(&main_ctx, &a.ctx);
        ck_assert_int_eq(fegetround(), FE_TOWARDZERO);
        fesetround(FE_TONEAREST);

        ck_assert_ptr_eq(a.arg_seen, &a);
        ck_assert_ptr_eq(b.arg_seen, &b);
        ck_assert_int_eq(a.done, ROUNDS);
        ck_assert_int_eq(b.done, ROUNDS);
        ck_assert_msg(a.bad == 0 && b.bad == 0, "state lost across switches: a %d b %d (impl %s)", a.bad,
                      b.bad, aiot__ctx_impl());
        aiot__stack_put(pool, sa, ua);
        aiot__stack_put(pool, sb, ub);
        aiot__stack_pool_free(pool);
}
END_TEST

/* ---- many short-lived contexts on reused stacks (what a task runtime does) */

struct shortlived {
        aiot__ctx ctx;
        int id;
        int ran;
        char *scratch;
};

static void short_main(void *arg)
{
        struct shortlived *t = arg;
        char buf[512]; /* a real frame with ASan redzones on the reused stack */

        memset(buf, t->id & 0xff, sizeof(buf));
        t->scratch = buf;
        aiot__ctx_switch(&t->ctx, &main_ctx); /* park once */
        t->ran = buf[t->id % sizeof(buf)] == (char)(t->id & 0xff) ? 1 : -1;
        aiot__ctx_switch_final(&t->ctx, &main_ctx);
        abort();
}

START_TEST(test_short_contexts_reuse_stacks)
{
        aiot__stack_pool *pool;
        void *first = NULL;

        ck_assert_int_eq(aiot__stack_pool_new(&pool, 0), 0);
        for (int i = 0; i < 2000; i++) {
                struct shortlived t = {.id = i};
                void *lo;
                size_t usable;

                ck_assert_int_eq(aiot__stack_get(pool, 0, &lo, &usable), 0);
                if (i == 0)
                        first = lo;
                /* One stack in flight at a time: the pool hands the same one back. */
                ck_assert_ptr_eq(lo, first);
                aiot__ctx_make(&t.ctx, lo, usable, short_main, &t);
                aiot__ctx_switch(&main_ctx, &t.ctx);
                ck_assert_int_eq(t.ran, 0);
                ck_assert(t.scratch >= (char *)lo && t.scratch < (char *)lo + usable);
                aiot__ctx_switch(&main_ctx, &t.ctx);
                ck_assert_int_eq(t.ran, 1);
                aiot__stack_put(pool, lo, usable);
        }
        aiot__stack_pool_free(pool);
}
END_TEST

/* ---- the pool */

static int cmp_ptr(const void *a, const void *b)
{
        uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
        return x < y ? -1 : x > y;
}

START_TEST(test_pool_reuse_and_distinct)
{
        enum { N = 1000 };
        static void *lo[N];
        aiot__stack_pool *pool;
        size_t usable, u;
        void *p, *q;

        ck_assert_int_eq(aiot__stack_pool_new(&pool, 10000), 0);
        /* Rounded up to whole pages, less nothing the caller asked for. */
        ck_assert_uint_ge(aiot__stack_pool_size(pool), 10000);

        ck_assert_int_eq(aiot__stack_get(pool, 0, &p, &usable), 0);
        ck_assert_uint_ge(usable, 10000);
        ck_assert_uint_eq((uintptr_t)p % 16, 0);
        ck_assert_uint_eq(usable % 16, 0);
        aiot__stack_put(pool, p, usable);
        ck_assert_int_eq(aiot__stack_get(pool, 0, &q, &u), 0);
        ck_assert_ptr_eq(q, p);
        ck_assert_uint_eq(u, usable);
        /* A smaller request is served from the pool too. */
        aiot__stack_put(pool, q, u);
        ck_assert_int_eq(aiot__stack_get(pool, 100, &q, &u), 0);
        ck_assert_ptr_eq(q, p);
        aiot__stack_put(pool, q, u);

        for (int i = 0; i < N; i++) {
                ck_assert_int_eq(aiot__stack_get(pool, 0, &lo[i], &u), 0);
                /* Every byte is usable: bottom and top. */
                ((volatile char *)lo[i])[0] = 1;
                ((volatile char *)lo[i])[u - 1] = 2;
        }
        qsort(lo, N, sizeof(lo[0]), cmp_ptr);
        for (int i = 1; i < N; i++)
                ck_assert_uint_ge((uintptr_t)lo[i] - (uintptr_t)lo[i - 1], u);
        for (int i = 0; i < N; i++)
                aiot__stack_put(pool, lo[i], u);
        aiot__stack_pool_free(pool);
        aiot__stack_pool_free(NULL);
}
END_TEST

START_TEST(test_odd_size)
{
        aiot__stack_pool *pool;
        void *p, *q;
        size_t u, uq;

        ck_assert_int_eq(aiot__stack_pool_new(&pool, 16 * 1024), 0);
        ck_assert_int_eq(aiot__stack_get(pool, 3 * 1024 * 1024 + 5, &p, &u), 0);
        ck_assert_uint_ge(u, 3 * 1024 * 1024 + 5);
        ck_assert_uint_eq((uintptr_t)p % 16, 0);
        memset(p, 0x5a, u); /* the whole range is ours */
        ck_assert_int_eq(aiot__stack_get(pool, 0, &q, &uq), 0);
        ck_assert_uint_lt(uq, u);
        aiot__stack_put(pool, p, u);
        aiot__stack_put(pool, q, uq);
        /* The odd mapping is gone after put, the pooled stack stays. */
        ck_assert_int_eq(aiot__stack_get(pool, 0, &p, &u), 0);
        ck_assert_ptr_eq(p, q);
        aiot__stack_put(pool, p, u);
        aiot__stack_pool_free(pool);
}
END_TEST

static int maps_lines(void)
{
        FILE *f = fopen("/proc/self/maps", "re");
        int n = 0, c;

        ck_assert_ptr_nonnull(f);
        while ((c = getc(f)) != EOF)
                n += c == '\n';
        fclose(f);
        return n;
}

START_TEST(test_100k_stacks_held)
{
        const int n = RUNNING_ON_VALGRIND ? 3000 : 100000;
        void **lo = calloc(n, sizeof(*lo));
        aiot__stack_pool *pool;
        size_t u = 0;
        int before, after;

        ck_assert_ptr_nonnull(lo);
        before = maps_lines();
        ck_assert_int_eq(aiot__stack_pool_new(&pool, 16 * 1024), 0);
        if (!aiot__stack_light_guards()) {
                /* mprotect guards cost a mapping each: 100 000 cannot fit under the
                 * default vm.max_map_count, which is what the fallback documents. */
                fprintf(stderr, "check_ctx: guards are mprotect mappings (kernel < 6.13 or "
                                "AIOTOOLS_STACK_GUARD=mprotect): 100k stacks test skipped\n");
                aiot__stack_pool_free(pool);
                free(lo);
                return;
        }
        for (int i = 0; i < n; i++) {
                ck_assert_int_eq(aiot__stack_get(pool, 0, &lo[i], &u), 0);
                ((volatile char *)lo[i])[u - 1] = (char)i; /* one page, as a parked task */
        }
        after = maps_lines();
        /* The chunks may merge; in any case far below 65530. */
        ck_assert_int_lt(after - before, n / 64 + 16);
        for (int i = 0; i < n; i++)
                ck_assert_int_eq(((volatile char *)lo[i])[u - 1], (char)i);
        for (int i = n - 1; i >= 0; i--)
                aiot__stack_put(pool, lo[i], u);
        aiot__stack_pool_free(pool);
        free(lo);
}
END_TEST

/* ---- overflow */

static volatile int never = -1;
static volatile uintptr_t not_a_guard = 16; /* an address nothing maps */

__attribute__((noinline)) static int recurse(int depth)
{
        volatile char buf[200];

        buf[0] = (char)depth;
        if (depth == never)
                return 0;
        return recurse(depth + 1) + buf[0];
}

static void overflow_main(void *arg)
{
        (void)arg;
        recurse(0);
        abort(); /* not reached: the guard stops the recursion */
}

static const char *namer(void)
{
        return "recurser";
}

enum { MODE_POOLED, MODE_ODD, MODE_NOT_GUARD };

/* In a child with stderr on a pipe: overflow a task stack (or fault elsewhere);
 * returns the wait status and what the child wrote to stderr. */
static int run_child(int mode, const char *guard_env, char *out, size_t outsz)
{
        int pfd[2], status;
        size_t len = 0;
        ssize_t r;
        pid_t pid;

        ck_assert_int_eq(pipe(pfd), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                struct rlimit nocore = {0, 0};
                static aiot__ctx task;
                aiot__stack_pool *pool;
                void *lo, *filler[3];
                size_t u, fu;

                setrlimit(RLIMIT_CORE, &nocore);
                dup2(pfd[1], STDERR_FILENO);
                close(pfd[0]);
                if (guard_env)
                        setenv("AIOTOOLS_STACK_GUARD", guard_env, 1);
                if (aiot__stack_pool_new(&pool, 64 * 1024) < 0)
                        _exit(90);
                aiot__stack_overflow_namer = namer;
                /* Not the first slot of a chunk: guards between stacks work too. */
                for (int i = 0; i < 3; i++)
                        if (aiot__stack_get(pool, 0, &filler[i], &fu) < 0)
                                _exit(91);
                if (aiot__stack_get(pool, mode == MODE_ODD ? 1024 * 1024 : 0, &lo, &u) < 0)
                        _exit(92);
                if (mode == MODE_NOT_GUARD)
                        *(volatile int *)not_a_guard = 1;
                aiot__ctx_make(&task, lo, u, overflow_main, NULL);
                aiot__ctx_switch(&main_ctx, &task);
                _exit(93);
        }
        close(pfd[1]);
        while (len < outsz - 1 && (r = read(pfd[0], out + len, outsz - 1 - len)) != 0) {
                if (r < 0 && errno == EINTR)
                        continue;
                ck_assert_int_gt(r, 0);
                len += (size_t)r;
        }
        out[len] = '\0';
        close(pfd[0]);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        return status;
}

static void assert_overflow_report(int mode, const char *guard_env)
{
        char out[4096];
        int status = run_child(mode, guard_env, out, sizeof(out));

        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "child status %#x, stderr: %s",
                      status, out);
        ck_assert_msg(strstr(out, "stack overflow in task recurser (fault at 0x") != NULL, "stderr: %s",
                      out);
}

START_TEST(test_overflow_reported)
{
        assert_overflow_report(MODE_POOLED, NULL);
}
END_TEST

START_TEST(test_overflow_reported_odd_size)
{
        assert_overflow_report(MODE_ODD, NULL);
}
END_TEST

START_TEST(test_overflow_reported_mprotect_guards)
{
        assert_overflow_report(MODE_POOLED, "mprotect");
        assert_overflow_report(MODE_ODD, "mprotect");
}
END_TEST

START_TEST(test_other_faults_untouched)
{
        char out[4096];
        int status = run_child(MODE_NOT_GUARD, NULL, out, sizeof(out));

        ck_assert_ptr_null(strstr(out, "stack overflow"));
#ifdef __SANITIZE_ADDRESS__
        /* The fault was passed on to ASan's handler, which reports and exits. */
        ck_assert_msg(strstr(out, "AddressSanitizer: SEGV") != NULL, "child status %#x, stderr: %s", status,
                      out);
#else
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, "child status %#x", status);
#endif
}
END_TEST

static Suite *ctx_suite(void)
{
        Suite *s = suite_create("ctx");
        TCase *tc = tcase_create("switch");
        TCase *ts = tcase_create("stack");

        tcase_add_test(tc, test_pingpong_preserves_state);
        tcase_add_test(tc, test_short_contexts_reuse_stacks);
        suite_add_tcase(s, tc);

        tcase_set_timeout(ts, 120);
        tcase_add_test(ts, test_pool_reuse_and_distinct);
        tcase_add_test(ts, test_odd_size);
        tcase_add_test(ts, test_100k_stacks_held);
        tcase_add_test(ts, test_overflow_reported);
        tcase_add_test(ts, test_overflow_reported_odd_size);
        tcase_add_test(ts, test_overflow_reported_mprotect_guards);
        tcase_add_test(ts, test_other_faults_untouched);
        suite_add_tcase(s, ts);
        return s;
}

int main(void)
{
        return testutil_run(ctx_suite());
}
