/* SPDX-License-Identifier: MIT */
/* Tasks: creation, the end of a task and its cleanup (defers, deadlines in dead
 * frames, scopes left open), park / wake and interruption, yield and sleep,
 * join, cancellation and shields, cancel_and_wait, defer.  Scopes live in
 * scope.c, the scheduler in loop.c; the shared hot path is runtime-private.h. */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "aiotools/task.h"
#include "runtime-private.h"

/* ---------------------------------------------------------------- tasks */

static void task_entry(void *p);

/* Task structs are recycled per loop (l->free_tasks, see task_recyclable()), and
 * a recycled struct keeps its stack when that is of the pool's size: the next
 * spawn then takes both with one list pop instead of a malloc-or-pop plus
 * aiot__stack_get(), and the end of a task gives neither back separately (spawn
 * + join: 598 -> 459 instructions under callgrind, cancel_and_wait of a parked
 * task 448 -> 390).  Only a task that no longer runs may be recycled with its
 * stack; one that releases itself at its end goes through task_free_self(). */

static aiot_task *task_alloc(aiot_loop *l)
{
        aiot_task *t = l->free_tasks;

        if (t) {
                l->free_tasks = t->rq_next;
                if (--l->n_free < l->n_free_low)
                        l->n_free_low = l->n_free; /* see trim.c */
                return t;
        }
        t = malloc(sizeof(*t));
        if (t)
                t->stack_lo = NULL;
        return t;
}

/* Whether t may go on the free list with what it holds.  One with a stack of
 * the pool always may (unless recycling is off: free_max 0, under valgrind and
 * ASan): its stack would stay in the pool anyway, and the struct adds ~5 % to
 * the page or more each stack keeps; trim.c gives both back once they stay
 * unused.  That
 * spares a free() and an aiot__stack_put() per task when many end at once
 * (cancel_and_wait of 10 000 parked tasks: 472 -> 350 instructions each).
 * Bare structs are kept up to free_max. */
static inline int task_recyclable(const aiot_loop *l, const aiot_task *t)
{
        if (t->stack_lo)
                return t->stack_size == l->stack_size && l->free_max != 0;
        return l->n_free < l->free_max;
}

static inline void task_push_free(aiot_loop *l, aiot_task *t)
{
        t->rq_next = l->free_tasks;
        l->free_tasks = t;
        l->n_free++;
}

/* Frees a task that does not run (ended, or never started). */
void aiot__task_free(aiot_task *t)
{
        aiot_loop *l = t->pub.loop;

        if (task_recyclable(l, t)) {
                task_push_free(l, t);
                return;
        }
        if (t->stack_lo)
                aiot__stack_put(l->pool, t->stack_lo, t->stack_size);
        free(t);
}

/* Frees the running task t at its end, before its final switch: a stack that
 * does not stay with t is left to the next context (l->zombie_*). */
AIOT_INLINE void task_free_self(aiot_loop *l, aiot_task *t)
{
        if (AIOT_LIKELY(task_recyclable(l, t))) {
                task_push_free(l, t);
                return;
        }
        l->zombie_lo = t->stack_lo;
        l->zombie_size = t->stack_size;
        free(t);
}

/* The stack for a new task t: the one it was recycled with when that fits
 * stack_size (what aiot__stack_get() would hand out: one of the pool's), else
 * one from the pool. */
static inline int task_stack(aiot_loop *l, aiot_task *t, size_t stack_size)
{
        /* 0: the pool's size, which has the slack already.  (A size the pool
         * refuses stays one it refuses.) */
        if (stack_size && stack_size < SIZE_MAX - STACK_SHIFT_MAX)
                stack_size += STACK_SHIFT_MAX;
        if (AIOT_LIKELY(t->stack_lo != NULL)) {
                if (AIOT_LIKELY(stack_size <= l->stack_size))
                        return 0;
                aiot__stack_put(l->pool, t->stack_lo, t->stack_size);
                t->stack_lo = NULL;
        }
        return aiot__stack_get(l->pool, stack_size, &t->stack_lo, &t->stack_size);
}

AIOT_INLINE int task_create(aiot_loop *l, aiot_task_fn fn, void *arg, size_t stack_size, aiot_task **ret)
{
        aiot_task *t = task_alloc(l);
        int r;

        if (!t)
                return -ENOMEM;
        t->pub.loop = l;
        r = task_stack(l, t, stack_size);
        if (r < 0) {
                t->stack_lo = NULL;
                aiot__task_free(t);
                return r;
        }
        t->fn = fn;
        t->arg = arg;
        t->state = AIOT__T_READY;
        t->parked_intr = 0;
        t->has_handle = 0;
        t->pub.cancelled = 0;
        t->cancel_pending = 0;
        t->is_root = 0;
        t->mark = 0;
        t->result = 0;
        t->wake_rc = 0;
        t->cancel_requests = 0;
        t->pub.shield = 0;
        t->pub.n_expired = 0;
        t->deadlines = NULL;
        t->unpark = NULL;
        t->unpark_arg = NULL;
        t->waiters = NULL;
        t->n_waiting = 0;
        t->defers = NULL;
        t->scope = NULL;
        t->sc_prev = t->sc_next = NULL;
        t->hosted = NULL;
        t->tag = 0;
        t->name = NULL;
        t->namer = NULL;
        /* Stacks of equal size put every task's frames at the same offset in a
         * page; a switch then stores to one stack and loads from the other at
         * addresses 4 KiB apart, which the CPU mistakes for a dependency (4K
         * aliasing).  Shifting each stack's top by a few cache lines avoids it. */
        l->color = (l->color + 1) & 15;
        aiot__ctx_make(&t->ctx, t->stack_lo, t->stack_size - (size_t)l->color * (STACK_SHIFT_MAX / 15),
                       task_entry, t);
        rq_push(l, t);
        *ret = t;
        return 0;
}

int aiot__task_new_raw(aiot_loop *l, aiot_task_fn fn, void *arg, size_t stack_size, aiot_task **ret)
{
        return task_create(l, fn, arg, stack_size, ret);
}

/* Here rather than in scope.c, with task_create() inlined: aiot_spawn() is on
 * the spawn + join fast path, and each call level costs there. */
int aiot__task_spawn(aiot_scope *s, aiot_task_fn fn, void *arg, size_t stack_size, int want_handle,
                     aiot_task **ret)
{
        aiot_task *t;
        int r = task_create(s->loop, fn, arg, stack_size, &t);

        if (r < 0)
                return r;
        t->has_handle = !!want_handle;
        scope_child_link(s, t);
        s->live++;
        if (s->cancelled)
                aiot_cancel(t);
        *ret = t;
        return 0;
}

/* Releases a joined (or ended, unowned) task: out of its scope's list, freed. */
static inline void task_release(aiot_task *t)
{
        scope_child_unlink(t);
        aiot__task_free(t);
}

static void deliver_cancel(aiot_task *t);

/* The special problem of deadlines in dead frames.  A function of the task (its
 * body, a deferred callback, an error handler) may return with deadlines still
 * active: they sit in its dead stack frames, which the cleanup's own calls
 * overwrite at once, so they are never read again.  Their timers leave the heap
 * by owner; the scopes the task still hosts forget the chain (a deadline
 * expiring later would walk it) and their own timeouts, which were in it. */
static void frame_deadlines_clear(aiot_task *t)
{
        if (AIOT_LIKELY(!t->deadlines))
                return;
        aiot__timers_drop_owned(t->pub.loop, t);
        t->deadlines = NULL;
        t->pub.n_expired = 0;
        for (aiot_scope *s = t->hosted; s; s = s->outer) {
                s->dl_at_open = NULL;
                s->timeout.active = 0;
                s->timeout.tm.idx = 0;
        }
}

/* Runs the cleanup of an ending task, shielded: deferred callbacks (LIFO), then
 * the scopes left open are cancelled and closed. */
static __attribute__((noinline)) void task_cleanup(aiot_task *t)
{
        frame_deadlines_clear(t);
        while (t->defers) {
                struct aiot__defer *d = t->defers;

                t->defers = d->next;
                d->fn(d->arg);
                free(d);
                frame_deadlines_clear(t);
        }
        if (t->hosted)
                aiot__scope_close_leftovers(t);
}

static void task_finish(aiot_task *t, int rc)
{
        aiot_loop *l = t->pub.loop;

        t->result = rc;
        t->pub.shield++;
        if (AIOT_UNLIKELY(t->deadlines || t->defers || t->hosted))
                task_cleanup(t);
        /* The error handler and the helpers' hooks may block and leave
         * deadlines, scopes, even defers behind them: when one ran, the task is
         * cleaned up again before it stops counting as live in its scope. */
        if (t->scope) {
                if (AIOT_UNLIKELY(scope_child_reports(t))) {
                        aiot__scope_child_report(t);
                        task_cleanup(t);
                }
                scope_child_ended(t);
        }
        t->state = AIOT__T_DONE;
        /* A woken waiter runs only after this task's final switch, so its node
         * (on its stack) is still there to read the next one from. */
        for (struct aiot__join_wait *w = t->waiters; w; w = w->next)
                wake_task(w->task, 0);
        t->waiters = NULL;

        if (!t->has_handle && !t->n_waiting && !t->is_root) {
                scope_child_unlink(t);
                task_free_self(l, t);
        } else if (!t->n_waiting) {
                /* Kept for its handle: the stack goes back now, t later. */
                l->zombie_lo = t->stack_lo;
                l->zombie_size = t->stack_size;
                t->stack_lo = NULL;
        }
        /* Else the last waiter frees t, and its stack with it, as soon as it
         * runs (wait_done()). */

        /* Nothing below may touch t: it may be reused by the next spawn.  Not
         * switch_target(): with one final switch per target a spawn + join
         * measured ~1 ns faster than with a single switch on a selected one. */
        if (l->rq_head && direct_ok(l)) {
                aiot__ctx_switch_final(&l->dead, run_next(l, rq_pop(l)));
        } else {
                l->pub.current = NULL;
                aiot__ctx_switch_final(&l->dead, &l->sched);
        }
        abort();
}

static void task_entry(void *p)
{
        aiot_task *t = p;

        reap_zombie(t->pub.loop);
        task_finish(t, t->fn(t->arg));
}

int aiot_task_done(const aiot_task *t)
{
        return t && t->state == AIOT__T_DONE;
}

int aiot_task_result(const aiot_task *t, int *result)
{
        aiot__return_if(!t || !result, -EINVAL);
        if (t->state != AIOT__T_DONE)
                return -EAGAIN;
        *result = t->result;
        return 0;
}

/* ---------------------------------------------------------------- park / wake */

int aiot_checkpoint(void)
{
        return aiot__check();
}

int aiot__park(aiot__unpark_fn unpark, void *arg)
{
        aiot_loop *l = aiot__tls_loop;

        return park_intr(l, l->pub.current, unpark, arg);
}

int aiot__park_checked(aiot__unpark_fn unpark, void *arg)
{
        aiot_loop *l = aiot__tls_loop;

        return park_intr_checked(l, l->pub.current, unpark, arg);
}

int aiot__park_nointr(void)
{
        aiot_loop *l = aiot__tls_loop;
        aiot_task *t = l->pub.current;

        t->unpark = NULL;
        t->parked_intr = 0;
        t->parked_at = l->last_poll_ns;
        t->state = AIOT__T_PARKED;
        task_suspend(l, t);
        return t->wake_rc;
}

int aiot__wake(aiot_task *t, int rc)
{
        return wake_task(t, rc);
}

/* A cancellation or deadline reaches a task parked interruptibly. */
void aiot__interrupt(aiot_task *t, int rc)
{
        aiot__unpark_fn unpark = t->unpark;

        if (t->state != AIOT__T_PARKED || !t->parked_intr)
                return;
        if (unpark)
                unpark(t, t->unpark_arg);
        aiot__wake(t, rc);
}

/* ---------------------------------------------------------------- yield, sleep */

int aiot_yield(void)
{
        aiot_loop *l = aiot__tls_loop;
        aiot_task *t, *next;
        int r;

        if (!l || !(t = l->pub.current))
                return -EPERM;
        r = aiot__task_check(t);
        if (r)
                return r;
        next = l->rq_head;
        if (AIOT_LIKELY(next != NULL) && direct_ok(l)) {
                /* The hot path of a ping-pong: take the next task before queueing
                 * ourselves, so that no load waits for the store just made. */
                l->rq_head = next->rq_next;
                t->rq_next = NULL;
                if (l->rq_head)
                        l->rq_tail->rq_next = t;
                else
                        l->rq_head = t;
                l->rq_tail = t;
                /* Both stay "active" (READY and RUNNING are not told apart
                 * anywhere): no state to write for t. */
                aiot__ctx_switch(&t->ctx, run_next(l, next));
                reap_zombie(l);
                return 0;
        }
        if (!next && direct_ok(l))
                return 0; /* nothing else to run: no switch */
        /* Through the scheduler, which polls. */
        t->state = AIOT__T_READY;
        rq_push(l, t);
        l->pub.current = NULL;
        aiot__ctx_switch(&t->ctx, &l->sched);
        reap_zombie(l);
        return 0;
}

struct sleeper {
        aiot__timer tm;
        aiot_task *t;
};

static void sleep_fire(aiot__timer *tm)
{
        aiot__wake(aiot__container_of(tm, struct sleeper, tm)->t, 0);
}

static void sleep_unpark(aiot_task *t, void *arg)
{
        struct sleeper *s = arg;

        aiot__timer_disarm(t->pub.loop, &s->tm);
}

static void sleep_info(const aiot_task *t, void *arg, struct aiot_task_info *ti)
{
        struct sleeper *s = arg;
        uint64_t now = aiot__now_ns(t->pub.loop);

        ti->wait = AIOT_WAIT_SLEEP;
        ti->wake_in = !s->tm.idx ? -1 : s->tm.at > now ? (double)(s->tm.at - now) / 1e9 : 0;
}

int aiot__sleep_until(uint64_t at)
{
        aiot_task *t = aiot__task_current();
        struct sleeper s;
        int r;

        if (!t)
                return -EPERM;
        r = aiot__task_check(t);
        if (r)
                return r;
        s.t = t;
        aiot__timer_init(&s.tm, sleep_fire);
        /* Forever: nothing to arm (on a virtual clock the clock would jump to it). */
        if (at != AIOT__NEVER)
                timer_arm_owned(t->pub.loop, &s.tm, at, NULL);
        return park_intr(t->pub.loop, t, sleep_unpark, &s);
}

int aiot_sleep(double seconds)
{
        aiot_loop *l = aiot__tls_loop;

        aiot__return_if(isnan(seconds), -EINVAL);
        if (!l || !l->pub.current)
                return -EPERM;
        return aiot__sleep_until(aiot__at_from_now(l, seconds));
}

/* ---------------------------------------------------------------- cancellation */

static void deliver_cancel(aiot_task *t)
{
        t->pub.cancelled = 1;
        t->cancel_pending = 0;
        if (t->hosted)
                aiot__scope_cancel_hosted(t);
        aiot__interrupt(t, -ECANCELED);
}

int aiot_cancel(aiot_task *t)
{
        aiot__return_if(!t, -EINVAL);
        if (t->state == AIOT__T_DONE)
                return 0;
        if (t->cancel_requests < INT_MAX)
                t->cancel_requests++;
        if (t->pub.cancelled)
                return 0;
        if (t->pub.shield) {
                t->cancel_pending = 1;
                return 0;
        }
        deliver_cancel(t);
        return 0;
}

int aiot_cancelling(const aiot_task *t)
{
        return t ? (int)t->cancel_requests : 0;
}

void aiot_shield_begin(void)
{
        aiot_task *t = aiot__task_current();

        if (t)
                t->pub.shield++;
}

void aiot_shield_end(void)
{
        aiot_task *t = aiot__task_current();

        if (!t || !t->pub.shield)
                return;
        if (--t->pub.shield == 0 && t->cancel_pending)
                deliver_cancel(t);
}

/* Waiting for a task to end.  Any number of tasks may wait for one: each
 * counts itself in t->n_waiting for the whole of its call, and parks on a node
 * of its own stack in t->waiters.  The handle stays valid while any of them is
 * inside its call; the last one to return after t has ended releases it (or the
 * scope does, at its close, when nobody waits). */

static void join_unpark(aiot_task *self, void *arg)
{
        struct aiot__join_wait *w = arg;

        *w->pprev = w->next;
        if (w->next)
                w->next->pprev = w->pprev;
}

/* The task waited for is found by describe.c, from the node (wait_object). */
static void join_info(const aiot_task *t, void *arg, struct aiot_task_info *ti)
{
        ti->wait = AIOT_WAIT_JOIN;
        ti->wait_object = arg;
}

__attribute__((constructor)) static void task_register_waits(void)
{
        aiot__wait_kind_register(sleep_unpark, sleep_info);
        aiot__wait_kind_register(join_unpark, join_info);
}

AIOT_INLINE void join_link(aiot_task *t, struct aiot__join_wait *w, aiot_task *self)
{
        w->task = self;
        w->next = t->waiters;
        if (w->next)
                w->next->pprev = &w->next;
        w->pprev = &t->waiters;
        t->waiters = w;
}

/* Parks the caller until t ends.  With interruptible, a cancellation or deadline
 * of the caller ends the wait with -ECANCELED / -ETIMEDOUT while t runs on
 * (join).  Without, such an interruption is remembered and the wait goes on
 * uninterruptibly: it returns only once t has ended, with the caller's first
 * -ECANCELED / -ETIMEDOUT, or 0 (cancel_and_wait).  The node lives on this
 * frame: t's end or the unpark hook takes it off the list before we return,
 * which GCC cannot see. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#endif
AIOT_INLINE int task_wait(aiot_task *t, int interruptible)
{
        aiot_loop *l = aiot__tls_loop;
        aiot_task *self = l->pub.current;
        struct aiot__join_wait w;
        int rc = 0;

        while (t->state != AIOT__T_DONE) {
                int r = rc ? 0 : aiot__task_check(self);

                if (r == 0) {
                        join_link(t, &w, self);
                        r = rc ? aiot__park_nointr() : park_intr_checked(l, self, join_unpark, &w);
                }
                if (r < 0) {
                        rc = r;
                        if (interruptible)
                                break;
                }
        }
        return rc;
}
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic pop
#endif

/* The caller leaves its wait for t: the last one out releases an ended t. */
AIOT_INLINE void wait_done(aiot_task *t)
{
        if (--t->n_waiting == 0 && t->state == AIOT__T_DONE)
                task_release(t);
}

static int join_check(aiot_task *t, aiot_task *self)
{
        if (!t || t->is_root)
                return -EINVAL;
        if (!self)
                return -EPERM;
        if (t == self)
                return -EDEADLK;
        return 0;
}

int aiot_join(aiot_task *t, int *result)
{
        aiot_task *self = aiot__task_current();
        int r = join_check(t, self);

        if (r)
                return r;
        t->n_waiting++;
        r = task_wait(t, 1);
        if (r == 0 && result)
                *result = t->result;
        wait_done(t);
        return r;
}

int aiot_cancel_and_wait(aiot_task *t)
{
        aiot_task *self = aiot__task_current();
        int r = join_check(t, self);

        if (r)
                return r;
        t->n_waiting++;
        if (t->state != AIOT__T_DONE)
                aiot_cancel(t);
        r = task_wait(t, 0);
        wait_done(t);
        return r;
}

int aiot_cancel_and_wait_all(aiot_task *const ts[], size_t n, int results[])
{
        aiot_task *self = aiot__task_current();
        int r = 0, rc = 0;
        size_t i;

        aiot__return_if(n && !ts, -EINVAL);
        for (i = 0; i < n && !r; i++) {
                r = join_check(ts[i], self);
                if (!r && ts[i]->mark)
                        r = -EINVAL;
                if (!r)
                        ts[i]->mark = 1;
        }
        for (size_t j = 0; j < i; j++)
                if (ts[j])
                        ts[j]->mark = 0;
        if (r)
                return r;
        /* Every handle is held from here on: a target that ends while we wait
         * for another is not released under us by its other waiters. */
        for (i = 0; i < n; i++) {
                ts[i]->n_waiting++;
                aiot_cancel(ts[i]);
        }
        for (i = 0; i < n; i++) {
                r = task_wait(ts[i], 0);
                if (r && !rc)
                        rc = r;
        }
        for (i = 0; i < n; i++) {
                if (results)
                        results[i] = ts[i]->result;
                wait_done(ts[i]);
        }
        return rc;
}


/* ---------------------------------------------------------------- defer */

int aiot_defer(void (*fn)(void *arg), void *arg)
{
        aiot_task *t = aiot__task_current();
        struct aiot__defer *d;

        aiot__return_if(!fn, -EINVAL);
        if (!t)
                return -EPERM;
        d = malloc(sizeof(*d));
        if (!d)
                return -ENOMEM;
        d->fn = fn;
        d->arg = arg;
        d->next = t->defers;
        t->defers = d;
        return 0;
}

