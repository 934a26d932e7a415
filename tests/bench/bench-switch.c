/* SPDX-License-Identifier: MIT */
/* Benchmark (not a test) of the bottom of the task runtime: the context switch
 * next to glibc's swapcontext measured in the same run, and the stack allocator
 * at a million stacks.  Prints "figure: NAME VALUE UNIT" lines; never fails on
 * speed.
 *
 *   bench-switch [-n SWITCHES] [-s STACKS]     (defaults: 2000000, 1000000)
 *
 * Exit status is non-zero only when something did not work (a stack could not be
 * allocated), not when it was slow. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "runtime/ctx.h"
#include "runtime/stack.h"

static long n_switches = 2000000;
static long n_stacks = 1000000;

static double now(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- aiot__ctx ping-pong: the scheduler and one task switch back and forth. */

static aiot__ctx sched_ctx, task_ctx;

static void pong(void *arg)
{
        for (;;)
                aiot__ctx_switch(&task_ctx, &sched_ctx);
}

static double bench_ctx(aiot__stack_pool *pool)
{
        void *lo;
        size_t usable;
        double t0, t1;
        long i, rounds = n_switches / 2;

        if (aiot__stack_get(pool, 0, &lo, &usable) < 0)
                return -1;
        aiot__ctx_make(&task_ctx, lo, usable, pong, NULL);
        aiot__ctx_switch(&sched_ctx, &task_ctx); /* warm up */
        t0 = now();
        for (i = 0; i < rounds; i++)
                aiot__ctx_switch(&sched_ctx, &task_ctx);
        t1 = now();
        /* The task stays parked in pong; its stack goes back without running it
         * again (nothing on it needs unwinding). */
        aiot__stack_put(pool, lo, usable);
        return (t1 - t0) * 1e9 / (double)(2 * rounds);
}

/* ---- glibc swapcontext, the same ping-pong. */

static ucontext_t uc_sched, uc_task;

static void uc_pong(void)
{
        for (;;)
                swapcontext(&uc_task, &uc_sched);
}

static double bench_swapcontext(void)
{
        static char stack[64 * 1024] __attribute__((aligned(16)));
        long i, rounds = n_switches / 8; /* ~20x slower: fewer rounds */
        double t0, t1;

        getcontext(&uc_task);
        uc_task.uc_stack.ss_sp = stack;
        uc_task.uc_stack.ss_size = sizeof(stack);
        uc_task.uc_link = NULL;
        makecontext(&uc_task, uc_pong, 0);
        swapcontext(&uc_sched, &uc_task);
        t0 = now();
        for (i = 0; i < rounds; i++)
                swapcontext(&uc_sched, &uc_task);
        t1 = now();
        return (t1 - t0) * 1e9 / (double)(2 * rounds);
}

/* ---- a million stacks */

static long rss_bytes(void)
{
        long size, resident;
        FILE *f = fopen("/proc/self/statm", "re");

        if (!f)
                return -1;
        if (fscanf(f, "%ld %ld", &size, &resident) != 2)
                resident = -1;
        fclose(f);
        return resident * sysconf(_SC_PAGESIZE);
}

static int maps_lines(void)
{
        FILE *f = fopen("/proc/self/maps", "re");
        int n = 0, c;

        if (!f)
                return -1;
        while ((c = getc(f)) != EOF)
                n += c == '\n';
        fclose(f);
        return n;
}

static int bench_stacks(void)
{
        aiot__stack_pool *pool;
        void **lo = malloc((size_t)n_stacks * sizeof(*lo));
        size_t usable = 0;
        long rss0, rss1, i, got = 0;
        int maps0, maps1, ok;
        double t0, t1, t2, t3;

        if (!lo || aiot__stack_pool_new(&pool, 16 * 1024) < 0)
                return -1;
        /* Touch the array first so its pages do not count as stack RSS. */
        memset(lo, 0, (size_t)n_stacks * sizeof(*lo));
        rss0 = rss_bytes();
        maps0 = maps_lines();
        t0 = now();
        for (i = 0; i < n_stacks; i++) {
                if (aiot__stack_get(pool, 0, &lo[i], &usable) < 0)
                        break;
                /* One page, as a small parked task uses. */
                ((volatile char *)lo[i])[usable - 256] = 1;
                got++;
        }
        t1 = now();
        rss1 = rss_bytes();
        maps1 = maps_lines();
        ok = got == n_stacks;
        printf("figure: stacks_1m_ok %d bool\n", ok);
        printf("figure: stacks_held %ld stacks\n", got);
        printf("figure: stack_guards_light %d bool\n", aiot__stack_light_guards());
        printf("figure: stack_first_get_ns %.0f ns\n", got ? (t1 - t0) * 1e9 / (double)got : 0.0);
        printf("figure: stack_rss_bytes %.0f bytes\n", got ? (double)(rss1 - rss0) / (double)got : 0.0);
        printf("figure: stack_maps_lines %d lines\n", maps1 - maps0);

        for (i = got - 1; i >= 0; i--)
                aiot__stack_put(pool, lo[i], usable);
        /* Pooled reuse: what spawn + join costs on the stack side. */
        t2 = now();
        for (i = 0; i < 1000000; i++) {
                void *p;
                size_t u;

                if (aiot__stack_get(pool, 0, &p, &u) < 0)
                        break;
                aiot__stack_put(pool, p, u);
        }
        t3 = now();
        printf("figure: stack_get_put_ns %.1f ns\n", (t3 - t2) * 1e9 / 1e6);
        aiot__stack_pool_free(pool);
        free(lo);
        return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
        aiot__stack_pool *pool;
        double sw, uc;
        int opt;

        while ((opt = getopt(argc, argv, "n:s:")) != -1) {
                if (opt == 'n')
                        n_switches = atol(optarg);
                else if (opt == 's')
                        n_stacks = atol(optarg);
                else {
                        fprintf(stderr, "usage: %s [-n SWITCHES] [-s STACKS]\n", argv[0]);
                        return 2;
                }
        }
        if (n_switches < 16 || n_stacks < 1) {
                fprintf(stderr, "bench-switch: -n needs at least 16, -s at least 1\n");
                return 2;
        }
        if (aiot__stack_pool_new(&pool, 0) < 0)
                return 1;
        sw = bench_ctx(pool);
        uc = bench_swapcontext();
        aiot__stack_pool_free(pool);
        printf("# context switch implementation: %s\n", aiot__ctx_impl());
        printf("figure: switch_ns %.2f ns\n", sw);
        printf("figure: swapcontext_ns %.2f ns\n", uc);
        printf("figure: swapcontext_over_switch %.1f ratio\n", sw > 0 ? uc / sw : 0.0);
        fflush(stdout);
        return bench_stacks() < 0 ? 1 : 0;
}
