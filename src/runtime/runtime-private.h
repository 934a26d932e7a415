/* SPDX-License-Identifier: MIT */
/* The task runtime's own layouts and hot path, shared by the .c files of
 * src/runtime/ only (io.c, timer.c and the server use runtime.h).
 *
 * The files of the runtime:
 *  loop.c     aiot_loop_new/free/run, the scheduler and its polling of libev, the
 *             monotonic and virtual clocks, the thread's current loop (and its
 *             reset in a forked child)
 *  heap.c     the timer heap (deadlines, sleeps, the entries of runtime.h)
 *  task.c     tasks: creation, end and cleanup, park / wake, yield, sleep, join,
 *             cancellation, shields, defer
 *  scope.c    scopes: membership, spawn, cancellation of a host's scopes, close,
 *             deadlines
 *  gather.c   gather, race, as_completed (on scopes with a completion hook)
 *  sync.c     wait queues, events, semaphores
 *  ctx.*, stack.*, arch/   the context switch and the task stacks
 *
 * The scheduler.  A loop has one run queue (FIFO).  A task that parks or yields
 * switches straight to the next runnable task; only when the queue is empty, or
 * now and then (see POLL_CHECK_EVERY: so that I/O and timers are never starved),
 * does it switch to the scheduler context, which runs on the thread's own stack
 * inside aiot_loop_run().  There libev is polled (without waiting while tasks are
 * runnable) and expired entries of the timer heap fire.  Tasks are only ever
 * resumed by this code, never by user code.
 *
 * A finished task cannot give its stack back while it still runs on it.  When
 * its struct is recycled at once, the stack stays with it (task.c); when a waiter
 * will release it, the stack stays until then; otherwise (a handle nobody waits
 * on yet, the root) it leaves the stack in loop->zombie_*, and whichever context
 * runs next puts it into the pool.
 *
 * The switch path below is inlined (always_inline), like the park and wait paths
 * above it: after a switch every return address the CPU predicted belongs to the
 * other task, so each call level between the user's call and the switch costs a
 * mispredicted return. */
#ifndef AIOT_RUNTIME_PRIVATE_H
#define AIOT_RUNTIME_PRIVATE_H

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <ev.h>

#include "ctx.h"
#include "macro.h"
#include "runtime.h"
#include "stack.h"

/* Polling libev costs a system call (a microsecond or more on a VM), so it is
 * not done between every few switches: every POLL_CHECK_EVERY direct switches
 * the clock is read, and libev and the timer heap are polled when POLL_INTERVAL_NS
 * has passed since the last poll, or after POLL_FORCE_CHECKS checks in any case
 * (the virtual clock does not move by itself). */
#define POLL_CHECK_EVERY 64
#define POLL_FORCE_CHECKS 64
#define POLL_INTERVAL_NS 50000
/* Each stack's top is shifted by up to this much (see aiot__task_new_raw()): it
 * comes on top of the size asked for, and of the default size task.h documents. */
#define STACK_SHIFT_MAX (15 * 192)
#define STACK_DEFAULT (256u * 1024u)

#define AIOT_INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------- layouts */

struct heap_ent {
        uint64_t at;
        uint64_t seq;
        aiot__timer *tm;
        aiot_task *owner; /* for deadlines: the task whose stack holds tm */
};

struct aiot_loop {
        struct aiot__loop_pub pub; /* first: runtime.h reads it (current, ev, ext) */
        aiot__stack_pool *pool;
        size_t stack_size;
        int virtual_clock;
        int running;
        pid_t run_pid;           /* the process that runs it: a forked child abandons it */
        uint64_t vnow;
        aiot__ctx sched; /* the scheduler, on the thread's stack */
        aiot__ctx dead;  /* where a finished task's last switch saves into */
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
        size_t n_free_low; /* n_free's lowest since the last trim (trim.c) */
        ev_timer trim;     /* trim.c's pass, active while there is something to trim */
        size_t trim_freed; /* task structs trim.c freed in its current run of passes */
        struct heap_ent *heap; /* 1-based binary heap */
        size_t heap_n, heap_cap;
        uint64_t heap_seq;
        ev_timer tw;
};

/* Deadline scopes, the layout behind the public aiot_deadline. */
struct aiot__deadline {
        aiot__timer tm;
        struct aiot__deadline *prev; /* the enclosing deadline of the task */
        aiot_task *task;
        int expired;
        int active;
};

enum aiot__task_state {
        AIOT__T_READY = 0, /* in the run queue (or about to be) */
        AIOT__T_RUNNING,
        AIOT__T_PARKED,
        AIOT__T_DONE,
};

/* A task waiting for another to end (join, cancel_and_wait): on the waiting
 * task's stack, linked into the target's list while it is parked there. */
struct aiot__join_wait {
        aiot_task *task;
        struct aiot__join_wait *next, **pprev;
};

struct aiot__defer {
        struct aiot__defer *next;
        void (*fn)(void *arg);
        void *arg;
};

struct aiot_task {
        struct aiot__task_pub pub; /* first: runtime.h reads it (loop, shield, n_expired, cancelled) */
        aiot__ctx ctx;
        aiot_task *rq_next;
        aiot_task_fn fn;
        void *arg;
        uint8_t state;
        uint8_t parked_intr;    /* parked with aiot__park(): cancel/deadline interrupt it */
        uint8_t has_handle;     /* the spawner holds a handle: freed at join / scope close */
        uint8_t cancel_pending; /* requested inside a shield */
        uint8_t is_root;
        uint8_t mark;
        int result;
        int wake_rc;
        unsigned cancel_requests;
        struct aiot__deadline *deadlines; /* innermost first */
        aiot__unpark_fn unpark;
        void *unpark_arg;
        struct aiot__join_wait *waiters; /* parked until this task ends */
        unsigned n_waiting;     /* tasks inside a wait for this one (parked, or woken
                                   and not yet returned): the last one releases it */
        struct aiot__defer *defers;
        aiot_scope *scope;      /* NULL for the root, or once the scope closed */
        aiot_task *sc_prev, *sc_next;
        aiot_scope *hosted;     /* innermost open scope this task hosts */
        size_t tag;             /* the index for gather / race / as_completed */
        void *stack_lo;
        size_t stack_size;
        const char *name;       /* aiot_task_set_name(), or NULL */
        aiot__namer_fn namer;   /* formats the name when described (aiot__task_set_namer) */
        uint64_t parked_at;     /* the loop's last poll when it parked (describe.c) */
};

struct aiot_scope {
        aiot_loop *loop;
        aiot_task *host;
        aiot_scope *outer;      /* the host's enclosing open scope */
        aiot_task *children;    /* live children and ended ones with a handle */
        size_t live;
        int shield;
        int fail_fast;
        int first_error;
        int cancelled;          /* children present and future are cancelled */
        int closing;
        aiot_error_fn on_error;
        void *userdata;
        struct aiot__deadline *dl_at_open; /* the host's deadlines around the scope */
        int has_timeout;
        struct aiot__deadline timeout;
        /* Internal completion hook (gather, race, as_completed): runs in the ending
         * child after on_error. */
        void (*done_hook)(aiot_scope *s, aiot_task *t);
        void *hook_data;
};

/* ---------------------------------------------------------------- between the files */

/* loop.c */
int aiot__poll_due_slow(aiot_loop *l);

/* heap.c */
void aiot__timer_arm_owned(aiot_loop *l, aiot__timer *tm, uint64_t at, aiot_task *owner);
void aiot__heap_grow(aiot_loop *l);             /* for timer_arm_owned() below */
void aiot__heap_fix(aiot_loop *l, size_t i);     /* entry i changed: moves up or down */
void aiot__timers_drop_owned(aiot_loop *l, aiot_task *t); /* leaves the entries alone */
void aiot__timers_fire(aiot_loop *l, uint64_t now);

/* task.c */
int aiot__task_new_raw(aiot_loop *l, aiot_task_fn fn, void *arg, size_t stack_size, aiot_task **ret);
int aiot__task_spawn(aiot_scope *s, aiot_task_fn fn, void *arg, size_t stack_size, int want_handle,
                     aiot_task **ret); /* a member of s, live, cancelled at once when s is;
                                          *ret set on success only */
void aiot__task_free(aiot_task *t);
void aiot__interrupt(aiot_task *t, int rc);  /* a cancellation or deadline reaches t */

/* trim.c: memory of ended tasks back to the kernel once they stay unused */
void aiot__trim_check(aiot_loop *l); /* at each poll: starts the pass's timer when due */
void aiot__trim_stop(aiot_loop *l);

/* scope.c */
void aiot__scope_child_report(aiot_task *t);     /* in the ending child (t->scope set),
                                                    shielded, when scope_child_reports(t):
                                                    runs the error handler and the hook
                                                    (may block) */
void aiot__scope_cancel_hosted(aiot_task *t);    /* the host's cancellation was delivered */
void aiot__scope_close_leftovers(aiot_task *t);  /* at task end: scopes left open */
void aiot__scope_release_child(aiot_task *t);    /* unlink + free an ended child */
int aiot__scope_spawn_tagged(aiot_scope *s, aiot_task_fn fn, void *arg, size_t tag);
int aiot__deadline_begin_ns(struct aiot__deadline *d, uint64_t at);
int aiot__deadline_end_any(struct aiot__deadline *d); /* also when not innermost */

static inline int aiot__task_cancelled(const aiot_task *t)
{
        return t->pub.cancelled && !t->pub.shield; /* delivered and not shielded */
}

static inline int aiot__task_deadline_expired(const aiot_task *t)
{
        return t->pub.n_expired != 0;
}

/* ---------------------------------------------------------------- scope membership */

/* Inline, with the two below: every task's end runs them (task.c), and each call
 * level out of task_finish() cost about a nanosecond of a spawn + join. */
static inline void scope_child_link(aiot_scope *s, aiot_task *t)
{
        t->scope = s;
        t->sc_prev = NULL;
        t->sc_next = s->children;
        if (s->children)
                s->children->sc_prev = t;
        s->children = t;
}

static inline void scope_child_unlink(aiot_task *t)
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

/* Whether the end of t (its result set) has something to report to its scope:
 * a failure for the error handler, or any end for a completion hook. */
static inline int scope_child_reports(const aiot_task *t)
{
        int rc = t->result;

        return (rc < 0 && rc != -ECANCELED) || t->scope->done_hook != NULL;
}

int aiot__wake(aiot_task *t, int rc);

/* t ended and is cleaned up: it no longer counts as live in its scope, and a
 * host closing the scope wakes when it was the last. */
static inline void scope_child_ended(aiot_task *t)
{
        aiot_scope *s = t->scope;

        assert(s->live > 0);
        if (--s->live == 0 && s->closing)
                aiot__wake(s->host, 0);
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

/* Whether a task may switch straight to the next runnable one, rather than
 * through the scheduler so that it polls. */
static inline int direct_ok(aiot_loop *l)
{
        if (AIOT_LIKELY(++l->since_poll < POLL_CHECK_EVERY))
                return 1;
        return !aiot__poll_due_slow(l);
}

/* aiot__wake() (runtime.h), inline for the runtime's own hot paths. */
AIOT_INLINE int wake_task(aiot_task *t, int rc)
{
        if (t->state != AIOT__T_PARKED)
                return 0;
        t->unpark = NULL;
        t->wake_rc = rc;
        t->state = AIOT__T_READY;
        rq_push(t->pub.loop, t);
        return 1;
}

/* ---------------------------------------------------------------- timer heap */

/* Arming, inline: aiot__sleep_until() (task.c) arms at every sleep, and before
 * the runtime was split into files it had this inlined (heap.c has the rest). */
static inline int ent_less(const struct heap_ent *a, const struct heap_ent *b)
{
        return a->at < b->at || (a->at == b->at && a->seq < b->seq);
}

static inline void heap_place(struct heap_ent *h, size_t i, struct heap_ent e)
{
        h[i] = e;
        e.tm->idx = i;
}

static inline void heap_up(struct heap_ent *h, size_t i)
{
        struct heap_ent e = h[i];

        while (i > 1 && ent_less(&e, &h[i / 2])) {
                heap_place(h, i, h[i / 2]);
                i /= 2;
        }
        heap_place(h, i, e);
}

AIOT_INLINE void timer_arm_owned(aiot_loop *l, aiot__timer *tm, uint64_t at, aiot_task *owner)
{
        tm->at = at;
        tm->seq = ++l->heap_seq;
        if (tm->idx) {
                size_t i = tm->idx;

                l->heap[i].at = at;
                l->heap[i].seq = tm->seq;
                aiot__heap_fix(l, i);
                return;
        }
        if (l->heap_n == l->heap_cap)
                aiot__heap_grow(l);
        l->heap_n++;
        l->heap[l->heap_n] = (struct heap_ent){ .at = at, .seq = tm->seq, .tm = tm, .owner = owner };
        tm->idx = l->heap_n;
        heap_up(l->heap, l->heap_n);
}

/* ---------------------------------------------------------------- switch */

/* Makes next the running task and returns the context to switch to. */
AIOT_INLINE aiot__ctx *run_next(aiot_loop *l, aiot_task *next)
{
        next->state = AIOT__T_RUNNING;
        l->pub.current = next;
        return &next->ctx;
}

/* Where a task that stops running switches to: the next runnable task, or the
 * scheduler when none is or when it is time to poll. */
AIOT_INLINE aiot__ctx *switch_target(aiot_loop *l)
{
        if (l->rq_head && direct_ok(l))
                return run_next(l, rq_pop(l));
        l->pub.current = NULL;
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

/* ---------------------------------------------------------------- park */

/* Parks t interruptibly; the caller has checked for cancellation and has not
 * switched since. */
AIOT_INLINE int park_intr_checked(aiot_loop *l, aiot_task *t, aiot__unpark_fn unpark, void *arg)
{
        t->unpark = unpark;
        t->unpark_arg = arg;
        t->parked_intr = 1;
        t->parked_at = l->last_poll_ns;
        t->state = AIOT__T_PARKED;
        task_suspend(l, t);
        return t->wake_rc;
}

AIOT_INLINE int park_intr(aiot_loop *l, aiot_task *t, aiot__unpark_fn unpark, void *arg)
{
        int r = aiot__task_check(t);

        if (r)
                return r;
        return park_intr_checked(l, t, unpark, arg);
}

#endif
