/* SPDX-License-Identifier: MIT */
/* Task scopes (structured concurrency) and deadlines.
 *
 * A scope keeps a list of its children: every live one, and every ended one whose
 * handle the spawner still holds.  Ended children without a handle leave the list
 * (and are freed) as they end; joined ones when they are joined; the rest when the
 * scope closes.  The host is the task that opened the scope; its open scopes form
 * a stack (task->hosted, scope->outer), so that a cancellation delivered to the
 * host, or an expiring deadline around a scope, reaches the scope's children.
 *
 * A deadline is a frame of its task's stack (the public aiot_deadline); the
 * task's active deadlines form a chain, innermost first, and each one's timer
 * sits in the loop's heap owned by the task.  gather, race and as_completed are
 * in gather.c. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "aiotools/log.h"
#include "runtime-private.h"

/* ---------------------------------------------------------------- membership */

void aiot__scope_release_child(aiot_task *t)
{
        scope_child_unlink(t);
        aiot__task_free(t);
}

/* ---------------------------------------------------------------- spawn */

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
        r = aiot__task_spawn(s, fn, arg, stack_size, ret != NULL, &t);
        if (r < 0)
                return r;
        /* A caller built before the name field passes a shorter struct. */
        if (opts && opts->size >= offsetof(struct aiot_spawn_opts, name) + sizeof(opts->name))
                t->name = opts->name;
        if (ret)
                *ret = t;
        return 0;
}

int aiot_spawn(aiot_scope *s, aiot_task_fn fn, void *arg, aiot_task **ret)
{
        return aiot_spawn_opts(s, fn, arg, NULL, ret);
}

/* Spawns without a handle but tags the task, for the helpers in gather.c: the pointer is
 * only used before the task can run. */
int aiot__scope_spawn_tagged(aiot_scope *s, aiot_task_fn fn, void *arg, size_t tag)
{
        aiot_task *t;
        int r = aiot__task_spawn(s, fn, arg, 0, 0, &t);

        if (r == 0)
                t->tag = tag;
        return r;
}

/* Spawns without a handle a task whose name namer makes (runtime.h). */
int aiot__spawn_named(aiot_scope *s, aiot_task_fn fn, void *arg, size_t stack_size, aiot__namer_fn namer)
{
        aiot_task *t;
        int r = aiot__task_spawn(s, fn, arg, stack_size, 0, &t);

        if (r == 0)
                t->namer = namer;
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

static int scope_inside_deadline(aiot_task *host, const struct aiot__deadline *d)
{
        for (aiot_scope *s = host->hosted; s; s = s->outer)
                if (deadline_encloses(d, s))
                        return 1;
        return 0;
}

/* d NULL: the host's cancellation was delivered; else deadline d expired. */
static void cancel_hosted_by(aiot_task *host, struct aiot__deadline *d)
{
        for (aiot_scope *s = host->hosted; s; s = s->outer)
                if (!d || deadline_encloses(d, s))
                        aiot_scope_cancel(s);
}

void aiot__scope_cancel_hosted(aiot_task *host)
{
        cancel_hosted_by(host, NULL);
}

/* ---------------------------------------------------------------- child end */

static void default_on_error(aiot_task *t, int rc, void *userdata)
{
        aiot_log(AIOT_LOG_INFO, "task %p failed: %s (no error handler in its scope)", (void *)t, strerror(-rc));
}

void aiot__scope_child_report(aiot_task *t)
{
        aiot_scope *s = t->scope;
        int rc = t->result;

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

                scope_child_unlink(t);
                /* A task being waited for is freed by its last waiter. */
                if (!t->n_waiting)
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


/* ---------------------------------------------------------------- deadlines */

_Static_assert(sizeof(struct aiot__deadline) <= sizeof(aiot_deadline), "aiot_deadline is too small");
_Static_assert(_Alignof(struct aiot__deadline) <= _Alignof(aiot_deadline), "aiot_deadline is misaligned");

static void deadline_expire(struct aiot__deadline *d)
{
        aiot_task *t = d->task;

        d->expired = 1;
        t->pub.n_expired++;
        if (t->hosted)
                cancel_hosted_by(t, d);
        aiot__interrupt(t, -ETIMEDOUT);
}

static void deadline_fire(aiot__timer *tm)
{
        deadline_expire(aiot__container_of(tm, struct aiot__deadline, tm));
}

int aiot__deadline_begin_ns(struct aiot__deadline *d, uint64_t at)
{
        aiot_task *t = aiot__task_current();

        d->active = 0;
        if (!t)
                return -EPERM;
        aiot__timer_init(&d->tm, deadline_fire);
        d->task = t;
        d->expired = 0;
        d->active = 1;
        d->prev = t->deadlines;
        t->deadlines = d;
        if (at <= aiot__now_ns(t->pub.loop))
                deadline_expire(d);
        else if (at != AIOT__NEVER)
                aiot__timer_arm_owned(t->pub.loop, &d->tm, at, t);
        return 0;
}

int aiot__deadline_end_any(struct aiot__deadline *d)
{
        aiot_task *t = d->task;
        struct aiot__deadline **pp;

        if (!d->active)
                return -EINVAL;
        for (pp = &t->deadlines; *pp && *pp != d; pp = &(*pp)->prev)
                ;
        if (*pp)
                *pp = d->prev;
        aiot__timer_disarm(t->pub.loop, &d->tm);
        if (d->expired)
                t->pub.n_expired--;
        d->active = 0;
        return d->expired;
}

int aiot_deadline_begin(aiot_deadline *dl, double seconds)
{
        struct aiot__deadline *d = (struct aiot__deadline *)dl;
        aiot_loop *l = aiot__tls_loop;
        uint64_t at;

        aiot__return_if(!dl, -EINVAL);
        d->active = 0;
        aiot__return_if(isnan(seconds), -EINVAL);
        if (!l || !l->pub.current)
                return -EPERM;
        at = seconds <= 0 ? 0 : aiot__at_from_now(l, seconds);
        return aiot__deadline_begin_ns(d, at);
}

int aiot_deadline_end(aiot_deadline *dl)
{
        struct aiot__deadline *d = (struct aiot__deadline *)dl;
        aiot_task *t = aiot__task_current();

        aiot__return_if(!d || !t || !d->active || d->task != t || t->deadlines != d, -EINVAL);
        /* A scope opened inside d must close first: it keeps a pointer into
         * the deadline chain. */
        if (scope_inside_deadline(t, d))
                return -EBUSY;
        return aiot__deadline_end_any(d);
}
