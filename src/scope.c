/* SPDX-License-Identifier: MIT */
/* Task scopes (structured concurrency) and gather / as_completed / race.
 *
 * A scope keeps a list of its children: every live one, and every ended one whose
 * handle the spawner still holds.  Ended children without a handle leave the list
 * (and are freed) as they end; joined ones when they are joined; the rest when the
 * scope closes.  The host is the task that opened the scope; its open scopes form
 * a stack (task->hosted, scope->outer), so that a cancellation delivered to the
 * host, or an expiring deadline around a scope, reaches the scope's children. */
#define AIOT__TASK_PRIVATE 1

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "aiotools/log.h"
#include "macro.h"
#include "task-internal.h"

/* ---------------------------------------------------------------- membership */

static void child_link(aiot_scope *s, aiot_task *t)
{
        t->scope = s;
        t->sc_prev = NULL;
        t->sc_next = s->children;
        if (s->children)
                s->children->sc_prev = t;
        s->children = t;
}

static void child_unlink(aiot_task *t)
{
        aiot_scope *s = t->scope;

        if (!s)
                return;
        if (t->sc_prev)
                t->sc_prev->sc_next = t->sc_next;
        else
                s->children = t->sc_next;
        if (t->sc_next)
                t->sc_next->sc_prev = t->sc_prev;
        t->scope = NULL;
}

void aiot__scope_release_child(aiot_task *t)
{
        child_unlink(t);
        aiot__task_free(t);
}

/* ---------------------------------------------------------------- spawn */

/* Creates a task in s: a member of the scope, live, and cancelled at once when
 * the scope already is.  *ret is only set on success.  Inlined: aiot_spawn() is
 * on the spawn / join fast path, and a call level here measurably costs. */
static inline __attribute__((always_inline)) int spawn_into(aiot_scope *s, aiot_task_fn fn, void *arg, size_t stack_size, int want_handle,
                      aiot_task **ret)
{
        aiot_task *t;
        int r = aiot__task_new(s, fn, arg, stack_size, want_handle, &t);

        if (r < 0)
                return r;
        child_link(s, t);
        s->live++;
        if (s->cancelled)
                aiot_cancel(t);
        *ret = t;
        return 0;
}

int aiot_spawn_opts(aiot_scope *s, aiot_task_fn fn, void *arg, const struct aiot_spawn_opts *opts,
                    aiot_task **ret)
{
        size_t stack_size = 0;
        aiot_task *t;
        int r;

        aiot__return_if(!s || !fn, -EINVAL);
        /* Scopes are per loop, and so per thread. */
        aiot__return_if(aiot__loop_current() && aiot__loop_current() != s->loop, -EINVAL);
        if (opts) {
                aiot__return_if(opts->size < offsetof(struct aiot_spawn_opts, stack_size) + sizeof(size_t),
                                -EINVAL);
                stack_size = opts->stack_size;
        }
        r = spawn_into(s, fn, arg, stack_size, ret != NULL, &t);
        if (r < 0)
                return r;
        if (ret)
                *ret = t;
        return 0;
}

int aiot_spawn(aiot_scope *s, aiot_task_fn fn, void *arg, aiot_task **ret)
{
        return aiot_spawn_opts(s, fn, arg, NULL, ret);
}

/* Spawns without a handle but tags the task, for the helpers below: the pointer is
 * only used before the task can run. */
static int spawn_tagged(aiot_scope *s, aiot_task_fn fn, void *arg, size_t tag)
{
        aiot_task *t;
        int r = spawn_into(s, fn, arg, 0, 0, &t);

        if (r == 0)
                t->tag = tag;
        return r;
}

/* ---------------------------------------------------------------- cancel */

int aiot_scope_cancel(aiot_scope *s)
{
        aiot__return_if(!s, -EINVAL);
        s->cancelled = 1;
        for (aiot_task *t = s->children; t; t = t->sc_next)
                aiot_cancel(t);
        return 0;
}

static int deadline_encloses(const struct aiot__deadline *d, const aiot_scope *s)
{
        for (const struct aiot__deadline *x = s->dl_at_open; x; x = x->prev)
                if (x == d)
                        return 1;
        return 0;
}

int aiot__scope_inside_deadline(aiot_task *host, const struct aiot__deadline *d)
{
        for (aiot_scope *s = host->hosted; s; s = s->outer)
                if (deadline_encloses(d, s))
                        return 1;
        return 0;
}

void aiot__scope_cancel_hosted(aiot_task *host, struct aiot__deadline *d)
{
        for (aiot_scope *s = host->hosted; s; s = s->outer)
                if (!d || deadline_encloses(d, s))
                        aiot_scope_cancel(s);
}

/* ---------------------------------------------------------------- child end */

static void default_on_error(aiot_task *t, int rc, void *userdata)
{
        aiot_log(AIOT_LOG_INFO, "task %p failed: %s (no error handler in its scope)", (void *)t, strerror(-rc));
}

int aiot__scope_child_done(aiot_task *t)
{
        aiot_scope *s = t->scope;
        int rc = t->result;

        if (!(rc < 0 && rc != -ECANCELED) && !s->done_hook) {
                aiot__scope_child_ended(t);
                return 0;
        }
        if (rc < 0 && rc != -ECANCELED) {
                if (s->fail_fast && !s->first_error) {
                        s->first_error = rc;
                        aiot_scope_cancel(s);
                }
                if (s->on_error)
                        s->on_error(t, rc, s->userdata);
                else
                        default_on_error(t, rc, NULL);
        }
        if (s->done_hook)
                s->done_hook(s, t);
        return 1;
}

void aiot__scope_child_ended(aiot_task *t)
{
        aiot_scope *s = t->scope;

        assert(s->live > 0);
        if (--s->live == 0 && s->closing)
                aiot__wake(s->host, 0);
}

/* ---------------------------------------------------------------- open / close */

int aiot_scope_open(aiot_scope **ret, const struct aiot_scope_opts *opts)
{
        aiot_task *host = aiot__task_current();
        aiot_scope *s;

        aiot__return_if(!ret, -EINVAL);
        if (opts) {
                aiot__return_if(opts->size < offsetof(struct aiot_scope_opts, userdata) + sizeof(void *), -EINVAL);
                aiot__return_if(isnan(opts->timeout) || opts->timeout < 0, -EINVAL);
        }
        if (!host)
                return -EPERM;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->loop = aiot__task_loop(host);
        s->host = host;
        if (opts) {
                s->shield = !!opts->shield;
                s->fail_fast = !!opts->fail_fast;
                s->on_error = opts->on_error;
                s->userdata = opts->userdata;
        }
        if (s->shield)
                aiot_shield_begin();
        if (opts && opts->timeout > 0 && !isinf(opts->timeout)) {
                s->has_timeout = 1;
                aiot__deadline_begin_ns(&s->timeout, aiot__at_from_now(s->loop, opts->timeout));
        }
        s->dl_at_open = host->deadlines;
        s->outer = host->hosted;
        host->hosted = s;
        /* A host already cancelled (and not shielded by this scope) or past a deadline
         * gets children that start cancelled. */
        if (aiot__task_cancelled(host) || aiot__task_deadline_expired(host))
                s->cancelled = 1;
        *ret = s;
        return 0;
}

int aiot_scope_close(aiot_scope *s)
{
        aiot_task *host = aiot__task_current();
        int expired = 0, r = 0;

        aiot__return_if(!s, -EINVAL);
        if (host != s->host)
                return -EPERM;
        aiot__return_if(host->hosted != s, -EINVAL);
        s->closing = 1;
        while (s->live)
                aiot__park_nointr();
        host->hosted = s->outer;
        if (s->has_timeout)
                expired = aiot__deadline_end_any(&s->timeout) > 0;
        if (s->shield)
                aiot_shield_end();
        while (s->children) {
                aiot_task *t = s->children;

                child_unlink(t);
                /* A task being joined is freed by its joiner. */
                if (!t->joiner)
                        aiot__task_free(t);
        }
        if (aiot__task_cancelled(host))
                r = -ECANCELED;
        else if (expired || aiot__task_deadline_expired(host))
                r = -ETIMEDOUT;
        else if (s->fail_fast && s->first_error)
                r = s->first_error;
        free(s);
        return r;
}

void aiot__scope_close_leftovers(aiot_task *t)
{
        while (t->hosted) {
                aiot_scope *s = t->hosted;

                aiot_log(AIOT_LOG_DEBUG, "task %p ended with a scope open: cancelling it", (void *)t);
                aiot_scope_cancel(s);
                aiot_scope_close(s);
        }
}

/* ---------------------------------------------------------------- gather */

static void quiet_on_error(aiot_task *t, int rc, void *userdata)
{
        /* The helpers report every result to their caller. */
}

static int helper_open(aiot_scope **ret)
{
        struct aiot_scope_opts o = { .size = sizeof(o), .on_error = quiet_on_error };

        return aiot_scope_open(ret, &o);
}

/* Spawns all n; on failure cancels and closes the scope. */
static int helper_spawn_all(aiot_scope *s, size_t n, const aiot_task_fn fns[], void *const args[])
{
        for (size_t i = 0; i < n; i++) {
                int r = fns[i] ? spawn_tagged(s, fns[i], args ? args[i] : NULL, i) : -EINVAL;

                if (r < 0) {
                        aiot_scope_cancel(s);
                        aiot_scope_close(s);
                        return r;
                }
        }
        return 0;
}

static void gather_hook(aiot_scope *s, aiot_task *t)
{
        int *results = s->hook_data;

        results[t->tag] = t->result;
}

int aiot_gather(size_t n, const aiot_task_fn fns[], void *const args[], int results[])
{
        aiot_scope *s;
        int r;

        aiot__return_if(n && (!fns || !results), -EINVAL);
        r = helper_open(&s);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++)
                results[i] = -ECANCELED;
        s->done_hook = gather_hook;
        s->hook_data = results;
        r = helper_spawn_all(s, n, fns, args);
        if (r < 0)
                return r;
        r = aiot_scope_close(s);
        return r == -ECANCELED || r == -ETIMEDOUT ? r : 0;
}

/* ---------------------------------------------------------------- race */

struct race {
        int have_winner;
        size_t winner;
        int result;
        int first_error;
};

static void race_hook(aiot_scope *s, aiot_task *t)
{
        struct race *rc = s->hook_data;

        if (rc->have_winner)
                return;
        if (t->result >= 0) {
                rc->have_winner = 1;
                rc->winner = t->tag;
                rc->result = t->result;
                aiot_scope_cancel(s);
        } else if (!rc->first_error) {
                rc->first_error = t->result;
        }
}

int aiot_race(size_t n, const aiot_task_fn fns[], void *const args[], size_t *winner, int *result)
{
        struct race rc = { 0 };
        aiot_scope *s;
        int r;

        aiot__return_if(!n || !fns, -EINVAL);
        r = helper_open(&s);
        if (r < 0)
                return r;
        s->done_hook = race_hook;
        s->hook_data = &rc;
        r = helper_spawn_all(s, n, fns, args);
        if (r < 0)
                return r;
        r = aiot_scope_close(s);
        if (r == -ECANCELED || r == -ETIMEDOUT)
                return r;
        /* Every child passed through race_hook before the scope closed: with no
         * winner, each ended with a negative result and the first is kept. */
        if (!rc.have_winner) {
                assert(rc.first_error < 0);
                return rc.first_error;
        }
        if (winner)
                *winner = rc.winner;
        if (result)
                *result = rc.result;
        return 0;
}

/* ---------------------------------------------------------------- as_completed */

struct aiot_as_completed {
        aiot_scope *s;
        size_t n, done, reported;
        size_t *idx;
        int *res;
        aiot_task *waiter;
};

static void ac_hook(aiot_scope *s, aiot_task *t)
{
        aiot_as_completed *ac = s->hook_data;

        ac->idx[ac->done] = t->tag;
        ac->res[ac->done] = t->result;
        ac->done++;
        if (ac->waiter)
                aiot__wake(ac->waiter, 0);
}

static void ac_free(aiot_as_completed *ac)
{
        free(ac->idx);
        free(ac->res);
        free(ac);
}

int aiot_as_completed_open(aiot_as_completed **ret, size_t n, const aiot_task_fn fns[], void *const args[])
{
        aiot_as_completed *ac;
        int r;

        aiot__return_if(!ret || (n && !fns), -EINVAL);
        if (!aiot__task_current())
                return -EPERM;
        ac = calloc(1, sizeof(*ac));
        if (!ac)
                return -ENOMEM;
        ac->n = n;
        ac->idx = calloc(n ? n : 1, sizeof(*ac->idx));
        ac->res = calloc(n ? n : 1, sizeof(*ac->res));
        if (!ac->idx || !ac->res) {
                ac_free(ac);
                return -ENOMEM;
        }
        r = helper_open(&ac->s);
        if (r < 0) {
                ac_free(ac);
                return r;
        }
        ac->s->done_hook = ac_hook;
        ac->s->hook_data = ac;
        r = helper_spawn_all(ac->s, n, fns, args);
        if (r < 0) {
                ac_free(ac);
                return r;
        }
        *ret = ac;
        return 0;
}

static void ac_unpark(aiot_task *t, void *arg)
{
        aiot_as_completed *ac = arg;

        ac->waiter = NULL;
}

int aiot_as_completed_next(aiot_as_completed *ac, size_t *index, int *result)
{
        aiot_task *self = aiot__task_current();
        int r;

        aiot__return_if(!ac, -EINVAL);
        if (!self)
                return -EPERM;
        if (ac->reported == ac->n)
                return -ENOENT;
        while (ac->reported == ac->done) {
                if (ac->waiter)
                        return -EBUSY;
                ac->waiter = self;
                r = aiot__park(ac_unpark, ac);
                ac->waiter = NULL;
                if (r < 0)
                        return r;
        }
        if (index)
                *index = ac->idx[ac->reported];
        if (result)
                *result = ac->res[ac->reported];
        ac->reported++;
        return 0;
}

int aiot_as_completed_close(aiot_as_completed *ac)
{
        int r;

        if (!ac)
                return 0;
        if (aiot__task_current() != ac->s->host)
                return -EPERM;
        /* Checked before cancelling: a refused close leaves the tasks running. */
        if (ac->s->host->hosted != ac->s)
                return -EBUSY;
        aiot_scope_cancel(ac->s);
        r = aiot_scope_close(ac->s);
        if (r < 0 && r != -ECANCELED && r != -ETIMEDOUT)
                return r;
        ac_free(ac);
        return r == -ECANCELED || r == -ETIMEDOUT ? r : 0;
}
