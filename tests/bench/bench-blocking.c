/* SPDX-License-Identifier: MIT */
/* bench-blocking: the blocking pool beside libuv's uv_queue_work (or, built
 * without libuv, beside a plain pthread + eventfd round trip written here).
 *
 *   tests/bench/bench-blocking [ROUNDS [CALLS]]
 *
 * Prints "figure:" lines, never fails on speed:
 *   blocking_roundtrip_ns   one empty call through aiot_run_blocking, one at a
 *                           time (the median of ROUNDS rounds of CALLS calls)
 *   libuv_roundtrip_ns      the same through uv_queue_work (or
 *                           pthread_roundtrip_ns), rounds alternating with ours
 *   blocking_calls_per_s_tN / libuv_calls_per_s  throughput of empty calls
 *                           with 64 in flight, on N pool threads
 *   tick_late_max_us_idle / _blocking  the worst lateness of a 10 ms timer
 *                           over 1 s, alone and while ten tasks each run 100 ms
 *                           blocking calls back to back
 * and the load average before and after. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <aiotools/blocking.h>
#include <aiotools/scope.h>
#include <aiotools/task.h>
#include <aiotools/timer.h>

#ifdef HAVE_UV
#include <uv.h>
#endif

static long calls_per_round = 20000;

static uint64_t now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void loadavg(const char *when)
{
        char buf[128] = "?";
        FILE *f = fopen("/proc/loadavg", "r");

        if (f) {
                if (!fgets(buf, sizeof(buf), f))
                        strcpy(buf, "?\n");
                fclose(f);
        }
        printf("load %s: %s", when, buf);
}

static int cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;

        return x < y ? -1 : x > y;
}

static int empty_fn(void *arg)
{
        return 0;
}

/* ------------------------------------------------------------ ours */

struct aiot_round {
        long n;
        double ns;
};

static int aiot_round_main(void *arg)
{
        struct aiot_round *r = arg;
        uint64_t t0 = now_ns();

        for (long i = 0; i < r->n; i++)
                if (aiot_run_blocking(empty_fn, NULL, NULL) < 0)
                        return -EIO;
        r->ns = (double)(now_ns() - t0) / (double)r->n;
        return 0;
}

struct tput {
        long left;
        long done;
};

static int tput_task(void *arg)
{
        struct tput *t = arg;

        while (t->left > 0) {
                t->left--;
                if (aiot_run_blocking(empty_fn, NULL, NULL) < 0)
                        return -EIO;
                t->done++;
        }
        return 0;
}

static int tput_main(void *arg)
{
        aiot_scope *s;

        aiot_scope_open(&s, NULL);
        for (int i = 0; i < 64; i++)
                aiot_spawn(s, tput_task, arg, NULL);
        return aiot_scope_close(s);
}

static aiot_loop *loop_with(size_t threads)
{
        struct aiot_loop_opts o = { .size = sizeof(o), .blocking_threads = threads };
        aiot_loop *l;

        if (aiot_loop_new(&l, &o) < 0)
                abort();
        return l;
}

static double aiot_tput(size_t threads, long n)
{
        aiot_loop *l = loop_with(threads);
        struct tput t = { .left = n };
        uint64_t t0 = now_ns();

        aiot_loop_run(l, tput_main, &t);
        t0 = now_ns() - t0;
        aiot_loop_free(l);
        return (double)t.done / ((double)t0 / 1e9);
}

/* ------------------------------------------------------------ the baseline */

#ifdef HAVE_UV
#define BASE_NAME "libuv"

struct uv_round {
        long left;
        uv_work_t req;
};

static void uv_empty(uv_work_t *req)
{
}

static void uv_after(uv_work_t *req, int status)
{
        struct uv_round *r = req->data;

        if (--r->left > 0)
                uv_queue_work(req->loop, &r->req, uv_empty, uv_after);
}

static double base_round(long n)
{
        uv_loop_t loop;
        struct uv_round r = { .left = n };
        uint64_t t0;

        uv_loop_init(&loop);
        r.req.data = &r;
        /* Warm: the pool's threads start at the first work item. */
        t0 = now_ns();
        uv_queue_work(&loop, &r.req, uv_empty, uv_after);
        uv_run(&loop, UV_RUN_DEFAULT);
        t0 = now_ns() - t0;
        uv_loop_close(&loop);
        return (double)t0 / (double)n;
}

static double base_tput(long n)
{
        uv_loop_t loop;
        struct uv_round r[64];
        uint64_t t0;

        uv_loop_init(&loop);
        t0 = now_ns();
        for (int i = 0; i < 64; i++) {
                r[i].left = n / 64;
                r[i].req.data = &r[i];
                uv_queue_work(&loop, &r[i].req, uv_empty, uv_after);
        }
        uv_run(&loop, UV_RUN_DEFAULT);
        t0 = now_ns() - t0;
        uv_loop_close(&loop);
        return (double)(n / 64 * 64) / ((double)t0 / 1e9);
}
#else
#define BASE_NAME "pthread"

/* One thread waits on a condition variable for a job and answers through an
 * eventfd the caller blocks on: the least a pool round trip needs. */
struct base {
        pthread_mutex_t mu;
        pthread_cond_t cv;
        int pending, stop, efd;
};

static void *base_thread(void *arg)
{
        struct base *b = arg;
        uint64_t one = 1;

        pthread_mutex_lock(&b->mu);
        for (;;) {
                while (!b->pending && !b->stop)
                        pthread_cond_wait(&b->cv, &b->mu);
                if (b->stop)
                        break;
                b->pending = 0;
                pthread_mutex_unlock(&b->mu);
                empty_fn(NULL);
                if (write(b->efd, &one, sizeof(one)) < 0)
                        abort();
                pthread_mutex_lock(&b->mu);
        }
        pthread_mutex_unlock(&b->mu);
        return NULL;
}

static double base_round(long n)
{
        struct base b = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
        pthread_t tid;
        uint64_t t0, v;

        b.efd = eventfd(0, EFD_CLOEXEC);
        pthread_create(&tid, NULL, base_thread, &b);
        t0 = now_ns();
        for (long i = 0; i < n; i++) {
                pthread_mutex_lock(&b.mu);
                b.pending = 1;
                pthread_cond_signal(&b.cv);
                pthread_mutex_unlock(&b.mu);
                if (read(b.efd, &v, sizeof(v)) < 0)
                        abort();
        }
        t0 = now_ns() - t0;
        pthread_mutex_lock(&b.mu);
        b.stop = 1;
        pthread_cond_signal(&b.cv);
        pthread_mutex_unlock(&b.mu);
        pthread_join(tid, NULL);
        close(b.efd);
        return (double)t0 / (double)n;
}

static double base_tput(long n)
{
        return 0;
}
#endif

/* ------------------------------------------------------------ timer lateness */

struct jitter {
        uint64_t t0;
        long n;
        double worst_us;
        int blockers;
};

static int jitter_tick(double interval, void *arg)
{
        struct jitter *j = arg;
        double late = ((double)(now_ns() - j->t0) - (double)j->n * 10e6) / 1e3;

        if (late > j->worst_us)
                j->worst_us = late;
        j->n++;
        return 0;
}

static int sleep100_fn(void *arg)
{
        struct timespec ts = { 0, 100000000L };

        nanosleep(&ts, NULL);
        return 0;
}

static int blocker_task(void *arg)
{
        for (;;)
                if (aiot_run_blocking(sleep100_fn, NULL, NULL) < 0)
                        return 0;
}

static int jitter_main(void *arg)
{
        struct jitter *j = arg;
        aiot_scope *s;

        aiot_scope_open(&s, NULL);
        for (int i = 0; i < j->blockers; i++)
                aiot_spawn(s, blocker_task, NULL, NULL);
        aiot_sleep(0.05); /* the calls are under way */
        j->t0 = now_ns();
        aiot_timer_start(s, jitter_tick, j, 0.010, AIOT_TIMER_DEFAULT, NULL);
        aiot_sleep(1.0);
        aiot_scope_cancel(s);
        return aiot_scope_close(s);
}

static double jitter(int blockers)
{
        struct jitter j = { .blockers = blockers };
        aiot_loop *l = loop_with(10);

        aiot_loop_run(l, jitter_main, &j);
        aiot_loop_free(l);
        return j.worst_us;
}

int main(int argc, char **argv)
{
        int rounds = argc > 1 ? atoi(argv[1]) : 7;
        double ours[64], base[64];
        aiot_loop *l;

        if (argc > 2)
                calls_per_round = atol(argv[2]);
        if (rounds < 1 || rounds > 64 || calls_per_round < 1) {
                fprintf(stderr, "bench-blocking: bad arguments (ROUNDS 1..64, CALLS >= 1)\n");
                return 2;
        }
        loadavg("before");
        l = loop_with(4);
        for (int i = 0; i < rounds; i++) {
                struct aiot_round r = { .n = calls_per_round };

                aiot_loop_run(l, aiot_round_main, &r);
                ours[i] = r.ns;
                base[i] = base_round(calls_per_round);
        }
        aiot_loop_free(l);
        qsort(ours, (size_t)rounds, sizeof(double), cmp_double);
        qsort(base, (size_t)rounds, sizeof(double), cmp_double);
        printf("rounds: %d x %ld calls, alternating; min/median/max\n", rounds, calls_per_round);
        printf("figure: blocking_roundtrip_ns %.0f ns (min %.0f max %.0f)\n", ours[rounds / 2], ours[0],
               ours[rounds - 1]);
        printf("figure: %s_roundtrip_ns %.0f ns (min %.0f max %.0f)\n", BASE_NAME, base[rounds / 2], base[0],
               base[rounds - 1]);
        printf("ratio: %.2f\n", ours[rounds / 2] / base[rounds / 2]);
        for (size_t t = 1; t <= 4; t *= 2)
                printf("figure: blocking_calls_per_s_t%zu %.0f\n", t, aiot_tput(t, calls_per_round * 5));
#ifdef HAVE_UV
        printf("figure: libuv_calls_per_s %.0f (UV_THREADPOOL_SIZE=%s)\n", base_tput(calls_per_round * 5),
               getenv("UV_THREADPOOL_SIZE") ? getenv("UV_THREADPOOL_SIZE") : "4, its default");
#else
        (void)base_tput;
#endif
        printf("figure: tick_late_max_us_idle %.0f us\n", jitter(0));
        printf("figure: tick_late_max_us_blocking %.0f us (ten tasks in 100 ms calls)\n", jitter(10));
        loadavg("after");
        return 0;
}
