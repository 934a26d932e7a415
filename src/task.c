/* SPDX-License-Identifier: MIT */
/* The task runtime: loop, scheduler, timer heap, tasks, cancellation, shields,
 * deadlines, defer, events and semaphores.  Scopes live in scope.c.
 *
 * The scheduler.  A loop has one run queue (FIFO).  A task that parks or yields
 * switches straight to the next runnable task; only when the queue is empty, or
 * now and then (see POLL_CHECK_EVERY: so that I/O and timers are never starved),
 * does it switch to the scheduler context, which runs on the thread's own stack
 * inside aiot_loop_run().  There libev is polled (without waiting while tasks are
 * runnable) and expired entries of the timer heap fire.  Tasks are only ever
 * resumed by this code, never by user code.
 *
 * A finished task cannot give its stack back while it still runs on it: it leaves
 * it in loop->zombie_*, and whichever context runs next puts it into the pool. */
#define AIOT__TASK_PRIVATE 1

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ev.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#include "aiotools/log.h"
#include "fork-internal.h"
#include "macro.h"
#include "task-internal.h"

/* Polling libev costs a system call (a microsecond or more on a VM), so it is
 * not done between every few switches: every POLL_CHECK_EVERY direct switches
 * the clock is read, and libev and the timer heap are polled when POLL_INTERVAL_NS
 * has passed since the last poll, or after POLL_FORCE_CHECKS checks in any case
 * (the virtual clock does not move by itself). */
#define POLL_CHECK_EVERY 64
#define POLL_FORCE_CHECKS 64
#define POLL_INTERVAL_NS 50000
/* Each stack's top is shifted by up to this much (see task_new_raw()): it comes
 * on top of the size asked for, and of the default size task.h documents. */
#define STACK_SHIFT_MAX (15 * 192)
#define STACK_DEFAULT (256u * 1024u)
/* Task structs kept for reuse per loop.  None under ASan or valgrind, so that
 * they see a use of a released task handle. */
#if defined(__SANITIZE_ADDRESS__)
#define FREE_TASKS_MAX 0
#else
#define FREE_TASKS_MAX 4096
#endif

struct heap_ent {
        uint64_t at;
        uint64_t seq;
        aiot__timer *tm;
        aiot_task *owner; /* for deadlines: the task whose stack holds tm */
};

struct aiot_loop {
        struct ev_loop *ev;
        aiot__stack_pool *pool;
        size_t stack_size;
        int virtual_clock;
        int running;
        pid_t run_pid;           /* the process that runs it: a forked child abandons it */
        uint64_t vnow;
        aiot__ctx sched; /* the scheduler, on the thread's stack */
        aiot__ctx dead;  /* where a finished task's last switch saves into */
        aiot_task *current;
        aiot_task *rq_head, *rq_tail;
        unsigned since_poll;
        unsigned poll_checks;
        uint64_t last_poll_ns;
        unsigned color;
        void *zombie_lo;
        size_t zombie_size;
        aiot_task *root;
        aiot_task *free_tasks;
        size_t n_free, free_max;
        struct heap_ent *heap; /* 1-based binary heap */
        size_t heap_n, heap_cap;
        uint64_t heap_seq;
        ev_timer tw;
        struct {
                void *data;
                void (*destroy)(aiot_loop *l, void *data);
        } slots[AIOT__NSLOTS];
};

static __thread aiot_loop *tls_loop __attribute__((tls_model("initial-exec")));

/* ---------------------------------------------------------------- access */

aiot_loop *aiot__loop_current(void)
{
        return tls_loop;
}

void aiot__task_after_fork(void)
{
        tls_loop = NULL;
}

aiot_task *aiot__task_current(void)
{
        return tls_loop ? tls_loop->current : NULL;
}

aiot_task *aiot_current(void)
{
        return aiot__task_current();
}

aiot_loop *aiot__task_loop(const aiot_task *t)
{
        return t->loop;
}

struct ev_loop *aiot__loop_ev(aiot_loop *l)
{
        return l->ev;
}

struct ev_loop *aiot_loop_ev(aiot_loop *loop)
{
        return loop ? loop->ev : NULL;
}

void *aiot__loop_slot_get(aiot_loop *l, int slot)
{
        assert(slot >= 0 && slot < AIOT__NSLOTS);
        return l->slots[slot].data;
}

void aiot__loop_slot_set(aiot_loop *l, int slot, void *data, void (*destroy)(aiot_loop *l, void *data))
{
        assert(slot >= 0 && slot < AIOT__NSLOTS);
        l->slots[slot].data = data;
        l->slots[slot].destroy = destroy;
}

/* ---------------------------------------------------------------- time */

static uint64_t mono_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t aiot__now_ns(aiot_loop *l)
{
        return l->virtual_clock ? l->vnow : mono_ns();
}

uint64_t aiot__s_to_ns(double seconds)
{
        if (!(seconds > 0))
                return 0;
        if (seconds >= 9.0e9) /* ~285 years: "never" */
                return UINT64_MAX / 2;
        return (uint64_t)(seconds * 1e9);
}

uint64_t aiot__at_from_now(aiot_loop *l, double seconds)
{
        uint64_t now = aiot__now_ns(l), d;

        if (isinf(seconds) && seconds > 0)
                return AIOT__NEVER;
        d = aiot__s_to_ns(seconds);
        /* The virtual clock may already be centuries ahead. */
        return now >= AIOT__NEVER - d ? AIOT__NEVER - 1 : now + d;
}

double aiot_now(void)
{
        return tls_loop ? (double)aiot__now_ns(tls_loop) / 1e9 : 0.0;
}

/* ---------------------------------------------------------------- timer heap */

static inline int ent_less(const struct heap_ent *a, const struct heap_ent *b)
{
        return a->at < b->at || (a->at == b->at && a->seq < b->seq);
}

static inline void heap_place(struct heap_ent *h, size_t i, struct heap_ent e)
{
        h[i] = e;
        e.tm->idx = i;
}

static void heap_up(struct heap_ent *h, size_t i)
{
        struct heap_ent e = h[i];

        while (i > 1 && ent_less(&e, &h[i / 2])) {
                heap_place(h, i, h[i / 2]);
                i /= 2;
        }
        heap_place(h, i, e);
}

static void heap_down(struct heap_ent *h, size_t n, size_t i)
{
        struct heap_ent e = h[i];

        for (;;) {
                size_t c = 2 * i;

                if (c > n)
                        break;
                if (c + 1 <= n && ent_less(&h[c + 1], &h[c]))
                        c++;
                if (!ent_less(&h[c], &e))
                        break;
                heap_place(h, i, h[c]);
                i = c;
        }
        heap_place(h, i, e);
}

/* Restores the heap order after the entry at i changed: it moves up or down. */
static inline void heap_fix(aiot_loop *l, size_t i)
{
        struct heap_ent *h = l->heap;

        if (i > 1 && ent_less(&h[i], &h[i / 2]))
                heap_up(h, i);
        else
                heap_down(h, l->heap_n, i);
}

static void heap_remove(aiot_loop *l, size_t i)
{
        struct heap_ent *h = l->heap;

        h[i].tm->idx = 0;
        if (i != l->heap_n) {
                h[i] = h[l->heap_n--];
                h[i].tm->idx = i;
                heap_fix(l, i);
        } else {
                l->heap_n--;
        }
}

/* Growing the heap is the only allocation here; when it fails the process is out
 * of memory in a way a sleep cannot report, so it aborts like libev does. */
static void heap_grow(aiot_loop *l)
{
        size_t cap = l->heap_cap ? l->heap_cap * 2 : 64;
        struct heap_ent *h = realloc(l->heap, (cap + 1) * sizeof(*h));

        if (!h) {
                aiot_log(AIOT_LOG_ERR, "task runtime: out of memory for the timer heap");
                abort();
        }
        l->heap = h;
        l->heap_cap = cap;
}

static void timer_arm_owned(aiot_loop *l, aiot__timer *tm, uint64_t at, aiot_task *owner)
{
        tm->at = at;
        tm->seq = ++l->heap_seq;
        if (tm->idx) {
                size_t i = tm->idx;

                l->heap[i].at = at;
                l->heap[i].seq = tm->seq;
                heap_fix(l, i);
                return;
        }
        if (l->heap_n == l->heap_cap)
                heap_grow(l);
        l->heap_n++;
        l->heap[l->heap_n] = (struct heap_ent){ .at = at, .seq = tm->seq, .tm = tm, .owner = owner };
        tm->idx = l->heap_n;
        heap_up(l->heap, l->heap_n);
}

void aiot__timer_arm(aiot_loop *l, aiot__timer *tm, uint64_t at)
{
        timer_arm_owned(l, tm, at, NULL);
}

/* Drops every entry owned by t without touching the entries themselves (they
 * may sit in dead stack frames), and rebuilds the heap. */
static void timers_drop_owned(aiot_loop *l, aiot_task *t)
{
        struct heap_ent *h = l->heap;
        size_t n = 0;

        for (size_t i = 1; i <= l->heap_n; i++)
                if (h[i].owner != t)
                        h[++n] = h[i];
        l->heap_n = n;
        for (size_t i = n / 2; i >= 1; i--)
                heap_down(h, n, i);
        for (size_t i = 1; i <= n; i++)
                h[i].tm->idx = i;
}

void aiot__timer_disarm(aiot_loop *l, aiot__timer *tm)
{
        if (tm->idx)
                heap_remove(l, tm->idx);
}

static void timers_fire(aiot_loop *l, uint64_t now)
{
        while (l->heap_n && l->heap[1].at <= now) {
                aiot__timer *tm = l->heap[1].tm;

                heap_remove(l, 1);
                tm->fn(tm);
        }
}

/* ---------------------------------------------------------------- run queue */

static inline void rq_push(aiot_loop *l, aiot_task *t)
{
        t->rq_next = NULL;
        if (l->rq_tail)
                l->rq_tail->rq_next = t;
        else
                l->rq_head = t;
        l->rq_tail = t;
}

static inline aiot_task *rq_pop(aiot_loop *l)
{
        aiot_task *t = l->rq_head;

        if (t) {
                l->rq_head = t->rq_next;
                if (!l->rq_head)
                        l->rq_tail = NULL;
        }
        return t;
}

static inline void reap_zombie(aiot_loop *l)
{
        if (AIOT_UNLIKELY(l->zombie_lo != NULL)) {
                aiot__stack_put(l->pool, l->zombie_lo, l->zombie_size);
                l->zombie_lo = NULL;
        }
}

static int poll_due_slow(aiot_loop *l)
{
        l->since_poll = 0;
        if (++l->poll_checks >= POLL_FORCE_CHECKS)
                return 1;
        return !l->virtual_clock && mono_ns() - l->last_poll_ns >= POLL_INTERVAL_NS;
}

/* Whether a task may switch straight to the next runnable one, rather than
 * through the scheduler so that it polls. */
static inline int direct_ok(aiot_loop *l)
{
        if (AIOT_LIKELY(++l->since_poll < POLL_CHECK_EVERY))
                return 1;
        return !poll_due_slow(l);
}

/* The switch path is inlined, like the park and wait paths above it: after a
 * switch every return address the CPU predicted belongs to the other task, so
 * each call level between the user's call and the switch costs a mispredicted
 * return. */
#define AIOT_INLINE static inline __attribute__((always_inline))

/* Makes next the running task and returns the context to switch to. */
AIOT_INLINE aiot__ctx *run_next(aiot_loop *l, aiot_task *next)
{
        next->state = AIOT__T_RUNNING;
        l->current = next;
        return &next->ctx;
}

/* Where a task that stops running switches to: the next runnable task, or the
 * scheduler when none is or when it is time to poll. */
AIOT_INLINE aiot__ctx *switch_target(aiot_loop *l)
{
        if (l->rq_head && direct_ok(l))
                return run_next(l, rq_pop(l));
        l->current = NULL;
        return &l->sched;
}

/* Switches away from self, which the caller has parked.  Returns when the
 * scheduler resumes it.  A parked task is not in the run queue, so the next
 * task is never self. */
AIOT_INLINE void task_suspend(aiot_loop *l, aiot_task *self)
{
        aiot__ctx_switch(&self->ctx, switch_target(l));
        reap_zombie(l);
}

/* ---------------------------------------------------------------- the scheduler */

static void tw_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
        /* Only wakes ev_run(); expired entries fire in poll(). */
}

/* Blocks in libev until a watcher fires.  When libev watches nothing, no task
 * is runnable and no timer is armed, every task waits for something that can
 * never happen (a deadlock): sleep in the kernel rather than spin, until a
 * signal ends the process. */
static void block_in_libev(aiot_loop *l)
{
        if (ev_run(l->ev, EVRUN_ONCE) || l->rq_head || l->heap_n)
                return;
        ev_timer_set(&l->tw, 3600.0, 0.0);
        ev_timer_start(l->ev, &l->tw);
        ev_run(l->ev, EVRUN_ONCE);
        ev_timer_stop(l->ev, &l->tw);
}

/* Polls libev and fires expired timers; blocks only when nothing is runnable. */
static void poll_once(aiot_loop *l)
{
        l->since_poll = 0;
        l->poll_checks = 0;
        l->last_poll_ns = mono_ns();
        if (l->virtual_clock) {
                ev_run(l->ev, EVRUN_NOWAIT);
                timers_fire(l, l->vnow);
                if (l->rq_head)
                        return;
                if (l->heap_n) {
                        /* Idle with a deadline ahead: time flies. */
                        if (l->heap[1].at > l->vnow)
                                l->vnow = l->heap[1].at;
                        timers_fire(l, l->vnow);
                } else {
                        block_in_libev(l);
                }
                return;
        }
        timers_fire(l, mono_ns());
        if (l->rq_head) {
                ev_run(l->ev, EVRUN_NOWAIT);
                return;
        }
        if (l->heap_n) {
                uint64_t now = mono_ns(), at = l->heap[1].at;

                ev_now_update(l->ev);
                ev_timer_set(&l->tw, at > now ? (double)(at - now) / 1e9 : 0.0, 0.0);
                ev_timer_start(l->ev, &l->tw);
        }
        block_in_libev(l);
        ev_timer_stop(l->ev, &l->tw);
        timers_fire(l, mono_ns());
}

static void scheduler(aiot_loop *l)
{
        for (;;) {
                aiot_task *next;

                reap_zombie(l);
                if (l->root->state == AIOT__T_DONE)
                        break;
                poll_once(l);
                next = rq_pop(l);
                if (!next)
                        continue;
                aiot__ctx_switch(&l->sched, run_next(l, next));
                l->current = NULL;
        }
}

/* ---------------------------------------------------------------- tasks */

static void task_entry(void *p);

static aiot_task *task_alloc(aiot_loop *l)
{
        aiot_task *t = l->free_tasks;

        if (t) {
                l->free_tasks = t->rq_next;
                l->n_free--;
                return t;
        }
        return malloc(sizeof(*t));
}

void aiot__task_free(aiot_task *t)
{
        aiot_loop *l = t->loop;

        if (l->n_free < l->free_max) {
                t->rq_next = l->free_tasks;
                l->free_tasks = t;
                l->n_free++;
        } else {
                free(t);
        }
}

static int task_new_raw(aiot_loop *l, aiot_task_fn fn, void *arg, size_t stack_size, aiot_task **ret)
{
        aiot_task *t = task_alloc(l);
        void *lo;
        size_t usable;
        int r;

        if (!t)
                return -ENOMEM;
        /* 0: the pool's size, which has the slack already.  (A size the pool
         * refuses stays one it refuses.) */
        if (stack_size && stack_size < SIZE_MAX - STACK_SHIFT_MAX)
                stack_size += STACK_SHIFT_MAX;
        r = aiot__stack_get(l->pool, stack_size, &lo, &usable);
        if (r < 0) {
                t->loop = l;
                aiot__task_free(t);
                return r;
        }
        t->loop = l;
        t->fn = fn;
        t->arg = arg;
        t->state = AIOT__T_READY;
        t->parked_intr = 0;
        t->has_handle = 0;
        t->cancelled = 0;
        t->cancel_pending = 0;
        t->is_root = 0;
        t->mark = 0;
        t->result = 0;
        t->wake_rc = 0;
        t->cancel_requests = 0;
        t->shield = 0;
        t->n_expired = 0;
        t->deadlines = NULL;
        t->unpark = NULL;
        t->unpark_arg = NULL;
        t->joiner = NULL;
        t->defers = NULL;
        t->scope = NULL;
        t->sc_prev = t->sc_next = NULL;
        t->hosted = NULL;
        t->tag = 0;
        t->stack_lo = lo;
        t->stack_size = usable;
        /* Stacks of equal size put every task's frames at the same offset in a
         * page; a switch then stores to one stack and loads from the other at
         * addresses 4 KiB apart, which the CPU mistakes for a dependency (4K
         * aliasing).  Shifting each stack's top by a few cache lines avoids it. */
        l->color = (l->color + 1) & 15;
        aiot__ctx_make(&t->ctx, lo, usable - (size_t)l->color * (STACK_SHIFT_MAX / 15), task_entry, t);
        rq_push(l, t);
        *ret = t;
        return 0;
}

int aiot__task_new(aiot_scope *s, aiot_task_fn fn, void *arg, size_t stack_size, int want_handle,
                   aiot_task **ret)
{
        int r = task_new_raw(s->loop, fn, arg, stack_size, ret);

        if (r == 0)
                (*ret)->has_handle = !!want_handle;
        return r;
}

/* Releases a joined (or ended, unowned) task: out of its scope's list, freed. */
static void task_release(aiot_task *t)
{
        aiot__scope_release_child(t);
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
        timers_drop_owned(t->loop, t);
        t->deadlines = NULL;
        t->n_expired = 0;
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
        aiot_loop *l = t->loop;

        t->result = rc;
        t->shield++;
        if (AIOT_UNLIKELY(t->deadlines || t->defers || t->hosted))
                task_cleanup(t);
        /* The error handler and the helpers' hooks may block and leave
         * deadlines, scopes, even defers behind them: when one ran, the task is
         * cleaned up again before it stops counting as live in its scope. */
        if (t->scope && aiot__scope_child_done(t)) {
                task_cleanup(t);
                aiot__scope_child_ended(t);
        }
        t->state = AIOT__T_DONE;
        if (t->joiner)
                aiot__wake(t->joiner, 0);

        l->zombie_lo = t->stack_lo;
        l->zombie_size = t->stack_size;
        if (!t->has_handle && !t->joiner && !t->is_root)
                task_release(t);

        /* Nothing below may touch t: it may be reused by the next spawn.  Not
         * switch_target(): with one final switch per target a spawn + join
         * measured ~1 ns faster than with a single switch on a selected one. */
        if (l->rq_head && direct_ok(l)) {
                aiot__ctx_switch_final(&l->dead, run_next(l, rq_pop(l)));
        } else {
                l->current = NULL;
                aiot__ctx_switch_final(&l->dead, &l->sched);
        }
        abort();
}

static void task_entry(void *p)
{
        aiot_task *t = p;

        reap_zombie(t->loop);
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

int aiot__task_cancelled(const aiot_task *t)
{
        return t->cancelled && !t->shield;
}

int aiot__task_deadline_expired(const aiot_task *t)
{
        return t->n_expired != 0;
}

static inline int task_check(const aiot_task *t)
{
        if (AIOT_UNLIKELY(t->cancelled) && !t->shield)
                return -ECANCELED;
        if (AIOT_UNLIKELY(t->n_expired))
                return -ETIMEDOUT;
        return 0;
}

int aiot__check(void)
{
        aiot_task *t = aiot__task_current();

        return t ? task_check(t) : 0;
}

int aiot_checkpoint(void)
{
        return aiot__check();
}

AIOT_INLINE int park_intr(aiot_loop *l, aiot_task *t, aiot__unpark_fn unpark, void *arg)
{
        int r = task_check(t);

        if (r)
                return r;
        t->unpark = unpark;
        t->unpark_arg = arg;
        t->parked_intr = 1;
        t->state = AIOT__T_PARKED;
        task_suspend(l, t);
        return t->wake_rc;
}

int aiot__park(aiot__unpark_fn unpark, void *arg)
{
        aiot_loop *l = tls_loop;

        return park_intr(l, l->current, unpark, arg);
}

int aiot__park_nointr(void)
{
        aiot_loop *l = tls_loop;
        aiot_task *t = l->current;

        t->unpark = NULL;
        t->parked_intr = 0;
        t->state = AIOT__T_PARKED;
        task_suspend(l, t);
        return t->wake_rc;
}

int aiot__wake(aiot_task *t, int rc)
{
        if (t->state != AIOT__T_PARKED)
                return 0;
        t->unpark = NULL;
        t->wake_rc = rc;
        t->state = AIOT__T_READY;
        rq_push(t->loop, t);
        return 1;
}

/* A cancellation or deadline reaches a task parked interruptibly. */
static void interrupt(aiot_task *t, int rc)
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
        aiot_loop *l = tls_loop;
        aiot_task *t, *next;
        int r;

        if (!l || !(t = l->current))
                return -EPERM;
        r = task_check(t);
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
        l->current = NULL;
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

        aiot__timer_disarm(t->loop, &s->tm);
}

int aiot__sleep_until(uint64_t at)
{
        aiot_task *t = aiot__task_current();
        struct sleeper s;
        int r;

        if (!t)
                return -EPERM;
        r = task_check(t);
        if (r)
                return r;
        s.t = t;
        aiot__timer_init(&s.tm, sleep_fire);
        /* Forever: nothing to arm (on a virtual clock the clock would jump to it). */
        if (at != AIOT__NEVER)
                aiot__timer_arm(t->loop, &s.tm, at);
        return park_intr(t->loop, t, sleep_unpark, &s);
}

int aiot_sleep(double seconds)
{
        aiot_loop *l = tls_loop;

        aiot__return_if(isnan(seconds), -EINVAL);
        if (!l || !l->current)
                return -EPERM;
        return aiot__sleep_until(aiot__at_from_now(l, seconds));
}

/* ---------------------------------------------------------------- cancellation */

static void deliver_cancel(aiot_task *t)
{
        t->cancelled = 1;
        t->cancel_pending = 0;
        if (t->hosted)
                aiot__scope_cancel_hosted(t, NULL);
        interrupt(t, -ECANCELED);
}

int aiot_cancel(aiot_task *t)
{
        aiot__return_if(!t, -EINVAL);
        if (t->state == AIOT__T_DONE)
                return 0;
        if (t->cancel_requests < INT_MAX)
                t->cancel_requests++;
        if (t->cancelled)
                return 0;
        if (t->shield) {
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
                t->shield++;
}

void aiot_shield_end(void)
{
        aiot_task *t = aiot__task_current();

        if (!t || !t->shield)
                return;
        if (--t->shield == 0 && t->cancel_pending)
                deliver_cancel(t);
}

static void join_unpark(aiot_task *self, void *arg)
{
        aiot_task *t = arg;

        if (t->joiner == self)
                t->joiner = NULL;
}

AIOT_INLINE int task_wait(aiot_task *t, int intr)
{
        aiot_loop *l = tls_loop;
        aiot_task *self = l->current;
        int r;

        if (t->state == AIOT__T_DONE)
                return 0;
        if (t->joiner && t->joiner != self)
                return -EBUSY;
        t->joiner = self;
        r = intr ? park_intr(l, self, join_unpark, t) : aiot__park_nointr();
        if (r < 0) {
                if (t->joiner == self)
                        t->joiner = NULL;
                return r;
        }
        assert(t->state == AIOT__T_DONE);
        return 0;
}

int aiot__task_wait(aiot_task *t, int intr)
{
        return task_wait(t, intr);
}

static int join_check(aiot_task *t, aiot_task *self)
{
        if (!t || t->is_root)
                return -EINVAL;
        if (!self)
                return -EPERM;
        if (t == self)
                return -EDEADLK;
        /* Also once t has ended: its joiner was woken but has not run yet, and
         * it frees t when it does. */
        if (t->joiner && t->joiner != self)
                return -EBUSY;
        return 0;
}

int aiot_join(aiot_task *t, int *result)
{
        aiot_task *self = aiot__task_current();
        int r = join_check(t, self);

        if (r)
                return r;
        r = task_wait(t, 1);
        if (r)
                return r;
        if (result)
                *result = t->result;
        task_release(t);
        return 0;
}

int aiot_cancel_and_wait(aiot_task *t)
{
        aiot_task *self = aiot__task_current();
        int r = join_check(t, self);

        if (r)
                return r;
        if (t->state != AIOT__T_DONE) {
                aiot_cancel(t);
                r = task_wait(t, 1);
                if (r)
                        return r;
        }
        task_release(t);
        return 0;
}

int aiot_cancel_and_wait_all(aiot_task *const ts[], size_t n, int results[])
{
        aiot_task *self = aiot__task_current();
        int r = 0;
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
        for (i = 0; i < n; i++)
                aiot_cancel(ts[i]);
        for (i = 0; i < n; i++) {
                r = aiot__task_wait(ts[i], 1);
                if (r)
                        return r;
        }
        for (i = 0; i < n; i++) {
                if (results)
                        results[i] = ts[i]->result;
                task_release(ts[i]);
        }
        return 0;
}

/* ---------------------------------------------------------------- deadlines */

_Static_assert(sizeof(struct aiot__deadline) <= sizeof(aiot_deadline), "aiot_deadline is too small");
_Static_assert(_Alignof(struct aiot__deadline) <= _Alignof(aiot_deadline), "aiot_deadline is misaligned");

static void deadline_expire(struct aiot__deadline *d)
{
        aiot_task *t = d->task;

        d->expired = 1;
        t->n_expired++;
        if (t->hosted)
                aiot__scope_cancel_hosted(t, d);
        interrupt(t, -ETIMEDOUT);
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
        if (at <= aiot__now_ns(t->loop))
                deadline_expire(d);
        else if (at != AIOT__NEVER)
                timer_arm_owned(t->loop, &d->tm, at, t);
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
        aiot__timer_disarm(t->loop, &d->tm);
        if (d->expired)
                t->n_expired--;
        d->active = 0;
        return d->expired;
}

int aiot_deadline_begin(aiot_deadline *dl, double seconds)
{
        struct aiot__deadline *d = (struct aiot__deadline *)dl;
        aiot_loop *l = tls_loop;
        uint64_t at;

        aiot__return_if(!dl, -EINVAL);
        d->active = 0;
        aiot__return_if(isnan(seconds), -EINVAL);
        if (!l || !l->current)
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
        if (aiot__scope_inside_deadline(t, d))
                return -EBUSY;
        return aiot__deadline_end_any(d);
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

/* ---------------------------------------------------------------- the loop */

/* An async-signal-safe description of the running task for the stack overflow
 * report: its address and its function's. */
static __thread char namer_buf[64] __attribute__((tls_model("initial-exec")));

static const char *overflow_namer(void)
{
        aiot_loop *l = tls_loop;
        aiot_task *t = l ? l->current : NULL;
        char *p = namer_buf;

        if (!t)
                return NULL;
        p += aiot__fmt_hex(p, (uintptr_t)t);
        memcpy(p, " (fn ", 5);
        p += 5;
        p += aiot__fmt_hex(p, (uintptr_t)t->fn);
        *p++ = ')';
        *p = '\0';
        return namer_buf;
}

int aiot_loop_new(aiot_loop **ret, const struct aiot_loop_opts *opts)
{
        size_t stack_size = 0;
        int virtual_clock = 0, r;
        aiot_loop *l;

        aiot__return_if(!ret, -EINVAL);
        if (opts) {
                aiot__return_if(opts->size < offsetof(struct aiot_loop_opts, virtual_clock) + sizeof(int), -EINVAL);
                stack_size = opts->stack_size;
                virtual_clock = opts->virtual_clock;
        }
        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        r = aiot__stack_pool_new(&l->pool, (stack_size ? stack_size : STACK_DEFAULT) + STACK_SHIFT_MAX);
        if (r < 0) {
                free(l);
                return r;
        }
        l->ev = ev_loop_new(EVFLAG_AUTO);
        if (!l->ev) {
                aiot__stack_pool_free(l->pool);
                free(l);
                return -ENOMEM;
        }
        ev_init(&l->tw, tw_cb);
        l->stack_size = aiot__stack_pool_size(l->pool);
        l->virtual_clock = !!virtual_clock;
        l->vnow = mono_ns();
        l->free_max = RUNNING_ON_VALGRIND ? 0 : FREE_TASKS_MAX;
        aiot__stack_overflow_namer = overflow_namer;
        *ret = l;
        return 0;
}

void aiot_loop_free(aiot_loop *l)
{
        if (!l)
                return;
        assert(!l->running);
        /* Children still running lose their watcher with the libev loop. */
        aiot__fork_loop_gone(l->ev);
        for (int i = 0; i < AIOT__NSLOTS; i++)
                if (l->slots[i].destroy)
                        l->slots[i].destroy(l, l->slots[i].data);
        ev_timer_stop(l->ev, &l->tw);
        ev_loop_destroy(l->ev);
        while (l->free_tasks) {
                aiot_task *t = l->free_tasks;

                l->free_tasks = t->rq_next;
                free(t);
        }
        aiot__stack_pool_free(l->pool);
        free(l->heap);
        free(l);
}

int aiot_loop_run(aiot_loop *l, aiot_task_fn main, void *arg)
{
        aiot_task *root;
        int r;

        aiot__return_if(!l || !main, -EINVAL);
        /* A child forked while a loop ran (in a task or a libev callback)
         * inherits that loop as current, but will never resume it: it may
         * start a fresh one.  The inherited loop itself stays busy: its run
         * queue and timers hold the parent's tasks. */
        if (tls_loop && tls_loop->run_pid != getpid())
                aiot__task_after_fork();
        if (l->running || tls_loop)
                return -EBUSY;
        r = task_new_raw(l, main, arg, 0, &root);
        if (r < 0)
                return r;
        root->is_root = 1;
        l->root = root;
        l->running = 1;
        l->run_pid = getpid();
        tls_loop = l;
        scheduler(l);
        tls_loop = NULL;
        l->running = 0;
        l->root = NULL;
        r = root->result;
        free(root);
        return r;
}

/* ---------------------------------------------------------------- events */

struct waiter {
        struct waiter *prev, *next;
        aiot_task *t;
        struct waitq *q;
};

struct waitq {
        struct waiter *head, *tail;
};

static void waitq_add(struct waitq *q, struct waiter *w, aiot_task *t)
{
        w->t = t;
        w->q = q;
        w->next = NULL;
        w->prev = q->tail;
        if (q->tail)
                q->tail->next = w;
        else
                q->head = w;
        q->tail = w;
}

static void waitq_del(struct waiter *w)
{
        struct waitq *q = w->q;

        if (w->prev)
                w->prev->next = w->next;
        else
                q->head = w->next;
        if (w->next)
                w->next->prev = w->prev;
        else
                q->tail = w->prev;
        w->q = NULL;
}

static struct waiter *waitq_pop(struct waitq *q)
{
        struct waiter *w = q->head;

        if (w)
                waitq_del(w);
        return w;
}

static void waiter_unpark(aiot_task *t, void *arg)
{
        struct waiter *w = arg;

        if (w->q)
                waitq_del(w);
}

/* Parks the current task on q; the check has been done by the caller.  The
 * waiter lives on this stack frame: whoever wakes us (or the unpark hook) takes
 * it off the queue before we return, which GCC cannot see. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#endif
AIOT_INLINE int waitq_park(struct waitq *q, aiot_task *t)
{
        struct waiter w;

        waitq_add(q, &w, t);
        return park_intr(t->loop, t, waiter_unpark, &w);
}
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic pop
#endif

static void waitq_wake_all(struct waitq *q, int rc)
{
        struct waiter *w;

        while ((w = waitq_pop(q)))
                aiot__wake(w->t, rc);
}

struct aiot_event {
        struct waitq q;
        int set;
};

int aiot_event_new(aiot_event **ret)
{
        aiot_event *ev;

        aiot__return_if(!ret, -EINVAL);
        ev = calloc(1, sizeof(*ev));
        if (!ev)
                return -ENOMEM;
        *ret = ev;
        return 0;
}

void aiot_event_free(aiot_event *ev)
{
        if (!ev)
                return;
        waitq_wake_all(&ev->q, -EIDRM);
        free(ev);
}

int aiot_event_set(aiot_event *ev)
{
        aiot__return_if(!ev, -EINVAL);
        ev->set = 1;
        waitq_wake_all(&ev->q, 0);
        return 0;
}

void aiot_event_clear(aiot_event *ev)
{
        if (ev)
                ev->set = 0;
}

int aiot_event_is_set(const aiot_event *ev)
{
        return ev ? ev->set : 0;
}

int aiot_event_wait(aiot_event *ev)
{
        aiot_task *t = aiot__task_current();
        int r;

        aiot__return_if(!ev, -EINVAL);
        if (!t)
                return -EPERM;
        r = task_check(t);
        if (r || ev->set)
                return r;
        return waitq_park(&ev->q, t);
}

/* ---------------------------------------------------------------- semaphores */

struct aiot_sem {
        struct waitq q;
        unsigned value;
};

int aiot_sem_new(aiot_sem **ret, unsigned value)
{
        aiot_sem *s;

        aiot__return_if(!ret || value > INT_MAX, -EINVAL);
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->value = value;
        *ret = s;
        return 0;
}

void aiot_sem_free(aiot_sem *s)
{
        if (!s)
                return;
        waitq_wake_all(&s->q, -EIDRM);
        free(s);
}

int aiot_sem_try_acquire(aiot_sem *s)
{
        aiot__return_if(!s, -EINVAL);
        if (s->value == 0 || s->q.head)
                return -EAGAIN;
        s->value--;
        return 0;
}

int aiot_sem_acquire(aiot_sem *s)
{
        aiot_task *t = aiot__task_current();
        int r;

        aiot__return_if(!s, -EINVAL);
        if (!t)
                return -EPERM;
        r = task_check(t);
        if (r)
                return r;
        if (s->value && !s->q.head) {
                s->value--;
                return 0;
        }
        /* A release hands its unit to us directly: 0 means we hold it. */
        return waitq_park(&s->q, t);
}

int aiot_sem_release(aiot_sem *s)
{
        struct waiter *w;

        aiot__return_if(!s, -EINVAL);
        while ((w = waitq_pop(&s->q)))
                if (aiot__wake(w->t, 0))
                        return 0;
        if (s->value >= INT_MAX)
                return -EOVERFLOW;
        s->value++;
        return 0;
}

int aiot_sem_value(const aiot_sem *s)
{
        aiot__return_if(!s, -EINVAL);
        return (int)s->value;
}
