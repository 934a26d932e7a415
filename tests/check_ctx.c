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
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctx-pingpong.h"
#include "runtime/ctx.h"
#include "runtime/stack.h"
#include "testutil.h"

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

static aiot__ctx main_ctx;

/* ---- ping-pong between two contexts */

#define ROUNDS 10000

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
        a.rounds = b.rounds = ROUNDS;
        a.home = b.home = &main_ctx;
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

/* ---- giving memory back */

/* 1 if the page holding a is resident, 0 if not, -1 if nothing maps it. */
static int page_resident(const void *a)
{
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        unsigned char v = 0;

        if (mincore((void *)((uintptr_t)a & ~(uintptr_t)(page - 1)), page, &v) < 0)
                return errno == ENOMEM ? -1 : -2;
        return v & 1;
}

#define N_TRIM 200
#define KEEP 16

/* Trimming releases the free stacks that the free list did not need since the
 * last trim, beyond the keep most recently put: their pages leave memory (a
 * chunk with nothing else in use leaves the address space), the warm ones stay,
 * and released stacks are handed out again, whole and writable. */
START_TEST(test_trim_releases_unneeded_stacks)
{
        void *lo[N_TRIM];
        aiot__stack_pool *pool;
        size_t u = 0, gone = 0;

        ck_assert_int_eq(aiot__stack_pool_new(&pool, 0), 0);
        for (int i = 0; i < N_TRIM; i++) {
                ck_assert_int_eq(aiot__stack_get(pool, 0, &lo[i], &u), 0);
                memset((char *)lo[i] + u - 8192, 0x5a, 8192); /* two pages, as a task */
        }
        for (int i = 0; i < N_TRIM; i++)
                aiot__stack_put(pool, lo[i], u);
        ck_assert_uint_eq(aiot__stack_pool_idle(pool), N_TRIM);
        /* The list was empty at the start of this interval: nothing goes. */
        ck_assert_uint_eq(aiot__stack_pool_trim(pool, KEEP, SIZE_MAX), 0);
        ck_assert_uint_eq(aiot__stack_pool_trim(pool, KEEP, SIZE_MAX), N_TRIM - KEEP);
        ck_assert_uint_eq(aiot__stack_pool_idle(pool), KEEP);
        for (int i = 0; i < N_TRIM; i++) {
                int r = page_resident((char *)lo[i] + u - 1);

                ck_assert_int_ge(r, -1);
                if (i >= N_TRIM - KEEP) /* the last put are the warm ones */
                        ck_assert_int_eq(r, 1);
                else
                        ck_assert_int_le(r, 0);
                gone += r == -1;
        }
        /* 200 stacks fill several chunks; all but the newest went whole. */
        ck_assert_uint_gt(gone, N_TRIM / 2);
        ck_assert_uint_eq(aiot__stack_pool_released(pool), N_TRIM - KEEP - gone);

        /* All of them again: warm, released and new ones, distinct and
         * writable to the top. */
        for (int i = 0; i < N_TRIM; i++) {
                ck_assert_int_eq(aiot__stack_get(pool, 0, &lo[i], &u), 0);
                for (int j = 0; j < i; j++)
                        ck_assert_ptr_ne(lo[i], lo[j]);
                memset((char *)lo[i] + u - 8192, i, 8192);
        }
        ck_assert_uint_eq(aiot__stack_pool_released(pool), 0);
        for (int i = 0; i < N_TRIM; i++)
                ck_assert_int_eq(((unsigned char *)lo[i])[u - 1], (unsigned char)i);
        for (int i = 0; i < N_TRIM; i++)
                aiot__stack_put(pool, lo[i], u);

        /* A list that was drained during the interval keeps what it held ... */
        ck_assert_uint_eq(aiot__stack_pool_trim(pool, KEEP, SIZE_MAX), 0);
        /* ... and an interval in which it was not gives the rest back, at most
         * max a trim. */
        ck_assert_uint_eq(aiot__stack_pool_trim(pool, KEEP, 50), 50);
        ck_assert_uint_eq(aiot__stack_pool_trim(pool, KEEP, SIZE_MAX), N_TRIM - KEEP - 50);
        ck_assert_uint_eq(aiot__stack_pool_idle(pool), KEEP);

        /* One at once, and the pool still frees cleanly with released stacks. */
        ck_assert_int_eq(aiot__stack_get(pool, 0, &lo[0], &u), 0);
        memset((char *)lo[0] + u - 4096, 1, 4096);
        aiot__stack_release(pool, lo[0], u);
        ck_assert_int_le(page_resident((char *)lo[0] + u - 1), 0);
        aiot__stack_pool_free(pool);
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

struct overflow_child {
        int mode;
        const char *guard_env;
};

/* In the child: overflow a task stack (or fault elsewhere). */
static void overflow_child(void *arg)
{
        const struct overflow_child *o = arg;
        static aiot__ctx task;
        aiot__stack_pool *pool;
        void *lo, *filler[3];
        size_t u, fu;

        if (o->guard_env)
                setenv("AIOTOOLS_STACK_GUARD", o->guard_env, 1);
        if (aiot__stack_pool_new(&pool, 64 * 1024) < 0)
                _exit(90);
        aiot__stack_overflow_namer = namer;
        /* Not the first slot of a chunk: guards between stacks work too. */
        for (int i = 0; i < 3; i++)
                if (aiot__stack_get(pool, 0, &filler[i], &fu) < 0)
                        _exit(91);
        if (aiot__stack_get(pool, o->mode == MODE_ODD ? 1024 * 1024 : 0, &lo, &u) < 0)
                _exit(92);
        if (o->mode == MODE_NOT_GUARD)
                *(volatile int *)not_a_guard = 1;
        aiot__ctx_make(&task, lo, u, overflow_main, NULL);
        aiot__ctx_switch(&main_ctx, &task);
        _exit(93);
}

/* Returns the child's wait status and what it wrote to stderr. */
static int run_child(int mode, const char *guard_env, char *out, size_t outsz)
{
        struct overflow_child o = {mode, guard_env};

        return testutil_child_stderr(overflow_child, &o, out, outsz);
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
        tcase_add_test(ts, test_trim_releases_unneeded_stacks);
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
