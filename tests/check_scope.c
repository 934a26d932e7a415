/* SPDX-License-Identifier: MIT */
/* Task scopes: sibling independence, error handler, host cancellation, shielded
 * and timed scopes, move_on_after, fail_fast, gather / as_completed / race.  All
 * on the virtual clock, so every "sleep" is exact and instant.  Built twice, like
 * check_task. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <aiotools/log.h>
#include <aiotools/scope.h>
#include <aiotools/task.h>

#include "testutil.h"

/* Every scope test runs on the virtual clock. */
static int run(aiot_task_fn main, void *arg)
{
        return testutil_run_loop(main, arg, 1);
}

/* What a child did, filled in by the child. */
struct child {
        double secs;    /* sleeps this long */
        int rc;         /* then returns this */
        int sleep_rc;   /* what the sleep returned */
        int finished;   /* reached its end (also after cancellation) */
        double end;     /* loop time at the end */
};

static int child_fn(void *arg)
{
        struct child *c = arg;

        c->sleep_rc = aiot_sleep(c->secs);
        c->finished = 1;
        c->end = aiot_now();
        return c->sleep_rc ? c->sleep_rc : c->rc;
}

struct errors {
        int n;
        int rcs[8];
};

static void record_error(aiot_task *t, int rc, void *userdata)
{
        struct errors *e = userdata;

        ck_assert_ptr_nonnull(t);
        e->rcs[e->n++] = rc;
}

static aiot_scope *open_with(struct errors *e, int shield, int fail_fast, double timeout)
{
        struct aiot_scope_opts o = { .size = sizeof(o),
                                     .shield = shield,
                                     .fail_fast = fail_fast,
                                     .timeout = timeout,
                                     .on_error = record_error,
                                     .userdata = e };
        aiot_scope *s = NULL;

        ck_assert_int_eq(aiot_scope_open(&s, &o), 0);
        return s;
}

/* ---------------------------------------------------------------- siblings */

static int siblings_main(void *arg)
{
        struct errors e = { 0 };
        struct child c[3] = { { .secs = 1, .rc = -EIO }, { .secs = 5 }, { .secs = 7, .rc = 3 } };
        aiot_scope *s = open_with(&e, 0, 0, 0);
        double t0 = aiot_now();

        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(aiot_spawn(s, child_fn, &c[i], NULL), 0);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert(fabs(aiot_now() - t0 - 7) < 1e-6);
        ck_assert_int_eq(c[1].sleep_rc, 0);
        ck_assert_int_eq(c[2].sleep_rc, 0);
        ck_assert_int_eq(e.n, 1);
        ck_assert_int_eq(e.rcs[0], -EIO);
        return 0;
}

START_TEST(test_children_keep_running_when_sibling_fails)
{
        ck_assert_int_eq(run(siblings_main, NULL), 0);
}
END_TEST

static int handler_main(void *arg)
{
        struct errors e = { 0 };
        struct child c[5] = { { .secs = 1, .rc = -EIO },
                              { .secs = 2, .rc = -EPIPE },
                              { .secs = 3, .rc = 0 },
                              { .secs = 4, .rc = -ECANCELED },
                              { .secs = 5, .rc = -ENOENT } };
        aiot_scope *s = open_with(&e, 0, 0, 0);

        for (int i = 0; i < 5; i++)
                ck_assert_int_eq(aiot_spawn(s, child_fn, &c[i], NULL), 0);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert_int_eq(e.n, 3);
        ck_assert_int_eq(e.rcs[0], -EIO);
        ck_assert_int_eq(e.rcs[1], -EPIPE);
        ck_assert_int_eq(e.rcs[2], -ENOENT);
        return 0;
}

START_TEST(test_error_handler_sees_each_failure_once)
{
        ck_assert_int_eq(run(handler_main, NULL), 0);
}
END_TEST

static int self_canceller(void *arg)
{
        int r;

        ck_assert_int_eq(aiot_sleep(1), 0);
        ck_assert_int_eq(aiot_cancel(aiot_current()), 0);
        r = aiot_sleep(10);
        ck_assert_int_eq(r, -ECANCELED);
        return r;
}

static int self_cancel_main(void *arg)
{
        struct errors e = { 0 };
        struct child c[2] = { { .secs = 3, .rc = 1 }, { .secs = 4, .rc = 2 } };
        aiot_scope *s = open_with(&e, 0, 0, 0);
        aiot_task *t;
        int res = 0;

        ck_assert_int_eq(aiot_spawn(s, self_canceller, NULL, &t), 0);
        for (int i = 0; i < 2; i++)
                ck_assert_int_eq(aiot_spawn(s, child_fn, &c[i], NULL), 0);
        ck_assert_int_eq(aiot_join(t, &res), 0);
        ck_assert_int_eq(res, -ECANCELED);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert_int_eq(c[0].sleep_rc, 0);
        ck_assert_int_eq(c[1].sleep_rc, 0);
        ck_assert_int_eq(e.n, 0);
        ck_assert_int_eq(aiot_checkpoint(), 0);
        return 0;
}

START_TEST(test_child_cancelling_itself_leaves_siblings)
{
        ck_assert_int_eq(run(self_cancel_main, NULL), 0);
}
END_TEST

/* ---------------------------------------------------------------- host cancellation */

struct host {
        struct child c[3];
        int close_rc;
        int body_rc;
        int after_rc;
        int shield;
        double timeout;
        double body_secs;
        struct errors e;
};

/* A child whose cancellation cleanup takes 2 s (in a shield). */
static int slow_cleanup_child(void *arg)
{
        struct child *c = arg;

        c->sleep_rc = aiot_sleep(c->secs);
        if (c->sleep_rc == -ECANCELED) {
                aiot_shield_begin();
                ck_assert_int_eq(aiot_sleep(2), 0);
                aiot_shield_end();
        }
        c->finished = 1;
        c->end = aiot_now();
        return c->sleep_rc;
}

static int host_fn(void *arg)
{
        struct host *h = arg;
        aiot_scope *s = open_with(&h->e, h->shield, 0, h->timeout);

        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(aiot_spawn(s, slow_cleanup_child, &h->c[i], NULL), 0);
        h->body_rc = aiot_sleep(h->body_secs);
        h->close_rc = aiot_scope_close(s);
        h->after_rc = aiot_checkpoint();
        return h->close_rc;
}

static int host_cancel_main(void *arg)
{
        struct host *h = arg;
        aiot_scope *s = open_with(&h->e, 0, 0, 0);
        aiot_task *t;
        int res = 0;
        double t0 = aiot_now();

        ck_assert_int_eq(aiot_spawn(s, host_fn, h, &t), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        ck_assert_int_eq(aiot_cancel(t), 0);
        ck_assert_int_eq(aiot_join(t, &res), 0);
        ck_assert_int_eq(res, -ECANCELED);
        ck_assert_int_eq(h->body_rc, -ECANCELED);
        for (int i = 0; i < 3; i++) {
                ck_assert_int_eq(h->c[i].sleep_rc, -ECANCELED);
                ck_assert_int_eq(h->c[i].finished, 1);
                ck_assert(fabs(h->c[i].end - t0 - 3) < 1e-6); /* cancelled at 1, 2 s cleanup */
        }
        ck_assert(fabs(aiot_now() - t0 - 3) < 1e-6);
        return aiot_scope_close(s);
}

START_TEST(test_host_cancel_cancels_and_waits_children)
{
        struct host h = { .c = { { .secs = 100 }, { .secs = 200 }, { .secs = 300 } }, .body_secs = 1000 };

        ck_assert_int_eq(run(host_cancel_main, &h), 0);
        ck_assert_int_eq(h.e.n, 0);
}
END_TEST

/* The host is cancelled while already waiting in close. */
static int close_wait_host(void *arg)
{
        struct host *h = arg;
        aiot_scope *s = open_with(&h->e, 0, 0, 0);

        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(aiot_spawn(s, slow_cleanup_child, &h->c[i], NULL), 0);
        h->close_rc = aiot_scope_close(s);
        return h->close_rc;
}

static int close_cancel_main(void *arg)
{
        struct host *h = arg;
        aiot_scope *s = open_with(&h->e, 0, 0, 0);
        aiot_task *t;
        int res = 0;

        ck_assert_int_eq(aiot_spawn(s, close_wait_host, h, &t), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        ck_assert_int_eq(aiot_cancel_and_wait(t), 0);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(h->c[i].finished, 1);
        ck_assert_int_eq(h->close_rc, -ECANCELED);
        (void)res;
        return aiot_scope_close(s);
}

START_TEST(test_host_cancel_while_in_close)
{
        struct host h = { .c = { { .secs = 100 }, { .secs = 200 }, { .secs = 300 } } };

        ck_assert_int_eq(run(close_cancel_main, &h), 0);
}
END_TEST

static int shielded_scope_main(void *arg)
{
        struct host *h = arg;
        aiot_scope *s = open_with(&h->e, 0, 0, 0);
        aiot_task *t;
        int res = 0;
        double t0 = aiot_now();

        ck_assert_int_eq(aiot_spawn(s, host_fn, h, &t), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        ck_assert_int_eq(aiot_cancel(t), 0);
        ck_assert_int_eq(aiot_join(t, &res), 0);
        /* The body and the children ran undisturbed ... */
        ck_assert_int_eq(h->body_rc, 0);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(h->c[i].sleep_rc, 0);
        ck_assert(fabs(aiot_now() - t0 - 5) < 1e-6);
        /* ... and the host saw the cancellation when the scope ended. */
        ck_assert_int_eq(h->close_rc, -ECANCELED);
        ck_assert_int_eq(h->after_rc, -ECANCELED);
        ck_assert_int_eq(res, -ECANCELED);
        return aiot_scope_close(s);
}

START_TEST(test_shielded_scope_defers_host_cancellation)
{
        struct host h = { .c = { { .secs = 3 }, { .secs = 4 }, { .secs = 5 } }, .shield = 1, .body_secs = 2 };

        ck_assert_int_eq(run(shielded_scope_main, &h), 0);
}
END_TEST

static int timeout_main(void *arg)
{
        struct host *h = arg;
        double t0 = aiot_now();

        ck_assert_int_eq(host_fn(h), -ETIMEDOUT);
        ck_assert_int_eq(h->body_rc, -ETIMEDOUT);
        for (int i = 0; i < 3; i++) {
                ck_assert_int_eq(h->c[i].sleep_rc, -ECANCELED);
                ck_assert(fabs(h->c[i].end - t0 - 4) < 1e-6); /* timeout 2 + cleanup 2 */
        }
        /* Past the scope, the timeout is gone. */
        ck_assert_int_eq(h->after_rc, 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        return 0;
}

START_TEST(test_scope_timeout_cancels_children_even_shielded)
{
        struct host h = { .c = { { .secs = 100 }, { .secs = 100 }, { .secs = 100 } },
                          .shield = 1,
                          .timeout = 2,
                          .body_secs = 50 };

        ck_assert_int_eq(run(timeout_main, &h), 0);
}
END_TEST

static int move_on_main(void *arg)
{
        struct errors e = { 0 };
        struct child c[2] = { { .secs = 100 }, { .secs = 1, .rc = 4 } };
        aiot_deadline d;
        aiot_scope *s;
        double t0 = aiot_now();

        ck_assert_int_eq(aiot_deadline_begin(&d, 3), 0);
        s = open_with(&e, 0, 0, 0);
        for (int i = 0; i < 2; i++)
                ck_assert_int_eq(aiot_spawn(s, child_fn, &c[i], NULL), 0);
        ck_assert_int_eq(aiot_sleep(100), -ETIMEDOUT);
        ck_assert_int_eq(aiot_deadline_end(&d), -EBUSY); /* the scope inside it is open */
        ck_assert_int_eq(aiot_scope_close(s), -ETIMEDOUT);
        ck_assert_int_eq(aiot_deadline_end(&d), 1);
        ck_assert(fabs(aiot_now() - t0 - 3) < 1e-6);
        ck_assert_int_eq(c[0].sleep_rc, -ECANCELED);
        ck_assert_int_eq(c[1].sleep_rc, 0);
        ck_assert_int_eq(e.n, 0);
        /* Quietly past it. */
        ck_assert_int_eq(aiot_checkpoint(), 0);
        ck_assert_int_eq(aiot_sleep(1), 0);
        return 0;
}

START_TEST(test_move_on_after_ends_body_quietly)
{
        ck_assert_int_eq(run(move_on_main, NULL), 0);
}
END_TEST

/* A deadline begun inside the scope's body does not cancel its children. */
static int inner_deadline_main(void *arg)
{
        struct errors e = { 0 };
        struct child c = { .secs = 5 };
        aiot_scope *s = open_with(&e, 0, 0, 0);
        aiot_deadline d;

        ck_assert_int_eq(aiot_spawn(s, child_fn, &c, NULL), 0);
        ck_assert_int_eq(aiot_deadline_begin(&d, 1), 0);
        ck_assert_int_eq(aiot_sleep(100), -ETIMEDOUT);
        ck_assert_int_eq(aiot_deadline_end(&d), 1);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert_int_eq(c.sleep_rc, 0);
        return 0;
}

START_TEST(test_inner_deadline_spares_children)
{
        ck_assert_int_eq(run(inner_deadline_main, NULL), 0);
}
END_TEST

/* ---------------------------------------------------------------- nested shielded scopes */

struct nest {
        struct errors e;
        struct child leaf;
        int mid_body_rc, mid_close_rc, mid_cancelling;
        int top_close_rc, top_after_rc;
};

static int mid_fn(void *arg)
{
        struct nest *n = arg;
        aiot_scope *s = open_with(&n->e, 1, 0, 0);

        ck_assert_int_eq(aiot_spawn(s, child_fn, &n->leaf, NULL), 0);
        n->mid_body_rc = aiot_sleep(2);
        n->mid_close_rc = aiot_scope_close(s);
        n->mid_cancelling = aiot_cancelling(aiot_current());
        return n->mid_close_rc;
}

static int top_fn(void *arg)
{
        struct nest *n = arg;
        aiot_scope *s = open_with(&n->e, 1, 0, 0);

        ck_assert_int_eq(aiot_spawn(s, mid_fn, n, NULL), 0);
        n->top_close_rc = aiot_scope_close(s);
        n->top_after_rc = aiot_sleep(1);
        return n->top_close_rc;
}

static int nested_main(void *arg)
{
        struct nest *n = arg;
        struct errors e = { 0 };
        aiot_scope *s = open_with(&e, 0, 0, 0);
        aiot_task *t;
        int res = 0;

        ck_assert_int_eq(aiot_spawn(s, top_fn, n, &t), 0);
        ck_assert_int_eq(aiot_sleep(0.5), 0);
        ck_assert_int_eq(aiot_cancel(t), 0);
        ck_assert_int_eq(aiot_join(t, &res), 0);
        ck_assert_int_eq(res, -ECANCELED);
        ck_assert_int_eq(n->leaf.sleep_rc, 0);
        ck_assert_int_eq(n->mid_body_rc, 0);
        ck_assert_int_eq(n->mid_close_rc, 0);
        ck_assert_int_eq(n->mid_cancelling, 0);
        ck_assert_int_eq(n->top_close_rc, -ECANCELED);
        ck_assert_int_eq(n->top_after_rc, -ECANCELED);
        return aiot_scope_close(s);
}

START_TEST(test_nested_shielded_scopes)
{
        struct nest n = { .leaf = { .secs = 3 } };

        ck_assert_int_eq(run(nested_main, &n), 0);
        ck_assert_int_eq(n.e.n, 0);
}
END_TEST

/* ---------------------------------------------------------------- fail_fast */

static int fail_fast_main(void *arg)
{
        struct errors e = { 0 };
        struct child c[3] = { { .secs = 100 }, { .secs = 1, .rc = -EIO }, { .secs = 2, .rc = -EPIPE } };
        aiot_scope *s = open_with(&e, 0, 1, 0);
        double t0 = aiot_now();

        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(aiot_spawn(s, child_fn, &c[i], NULL), 0);
        ck_assert_int_eq(aiot_scope_close(s), -EIO);
        ck_assert(fabs(aiot_now() - t0 - 1) < 1e-6);
        ck_assert_int_eq(c[0].sleep_rc, -ECANCELED);
        ck_assert_int_eq(c[2].sleep_rc, -ECANCELED);
        ck_assert_int_eq(e.n, 1);
        ck_assert_int_eq(aiot_checkpoint(), 0);
        return 0;
}

START_TEST(test_fail_fast_cancels_siblings)
{
        ck_assert_int_eq(run(fail_fast_main, NULL), 0);
}
END_TEST

/* ---------------------------------------------------------------- scope rules */

static int scope_rules_main(void *arg)
{
        struct errors e = { 0 };
        struct child c = { .secs = 5 }, d = { .secs = 1, .rc = 8 };
        aiot_scope *outer = open_with(&e, 0, 0, 0), *inner = open_with(&e, 0, 0, 0);
        aiot_task *t;
        int res = 0;

        ck_assert_int_eq(aiot_scope_close(outer), -EINVAL); /* not the innermost */
        ck_assert_int_eq(aiot_scope_close(inner), 0);
        /* A handle outlives its task until joined or the scope closes. */
        ck_assert_int_eq(aiot_spawn(outer, child_fn, &d, &t), 0);
        ck_assert_int_eq(aiot_sleep(2), 0);
        ck_assert_int_eq(aiot_task_done(t), 1);
        ck_assert_int_eq(aiot_task_result(t, &res), 0);
        ck_assert_int_eq(res, 8);
        /* Spawning into a cancelled scope starts the task cancelled. */
        ck_assert_int_eq(aiot_scope_cancel(outer), 0);
        ck_assert_int_eq(aiot_spawn(outer, child_fn, &c, NULL), 0);
        ck_assert_int_eq(aiot_scope_close(outer), 0); /* its own cancel is absorbed */
        ck_assert_int_eq(c.sleep_rc, -ECANCELED);
        ck_assert_int_eq(aiot_scope_cancel(NULL), -EINVAL);
        ck_assert_int_eq(aiot_scope_close(NULL), -EINVAL);
        {
                struct aiot_scope_opts o = { .size = sizeof(o), .timeout = -1 };
                aiot_scope *x;

                ck_assert_int_eq(aiot_scope_open(&x, &o), -EINVAL);
        }
        return 0;
}

START_TEST(test_scope_rules)
{
        aiot_scope *s;

        ck_assert_int_eq(run(scope_rules_main, NULL), 0);
        ck_assert_int_eq(aiot_scope_open(&s, NULL), -EPERM);
}
END_TEST

static int forgetful(void *arg)
{
        aiot_scope *s;

        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, child_fn, arg, NULL), 0);
        return 0; /* the runtime closes s: cancels and waits */
}

static int forgetful_main(void *arg)
{
        struct child *c = arg;
        aiot_scope *s;
        aiot_task *t;

        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, forgetful, c, &t), 0);
        ck_assert_int_eq(aiot_join(t, NULL), 0);
        ck_assert_int_eq(c->finished, 1);
        ck_assert_int_eq(c->sleep_rc, -ECANCELED);
        return aiot_scope_close(s);
}

START_TEST(test_scope_left_open_is_closed_at_task_end)
{
        struct child c = { .secs = 100 };

        ck_assert_int_eq(run(forgetful_main, &c), 0);
}
END_TEST

/* ---------------------------------------------------------------- helpers */

static int gather_main(void *arg)
{
        struct child c[4] = { { .secs = 3, .rc = 1 }, { .secs = 1, .rc = -EIO }, { .secs = 2, .rc = 3 },
                              { .secs = 0, .rc = -ENOENT } };
        aiot_task_fn fns[4] = { child_fn, child_fn, child_fn, child_fn };
        void *args[4] = { &c[0], &c[1], &c[2], &c[3] };
        int res[4] = { 0 };

        ck_assert_int_eq(aiot_gather(4, fns, args, res), 0);
        ck_assert_int_eq(res[0], 1);
        ck_assert_int_eq(res[1], -EIO);
        ck_assert_int_eq(res[2], 3);
        ck_assert_int_eq(res[3], -ENOENT);
        ck_assert_int_eq(aiot_gather(0, NULL, NULL, NULL), 0);
        ck_assert_int_eq(aiot_gather(1, NULL, NULL, res), -EINVAL);
        return 0;
}

START_TEST(test_gather_reports_results_and_errors)
{
        ck_assert_int_eq(run(gather_main, NULL), 0);
}
END_TEST

static int gather_cancel_host(void *arg)
{
        struct child *c = arg;
        aiot_task_fn fns[2] = { child_fn, child_fn };
        void *args[2] = { &c[0], &c[1] };
        int res[2];
        int r = aiot_gather(2, fns, args, res);

        ck_assert_int_eq(r, -ECANCELED);
        ck_assert_int_eq(res[0], 2);
        ck_assert_int_eq(res[1], -ECANCELED);
        return r;
}

static int gather_cancel_main(void *arg)
{
        struct child c[2] = { { .secs = 1, .rc = 2 }, { .secs = 100 } };
        aiot_scope *s;
        aiot_task *t;

        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, gather_cancel_host, c, &t), 0);
        ck_assert_int_eq(aiot_sleep(5), 0);
        ck_assert_int_eq(aiot_cancel_and_wait(t), 0);
        ck_assert_int_eq(c[1].finished, 1);
        return aiot_scope_close(s);
}

START_TEST(test_gather_cancelled_waits_for_all)
{
        ck_assert_int_eq(run(gather_cancel_main, NULL), 0);
}
END_TEST

static int as_completed_main(void *arg)
{
        struct child c[3] = { { .secs = 3, .rc = 30 }, { .secs = 1, .rc = -EIO }, { .secs = 2, .rc = 20 } };
        aiot_task_fn fns[3] = { child_fn, child_fn, child_fn };
        void *args[3] = { &c[0], &c[1], &c[2] };
        aiot_as_completed *ac;
        size_t idx = 9;
        int res = 0;
        double t0 = aiot_now();

        ck_assert_int_eq(aiot_as_completed_open(&ac, 3, fns, args), 0);
        ck_assert_int_eq(aiot_as_completed_next(ac, &idx, &res), 0);
        ck_assert_uint_eq(idx, 1);
        ck_assert_int_eq(res, -EIO);
        ck_assert(fabs(aiot_now() - t0 - 1) < 1e-6);
        ck_assert_int_eq(aiot_as_completed_next(ac, &idx, &res), 0);
        ck_assert_uint_eq(idx, 2);
        ck_assert_int_eq(res, 20);
        ck_assert_int_eq(aiot_as_completed_next(ac, &idx, &res), 0);
        ck_assert_uint_eq(idx, 0);
        ck_assert_int_eq(res, 30);
        ck_assert_int_eq(aiot_as_completed_next(ac, &idx, &res), -ENOENT);
        ck_assert_int_eq(aiot_as_completed_close(ac), 0);

        /* Closing early cancels what still runs and waits for it. */
        memset(c, 0, sizeof(c));
        c[0].secs = 1;
        c[1].secs = 100;
        c[2].secs = 200;
        ck_assert_int_eq(aiot_as_completed_open(&ac, 3, fns, args), 0);
        ck_assert_int_eq(aiot_as_completed_next(ac, &idx, NULL), 0);
        ck_assert_uint_eq(idx, 0);
        ck_assert_int_eq(aiot_as_completed_close(ac), 0);
        ck_assert_int_eq(c[1].sleep_rc, -ECANCELED);
        ck_assert_int_eq(c[2].sleep_rc, -ECANCELED);
        ck_assert_int_eq(aiot_as_completed_close(NULL), 0);
        return 0;
}

START_TEST(test_as_completed_in_completion_order)
{
        ck_assert_int_eq(run(as_completed_main, NULL), 0);
}
END_TEST

/* A close refused because a later scope is still open cancels nothing. */
static int ac_busy_main(void *arg)
{
        struct child c[2] = { { .secs = 1, .rc = 1 }, { .secs = 2, .rc = 2 } };
        aiot_task_fn fns[2] = { child_fn, child_fn };
        void *args[2] = { &c[0], &c[1] };
        aiot_as_completed *ac;
        aiot_scope *inner;
        size_t idx = 9;

        ck_assert_int_eq(aiot_as_completed_open(&ac, 2, fns, args), 0);
        ck_assert_int_eq(aiot_scope_open(&inner, NULL), 0);
        ck_assert_int_eq(aiot_as_completed_close(ac), -EBUSY);
        ck_assert_int_eq(aiot_scope_close(inner), 0);
        ck_assert_int_eq(aiot_as_completed_next(ac, &idx, NULL), 0);
        ck_assert_uint_eq(idx, 0);
        ck_assert_int_eq(aiot_as_completed_next(ac, &idx, NULL), 0);
        ck_assert_uint_eq(idx, 1);
        ck_assert_int_eq(c[0].sleep_rc, 0);
        ck_assert_int_eq(c[1].sleep_rc, 0);
        return aiot_as_completed_close(ac);
}

START_TEST(test_as_completed_close_busy_cancels_nothing)
{
        ck_assert_int_eq(run(ac_busy_main, NULL), 0);
}
END_TEST

static int running;

static void dec_running(void *arg)
{
        running--;
}

static int racer(void *arg)
{
        struct child *c = arg;

        running++;
        ck_assert_int_eq(aiot_defer(dec_running, NULL), 0);
        return child_fn(c);
}

static int race_main(void *arg)
{
        struct child c[4] = { { .secs = 1, .rc = -EIO }, { .secs = 3, .rc = 30 }, { .secs = 2, .rc = 7 },
                              { .secs = 50, .rc = 5 } };
        aiot_task_fn fns[4] = { racer, racer, racer, racer };
        void *args[4] = { &c[0], &c[1], &c[2], &c[3] };
        size_t winner = 99;
        int res = 0;
        double t0 = aiot_now();

        ck_assert_int_eq(aiot_race(4, fns, args, &winner, &res), 0);
        ck_assert_uint_eq(winner, 2);
        ck_assert_int_eq(res, 7);
        ck_assert(fabs(aiot_now() - t0 - 2) < 1e-6);
        ck_assert_int_eq(running, 0);
        ck_assert_int_eq(c[1].sleep_rc, -ECANCELED);
        ck_assert_int_eq(c[3].sleep_rc, -ECANCELED);

        /* All fail: the first error, no winner. */
        memset(c, 0, sizeof(c));
        c[0] = (struct child){ .secs = 2, .rc = -EIO };
        c[1] = (struct child){ .secs = 1, .rc = -EPIPE };
        winner = 99;
        ck_assert_int_eq(aiot_race(2, fns, args, &winner, &res), -EPIPE);
        ck_assert_uint_eq(winner, 99);
        ck_assert_int_eq(running, 0);
        ck_assert_int_eq(aiot_race(0, fns, args, &winner, &res), -EINVAL);
        return 0;
}

START_TEST(test_race_first_success_wins)
{
        ck_assert_int_eq(run(race_main, NULL), 0);
}
END_TEST

/* A task outside a scope joins one of its children while the host closes the
 * scope: the joiner, not the closing scope, releases the child. */
struct outside {
        aiot_task *child;
        int rc, res;
};

static int outside_joiner(void *arg)
{
        struct outside *o = arg;

        o->rc = aiot_join(o->child, &o->res);
        return 0;
}

static int outside_main(void *arg)
{
        struct outside o = { .rc = 1 };
        struct child c = { .secs = 1, .rc = 6 };
        aiot_scope *outer, *inner;
        aiot_task *j;

        ck_assert_int_eq(aiot_scope_open(&outer, NULL), 0);
        ck_assert_int_eq(aiot_scope_open(&inner, NULL), 0);
        ck_assert_int_eq(aiot_spawn(inner, child_fn, &c, &o.child), 0);
        ck_assert_int_eq(aiot_spawn(outer, outside_joiner, &o, &j), 0);
        ck_assert_int_eq(aiot_scope_close(inner), 0);
        ck_assert_int_eq(aiot_join(j, NULL), 0);
        ck_assert_int_eq(o.rc, 0);
        ck_assert_int_eq(o.res, 6);
        return aiot_scope_close(outer);
}

START_TEST(test_join_from_outside_while_scope_closes)
{
        ck_assert_int_eq(run(outside_main, NULL), 0);
}
END_TEST

/* ---- aiot_scope_drain */

static int drain_in_time_main(void *arg)
{
        struct child a = {.secs = 1}, b = {.secs = 2};
        aiot_scope *s;
        double t0 = aiot_now();

        (void)arg;
        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_scope_drain(s, 0.5), 0); /* no child: at once */
        ck_assert_int_eq(aiot_spawn(s, child_fn, &a, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, child_fn, &b, NULL), 0);
        ck_assert_int_eq(aiot_scope_drain(s, 5), 0);
        ck_assert_double_eq_tol(aiot_now() - t0, 2.0, 1e-6);
        ck_assert(a.finished && b.finished && a.sleep_rc == 0 && b.sleep_rc == 0);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        return 0;
}

START_TEST(test_drain_all_end_in_time)
{
        ck_assert_int_eq(run(drain_in_time_main, NULL), 0);
}
END_TEST

static int drain_cut_main(void *arg)
{
        struct child a = {.secs = 1}, b = {.secs = 10}, later = {.secs = 1};
        aiot_scope *s;
        double t0 = aiot_now();

        (void)arg;
        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, child_fn, &a, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, child_fn, &b, NULL), 0);
        ck_assert_int_eq(aiot_scope_drain(s, 3), -ETIMEDOUT);
        ck_assert_double_eq_tol(aiot_now() - t0, 3.0, 1e-6);
        ck_assert_int_eq(a.sleep_rc, 0);
        ck_assert(b.finished);
        ck_assert_int_eq(b.sleep_rc, -ECANCELED);
        /* The scope stays open, and a child spawned now is not cancelled. */
        ck_assert_int_eq(aiot_spawn(s, child_fn, &later, NULL), 0);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert_int_eq(later.sleep_rc, 0);
        ck_assert_double_eq_tol(aiot_now() - t0, 4.0, 1e-6);
        return 0;
}

START_TEST(test_drain_cancels_the_rest_after_the_time)
{
        ck_assert_int_eq(run(drain_cut_main, NULL), 0);
}
END_TEST

static int cancel_after_1s(void *arg)
{
        aiot_sleep(1);
        aiot_cancel(arg);
        return 0;
}

static int drain_cancelled_main(void *arg)
{
        struct child a = {.secs = 10};
        aiot_scope *s, *helper;
        double t0 = aiot_now();

        (void)arg;
        ck_assert_int_eq(aiot_scope_open(&helper, NULL), 0);
        ck_assert_int_eq(aiot_spawn(helper, cancel_after_1s, aiot_current(), NULL), 0);
        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, child_fn, &a, NULL), 0);
        ck_assert_int_eq(aiot_scope_drain(s, 5), -ECANCELED);
        /* Cancelled at 1 s, not at the drain time, and waited for. */
        ck_assert_double_eq_tol(aiot_now() - t0, 1.0, 1e-6);
        ck_assert(a.finished);
        ck_assert_int_eq(a.sleep_rc, -ECANCELED);
        ck_assert_int_eq(aiot_scope_close(s), -ECANCELED);
        aiot_scope_close(helper);
        return 0;
}

START_TEST(test_drain_host_cancelled)
{
        ck_assert_int_eq(run(drain_cancelled_main, NULL), 0);
}
END_TEST

static int drain_rules_main(void *arg)
{
        aiot_scope *s;

        (void)arg;
        ck_assert_int_eq(aiot_scope_drain(NULL, 1), -EINVAL);
        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_scope_drain(s, NAN), -EINVAL);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        return 0;
}

START_TEST(test_drain_rules)
{
        ck_assert_int_eq(run(drain_rules_main, NULL), 0);
}
END_TEST

/* One case per file of the runtime: scope.c, gather.c, drain.c. */
static Suite *scope_suite(void)
{
        Suite *s = suite_create("scope");
        TCase *tc = tcase_create("scope");

        tcase_add_test(tc, test_children_keep_running_when_sibling_fails);
        tcase_add_test(tc, test_error_handler_sees_each_failure_once);
        tcase_add_test(tc, test_child_cancelling_itself_leaves_siblings);
        tcase_add_test(tc, test_host_cancel_cancels_and_waits_children);
        tcase_add_test(tc, test_host_cancel_while_in_close);
        tcase_add_test(tc, test_shielded_scope_defers_host_cancellation);
        tcase_add_test(tc, test_scope_timeout_cancels_children_even_shielded);
        tcase_add_test(tc, test_move_on_after_ends_body_quietly);
        tcase_add_test(tc, test_inner_deadline_spares_children);
        tcase_add_test(tc, test_nested_shielded_scopes);
        tcase_add_test(tc, test_fail_fast_cancels_siblings);
        tcase_add_test(tc, test_scope_rules);
        tcase_add_test(tc, test_scope_left_open_is_closed_at_task_end);
        tcase_add_test(tc, test_join_from_outside_while_scope_closes);
        suite_add_tcase(s, tc);

        tc = tcase_create("gather");
        tcase_add_test(tc, test_gather_reports_results_and_errors);
        tcase_add_test(tc, test_gather_cancelled_waits_for_all);
        tcase_add_test(tc, test_as_completed_in_completion_order);
        tcase_add_test(tc, test_as_completed_close_busy_cancels_nothing);
        tcase_add_test(tc, test_race_first_success_wins);
        suite_add_tcase(s, tc);

        tc = tcase_create("drain");
        tcase_add_test(tc, test_drain_all_end_in_time);
        tcase_add_test(tc, test_drain_cancels_the_rest_after_the_time);
        tcase_add_test(tc, test_drain_host_cancelled);
        tcase_add_test(tc, test_drain_rules);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        return testutil_run(scope_suite());
}
