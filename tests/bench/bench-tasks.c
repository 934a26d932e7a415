/* SPDX-License-Identifier: MIT */
/* Benchmark (not a test) of the task runtime through its public API.  Prints
 * "figure: NAME VALUE UNIT" lines and never fails on speed:
 *
 *   swapcontext_ns         glibc swapcontext ping-pong, one switch (the yardstick)
 *   switch_ns              one task-to-task switch: two tasks ping-pong via aiot_yield
 *   spawn_join_ns          aiot_spawn + aiot_join of a task that returns at once
 *   cancel_and_wait_ns     aiot_cancel_and_wait of a task parked on an event, cold:
 *                          10 000 parked targets cancelled one after the other
 *   cancel_and_wait_hot_ns the same with one target, parked and cancelled again and
 *                          again (its task and stack stay in the caches)
 *   timer_arm_cancel_ns    arming + disarming one runtime timer (a deadline scope)
 *                          with 1 000 000 others armed
 *   parked_task_rss_bytes  RSS growth per task with 1 000 000 tasks parked on an event
 *   spawn_live_1k_ns       spawn_join_ns with 1000 other tasks parked on an event;
 *   spawn_live_100k_ns     with 100 000; with 1 000 000 (levels above -p are
 *   spawn_live_1m_ns       skipped).  A spawn should cost the same at any level.
 *   sleep_wakeup_ns        aiot_sleep to wake-up, on the virtual clock, 1000 sleepers
 *
 * Every time figure NAME_ns is followed by NAME_ratio, the figure divided by
 * swapcontext_ns of the same run, so that runs on different machines compare.
 *
 *   bench-tasks [-n ITERATIONS] [-p PARKED] [-t TIMERS]
 *
 * Exit status is non-zero only when something did not work. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <aiotools/scope.h>
#include <aiotools/task.h>

static long n_iter = 2000000;
static long n_parked = 1000000;
static long n_timers = 1000000;
/* The yardstick every time figure is divided by; measured first. */
static double swapcontext_ns;

static double now(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Prints NAME VALUE UNIT and, for a time NAME_ns, also NAME_ratio against
 * swapcontext_ns (three digits: the goals are fractions like 1/16). */
static void figure(const char *name, double v, const char *unit)
{
        size_t len = strlen(name);

        printf("figure: %s %.1f %s\n", name, v, unit);
        if (swapcontext_ns > 0 && strcmp(unit, "ns") == 0 && len > 3 && strcmp(name + len - 3, "_ns") == 0)
                printf("figure: %.*s_ratio %.3f x\n", (int)(len - 3), name, v / swapcontext_ns);
        fflush(stdout);
}

static void fail(const char *what, int r)
{
        fprintf(stderr, "bench-tasks: %s: %s\n", what, strerror(-r));
        exit(1);
}

/* ---------------------------------------------------------------- swapcontext */

static ucontext_t uc_main, uc_task;

static void uc_pong(void)
{
        for (;;)
                swapcontext(&uc_task, &uc_main);
}

static void bench_swapcontext(void)
{
        static char stack[64 * 1024];
        long rounds = n_iter / 4;
        double t0, ns;

        getcontext(&uc_task);
        uc_task.uc_stack.ss_sp = stack;
        uc_task.uc_stack.ss_size = sizeof(stack);
        makecontext(&uc_task, uc_pong, 0);
        swapcontext(&uc_main, &uc_task);
        t0 = now();
        for (long i = 0; i < rounds; i++)
                swapcontext(&uc_main, &uc_task);
        ns = (now() - t0) * 1e9 / (double)(2 * rounds);
        figure("swapcontext_ns", ns, "ns");
        swapcontext_ns = ns;
}

/* ---------------------------------------------------------------- tasks */

static int yielder(void *arg)
{
        long n = *(long *)arg;

        for (long i = 0; i < n; i++)
                aiot_yield();
        return 0;
}

static int noop(void *arg)
{
        return 0;
}

static int wait_event(void *arg)
{
        return aiot_event_wait(arg);
}

static aiot_scope *scope_open(void)
{
        aiot_scope *s;
        int r = aiot_scope_open(&s, NULL);

        if (r < 0)
                fail("aiot_scope_open", r);
        return s;
}

static void bench_switch(void)
{
        aiot_scope *s = scope_open();
        long n = n_iter / 2;
        double t0;

        aiot_spawn(s, yielder, &n, NULL);
        aiot_spawn(s, yielder, &n, NULL);
        t0 = now();
        aiot_scope_close(s);
        /* Each yield is one switch to the other task (and every POLL_EVERY-th
         * through the scheduler, which polls libev: included on purpose). */
        figure("switch_ns", (now() - t0) * 1e9 / (double)(2 * n), "ns");
}

/* Nanoseconds per aiot_spawn + aiot_join of a task that returns at once. */
static double spawn_join_loop(long n)
{
        aiot_scope *s = scope_open();
        double t0 = now(), ns;

        for (long i = 0; i < n; i++) {
                aiot_task *t;
                int r = aiot_spawn(s, noop, NULL, &t);

                if (r < 0)
                        fail("aiot_spawn", r);
                aiot_join(t, NULL);
        }
        ns = (now() - t0) * 1e9 / (double)n;
        aiot_scope_close(s);
        return ns;
}

static void bench_spawn_join(void)
{
        figure("spawn_join_ns", spawn_join_loop(n_iter), "ns");
}

static void bench_cancel_and_wait(void)
{
        enum { BATCH = 10000 };
        static aiot_task *ts[BATCH];
        aiot_event *ev;
        double total = 0;
        long done = 0;

        aiot_event_new(&ev);
        while (done < n_iter / 2) {
                aiot_scope *s = scope_open();
                double t0;

                for (int i = 0; i < BATCH; i++) {
                        int r = aiot_spawn(s, wait_event, ev, &ts[i]);

                        if (r < 0)
                                fail("aiot_spawn", r);
                }
                aiot_yield(); /* every task runs and parks */
                t0 = now();
                for (int i = 0; i < BATCH; i++)
                        aiot_cancel_and_wait(ts[i]);
                total += now() - t0;
                done += BATCH;
                aiot_scope_close(s);
        }
        aiot_event_free(ev);
        figure("cancel_and_wait_ns", total * 1e9 / (double)done, "ns");
}

/* What one now() costs, to take it out of figures timed one operation at a time. */
static double clock_cost(void)
{
        enum { N = 100000 };
        double t0 = now();

        for (int i = 0; i < N; i++)
                (void)now();
        return (now() - t0) / N;
}

/* One target at a time: spawned, parked (not timed), then cancelled and waited
 * for (timed).  The same task memory and stack come back each round, so this is
 * the operation's own cost with nothing to fetch from memory. */
static void bench_cancel_and_wait_hot(void)
{
        aiot_scope *s = scope_open();
        long rounds = n_iter / 2;
        double total = 0, overhead = clock_cost();
        aiot_event *ev;

        aiot_event_new(&ev);
        for (long i = 0; i < rounds; i++) {
                aiot_task *t;
                double t0;
                int r = aiot_spawn(s, wait_event, ev, &t);

                if (r < 0)
                        fail("aiot_spawn", r);
                aiot_yield(); /* the target runs and parks */
                t0 = now();
                aiot_cancel_and_wait(t);
                total += now() - t0 - overhead;
        }
        aiot_scope_close(s);
        aiot_event_free(ev);
        figure("cancel_and_wait_hot_ns", total * 1e9 / (double)rounds, "ns");
}

static uint64_t rng = 88172645463325252ull;

static uint64_t xorshift(void)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return rng;
}

static void bench_timers(void)
{
        aiot_deadline *ds = malloc((size_t)n_timers * sizeof(*ds));
        aiot_deadline one;
        long rounds = n_iter / 2;
        double t0;

        if (!ds)
                fail("malloc", -ENOMEM);
        /* A million armed deadlines, far away and in random order. */
        for (long i = 0; i < n_timers; i++)
                aiot_deadline_begin(&ds[i], 1e6 + (double)(xorshift() % 1000000));
        t0 = now();
        for (long i = 0; i < rounds; i++) {
                aiot_deadline_begin(&one, 1e6 + (double)(xorshift() % 1000000));
                aiot_deadline_end(&one);
        }
        figure("timer_arm_cancel_ns", (now() - t0) * 1e9 / (double)rounds, "ns");
        for (long i = n_timers - 1; i >= 0; i--)
                aiot_deadline_end(&ds[i]);
        free(ds);
}

static long rss_bytes(void)
{
        long pages = 0, rss = 0;
        FILE *f = fopen("/proc/self/statm", "re");

        if (f) {
                if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
                        rss = 0;
                fclose(f);
        }
        return rss * sysconf(_SC_PAGESIZE);
}

static void bench_parked(void)
{
        aiot_scope *s = scope_open();
        aiot_event *ev;
        long before, after;
        double t0;

        aiot_event_new(&ev);
        before = rss_bytes();
        t0 = now();
        for (long i = 0; i < n_parked; i++) {
                int r = aiot_spawn(s, wait_event, ev, NULL);

                if (r < 0) {
                        fprintf(stderr, "bench-tasks: spawn %ld of %ld parked tasks failed\n", i, n_parked);
                        fail("aiot_spawn", r);
                }
        }
        aiot_yield();
        after = rss_bytes();
        figure("parked_tasks", (double)n_parked, "tasks");
        figure("parked_spawn_park_ns", (now() - t0) * 1e9 / (double)n_parked, "ns");
        figure("parked_task_rss_bytes", (double)(after - before) / (double)n_parked, "bytes");
        t0 = now();
        aiot_event_set(ev);
        aiot_scope_close(s);
        figure("parked_wake_end_ns", (now() - t0) * 1e9 / (double)n_parked, "ns");
        aiot_event_free(ev);
}

/* spawn_join_ns again with many other tasks live (parked on an event), at each
 * level up to -p.  Runs after bench_parked, so the parked tasks' stacks come from
 * the pool; what is measured is whether a spawn slows down with live tasks. */
static void bench_spawn_live(void)
{
        static const struct {
                long n;
                const char *name;
        } levels[] = {
                {1000, "spawn_live_1k_ns"},
                {100000, "spawn_live_100k_ns"},
                {1000000, "spawn_live_1m_ns"},
        };
        aiot_scope *s = scope_open();
        long live = 0, rounds = n_iter / 2;
        aiot_event *ev;

        aiot_event_new(&ev);
        for (size_t k = 0; k < sizeof(levels) / sizeof(levels[0]) && levels[k].n <= n_parked; k++) {
                for (; live < levels[k].n; live++) {
                        int r = aiot_spawn(s, wait_event, ev, NULL);

                        if (r < 0)
                                fail("aiot_spawn", r);
                }
                aiot_yield(); /* the new ones run and park */
                figure(levels[k].name, spawn_join_loop(rounds), "ns");
        }
        aiot_event_set(ev);
        aiot_scope_close(s);
        aiot_event_free(ev);
}

static int sleeper(void *arg)
{
        long n = *(long *)arg;

        for (long i = 0; i < n; i++)
                aiot_sleep(1e-6 * (double)(1 + (xorshift() & 7)));
        return 0;
}

static int sleep_main(void *arg)
{
        aiot_scope *s = scope_open();
        long per = n_iter / 1000 / 2;
        double t0;

        if (per < 1)
                per = 1;
        for (int i = 0; i < 1000; i++)
                aiot_spawn(s, sleeper, &per, NULL);
        t0 = now();
        aiot_scope_close(s);
        figure("sleep_wakeup_ns", (now() - t0) * 1e9 / (double)(per * 1000), "ns");
        return 0;
}

static int bench_main(void *arg)
{
        bench_switch();
        bench_spawn_join();
        bench_cancel_and_wait();
        bench_cancel_and_wait_hot();
        bench_timers();
        bench_parked();
        bench_spawn_live();
        return 0;
}

int main(int argc, char **argv)
{
        struct aiot_loop_opts vo = { .size = sizeof(vo), .virtual_clock = 1 };
        aiot_loop *l;
        int c, r;

        while ((c = getopt(argc, argv, "n:p:t:")) != -1) {
                switch (c) {
                case 'n':
                        n_iter = atol(optarg);
                        break;
                case 'p':
                        n_parked = atol(optarg);
                        break;
                case 't':
                        n_timers = atol(optarg);
                        break;
                default:
                        fprintf(stderr, "usage: bench-tasks [-n ITERATIONS] [-p PARKED] [-t TIMERS]\n");
                        return 2;
                }
        }
        if (n_iter < 1000 || n_parked < 1 || n_timers < 1) {
                fprintf(stderr, "bench-tasks: -n must be >= 1000, -p and -t >= 1\n");
                return 2;
        }
        bench_swapcontext();
        r = aiot_loop_new(&l, NULL);
        if (r < 0)
                fail("aiot_loop_new", r);
        r = aiot_loop_run(l, bench_main, NULL);
        if (r < 0)
                fail("run", r);
        aiot_loop_free(l);
        r = aiot_loop_new(&l, &vo);
        if (r < 0)
                fail("aiot_loop_new", r);
        aiot_loop_run(l, sleep_main, NULL);
        aiot_loop_free(l);
        return 0;
}
