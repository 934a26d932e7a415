/* SPDX-License-Identifier: MIT */
/* gather, race and as_completed: each opens a scope whose completion hook
 * (scope->done_hook, run in the ending child after its error handler) records
 * the child's result by its tag, the index of its function. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>

#include "runtime-private.h"

/* ---------------------------------------------------------------- helpers */

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
                int r = fns[i] ? aiot__scope_spawn_tagged(s, fns[i], args ? args[i] : NULL, i) : -EINVAL;

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
