/* SPDX-License-Identifier: MIT */
/* The task runtime: loop, tasks, cancellation, cancel-and-wait, shields, deadlines,
 * defer, the virtual clock, events and semaphores.  Built twice: against the
 * library (assembly switch) and against libaiotools-uc (ucontext switch). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

#include <ev.h>

#include <aiotools/io.h>
#include <aiotools/log.h>
#include <aiotools/scope.h>
#include <aiotools/task.h>

#include "testutil.h"

static double wall(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* run(main, arg, virtual_clock): main's result on a fresh loop. */
#define run testutil_run_loop

#define aiot__container_of_cb(w) ((struct from_cb *)(w)->data)

static aiot_scope *open_scope(void)
{
        aiot_scope *s = NULL;

        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        return s;
}

/* ---------------------------------------------------------------- loop, tasks */

static int ret_arg(void *arg)
{
        return (int)(intptr_t)arg;
}

START_TEST(test_loop_run_returns_result)
{
        ck_assert_int_eq(run(ret_arg, (void *)(intptr_t)42, 0), 42);
        ck_assert_int_eq(run(ret_arg, (void *)(intptr_t)-EIO, 1), -EIO);
        ck_assert_ptr_null(aiot_current());
        ck_assert_int_eq(aiot_loop_run(NULL, ret_arg, NULL), -EINVAL);
        ck_assert_int_eq(aiot_loop_new(NULL, NULL), -EINVAL);
        aiot_loop_free(NULL);
}
END_TEST

static int nested_run(void *arg)
{
        aiot_loop *other;

        ck_assert_ptr_nonnull(aiot_current());
        ck_assert_int_eq(aiot_loop_new(&other, NULL), 0);
        ck_assert_int_eq(aiot_loop_run(other, ret_arg, NULL), -EBUSY);
        aiot_loop_free(other);
        return 7;
}

START_TEST(test_loop_run_nested_is_busy)
{
        ck_assert_int_eq(run(nested_run, NULL, 0), 7);
}
END_TEST

static int set_flag(void *arg)
{
        *(int *)arg = 1;
        return 5;
}

static int spawn_join_main(void *arg)
{
        aiot_scope *s = open_scope();
        aiot_task *t;
        int flag = 0, res = 0;

        ck_assert_int_eq(aiot_spawn(s, set_flag, &flag, &t), 0);
        ck_assert_int_eq(aiot_task_done(t), 0);
        ck_assert_int_eq(aiot_task_result(t, &res), -EAGAIN);
        ck_assert_int_eq(flag, 0); /* starts at the next scheduling point */
        ck_assert_int_eq(aiot_yield(), 0);
        ck_assert_int_eq(flag, 1);
        ck_assert_int_eq(aiot_task_done(t), 1);
        ck_assert_int_eq(aiot_task_result(t, &res), 0);
        ck_assert_int_eq(res, 5);
        res = 0;
        ck_assert_int_eq(aiot_join(t, &res), 0);
        ck_assert_int_eq(res, 5);
        ck_assert_int_eq(aiot_join(aiot_current(), NULL), -EINVAL); /* the root */
        ck_assert_int_eq(aiot_scope_close(s), 0);
        return 0;
}

START_TEST(test_spawn_join)
{
        ck_assert_int_eq(run(spawn_join_main, NULL, 0), 0);
}
END_TEST

static int self_join(void *arg)
{
        aiot_task *self = aiot_current();

        ck_assert_int_eq(aiot_join(self, NULL), -EDEADLK);
        ck_assert_int_eq(aiot_cancel_and_wait(self), -EDEADLK);
        return 0;
}

static int deadlk_main(void *arg)
{
        aiot_scope *s = open_scope();
        aiot_task *t;
        int res = -1;

        ck_assert_int_eq(aiot_spawn(s, self_join, NULL, &t), 0);
        ck_assert_int_eq(aiot_join(t, &res), 0);
        ck_assert_int_eq(res, 0);
        return aiot_scope_close(s);
}

START_TEST(test_join_self_is_edeadlk)
{
        ck_assert_int_eq(run(deadlk_main, NULL, 0), 0);
}
END_TEST

static int count_up(void *arg)
{
        ++*(long *)arg;
        return 0;
}

/* 100 000 tasks through one scope, half joined, half left to the scope; the loop
 * is freed at the end, so valgrind / ASan see any leak.  Under ThreadSanitizer
 * every task is a TSan fiber, whose creation maps and unmaps TSan's per-fiber
 * state (over 0.5 ms each, mostly system time: 100 000 outlasted the 60 s timeout): 10 000 there, which still
 * cycles every stack and fiber of the pool many times over. */
#if defined(__SANITIZE_THREAD__)
#define MANY_TASKS 10000
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MANY_TASKS 10000
#endif
#endif
#ifndef MANY_TASKS
#define MANY_TASKS 100000
#endif

static int many_main(void *arg)
{
        aiot_scope *s = open_scope();
        long *n = arg;

        for (int i = 0; i < MANY_TASKS; i++) {
                aiot_task *t;

                if (i % 2) {
                        ck_assert_int_eq(aiot_spawn(s, count_up, n, &t), 0);
                        ck_assert_int_eq(aiot_join(t, NULL), 0);
                } else {
                        ck_assert_int_eq(aiot_spawn(s, count_up, n, NULL), 0);
                }
        }
        return aiot_scope_close(s);
}

START_TEST(test_100k_spawn_join)
{
        long n = 0;

        ck_assert_int_eq(run(many_main, &n, 0), 0);
        ck_assert_int_eq(n, MANY_TASKS);
}
END_TEST

static int big_frame(void *arg)
{
        volatile char buf[512 * 1024];

        memset((char *)buf, 1, sizeof(buf));
        return buf[sizeof(buf) - 1] + buf[0];
}

/* The stack size asked for is what the task gets: the runtime's own use of the
 * stack (the shift against 4K aliasing, which differs per task) comes on top. */
#define ASKED (64 * 1024 - 256) /* the pool's header fits without rounding up */
#ifdef __SANITIZE_ADDRESS__
#define NEAR_FULL (ASKED - 16384) /* ASan's frames and interceptors are bigger */
#else
#define NEAR_FULL (ASKED - 1024)
#endif

static int near_full_stack(void *arg)
{
        volatile char buf[NEAR_FULL];

        memset((char *)buf, 1, sizeof(buf));
        return buf[NEAR_FULL - 1] + buf[0];
}

static int stack_size_exact_main(void *arg)
{
        struct aiot_spawn_opts o = { .size = sizeof(o), .stack_size = ASKED };
        aiot_scope *s = open_scope();

        for (int i = 0; i < 32; i++) { /* every shift, with and without spawn options */
                aiot_task *t;
                int res = 0;

                ck_assert_int_eq(aiot_spawn_opts(s, near_full_stack, NULL, i % 2 ? &o : NULL, &t), 0);
                ck_assert_int_eq(aiot_join(t, &res), 0);
                ck_assert_int_eq(res, 2);
        }
        return aiot_scope_close(s);
}

START_TEST(test_spawn_stack_size_is_usable)
{
        struct aiot_loop_opts o = { .size = sizeof(o), .stack_size = ASKED };
        aiot_loop *l;

        /* The loop's own size, and a bigger one asked for at spawn. */
        ck_assert_int_eq(aiot_loop_new(&l, &o), 0);
        ck_assert_int_eq(aiot_loop_run(l, stack_size_exact_main, NULL), 0);
        aiot_loop_free(l);
}
END_TEST

static int stack_size_main(void *arg)
{
        struct aiot_spawn_opts o = { .size = sizeof(o), .stack_size = 1024 * 1024 };
        aiot_scope *s = open_scope();
        aiot_task *t;
        int res = 0;

        ck_assert_int_eq(aiot_spawn_opts(s, big_frame, NULL, &o, &t), 0);
        ck_assert_int_eq(aiot_join(t, &res), 0);
        ck_assert_int_eq(res, 2);
        o.size = 1;
        ck_assert_int_eq(aiot_spawn_opts(s, big_frame, NULL, &o, NULL), -EINVAL);
        ck_assert_int_eq(aiot_spawn(NULL, big_frame, NULL, NULL), -EINVAL);
        return aiot_scope_close(s);
}

START_TEST(test_spawn_stack_size)
{
        ck_assert_int_eq(run(stack_size_main, NULL, 0), 0);
}
END_TEST

struct pingpong {
        int log[8];
        int n;
};

static int pp(void *arg)
{
        struct pingpong *p = arg;

        for (int i = 0; i < 3; i++) {
                p->log[p->n++] = (int)(intptr_t)aiot_current();
                ck_assert_int_eq(aiot_yield(), 0);
        }
        return 0;
}

static int yield_main(void *arg)
{
        struct pingpong p = { .n = 0 };
        aiot_scope *s = open_scope();
        aiot_task *a, *b;

        ck_assert_int_eq(aiot_spawn(s, pp, &p, &a), 0);
        ck_assert_int_eq(aiot_spawn(s, pp, &p, &b), 0);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        /* Round robin: a b a b a b. */
        ck_assert_int_eq(p.n, 6);
        for (int i = 0; i < 6; i++)
                ck_assert_int_eq(p.log[i], p.log[i % 2]);
        ck_assert_int_ne(p.log[0], p.log[1]);
        return 0;
}

START_TEST(test_yield_round_robin)
{
        ck_assert_int_eq(run(yield_main, NULL, 0), 0);
        ck_assert_int_eq(aiot_yield(), -EPERM);
        ck_assert_int_eq(aiot_sleep(0), -EPERM);
}
END_TEST

/* ---------------------------------------------------------------- clock */

static int sleep_hour(void *arg)
{
        double t0 = aiot_now();

        ck_assert_int_eq(aiot_sleep(3600), 0);
        ck_assert(fabs(aiot_now() - t0 - 3600) < 1e-3);
        ck_assert_int_eq(aiot_sleep(NAN), -EINVAL);
        return 0;
}

START_TEST(test_virtual_sleep_hour)
{
        double w0 = wall();

        ck_assert_int_eq(run(sleep_hour, NULL, 1), 0);
        ck_assert(wall() - w0 < 5.0);
}
END_TEST

#define N_SLEEPERS 200

struct order {
        int woke[N_SLEEPERS];
        int n;
};

struct sleeper_arg {
        struct order *o;
        int id;
        double secs;
};

static int sleeper(void *arg)
{
        struct sleeper_arg *a = arg;

        ck_assert_int_eq(aiot_sleep(a->secs), 0);
        a->o->woke[a->o->n++] = a->id;
        return 0;
}

static int sleepers_main(void *arg)
{
        static struct sleeper_arg args[N_SLEEPERS];
        struct order *o = arg;
        aiot_scope *s = open_scope();

        /* Deadlines in a scrambled order, with ties: id i sleeps (i / 2) seconds,
         * spawned in the order 7i mod N. */
        for (int k = 0; k < N_SLEEPERS; k++) {
                int i = (7 * k) % N_SLEEPERS;

                args[i] = (struct sleeper_arg){ .o = o, .id = i, .secs = 1.0 + (double)(i / 2) };
        }
        for (int k = 0; k < N_SLEEPERS; k++)
                ck_assert_int_eq(aiot_spawn(s, sleeper, &args[(7 * k) % N_SLEEPERS], NULL), 0);
        return aiot_scope_close(s);
}

START_TEST(test_virtual_sleepers_in_order)
{
        struct order o = { .n = 0 };
        int pos[N_SLEEPERS];

        ck_assert_int_eq(run(sleepers_main, &o, 1), 0);
        ck_assert_int_eq(o.n, N_SLEEPERS);
        for (int k = 0; k < N_SLEEPERS; k++)
                pos[o.woke[k]] = k;
        for (int k = 1; k < N_SLEEPERS; k++)
                ck_assert_int_le(o.woke[k - 1] / 2, o.woke[k] / 2);
        /* Ties wake in the order they went to sleep (spawn order 7i mod N). */
        for (int i = 0; i < N_SLEEPERS; i += 2) {
                int first_spawned = -1;

                for (int k = 0; k < N_SLEEPERS && first_spawned < 0; k++)
                        if ((7 * k) % N_SLEEPERS / 2 == i / 2)
                                first_spawned = (7 * k) % N_SLEEPERS;
                ck_assert_int_lt(pos[first_spawned], pos[first_spawned ^ 1]);
        }
}
END_TEST

static int real_sleep(void *arg)
{
        double t0 = aiot_now(), w0 = wall();

        ck_assert_int_eq(aiot_sleep(0.05), 0);
        ck_assert(aiot_now() - t0 >= 0.049);
        ck_assert(wall() - w0 >= 0.049);
        return 0;
}

START_TEST(test_real_sleep)
{
        ck_assert_int_eq(run(real_sleep, NULL, 0), 0);
}
END_TEST

/* ---------------------------------------------------------------- cancellation */

static int wait_forever(void *arg)
{
        aiot_event *ev = arg;
        int r = aiot_event_wait(ev);

        /* Level-triggered: every later blocking call fails the same way. */
        ck_assert_int_eq(r, -ECANCELED);
        ck_assert_int_eq(aiot_sleep(1), -ECANCELED);
        ck_assert_int_eq(aiot_yield(), -ECANCELED);
        ck_assert_int_eq(aiot_checkpoint(), -ECANCELED);
        ck_assert_int_eq(aiot_event_wait(ev), -ECANCELED);
        return r;
}

/* Waits on an event until cancelled (the scope's deadline cancels it). */
static int wait_forever_timed(void *arg)
{
        int r = aiot_event_wait(arg);

        ck_assert_int_eq(r, -ECANCELED);
        return r;
}

static int cancel_main(void *arg)
{
        aiot_scope *s = open_scope();
        aiot_event *ev;
        aiot_task *t;
        int res = 0;

        ck_assert_int_eq(aiot_event_new(&ev), 0);
        ck_assert_int_eq(aiot_spawn(s, wait_forever, ev, &t), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        ck_assert_int_eq(aiot_cancelling(t), 0);
        ck_assert_int_eq(aiot_cancel(t), 0);
        ck_assert_int_eq(aiot_cancel(t), 0);
        ck_assert_int_eq(aiot_cancelling(t), 2);
        ck_assert_int_eq(aiot_join(t, &res), 0);
        ck_assert_int_eq(res, -ECANCELED);
        ck_assert_int_eq(aiot_cancel(NULL), -EINVAL);
        aiot_event_free(ev);
        return aiot_scope_close(s);
}

START_TEST(test_cancel_counted_level_triggered)
{
        ck_assert_int_eq(run(cancel_main, NULL, 1), 0);
}
END_TEST

/* cancel_and_wait on an ended task: a no-op returning 0, result untouched. */
static int caw_done_main(void *arg)
{
        aiot_scope *s = open_scope();
        aiot_task *t;
        int res = 0;

        ck_assert_int_eq(aiot_spawn(s, ret_arg, (void *)(intptr_t)3, &t), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        ck_assert_int_eq(aiot_task_done(t), 1);
        ck_assert_int_eq(aiot_cancelling(t), 0);
        ck_assert_int_eq(aiot_task_result(t, &res), 0);
        ck_assert_int_eq(res, 3);
        ck_assert_int_eq(aiot_cancel_and_wait(t), 0);
        ck_assert_int_eq(aiot_checkpoint(), 0);
        return aiot_scope_close(s);
}

START_TEST(test_caw_finished_noop)
{
        ck_assert_int_eq(run(caw_done_main, NULL, 1), 0);
}
END_TEST

/* The target's cancellation is absorbed: the caller is not cancelled after. */
static int caw_absorb_main(void *arg)
{
        aiot_scope *s = open_scope();
        aiot_event *ev;
        aiot_task *t;

        ck_assert_int_eq(aiot_event_new(&ev), 0);
        ck_assert_int_eq(aiot_spawn(s, wait_forever, ev, &t), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        ck_assert_int_eq(aiot_cancel_and_wait(t), 0);
        ck_assert_int_eq(aiot_checkpoint(), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        ck_assert_int_eq(aiot_cancelling(aiot_current()), 0);
        aiot_event_free(ev);
        return aiot_scope_close(s);
}

START_TEST(test_caw_absorbs_target_cancellation)
{
        ck_assert_int_eq(run(caw_absorb_main, NULL, 1), 0);
}
END_TEST

struct caw_outer {
        aiot_task *target;
        aiot_task *waiter;
        int target_cleanup_done;
        int waiter_rc;
        int cleanup_done_at_return; /* what the waiter saw when its call returned */
        double returned_at;
        double deadline;            /* > 0: the waiter waits inside this deadline */
};

/* A target whose cancellation takes time: cleanup in a shield sleeps 10 s. */
static int slow_target(void *arg)
{
        struct caw_outer *c = arg;
        int r = aiot_sleep(1e9);

        ck_assert_int_eq(r, -ECANCELED);
        aiot_shield_begin();
        ck_assert_int_eq(aiot_sleep(10), 0);
        c->target_cleanup_done = 1;
        aiot_shield_end();
        return r;
}

static int caw_waiter(void *arg)
{
        struct caw_outer *c = arg;
        aiot_deadline d;

        if (c->deadline > 0)
                ck_assert_int_eq(aiot_deadline_begin(&d, c->deadline), 0);
        c->waiter_rc = aiot_cancel_and_wait(c->target);
        c->cleanup_done_at_return = c->target_cleanup_done;
        c->returned_at = aiot_now();
        if (c->deadline > 0)
                ck_assert_int_eq(aiot_deadline_end(&d), 1);
        else
                ck_assert_int_eq(aiot_checkpoint(), -ECANCELED);
        return c->waiter_rc;
}

/* The caller is cancelled by another task (or its deadline passes) while it
 * waits: it still returns only once the target's shielded cleanup has run and
 * the target has ended, then reports its own -ECANCELED (-ETIMEDOUT), as
 * aiotools' cancel_and_wait does ("it will return after the shielded block
 * completes").  The handle is released. */
static int caw_outer_main(void *arg)
{
        struct caw_outer *c = arg;
        aiot_scope *s = open_scope();
        double t0 = aiot_now();

        ck_assert_int_eq(aiot_spawn(s, slow_target, c, &c->target), 0);
        ck_assert_int_eq(aiot_spawn(s, caw_waiter, c, &c->waiter), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        ck_assert_int_eq(aiot_cancelling(c->target), 1);
        if (c->deadline <= 0)
                ck_assert_int_eq(aiot_cancel(c->waiter), 0);
        ck_assert_int_eq(aiot_join(c->waiter, NULL), 0);
        ck_assert_int_eq(c->waiter_rc, c->deadline > 0 ? -ETIMEDOUT : -ECANCELED);
        ck_assert_int_eq(c->cleanup_done_at_return, 1);
        ck_assert(c->returned_at - t0 >= 10 - 1e-6);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        return 0;
}

START_TEST(test_caw_caller_cancelled)
{
        struct caw_outer c = { 0 };

        ck_assert_int_eq(run(caw_outer_main, &c, 1), 0);
}
END_TEST

START_TEST(test_caw_caller_deadline)
{
        struct caw_outer c = { .deadline = 0.5 };

        ck_assert_int_eq(run(caw_outer_main, &c, 1), 0);
}
END_TEST

/* A caller that is already cancelled when it calls still cancels the target
 * and waits for its end. */
static int caw_precancelled_waiter(void *arg)
{
        struct caw_outer *c = arg;

        ck_assert_int_eq(aiot_checkpoint(), -ECANCELED);
        c->waiter_rc = aiot_cancel_and_wait(c->target);
        c->cleanup_done_at_return = c->target_cleanup_done;
        return 0;
}

static int caw_precancelled_main(void *arg)
{
        struct caw_outer *c = arg;
        aiot_scope *s = open_scope();

        ck_assert_int_eq(aiot_spawn(s, slow_target, c, &c->target), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        ck_assert_int_eq(aiot_spawn(s, caw_precancelled_waiter, c, &c->waiter), 0);
        ck_assert_int_eq(aiot_cancel(c->waiter), 0);
        ck_assert_int_eq(aiot_join(c->waiter, NULL), 0);
        ck_assert_int_eq(c->waiter_rc, -ECANCELED);
        ck_assert_int_eq(c->cleanup_done_at_return, 1);
        return aiot_scope_close(s);
}

START_TEST(test_caw_precancelled_caller)
{
        struct caw_outer c = { 0 };

        ck_assert_int_eq(run(caw_precancelled_main, &c, 1), 0);
}
END_TEST

/* A target whose cleanup in a shield takes time is waited out. */
static int caw_slow_main(void *arg)
{
        struct caw_outer *c = arg;
        aiot_scope *s = open_scope();
        double t0 = aiot_now();

        ck_assert_int_eq(aiot_spawn(s, slow_target, c, &c->target), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        ck_assert_int_eq(aiot_cancel_and_wait(c->target), 0);
        ck_assert_int_eq(c->target_cleanup_done, 1);
        ck_assert(aiot_now() - t0 >= 10 - 1e-6);
        return aiot_scope_close(s);
}

START_TEST(test_caw_waits_out_shielded_cleanup)
{
        struct caw_outer c = { 0 };

        ck_assert_int_eq(run(caw_slow_main, &c, 1), 0);
}
END_TEST

static int fail_on_cancel(void *arg)
{
        int r = aiot_sleep(1e9);

        ck_assert_int_eq(r, -ECANCELED);
        return -EIO;
}

static int count_errors_fn_calls;

static void count_errors(aiot_task *t, int rc, void *userdata)
{
        count_errors_fn_calls++;
}

static int caw_set_main(void *arg)
{
        aiot_scope *s;
        struct aiot_scope_opts o = { .size = sizeof(o), .on_error = count_errors };
        aiot_task *ts[4];
        int res[4];

        ck_assert_int_eq(aiot_scope_open(&s, &o), 0);
        ck_assert_int_eq(aiot_spawn(s, wait_forever, arg, &ts[0]), 0);
        ck_assert_int_eq(aiot_spawn(s, fail_on_cancel, NULL, &ts[1]), 0);
        ck_assert_int_eq(aiot_spawn(s, ret_arg, (void *)(intptr_t)9, &ts[2]), 0);
        ck_assert_int_eq(aiot_spawn(s, wait_forever, arg, &ts[3]), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        {
                aiot_task *dup[2] = { ts[0], ts[0] };

                ck_assert_int_eq(aiot_cancel_and_wait_all(dup, 2, NULL), -EINVAL);
        }
        ck_assert_int_eq(aiot_cancel_and_wait_all(ts, 4, res), 0);
        ck_assert_int_eq(res[0], -ECANCELED);
        ck_assert_int_eq(res[1], -EIO);
        ck_assert_int_eq(res[2], 9);
        ck_assert_int_eq(res[3], -ECANCELED);
        ck_assert_int_eq(count_errors_fn_calls, 1); /* the -EIO, once */
        ck_assert_int_eq(aiot_checkpoint(), 0);
        return aiot_scope_close(s);
}

START_TEST(test_caw_set_with_failure)
{
        aiot_event *ev;

        ck_assert_int_eq(aiot_event_new(&ev), 0);
        ck_assert_int_eq(run(caw_set_main, ev, 1), 0);
        aiot_event_free(ev);
}
END_TEST

/* ---------------------------------------------------------------- shields */

struct shield_state {
        int steps;
        aiot_task *t;
};

static int shielded_cleanup(void *arg)
{
        struct shield_state *st = arg;
        int r = aiot_sleep(1e9);

        ck_assert_int_eq(r, -ECANCELED);
        aiot_shield_begin();
        for (int i = 0; i < 5; i++) {
                ck_assert_int_eq(aiot_sleep(1), 0);
                ck_assert_int_eq(aiot_checkpoint(), 0);
                st->steps++;
        }
        aiot_shield_end();
        ck_assert_int_eq(aiot_checkpoint(), -ECANCELED);
        return r;
}

static int shield_main(void *arg)
{
        struct shield_state *st = arg;
        aiot_scope *s = open_scope();
        int res = 0;

        ck_assert_int_eq(aiot_spawn(s, shielded_cleanup, st, &st->t), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        ck_assert_int_eq(aiot_cancel(st->t), 0);     /* first: interrupts the sleep */
        ck_assert_int_eq(aiot_sleep(2.5), 0);        /* now inside the shield */
        ck_assert_int_eq(aiot_cancel(st->t), 0);     /* second: inside the shield */
        ck_assert_int_eq(aiot_join(st->t, &res), 0);
        ck_assert_int_eq(res, -ECANCELED);
        ck_assert_int_eq(st->steps, 5);
        return aiot_scope_close(s);
}

START_TEST(test_shield_cleanup_survives_two_cancels)
{
        struct shield_state st = { 0 };

        ck_assert_int_eq(run(shield_main, &st, 1), 0);
}
END_TEST

static int nested_shields(void *arg)
{
        int *phase = arg;

        aiot_shield_begin();
        aiot_shield_begin();
        *phase = 1;
        ck_assert_int_eq(aiot_sleep(1), 0); /* cancelled meanwhile */
        aiot_shield_end();
        /* Still inside the outer shield: nothing delivered yet. */
        ck_assert_int_eq(aiot_checkpoint(), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        *phase = 2;
        aiot_shield_end();
        ck_assert_int_eq(aiot_checkpoint(), -ECANCELED);
        ck_assert_int_eq(aiot_sleep(1), -ECANCELED);
        *phase = 3;
        return -ECANCELED;
}

static int nested_shield_main(void *arg)
{
        aiot_scope *s = open_scope();
        aiot_task *t;
        int phase = 0, res = 0;

        ck_assert_int_eq(aiot_spawn(s, nested_shields, &phase, &t), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        ck_assert_int_eq(phase, 1);
        ck_assert_int_eq(aiot_cancel(t), 0);
        ck_assert_int_eq(aiot_join(t, &res), 0);
        ck_assert_int_eq(res, -ECANCELED);
        ck_assert_int_eq(phase, 3);
        return aiot_scope_close(s);
}

START_TEST(test_shield_nested_defers_to_outermost)
{
        ck_assert_int_eq(run(nested_shield_main, NULL, 1), 0);
}
END_TEST

static int self_cancel_in_shield(void *arg)
{
        aiot_shield_begin();
        ck_assert_int_eq(aiot_sleep(1), 0);
        /* No aiot_shield_end(): the task ends itself by cancellation. */
        return -ECANCELED;
}

static int self_cancel_main(void *arg)
{
        struct aiot_scope_opts o = { .size = sizeof(o), .on_error = count_errors };
        aiot_scope *s;
        aiot_task *t;
        int res = 0;

        ck_assert_int_eq(aiot_scope_open(&s, &o), 0);
        ck_assert_int_eq(aiot_spawn(s, self_cancel_in_shield, NULL, &t), 0);
        ck_assert_int_eq(aiot_join(t, &res), 0);
        ck_assert_int_eq(res, -ECANCELED);
        ck_assert_int_eq(count_errors_fn_calls, 0);
        ck_assert_int_eq(aiot_checkpoint(), 0);
        return aiot_scope_close(s);
}

START_TEST(test_shield_self_cancel_by_return)
{
        ck_assert_int_eq(run(self_cancel_main, NULL, 1), 0);
}
END_TEST

/* A cancellation requested inside a shield of the task itself is deferred. */
static int self_request_main(void *arg)
{
        aiot_shield_begin();
        ck_assert_int_eq(aiot_cancel(aiot_current()), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        aiot_shield_end();
        ck_assert_int_eq(aiot_sleep(1), -ECANCELED);
        return 0;
}

START_TEST(test_shield_self_request_deferred)
{
        ck_assert_int_eq(run(self_request_main, NULL, 1), 0);
}
END_TEST

/* ---------------------------------------------------------------- deadlines */

static int deadline_main(void *arg)
{
        aiot_deadline outer, inner;
        double t0 = aiot_now();

        ck_assert_int_eq(aiot_deadline_begin(&outer, 10), 0);
        ck_assert_int_eq(aiot_deadline_begin(&inner, 2), 0);
        ck_assert_int_eq(aiot_deadline_end(&outer), -EINVAL); /* not innermost */
        ck_assert_int_eq(aiot_sleep(100), -ETIMEDOUT);
        ck_assert(fabs(aiot_now() - t0 - 2) < 1e-6);
        ck_assert_int_eq(aiot_sleep(0), -ETIMEDOUT); /* level-triggered */
        ck_assert_int_eq(aiot_checkpoint(), -ETIMEDOUT);
        ck_assert_int_eq(aiot_deadline_end(&inner), 1);
        ck_assert_int_eq(aiot_sleep(1), 0);
        ck_assert_int_eq(aiot_checkpoint(), 0);
        /* Inside a shield the outer deadline still applies. */
        aiot_shield_begin();
        ck_assert_int_eq(aiot_sleep(100), -ETIMEDOUT);
        ck_assert(fabs(aiot_now() - t0 - 10) < 1e-6);
        aiot_shield_end();
        /* An inner deadline that has not expired does not hide the outer one. */
        ck_assert_int_eq(aiot_deadline_begin(&inner, 50), 0);
        ck_assert_int_eq(aiot_sleep(1), -ETIMEDOUT);
        ck_assert_int_eq(aiot_deadline_end(&inner), 0);
        ck_assert_int_eq(aiot_deadline_end(&outer), 1);
        ck_assert_int_eq(aiot_sleep(1), 0);
        /* One that does not expire. */
        ck_assert_int_eq(aiot_deadline_begin(&inner, 5), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        ck_assert_int_eq(aiot_deadline_end(&inner), 0);
        ck_assert_int_eq(aiot_deadline_end(&inner), -EINVAL);
        /* Already expired, and never. */
        ck_assert_int_eq(aiot_deadline_begin(&inner, 0), 0);
        ck_assert_int_eq(aiot_yield(), -ETIMEDOUT);
        ck_assert_int_eq(aiot_deadline_end(&inner), 1);
        ck_assert_int_eq(aiot_deadline_begin(&inner, INFINITY), 0);
        ck_assert_int_eq(aiot_sleep(1e6), 0);
        ck_assert_int_eq(aiot_deadline_end(&inner), 0);
        ck_assert_int_eq(aiot_deadline_begin(&inner, NAN), -EINVAL);
        ck_assert_int_eq(aiot_deadline_end(&inner), -EINVAL);
        return 0;
}

START_TEST(test_deadlines_nest_and_pierce_shields)
{
        aiot_deadline d;

        ck_assert_int_eq(run(deadline_main, NULL, 1), 0);
        ck_assert_int_eq(aiot_deadline_begin(&d, 1), -EPERM);
        ck_assert_int_eq(aiot_deadline_end(&d), -EINVAL);
}
END_TEST

/* A cancellation and a deadline both reach a parked task; a deadline interrupts a
 * wait in a shield, a cancellation does not. */
static int deadline_event_main(void *arg)
{
        aiot_event *ev = arg;
        aiot_deadline d;

        aiot_shield_begin();
        ck_assert_int_eq(aiot_deadline_begin(&d, 3), 0);
        ck_assert_int_eq(aiot_event_wait(ev), -ETIMEDOUT);
        ck_assert_int_eq(aiot_deadline_end(&d), 1);
        aiot_shield_end();
        return 0;
}

START_TEST(test_deadline_interrupts_event_wait_in_shield)
{
        aiot_event *ev;

        ck_assert_int_eq(aiot_event_new(&ev), 0);
        ck_assert_int_eq(run(deadline_event_main, ev, 1), 0);
        aiot_event_free(ev);
}
END_TEST

/* ---------------------------------------------------------------- defer */

struct defer_log {
        int order[8];
        int n;
        int blocked_ok;
};

static struct defer_log *dlog;

static void rec1(void *arg)
{
        dlog->order[dlog->n++] = 1;
}

static void rec2(void *arg)
{
        dlog->order[dlog->n++] = 2;
}

static void rec_blocking(void *arg)
{
        /* Runs shielded: blocks normally even in a cancelled task. */
        dlog->blocked_ok = aiot_sleep(1) == 0 && aiot_yield() == 0;
        dlog->order[dlog->n++] = 3;
}

static int defer_task(void *arg)
{
        int how = (int)(intptr_t)arg;

        ck_assert_int_eq(aiot_defer(rec1, NULL), 0);
        ck_assert_int_eq(aiot_defer(rec_blocking, NULL), 0);
        ck_assert_int_eq(aiot_defer(rec2, NULL), 0);
        ck_assert_int_eq(aiot_defer(NULL, NULL), -EINVAL);
        if (how == 0)
                return 0;
        if (how == 1)
                return -EIO;
        return aiot_sleep(1e9); /* cancelled */
}

static int defer_main(void *arg)
{
        struct aiot_scope_opts o = { .size = sizeof(o), .on_error = count_errors };
        aiot_scope *s;
        aiot_task *t;
        int how = (int)(intptr_t)arg, res = 1;

        ck_assert_int_eq(aiot_scope_open(&s, &o), 0);
        ck_assert_int_eq(aiot_spawn(s, defer_task, arg, &t), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        if (how == 2) {
                ck_assert_int_eq(dlog->n, 0); /* parked, defers not run yet */
                ck_assert_int_eq(aiot_cancel(t), 0);
        }
        ck_assert_int_eq(aiot_join(t, &res), 0);
        ck_assert_int_eq(res, how == 0 ? 0 : how == 1 ? -EIO : -ECANCELED);
        return aiot_scope_close(s);
}

START_TEST(test_defer_lifo)
{
        struct defer_log l = { .n = 0 };

        dlog = &l;
        ck_assert_int_eq(run(defer_main, (void *)(intptr_t)_i, 1), 0);
        ck_assert_int_eq(l.n, 3);
        ck_assert_int_eq(l.order[0], 2);
        ck_assert_int_eq(l.order[1], 3);
        ck_assert_int_eq(l.order[2], 1);
        ck_assert_int_eq(l.blocked_ok, 1);
        ck_assert_int_eq(aiot_defer(rec1, NULL), -EPERM);
}
END_TEST

/* ---------------------------------------------------------------- events */

struct ev_arg {
        aiot_event *ev;
        int *log;
        int *n;
        int id;
        int rc;
};

static int ev_waiter(void *arg)
{
        struct ev_arg *a = arg;

        a->rc = aiot_event_wait(a->ev);
        if (a->rc == 0)
                a->log[(*a->n)++] = a->id;
        return a->rc;
}

static int event_main(void *arg)
{
        aiot_scope *s = open_scope();
        aiot_event *ev;
        struct ev_arg a[5];
        aiot_task *t[5];
        int log[5], n = 0;

        ck_assert_int_eq(aiot_event_new(&ev), 0);
        for (int i = 0; i < 5; i++) {
                a[i] = (struct ev_arg){ .ev = ev, .log = log, .n = &n, .id = i, .rc = 1 };
                ck_assert_int_eq(aiot_spawn(s, ev_waiter, &a[i], &t[i]), 0);
        }
        ck_assert_int_eq(aiot_yield(), 0);
        ck_assert_int_eq(aiot_event_is_set(ev), 0);
        ck_assert_int_eq(aiot_cancel(t[2]), 0);
        ck_assert_int_eq(aiot_join(t[2], NULL), 0);
        ck_assert_int_eq(a[2].rc, -ECANCELED);
        ck_assert_int_eq(aiot_event_set(ev), 0);
        ck_assert_int_eq(aiot_event_is_set(ev), 1);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert_int_eq(n, 4);
        ck_assert_int_eq(log[0], 0);
        ck_assert_int_eq(log[1], 1);
        ck_assert_int_eq(log[2], 3);
        ck_assert_int_eq(log[3], 4);
        /* Set: returns at once; cleared: waits again. */
        ck_assert_int_eq(aiot_event_wait(ev), 0);
        aiot_event_clear(ev);
        ck_assert_int_eq(aiot_event_is_set(ev), 0);
        {
                aiot_deadline d;

                ck_assert_int_eq(aiot_deadline_begin(&d, 1), 0);
                ck_assert_int_eq(aiot_event_wait(ev), -ETIMEDOUT);
                ck_assert_int_eq(aiot_deadline_end(&d), 1);
        }
        /* Freed with a waiter: -EIDRM. */
        s = open_scope();
        a[0].rc = 1;
        ck_assert_int_eq(aiot_spawn(s, ev_waiter, &a[0], NULL), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        aiot_event_free(ev);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert_int_eq(a[0].rc, -EIDRM);
        ck_assert_int_eq(aiot_event_set(NULL), -EINVAL);
        ck_assert_int_eq(aiot_event_wait(NULL), -EINVAL);
        return 0;
}

START_TEST(test_event_wakes_all_fifo)
{
        aiot_log_set_level(AIOT_LOG_ERR);
        ck_assert_int_eq(run(event_main, NULL, 1), 0);
}
END_TEST

/* ---------------------------------------------------------------- semaphores */

struct sem_arg {
        aiot_sem *sem;
        int *log;
        int *n;
        int id;
        int rc;
        int *inside, *max_inside;
};

static int sem_user(void *arg)
{
        struct sem_arg *a = arg;

        a->rc = aiot_sem_acquire(a->sem);
        if (a->rc)
                return a->rc;
        a->log[(*a->n)++] = a->id;
        if (++*a->inside > *a->max_inside)
                *a->max_inside = *a->inside;
        ck_assert_int_eq(aiot_sleep(1), 0);
        --*a->inside;
        ck_assert_int_eq(aiot_sem_release(a->sem), 0);
        return 0;
}

static int sem_main(void *arg)
{
        aiot_scope *s = open_scope();
        aiot_sem *sem;
        struct sem_arg a[6];
        aiot_task *t[6];
        int log[6], n = 0, inside = 0, max_inside = 0;

        ck_assert_int_eq(aiot_sem_new(&sem, 2), 0);
        ck_assert_int_eq(aiot_sem_value(sem), 2);
        for (int i = 0; i < 6; i++) {
                a[i] = (struct sem_arg){ .sem = sem, .log = log, .n = &n, .id = i, .rc = 1, .inside = &inside,
                                         .max_inside = &max_inside };
                ck_assert_int_eq(aiot_spawn(s, sem_user, &a[i], &t[i]), 0);
        }
        ck_assert_int_eq(aiot_yield(), 0);
        ck_assert_int_eq(aiot_sem_value(sem), 0);
        ck_assert_int_eq(aiot_sem_try_acquire(sem), -EAGAIN);
        /* A cancelled waiter takes no unit with it. */
        ck_assert_int_eq(aiot_cancel(t[3]), 0);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert_int_eq(a[3].rc, -ECANCELED);
        ck_assert_int_eq(n, 5);
        ck_assert_int_eq(max_inside, 2);
        ck_assert_int_eq(log[0], 0);
        ck_assert_int_eq(log[1], 1);
        ck_assert_int_eq(log[2], 2);
        ck_assert_int_eq(log[3], 4);
        ck_assert_int_eq(log[4], 5);
        ck_assert_int_eq(aiot_sem_value(sem), 2);
        ck_assert_int_eq(aiot_sem_try_acquire(sem), 0);
        ck_assert_int_eq(aiot_sem_try_acquire(sem), 0);
        {
                aiot_deadline d;

                ck_assert_int_eq(aiot_deadline_begin(&d, 1), 0);
                ck_assert_int_eq(aiot_sem_acquire(sem), -ETIMEDOUT);
                ck_assert_int_eq(aiot_deadline_end(&d), 1);
        }
        ck_assert_int_eq(aiot_sem_release(sem), 0);
        ck_assert_int_eq(aiot_sem_release(sem), 0);
        ck_assert_int_eq(aiot_sem_value(sem), 2);
        aiot_sem_free(sem);
        ck_assert_int_eq(aiot_sem_new(NULL, 1), -EINVAL);
        ck_assert_int_eq(aiot_sem_release(NULL), -EINVAL);
        return 0;
}

START_TEST(test_sem_fifo_and_cancel)
{
        ck_assert_int_eq(run(sem_main, NULL, 1), 0);
}
END_TEST

/* A parked task's stack stays intact while others run (no frame corruption
 * across many switches, with the runtime's ev loop used beside it). */
static void idle_cb(struct ev_loop *ev, ev_idle *w, int revents)
{
        int *n = w->data;

        if (++*n == 3)
                ev_idle_stop(ev, w);
}

static int ev_beside_main(void *arg)
{
        ev_idle idle;
        int n = 0;

        ev_idle_init(&idle, idle_cb);
        idle.data = &n;
        ev_idle_start(aiot_loop_ev(arg), &idle);
        while (n < 3)
                ck_assert_int_eq(aiot_sleep(0.001), 0);
        return 0;
}

START_TEST(test_raw_libev_watchers_beside_tasks)
{
        aiot_loop *l;

        ck_assert_int_eq(aiot_loop_new(&l, NULL), 0);
        ck_assert_int_eq(aiot_loop_run(l, ev_beside_main, l), 0);
        aiot_loop_free(l);
}
END_TEST


/* The caller is cancelled while waiting for a set: it returns -ECANCELED only
 * once every target has ended (shielded cleanups included), with their results
 * stored and their handles released. */
struct caw_set_outer {
        aiot_task *ts[2];
        int rc;
        int res[2];
        struct caw_outer c[2];
        int cleanups_at_return;
};

static int caw_set_waiter_res(void *arg)
{
        struct caw_set_outer *o = arg;

        o->rc = aiot_cancel_and_wait_all(o->ts, 2, o->res);
        o->cleanups_at_return = o->c[0].target_cleanup_done + o->c[1].target_cleanup_done;
        return o->rc;
}

static int caw_set_outer_main(void *arg)
{
        struct caw_set_outer o = { .rc = 1, .res = { 1, 1 } };
        aiot_scope *s = open_scope();
        aiot_task *w;

        ck_assert_int_eq(aiot_spawn(s, slow_target, &o.c[0], &o.ts[0]), 0);
        ck_assert_int_eq(aiot_spawn(s, slow_target, &o.c[1], &o.ts[1]), 0);
        ck_assert_int_eq(aiot_spawn(s, caw_set_waiter_res, &o, &w), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        ck_assert_int_eq(aiot_cancel(w), 0);
        ck_assert_int_eq(aiot_join(w, NULL), 0);
        ck_assert_int_eq(o.rc, -ECANCELED);
        ck_assert_int_eq(o.cleanups_at_return, 2);
        ck_assert_int_eq(o.res[0], -ECANCELED);
        ck_assert_int_eq(o.res[1], -ECANCELED);
        return aiot_scope_close(s);
}

START_TEST(test_caw_set_caller_cancelled)
{
        ck_assert_int_eq(run(caw_set_outer_main, NULL, 1), 0);
}
END_TEST

/* Callbacks outside any task may spawn and cancel. */
struct from_cb {
        aiot_scope *s;
        aiot_task *victim;
        int spawned_ran;
        ev_timer w;
};

static int mark_ran(void *arg)
{
        ((struct from_cb *)arg)->spawned_ran = 1;
        return 0;
}

static void from_cb_fire(struct ev_loop *ev, ev_timer *w, int revents)
{
        struct from_cb *f = aiot__container_of_cb(w);

        ck_assert_ptr_null(aiot_current());
        ck_assert_int_eq(aiot_spawn(f->s, mark_ran, f, NULL), 0);
        ck_assert_int_eq(aiot_cancel(f->victim), 0);
}

static int from_cb_main(void *arg)
{
        aiot_loop *l = arg;
        struct from_cb f = { .spawned_ran = 0 };
        aiot_event *ev;
        int res = 0;

        ck_assert_int_eq(aiot_event_new(&ev), 0);
        f.s = open_scope();
        ck_assert_int_eq(aiot_spawn(f.s, wait_forever, ev, &f.victim), 0);
        ev_timer_init(&f.w, from_cb_fire, 0.001, 0);
        f.w.data = &f;
        ev_timer_start(aiot_loop_ev(l), &f.w);
        ck_assert_int_eq(aiot_join(f.victim, &res), 0);
        ck_assert_int_eq(res, -ECANCELED);
        ck_assert_int_eq(aiot_scope_close(f.s), 0);
        ck_assert_int_eq(f.spawned_ran, 1);
        aiot_event_free(ev);
        return 0;
}

START_TEST(test_spawn_and_cancel_from_libev_callback)
{
        aiot_loop *l;

        ck_assert_int_eq(aiot_loop_new(&l, NULL), 0);
        ck_assert_int_eq(aiot_loop_run(l, from_cb_main, l), 0);
        aiot_loop_free(l);
}
END_TEST

/* Overflowing a task's stack is reported with the task's name and aborts. */
static int recurse(void *arg)
{
        volatile char pad[1024];

        pad[0] = (char)(intptr_t)arg;
        if ((intptr_t)arg < 0) /* never: keeps the compiler from calling it infinite */
                return 0;
        return recurse((void *)((intptr_t)arg + 1)) + pad[0];
}

__attribute__((unused)) static int overflow_main(void *arg)
{
        struct aiot_spawn_opts o = { .size = sizeof(o), .stack_size = 64 * 1024 };
        aiot_scope *s = open_scope();

        ck_assert_int_eq(aiot_spawn_opts(s, recurse, NULL, &o, NULL), 0);
        return aiot_scope_close(s);
}

/* In the child of test_stack_overflow_names_task. */
__attribute__((unused)) static void overflow_child(void *arg)
{
        run(overflow_main, NULL, 0);
}

START_TEST(test_stack_overflow_names_task)
{
#if defined(__SANITIZE_ADDRESS__)
        return; /* ASan reports the overflow itself */
#else
        char out[4096];
        int status;

        if (getenv("LD_PRELOAD") && strstr(getenv("LD_PRELOAD"), "vgpreload"))
                return; /* valgrind reports it itself */
        status = testutil_child_stderr(overflow_child, NULL, out, sizeof(out));
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "status %#x: %s", status, out);
        ck_assert_msg(strstr(out, "stack overflow in task 0x") && strstr(out, " (fn 0x"), "stderr: %s", out);
#endif
}
END_TEST

/* A deadline around a scope expires while the host waits in close. */
static int close_deadline_main(void *arg)
{
        aiot_scope *s;
        aiot_deadline d;
        aiot_event *ev;
        aiot_task *t;
        double t0 = aiot_now();

        ck_assert_int_eq(aiot_event_new(&ev), 0);
        ck_assert_int_eq(aiot_deadline_begin(&d, 2), 0);
        s = open_scope();
        ck_assert_int_eq(aiot_spawn(s, wait_forever_timed, ev, &t), 0);
        ck_assert_int_eq(aiot_scope_close(s), -ETIMEDOUT);
        ck_assert_int_eq(aiot_deadline_end(&d), 1);
        ck_assert(fabs(aiot_now() - t0 - 2) < 1e-6);
        aiot_event_free(ev);
        return 0;
}

START_TEST(test_deadline_expires_during_close)
{
        ck_assert_int_eq(run(close_deadline_main, NULL, 1), 0);
}
END_TEST

#ifdef AIOT_TEST_UCONTEXT
/* This build links libaiotools-uc statically, whose internals are reachable. */
const char *aiot__ctx_impl(void);

START_TEST(test_runs_on_ucontext)
{
        ck_assert_str_eq(aiot__ctx_impl(), "ucontext");
}
END_TEST
#endif

/* A child forked from inside a running task abandons the parent's loop and may
 * run a fresh one (the supervisor forks workers this way). */
static int child_main(void *arg)
{
        aiot_sleep(0.001);
        return 42;
}

static int fork_from_task(void *arg)
{
        pid_t pid = fork();
        int st;

        if (pid == 0) {
                aiot_loop *fresh = NULL;
                int r;

                /* The inherited loop holds the parent's tasks: refused. */
                if (aiot_loop_run(arg, child_main, NULL) != -EBUSY)
                        _exit(3);
                if (aiot_loop_new(&fresh, NULL) < 0)
                        _exit(1);
                r = aiot_loop_run(fresh, child_main, NULL);
                aiot_loop_free(fresh);
                _exit(r == 42 ? 0 : 2);
        }
        ck_assert_int_gt(pid, 0);
        ck_assert_int_eq(waitpid(pid, &st, 0), pid);
        ck_assert(WIFEXITED(st));
        return WEXITSTATUS(st);
}

/* Any number of tasks may wait for one task, as in asyncio: each sees its
 * result.  A join of a task that ended while an earlier joiner was woken but
 * has not run yet also succeeds; the handle stays valid until the last waiter
 * has returned. */
static aiot_task *dj_target;
static int dj_res_a = -1;

static int dj_target_fn(void *arg)
{
        aiot_yield();
        return 42;
}

static int dj_joiner(void *arg)
{
        ck_assert_int_eq(aiot_join(dj_target, &dj_res_a), 0);
        return 0;
}

static int double_join_main(void *arg)
{
        aiot_scope *s = open_scope();
        int res = -1;

        ck_assert_int_eq(aiot_spawn(s, dj_target_fn, NULL, &dj_target), 0);
        ck_assert_int_eq(aiot_spawn(s, dj_joiner, NULL, NULL), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        while (!aiot_task_done(dj_target))
                ck_assert_int_eq(aiot_yield(), 0);
        ck_assert_int_eq(dj_res_a, -1); /* the joiner has not run yet */
        ck_assert_int_eq(aiot_join(dj_target, &res), 0);
        ck_assert_int_eq(res, 42);
        /* The first joiner is still inside its call: the handle is valid. */
        ck_assert_int_eq(aiot_task_done(dj_target), 1);
        ck_assert_int_eq(aiot_task_result(dj_target, &res), 0);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert_int_eq(dj_res_a, 42);
        return 0;
}

START_TEST(test_join_of_ended_task_with_joiner)
{
        ck_assert_int_eq(run(double_join_main, NULL, 0), 0);
}
END_TEST

/* Five waiters of one task: three joins see its result; a join interrupted by
 * its deadline leaves (the others wait on); a cancel_and_wait that comes last
 * cancels the target, and every waiter still parked then sees -ECANCELED. */
struct mw {
        aiot_task *target;
        int rc[5], res[5];
        double deadline[5];
        int done;
};

static struct mw *mw_of;

static int mw_target(void *arg)
{
        return aiot_sleep(*(double *)arg) == 0 ? 7 : -ECANCELED;
}

static int mw_joiner(void *arg)
{
        int i = (int)(intptr_t)arg;
        aiot_deadline d;

        if (mw_of->deadline[i] > 0)
                ck_assert_int_eq(aiot_deadline_begin(&d, mw_of->deadline[i]), 0);
        mw_of->rc[i] = aiot_join(mw_of->target, &mw_of->res[i]);
        if (mw_of->deadline[i] > 0)
                aiot_deadline_end(&d);
        mw_of->done++;
        return 0;
}

static int many_waiters_main(void *arg)
{
        struct mw m = { .res = { -1, -1, -1, -1, -1 }, .deadline = { 0, 0, 0, 0.5, 0 } };
        aiot_scope *s = open_scope();
        double len = 2;

        mw_of = &m;
        ck_assert_int_eq(aiot_spawn(s, mw_target, &len, &m.target), 0);
        for (int i = 0; i < 4; i++)
                ck_assert_int_eq(aiot_spawn(s, mw_joiner, (void *)(intptr_t)i, NULL), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        /* The one with a deadline has left, the target runs on. */
        ck_assert_int_eq(m.done, 1);
        ck_assert_int_eq(m.rc[3], -ETIMEDOUT);
        ck_assert_int_eq(m.res[3], -1);
        ck_assert_int_eq(aiot_task_done(m.target), 0);
        ck_assert_int_eq(aiot_sleep(2), 0);
        ck_assert_int_eq(m.done, 4);
        for (int i = 0; i < 3; i++) {
                ck_assert_int_eq(m.rc[i], 0);
                ck_assert_int_eq(m.res[i], 7);
        }
        ck_assert_int_eq(aiot_scope_close(s), 0);

        /* Joiners, then a cancel_and_wait: all of them see the cancellation. */
        s = open_scope();
        m = (struct mw){ .res = { -1, -1, -1, -1, -1 } };
        len = 1e9;
        ck_assert_int_eq(aiot_spawn(s, mw_target, &len, &m.target), 0);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(aiot_spawn(s, mw_joiner, (void *)(intptr_t)i, NULL), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        ck_assert_int_eq(aiot_cancel_and_wait(m.target), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        ck_assert_int_eq(m.done, 3);
        for (int i = 0; i < 3; i++) {
                ck_assert_int_eq(m.rc[i], 0);
                ck_assert_int_eq(m.res[i], -ECANCELED);
        }
        return aiot_scope_close(s);
}

START_TEST(test_many_waiters)
{
        ck_assert_int_eq(run(many_waiters_main, NULL, 1), 0);
}
END_TEST

/* A task that returns inside a deadline with a scope open, whose deferred
 * callback then uses deadlines on the same stack: the scope must not keep a
 * pointer to the dead deadline. */
static int lo_sleep_rc = 1;

static int lo_sleeper(void *arg)
{
        lo_sleep_rc = aiot_sleep(100);
        return lo_sleep_rc;
}

static void lo_defer(void *arg)
{
        volatile char junk[4096];
        aiot_deadline d2;

        memset((char *)junk, 0x41, sizeof(junk));
        ck_assert_int_eq(aiot_deadline_begin(&d2, 0), 0);
        ck_assert_int_eq(aiot_sleep(1), -ETIMEDOUT);
        ck_assert_int_eq(aiot_deadline_end(&d2), 1);
        /* Defers run before the scope left open is closed. */
        ck_assert_int_eq(lo_sleep_rc, 1);
}

static int lo_worker(void *arg)
{
        aiot_deadline d;
        aiot_scope *s;

        ck_assert_int_eq(aiot_deadline_begin(&d, 100), 0);
        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, lo_sleeper, NULL, NULL), 0);
        ck_assert_int_eq(aiot_defer(lo_defer, NULL), 0);
        return 0;
}

static int leftover_main(void *arg)
{
        aiot_scope *s = open_scope();
        double t0 = aiot_now();

        ck_assert_int_eq(aiot_spawn(s, lo_worker, NULL, NULL), 0);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert_int_eq(lo_sleep_rc, -ECANCELED);
        ck_assert(aiot_now() - t0 < 1);
        return 0;
}

START_TEST(test_return_inside_deadline_with_scope_open)
{
        ck_assert_int_eq(run(leftover_main, NULL, 1), 0);
}
END_TEST

/* sleep(INFINITY) arms no timer: the virtual clock does not jump centuries
 * ahead to wake it; only cancellation ends it. */
static void inf_timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
        aiot_event_set(w->data);
}

static int inf_sleeper(void *arg)
{
        return aiot_sleep(INFINITY);
}

static int sleep_inf_main(void *arg)
{
        aiot_scope *s = open_scope();
        aiot_event *ev;
        aiot_task *t;
        ev_timer w;
        double t0 = aiot_now();
        int res = 1;

        ck_assert_int_eq(aiot_event_new(&ev), 0);
        ck_assert_int_eq(aiot_spawn(s, inf_sleeper, NULL, &t), 0);
        /* Only a real-time libev timer can wake the root. */
        ev_timer_init(&w, inf_timer_cb, 0.02, 0);
        w.data = ev;
        ev_timer_start(aiot_loop_ev(arg), &w);
        ck_assert_int_eq(aiot_event_wait(ev), 0);
        ck_assert_int_eq(aiot_task_done(t), 0);
        ck_assert(aiot_now() - t0 < 1);
        ck_assert_int_eq(aiot_cancel(t), 0);
        ck_assert_int_eq(aiot_join(t, &res), 0);
        ck_assert_int_eq(res, -ECANCELED);
        aiot_event_free(ev);
        return aiot_scope_close(s);
}

START_TEST(test_sleep_infinity_arms_no_timer)
{
        struct aiot_loop_opts o = { .size = sizeof(o), .virtual_clock = 1 };
        aiot_loop *l;

        ck_assert_int_eq(aiot_loop_new(&l, &o), 0);
        ck_assert_int_eq(aiot_loop_run(l, sleep_inf_main, l), 0);
        aiot_loop_free(l);
}
END_TEST

/* Centuries of virtual time: later deadlines and scope timeouts saturate instead
 * of wrapping around into the past. */
static int far_ahead_main(void *arg)
{
        struct aiot_scope_opts so = { .size = sizeof(so), .timeout = 1e10 };
        double t0 = aiot_now();
        aiot_deadline d;
        aiot_scope *s;

        ck_assert_int_eq(aiot_sleep(1e10), 0);
        ck_assert(aiot_now() - t0 > 9e9);
        ck_assert_int_eq(aiot_deadline_begin(&d, 1e10), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        ck_assert_int_eq(aiot_deadline_end(&d), 0);
        ck_assert_int_eq(aiot_scope_open(&s, &so), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert_int_eq(aiot_deadline_begin(&d, 2), 0);
        ck_assert_int_eq(aiot_sleep(INFINITY), -ETIMEDOUT);
        ck_assert_int_eq(aiot_deadline_end(&d), 1);
        return 0;
}

START_TEST(test_virtual_clock_far_ahead_saturates)
{
        ck_assert_int_eq(run(far_ahead_main, NULL, 1), 0);
}
END_TEST

/* An error handler that blocks and leaves a deadline and a scope behind: both
 * are cleaned up before the child counts as ended. */
static int oe_sleep_rc = 1;

static int oe_sleeper(void *arg)
{
        oe_sleep_rc = aiot_sleep(100);
        return 0;
}

static void leaky_on_error(aiot_task *t, int rc, void *userdata)
{
        aiot_deadline d;
        aiot_scope *s;

        ck_assert_int_eq(aiot_sleep(0.5), 0); /* shielded, may block */
        ck_assert_int_eq(aiot_deadline_begin(&d, 50), 0);
        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, oe_sleeper, NULL, NULL), 0);
}

static int fail_eio(void *arg)
{
        return -EIO;
}

static int on_error_leftover_main(void *arg)
{
        struct aiot_scope_opts o = { .size = sizeof(o), .on_error = leaky_on_error };
        double t0 = aiot_now();
        aiot_deadline d2;
        aiot_scope *s;

        ck_assert_int_eq(aiot_scope_open(&s, &o), 0);
        ck_assert_int_eq(aiot_spawn(s, fail_eio, NULL, NULL), 0);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert_int_eq(oe_sleep_rc, -ECANCELED);
        ck_assert(fabs(aiot_now() - t0 - 0.5) < 1e-6);
        /* No stale deadline is left on the heap. */
        ck_assert_int_eq(aiot_deadline_begin(&d2, 0), 0);
        ck_assert_int_eq(aiot_deadline_end(&d2), 1);
        ck_assert_int_eq(aiot_sleep(100), 0);
        return 0;
}

START_TEST(test_on_error_leftovers_cleaned_up)
{
        ck_assert_int_eq(run(on_error_leftover_main, NULL, 1), 0);
}
END_TEST

START_TEST(test_fresh_loop_in_forked_child)
{
        aiot_loop *l = NULL;

        ck_assert_int_eq(aiot_loop_new(&l, NULL), 0);
        ck_assert_int_eq(aiot_loop_run(l, fork_from_task, l), 0);
        aiot_loop_free(l);
}
END_TEST

/* Every task waits for an event nobody will set and libev watches nothing: the
 * loop must sleep, not spin (it cannot return: the root task has not ended). */
static int wait_unset_event(void *arg)
{
        aiot_event *ev = NULL;

        ck_assert_int_eq(aiot_event_new(&ev), 0);
        return aiot_event_wait(ev);
}

START_TEST(test_deadlock_sleeps_without_spinning)
{
        for (int virtual_clock = 0; virtual_clock <= 1; virtual_clock++) {
                struct rusage ru;
                pid_t pid = fork();
                int st;

                ck_assert_int_ge(pid, 0);
                if (pid == 0)
                        _exit(run(wait_unset_event, NULL, virtual_clock));
                usleep(300 * 1000);
                ck_assert_int_eq(kill(pid, SIGKILL), 0);
                ck_assert_int_eq(wait4(pid, &st, 0, &ru), pid);
                ck_assert(WIFSIGNALED(st)); /* still waiting, as it must */
                /* A spinning loop burns ~0.3 s of CPU here; a sleeping one next to none. */
                ck_assert_int_lt(ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec + ru.ru_stime.tv_sec * 1000000 +
                                         ru.ru_stime.tv_usec,
                                 100000);
        }
}
END_TEST

/* ---- trim.c */

#define TRIM_TASKS 2000
#define TOUCHED (TRIM_TASKS * 16L * 1024) /* stack bytes the burst touches */

static long rss_bytes(void)
{
        long pages = 0, resident = 0;
        FILE *f = fopen("/proc/self/statm", "r");

        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(fscanf(f, "%ld %ld", &pages, &resident), 2);
        fclose(f);
        return resident * sysconf(_SC_PAGESIZE);
}

static int touch_and_park(void *arg)
{
        volatile char frame[16 * 1024];

        memset((char *)frame, 1, sizeof(frame));
        return aiot_event_wait(arg) + frame[100] - 1;
}

/* After a burst of 2000 tasks that each touched 16 KiB of stack, the loop gives
 * that memory back within a few seconds of idling, without any call. */
static int burst_then_idle_main(void *arg)
{
        aiot_event *ev = NULL;
        aiot_scope *s = open_scope();
        long base, peak, now = 0;
        double t0;

        (void)arg;
        ck_assert_int_eq(aiot_event_new(&ev), 0);
        base = rss_bytes();
        for (int i = 0; i < TRIM_TASKS; i++)
                ck_assert_int_eq(aiot_spawn(s, touch_and_park, ev, NULL), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        aiot_event_set(ev);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        peak = rss_bytes();
        ck_assert_int_gt(peak - base, TOUCHED);
        /* Given back within two trim intervals (1 s each); 20 s is the margin.
         * Measured as what went back rather than what is left: under ASan the
         * stacks' shadow memory stays. */
        t0 = wall();
        while (wall() - t0 < 20) {
                ck_assert_int_eq(aiot_sleep(0.1), 0);
                now = rss_bytes();
                if (peak - now > TOUCHED / 2)
                        break;
        }
        ck_assert_msg(peak - now > TOUCHED / 2, "RSS %ld above the start after the burst, %ld at its peak",
                      now - base, peak - base);
        ck_assert_double_gt(wall() - t0, 0.5); /* not at once: only what stayed unused */
        aiot_event_free(ev);
        return 0;
}

START_TEST(test_idle_loop_gives_burst_stacks_back)
{
        ck_assert_int_eq(run(burst_then_idle_main, NULL, 0), 0);
}
END_TEST

/* One case per area of the runtime, named after its file (src/runtime/), so
 * that CK_RUN_CASE=cancel runs the cancellation tests alone. */
static TCase *area_case(Suite *s, const char *name)
{
        TCase *tc = tcase_create(name);

        tcase_set_timeout(tc, 60);
        suite_add_tcase(s, tc);
        return tc;
}


/* ---------------------------------------------------------------- describe */

struct described {
        struct aiot_task_info info[16];
        int n;
};

static void collect(const struct aiot_task_info *ti, void *arg)
{
        struct described *d = arg;

        if (d->n < 16)
                d->info[d->n++] = *ti;
}

static const struct aiot_task_info *find_named(const struct described *d, const char *name)
{
        for (int i = 0; i < d->n; i++)
                if (d->info[i].name && strcmp(d->info[i].name, name) == 0)
                        return &d->info[i];
        return NULL;
}

struct dsc {
        aiot_event *ev, *never;
        aiot_sem *sem;
        aiot_task *sleeper;
        int pipe[2];
};

static int dsc_sleep(void *arg)
{
        return aiot_sleep(30);
}
static int dsc_event(void *arg)
{
        return aiot_event_wait(((struct dsc *)arg)->ev);
}
static int dsc_sem(void *arg)
{
        return aiot_sem_acquire(((struct dsc *)arg)->sem);
}
static int dsc_join(void *arg)
{
        return aiot_join(((struct dsc *)arg)->sleeper, NULL);
}
static int dsc_read(void *arg)
{
        char c;

        return (int)aiot_read(((struct dsc *)arg)->pipe[0], &c, 1);
}
static int dsc_shielded(void *arg)
{
        int r;

        aiot_shield_begin();
        r = aiot_event_wait(((struct dsc *)arg)->never);
        aiot_shield_end();
        return r;
}
static int dsc_deadline(void *arg)
{
        aiot_deadline d;
        int r;

        aiot_deadline_begin(&d, 20.0);
        r = aiot_event_wait(((struct dsc *)arg)->never);
        aiot_deadline_end(&d);
        return r;
}

static int describe_main(void *arg)
{
        aiot_loop *loop = arg;
        struct dsc x = {.pipe = {-1, -1}};
        struct described d = {0};
        struct aiot_spawn_opts o = {.size = sizeof(o)}, old = {.size = offsetof(struct aiot_spawn_opts, name), .name = "x"};
        aiot_task *shielded, *runnable, *unnamed;
        aiot_scope *s;
        char *buf = NULL;
        size_t len = 0;
        FILE *f;

        ck_assert_int_eq(aiot_event_new(&x.ev), 0);
        ck_assert_int_eq(aiot_event_new(&x.never), 0);
        ck_assert_int_eq(aiot_sem_new(&x.sem, 0), 0);
        ck_assert_int_eq(pipe2(x.pipe, O_NONBLOCK | O_CLOEXEC), 0);
        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        o.name = "sleeper";
        ck_assert_int_eq(aiot_spawn_opts(s, dsc_sleep, &x, &o, &x.sleeper), 0);
        o.name = "event";
        ck_assert_int_eq(aiot_spawn_opts(s, dsc_event, &x, &o, NULL), 0);
        o.name = "sem";
        ck_assert_int_eq(aiot_spawn_opts(s, dsc_sem, &x, &o, NULL), 0);
        o.name = "joiner";
        ck_assert_int_eq(aiot_spawn_opts(s, dsc_join, &x, &o, NULL), 0);
        o.name = "reader";
        ck_assert_int_eq(aiot_spawn_opts(s, dsc_read, &x, &o, NULL), 0);
        o.name = "shielded";
        ck_assert_int_eq(aiot_spawn_opts(s, dsc_shielded, &x, &o, &shielded), 0);
        o.name = "deadline";
        ck_assert_int_eq(aiot_spawn_opts(s, dsc_deadline, &x, &o, NULL), 0);
        /* A caller built before the name field: its task has no name. */
        ck_assert_int_eq(aiot_spawn_opts(s, dsc_event, &x, &old, &unnamed), 0);
        for (int i = 0; i < 5; i++)
                aiot_yield();
        aiot_cancel(shielded);
        aiot_cancel(shielded);
        ck_assert_int_eq(aiot_spawn(s, dsc_event, &x, &runnable), 0);
        ck_assert_int_eq(aiot_task_set_name(runnable, "runnable"), 0);
        ck_assert_str_eq(aiot_task_name(runnable), "runnable");
        ck_assert_ptr_null(aiot_task_name(unnamed));
        ck_assert_int_eq(aiot_task_set_name(aiot_current(), "root"), 0);

        ck_assert_int_eq(aiot_loop_describe(loop, collect, &d), 10);
        ck_assert_str_eq(d.info[0].name, "root");
        ck_assert_int_eq(d.info[0].state, AIOT_TASK_RUNNING);
        ck_assert_int_eq(d.info[0].depth, 0);
        ck_assert_ptr_null(d.info[0].parent);
        {
                const struct aiot_task_info *t = find_named(&d, "sleeper");

                ck_assert_ptr_nonnull(t);
                ck_assert_int_eq(t->state, AIOT_TASK_PARKED);
                ck_assert_int_eq(t->wait, AIOT_WAIT_SLEEP);
                ck_assert(t->wake_in > 25 && t->wake_in <= 30);
                ck_assert_int_eq(t->depth, 1);
                ck_assert_ptr_eq(t->parent, aiot_current());
                ck_assert(t->parked_for >= 0 && t->parked_for < 5);
                ck_assert_int_eq(find_named(&d, "event")->wait, AIOT_WAIT_EVENT);
                ck_assert_ptr_eq(find_named(&d, "event")->wait_object, x.ev);
                ck_assert_int_eq(find_named(&d, "sem")->wait, AIOT_WAIT_SEM);
                ck_assert_ptr_eq(find_named(&d, "sem")->wait_object, x.sem);
                ck_assert_int_eq(find_named(&d, "joiner")->wait, AIOT_WAIT_JOIN);
                ck_assert_ptr_eq(find_named(&d, "joiner")->wait_task, x.sleeper);
                ck_assert_int_eq(find_named(&d, "reader")->wait, AIOT_WAIT_FD_READ);
                ck_assert_int_eq(find_named(&d, "reader")->wait_id, x.pipe[0]);
                ck_assert_int_eq(find_named(&d, "shielded")->shielded, 1);
                ck_assert_uint_eq(find_named(&d, "shielded")->cancel_count, 2);
                ck_assert_int_eq(find_named(&d, "shielded")->state, AIOT_TASK_PARKED);
                ck_assert(find_named(&d, "deadline")->deadline_in > 15 && find_named(&d, "deadline")->deadline_in <= 20);
                ck_assert(find_named(&d, "sleeper")->deadline_in < 0);
                ck_assert_int_eq(find_named(&d, "runnable")->state, AIOT_TASK_RUNNABLE);
        }
        f = open_memstream(&buf, &len);
        ck_assert_int_eq(aiot_loop_dump_tasks(loop, f, 0), 10);
        ck_assert_int_eq(aiot_loop_dump_tasks(loop, f, 2), -EINVAL);
        ck_assert_int_eq(aiot_loop_describe(NULL, collect, &d), -EINVAL);
        ck_assert_int_eq(aiot_task_set_name(NULL, "x"), -EINVAL);
        fclose(f);
        ck_assert_msg(strstr(buf, "\n  - sleeper [parked on sleep ("), "%s", buf);
        ck_assert_msg(strstr(buf, "\n  - joiner [parked on end of task 'sleeper' for "), "%s", buf);
        ck_assert_msg(strstr(buf, "\n  - shielded [parked on event ") && strstr(buf, "cancelled x2 shielded\n"), "%s", buf);
        ck_assert_msg(strstr(buf, "readable for "), "%s", buf);
        free(buf);
        buf = NULL;
        f = open_memstream(&buf, &len);
        ck_assert_int_eq(aiot_loop_dump_tasks(loop, f, AIOT_DUMP_JSON), 10);
        fclose(f);
        ck_assert_msg(buf[0] == '[' && buf[len - 1] == ']' && strstr(buf, "\"name\":\"sleeper\"") &&
                              strstr(buf, "\"wait\":\"sleep\"") && strstr(buf, "\"shielded\":true"),
                      "%s", buf);
        free(buf);
        aiot_event_set(x.never);
        aiot_scope_cancel(s);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        close(x.pipe[0]);
        close(x.pipe[1]);
        aiot_event_free(x.ev);
        aiot_event_free(x.never);
        aiot_sem_free(x.sem);
        return 0;
}

START_TEST(test_describe_tasks)
{
        aiot_loop *loop = NULL;

        ck_assert_int_eq(aiot_loop_new(&loop, NULL), 0);
        ck_assert_int_eq(aiot_loop_run(loop, describe_main, loop), 0);
        aiot_loop_free(loop);
}
END_TEST

static Suite *task_suite(void)
{
        Suite *s = suite_create("task");
        TCase *tc;

        tc = area_case(s, "loop");
        tcase_add_test(tc, test_loop_run_returns_result);
        tcase_add_test(tc, test_loop_run_nested_is_busy);
        tcase_add_test(tc, test_fresh_loop_in_forked_child);
        tcase_add_test(tc, test_deadlock_sleeps_without_spinning);
        tcase_add_test(tc, test_virtual_clock_far_ahead_saturates);
        tcase_add_test(tc, test_raw_libev_watchers_beside_tasks);
        tcase_add_test(tc, test_spawn_and_cancel_from_libev_callback);
#ifdef AIOT_TEST_UCONTEXT
        tcase_add_test(tc, test_runs_on_ucontext);
#endif

        tc = area_case(s, "task");
        tcase_add_test(tc, test_spawn_join);
        tcase_add_test(tc, test_join_of_ended_task_with_joiner);
        tcase_add_test(tc, test_many_waiters);
        tcase_add_test(tc, test_join_self_is_edeadlk);
        tcase_add_test(tc, test_100k_spawn_join);
        tcase_add_test(tc, test_spawn_stack_size);
        tcase_add_test(tc, test_spawn_stack_size_is_usable);
        tcase_add_test(tc, test_yield_round_robin);
        tcase_add_test(tc, test_virtual_sleep_hour);
        tcase_add_test(tc, test_virtual_sleepers_in_order);
        tcase_add_test(tc, test_real_sleep);
        tcase_add_test(tc, test_sleep_infinity_arms_no_timer);
        tcase_add_loop_test(tc, test_defer_lifo, 0, 3);
        tcase_add_test(tc, test_stack_overflow_names_task);

        tc = area_case(s, "cancel");
        tcase_add_test(tc, test_cancel_counted_level_triggered);
        tcase_add_test(tc, test_caw_finished_noop);
        tcase_add_test(tc, test_caw_absorbs_target_cancellation);
        tcase_add_test(tc, test_caw_caller_cancelled);
        tcase_add_test(tc, test_caw_caller_deadline);
        tcase_add_test(tc, test_caw_precancelled_caller);
        tcase_add_test(tc, test_caw_waits_out_shielded_cleanup);
        tcase_add_test(tc, test_caw_set_with_failure);
        tcase_add_test(tc, test_caw_set_caller_cancelled);
        tcase_add_test(tc, test_shield_cleanup_survives_two_cancels);
        tcase_add_test(tc, test_shield_nested_defers_to_outermost);
        tcase_add_test(tc, test_shield_self_cancel_by_return);
        tcase_add_test(tc, test_shield_self_request_deferred);

        tc = area_case(s, "deadline");
        tcase_add_test(tc, test_deadlines_nest_and_pierce_shields);
        tcase_add_test(tc, test_deadline_interrupts_event_wait_in_shield);
        tcase_add_test(tc, test_deadline_expires_during_close);
        tcase_add_test(tc, test_return_inside_deadline_with_scope_open);
        tcase_add_test(tc, test_on_error_leftovers_cleaned_up);

        tc = area_case(s, "trim");
        tcase_add_test(tc, test_idle_loop_gives_burst_stacks_back);

        tc = area_case(s, "sync");
        tcase_add_test(tc, test_event_wakes_all_fifo);
        tcase_add_test(tc, test_sem_fifo_and_cancel);
        tcase_add_test(tc, test_describe_tasks);
        return s;
}

int main(void)
{
        return testutil_run(task_suite());
}
