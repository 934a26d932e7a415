/* SPDX-License-Identifier: MIT */
/* timer: periodic ticks on the virtual clock, their delay policies, and stopping a
 * timer whose ticks fail, pile up or never end. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aiotools/log.h"
#include "aiotools/scope.h"
#include "aiotools/task.h"
#include "aiotools/timer.h"
#include "testutil.h"

#define MAX_TICKS 64

struct ticks {
        double t0;
        double interval;
        enum aiot_timer_policy policy;
        int started;      /* ticks that began */
        int live;         /* ticks running now */
        int cancelled;    /* ticks that saw -ECANCELED */
        int finished;     /* ticks that ran to their end */
        double at[MAX_TICKS];
        double cancelled_at[MAX_TICKS];
        double work;      /* how long a tick sleeps */
        int fail_odd;     /* odd ticks return -EIO at once */
        aiot_event *never; /* set: ticks wait on it forever */
};

static int tick(double interval, void *arg)
{
        struct ticks *k = arg;
        int n = k->started++, rc;

        ck_assert_double_eq(interval, k->interval);
        ck_assert_int_lt(n, MAX_TICKS);
        k->at[n] = aiot_now();
        if (k->fail_odd && n % 2)
                return -EIO;
        k->live++;
        if (k->never) {
                /* Stuck: keeps waiting whatever happens, until waiting itself
                 * is refused for good (cancellation is level-triggered). */
                int tries = 0;
                while ((rc = aiot_event_wait(k->never)) != 0 && tries++ < 1000)
                        ;
        } else {
                rc = aiot_sleep(k->work);
        }
        k->live--;
        if (rc == -ECANCELED) {
                k->cancelled_at[n] = aiot_now();
                k->cancelled++;
        } else if (rc == 0) {
                k->finished++;
        }
        return rc;
}

/* Sleeps until t0 + intervals * interval, then stops the timer. */
static void run_for(struct ticks *k, aiot_task *timer, double intervals)
{
        ck_assert_int_eq(aiot_sleep(k->t0 + intervals * k->interval - aiot_now()), 0);
        ck_assert_int_eq(aiot_task_done(timer), 0);
        ck_assert_int_eq(aiot_cancel_and_wait(timer), 0);
}

static aiot_task *start(aiot_scope *s, struct ticks *k, enum aiot_timer_policy policy)
{
        aiot_task *timer = NULL;

        k->t0 = aiot_now();
        ck_assert_int_eq(aiot_timer_start(s, tick, k, k->interval, policy, &timer), 0);
        ck_assert_ptr_nonnull(timer);
        return timer;
}

/* ------------------------------------------------------------ tests */

static int ten_ticks_main(void *arg)
{
        struct ticks *k = arg;
        aiot_scope *s;

        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        run_for(k, start(s, k, k->policy), 9.5);
        return aiot_scope_close(s);
}

START_TEST(test_ten_ticks)
{
        struct ticks k = { .interval = 0.25 };

        ck_assert_int_eq(testutil_run_loop(ten_ticks_main, &k, 1), 0);
        /* Ticks at 0, 1, ..., 9 intervals: exactly 10 in the 10 intervals [0, 10). */
        ck_assert_int_eq(k.started, 10);
        ck_assert_int_eq(k.finished, 10);
        ck_assert_int_eq(k.live, 0);
        for (int i = 0; i < 10; i++)
                ck_assert_double_eq_tol(k.at[i], k.t0 + i * k.interval, 1e-9);
}
END_TEST

START_TEST(test_failing_tick)
{
        struct ticks k = { .interval = 1.0, .fail_odd = 1 };
        int level = aiot_log_get_level();

        /* Failed ticks are logged by the scope's default handler; keep the log quiet. */
        aiot_log_set_level(AIOT_LOG_ERR - 1);
        ck_assert_int_eq(testutil_run_loop(ten_ticks_main, &k, 1), 0);
        aiot_log_set_level(level);
        ck_assert_int_eq(k.started, 10);
        ck_assert_int_eq(k.finished, 5);
        ck_assert_double_eq_tol(k.at[9], k.t0 + 9.0, 1e-9);
}
END_TEST

static int pileup_main(void *arg)
{
        struct ticks *k = arg;
        aiot_scope *s;
        aiot_task *timer;

        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        timer = start(s, k, AIOT_TIMER_DEFAULT);
        ck_assert_int_eq(aiot_sleep(k->t0 + 5.5 * k->interval - aiot_now()), 0);
        /* Every tick is still running: none finished, none was cancelled. */
        ck_assert_int_eq(k->started, 6);
        ck_assert_int_eq(k->live, 6);
        ck_assert_int_eq(k->cancelled, 0);
        ck_assert_int_eq(aiot_cancel_and_wait(timer), 0);
        /* Stopping the timer cancelled and awaited all of them. */
        ck_assert_int_eq(k->live, 0);
        ck_assert_int_eq(k->cancelled, 6);
        ck_assert_double_eq_tol(aiot_now(), k->t0 + 5.5 * k->interval, 1e-9);
        return aiot_scope_close(s);
}

START_TEST(test_default_piles_up)
{
        struct ticks k = { .interval = 1.0, .work = 100.0 };

        ck_assert_int_eq(testutil_run_loop(pileup_main, &k, 1), 0);
        ck_assert_int_eq(k.started, 6);
        ck_assert_int_eq(k.finished, 0);
}
END_TEST

static int cancel_policy_main(void *arg)
{
        struct ticks *k = arg;
        aiot_scope *s;
        aiot_task *timer;

        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        timer = start(s, k, AIOT_TIMER_CANCEL);
        ck_assert_int_eq(aiot_sleep(k->t0 + 4.5 * k->interval - aiot_now()), 0);
        /* Only the newest tick runs; each earlier one was cancelled when its
         * successor was due. */
        ck_assert_int_eq(k->started, 5);
        ck_assert_int_eq(k->live, 1);
        ck_assert_int_eq(k->cancelled, 4);
        for (int i = 0; i < 4; i++)
                ck_assert_double_eq_tol(k->cancelled_at[i], k->t0 + (i + 1) * k->interval, 1e-9);
        ck_assert_int_eq(aiot_cancel_and_wait(timer), 0);
        ck_assert_int_eq(k->live, 0);
        ck_assert_int_eq(k->cancelled, 5);
        return aiot_scope_close(s);
}

START_TEST(test_cancel_policy)
{
        struct ticks k = { .interval = 2.0, .work = 100.0 };

        ck_assert_int_eq(testutil_run_loop(cancel_policy_main, &k, 1), 0);
        ck_assert_int_eq(k.finished, 0);
}
END_TEST

/* Ticks shorter than the interval are not cancelled by the CANCEL policy. */
START_TEST(test_cancel_policy_fast_ticks)
{
        struct ticks k = { .interval = 1.0, .work = 0.5, .policy = AIOT_TIMER_CANCEL };

        ck_assert_int_eq(testutil_run_loop(ten_ticks_main, &k, 1), 0);
        ck_assert_int_eq(k.started, 10);
        ck_assert_int_eq(k.finished, 10);
        ck_assert_int_eq(k.cancelled, 0);
}
END_TEST

static int stuck_main(void *arg)
{
        struct ticks *k = arg;
        aiot_scope *s;
        aiot_task *timer;

        ck_assert_int_eq(aiot_event_new(&k->never), 0);
        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        timer = start(s, k, k->policy);
        ck_assert_int_eq(aiot_sleep(k->t0 + 2.5 * k->interval - aiot_now()), 0);
        ck_assert_int_ge(k->live, 1);
        ck_assert_int_eq(aiot_cancel_and_wait(timer), 0);
        ck_assert_int_eq(k->live, 0);
        /* Nothing had to wait: the clock did not move while stopping. */
        ck_assert_double_eq_tol(aiot_now(), k->t0 + 2.5 * k->interval, 1e-9);
        aiot_event_free(k->never);
        k->never = NULL;
        return aiot_scope_close(s);
}

START_TEST(test_stuck_tick)
{
        struct ticks k = { .interval = 1.0, .policy = (enum aiot_timer_policy)_i };

        ck_assert_int_eq(testutil_run_loop(stuck_main, &k, 1), 0);
        ck_assert_int_eq(k.started, 3);
        ck_assert_int_eq(k.cancelled, 3);
}
END_TEST

/* On the real clock: the third tick arrives no sooner than two intervals in. */
struct real {
        aiot_event *third;
        int n;
};

static int real_tick(double interval, void *arg)
{
        struct real *r = arg;

        if (++r->n == 3)
                aiot_event_set(r->third);
        return 0;
}

static int real_main(void *arg)
{
        struct real *r = arg;
        aiot_scope *s;
        aiot_task *timer;
        double t0 = aiot_now();

        ck_assert_int_eq(aiot_event_new(&r->third), 0);
        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_timer_start(s, real_tick, r, 0.02, AIOT_TIMER_DEFAULT, &timer), 0);
        ck_assert_int_eq(aiot_event_wait(r->third), 0);
        ck_assert_double_ge(aiot_now() - t0, 0.04 - 1e-3);
        ck_assert_double_lt(aiot_now() - t0, 5.0);
        ck_assert_int_eq(aiot_cancel_and_wait(timer), 0);
        aiot_event_free(r->third);
        return aiot_scope_close(s);
}

START_TEST(test_real_clock)
{
        struct real r = { 0 };

        ck_assert_int_eq(testutil_run_loop(real_main, &r, 0), 0);
        ck_assert_int_ge(r.n, 3);
}
END_TEST

/* A period of centuries on a virtual clock already centuries ahead: the next
 * due time saturates instead of wrapping into the past (a burst of ticks). */
static int century_ticks;
static aiot_task *century_timer;

static int century_tick(double interval, void *arg)
{
        /* A burst would never let virtual time move: stop it. */
        if (++century_ticks > 3)
                aiot_cancel(century_timer);
        return 0;
}

static int century_main(void *arg)
{
        aiot_scope *s;

        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_timer_start(s, century_tick, NULL, 1e10, AIOT_TIMER_DEFAULT, &century_timer), 0);
        ck_assert_int_eq(aiot_sleep(1e10), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        ck_assert_int_eq(century_ticks, 2);
        ck_assert_int_eq(aiot_cancel_and_wait(century_timer), 0);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        return 0;
}

START_TEST(test_century_period_saturates)
{
        ck_assert_int_eq(testutil_run_loop(century_main, NULL, 1), 0);
}
END_TEST

static int noop_tick(double interval, void *arg)
{
        return 0;
}

static int invalid_main(void *arg)
{
        aiot_scope *s;
        aiot_task *t = (aiot_task *)&t;

        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_timer_start(s, NULL, NULL, 1.0, AIOT_TIMER_DEFAULT, &t), -EINVAL);
        ck_assert_int_eq(aiot_timer_start(s, noop_tick, NULL, 0.0, AIOT_TIMER_DEFAULT, &t), -EINVAL);
        ck_assert_int_eq(aiot_timer_start(s, noop_tick, NULL, -1.0, AIOT_TIMER_DEFAULT, &t), -EINVAL);
        ck_assert_int_eq(aiot_timer_start(s, noop_tick, NULL, NAN, AIOT_TIMER_DEFAULT, &t), -EINVAL);
        ck_assert_int_eq(aiot_timer_start(s, noop_tick, NULL, INFINITY, AIOT_TIMER_DEFAULT, &t), -EINVAL);
        ck_assert_int_eq(aiot_timer_start(s, noop_tick, NULL, 1.0, (enum aiot_timer_policy)7, &t), -EINVAL);
        ck_assert_int_eq(aiot_timer_start(NULL, noop_tick, NULL, 1.0, AIOT_TIMER_DEFAULT, &t), -EINVAL);
        /* *ret is untouched on failure. */
        ck_assert_ptr_eq(t, (aiot_task *)&t);
        /* A timer started without a handle is stopped by cancelling its scope. */
        ck_assert_int_eq(aiot_timer_start(s, noop_tick, NULL, 1.0, AIOT_TIMER_CANCEL, NULL), 0);
        ck_assert_int_eq(aiot_sleep(3.5), 0);
        ck_assert_int_eq(aiot_scope_cancel(s), 0);
        return aiot_scope_close(s);
}

START_TEST(test_invalid)
{
        ck_assert_int_eq(testutil_run_loop(invalid_main, NULL, 1), 0);
}
END_TEST

static Suite *timer_suite(void)
{
        Suite *s = suite_create("timer");
        TCase *tc = tcase_create("timer");

        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_ten_ticks);
        tcase_add_test(tc, test_failing_tick);
        tcase_add_test(tc, test_default_piles_up);
        tcase_add_test(tc, test_cancel_policy);
        tcase_add_test(tc, test_cancel_policy_fast_ticks);
        tcase_add_loop_test(tc, test_stuck_tick, AIOT_TIMER_DEFAULT, AIOT_TIMER_CANCEL + 1);
        tcase_add_test(tc, test_real_clock);
        tcase_add_test(tc, test_invalid);
        tcase_add_test(tc, test_century_period_saturates);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        return testutil_run(timer_suite());
}
