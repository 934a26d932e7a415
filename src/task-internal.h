/* SPDX-License-Identifier: MIT */
/* The task runtime's internal interface.  Internal: never installed.
 *
 * ---- What other modules (io.c, timer.c, ...) may use, and what it promises ----
 *
 *  aiot__loop_current()         the loop whose scheduler runs on this thread (NULL
 *                               outside aiot_loop_run()); also valid in libev
 *                               callbacks and timer callbacks of that loop.
 *  aiot__task_current()         the running task, NULL in callbacks (= aiot_current()).
 *  aiot__task_loop(t)           the loop of a task.
 *  aiot__loop_ev(l)             its struct ev_loop * (= aiot_loop_ev()).
 *  aiot__loop_slot_get/_set     per-loop storage for other modules (io's fd
 *                               watcher table ...), with a destructor run by
 *                               aiot_loop_free() before the libev loop goes.
 *
 *  Park / wake (the one blocking primitive every blocking call is built on):
 *  aiot__park(unpark, arg)      parks the current task until aiot__wake(t, rc) and
 *                               returns rc.  First checks, without parking: a
 *                               delivered cancellation (not shielded) returns
 *                               -ECANCELED, an expired deadline -ETIMEDOUT.  When
 *                               one of those is delivered WHILE parked, unpark(t,
 *                               arg) is called first (from wherever the cancel came
 *                               from; unregister from your wait list there; it must
 *                               not block), then park returns -ECANCELED /
 *                               -ETIMEDOUT.  unpark may be NULL.
 *  aiot__park_nointr()          parks until aiot__wake(); not interruptible.
 *  aiot__wake(t, rc)            makes a parked task runnable with rc; returns 1 if it
 *                               was parked, 0 if not (already woken / interrupted):
 *                               hand a resource (a semaphore unit) over only on 1.
 *                               May be called from tasks, libev callbacks and timer
 *                               callbacks; never switches.
 *  aiot__check()                = aiot_checkpoint(): -ECANCELED/-ETIMEDOUT/0.
 *
 *  Time and the runtime timer heap (binary heap, ties FIFO, one ev_timer):
 *  aiot__now_ns(l)              the loop clock in ns (monotonic or virtual).
 *  aiot__s_to_ns(seconds)       relative seconds -> ns, saturating (NaN/neg -> 0).
 *  aiot__at_from_now(l, s)      the absolute time s seconds from now, saturating
 *                               below AIOT__NEVER; +INFINITY gives AIOT__NEVER.
 *  AIOT__NEVER                  an absolute time that never comes: sleeping until
 *                               it parks without a timer (the virtual clock never
 *                               jumps to it).
 *  aiot__timer_init(tm, fn)     prepares an entry; fn(tm) runs in the scheduler,
 *                               outside any task, when tm expires: it must not
 *                               block; it may wake, cancel, spawn, re-arm.  The
 *                               entry is embedded in your object (container_of).
 *  aiot__timer_arm(l, tm, at)   (re)arms tm for absolute time at (ns, loop clock).
 *  aiot__timer_disarm(l, tm)    no-op when not armed.
 *  aiot__timer_armed(tm)
 *  aiot__sleep_until(at)        parks the current task until at; 0, -ECANCELED,
 *                               -ETIMEDOUT.
 *
 * Everything runs on one thread per loop; nothing here takes locks. */
#ifndef AIOT_TASK_INTERNAL_H
#define AIOT_TASK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <aiotools/scope.h>
#include <aiotools/task.h>

struct ev_loop;

/* ---- loop and task access */

aiot_loop *aiot__loop_current(void);
/* In a forked child: forget the loop the parent was running on this thread, so
 * that aiot_now()/aiot_current() stop reporting it (aiot_loop_run() does this
 * by itself when it sees the pid changed). */
void aiot__task_after_fork(void);
aiot_task *aiot__task_current(void);
aiot_loop *aiot__task_loop(const aiot_task *t);
struct ev_loop *aiot__loop_ev(aiot_loop *l);

enum {
        AIOT__SLOT_IO = 0,
        AIOT__SLOT_TIMER = 1,
        AIOT__SLOT_SERVER = 2,
        AIOT__SLOT_SPARE = 3,
        AIOT__NSLOTS = 4,
};
void *aiot__loop_slot_get(aiot_loop *l, int slot);
/* Replaces the slot's data; destroy(l, data) runs at aiot_loop_free() (may be NULL). */
void aiot__loop_slot_set(aiot_loop *l, int slot, void *data, void (*destroy)(aiot_loop *l, void *data));

/* ---- park / wake */

typedef void (*aiot__unpark_fn)(aiot_task *t, void *arg);
int aiot__park(aiot__unpark_fn unpark, void *arg);
int aiot__park_nointr(void);
int aiot__wake(aiot_task *t, int rc);
int aiot__check(void);

/* ---- time and timers */

uint64_t aiot__now_ns(aiot_loop *l);
uint64_t aiot__s_to_ns(double seconds);
#define AIOT__NEVER UINT64_MAX
uint64_t aiot__at_from_now(aiot_loop *l, double seconds);

typedef struct aiot__timer aiot__timer;
typedef void (*aiot__timer_fn)(aiot__timer *tm);
struct aiot__timer {
        uint64_t at;      /* absolute ns, loop clock */
        uint64_t seq;     /* arming order, for FIFO ties */
        size_t idx;       /* 1-based heap slot; 0 when not armed */
        aiot__timer_fn fn;
};

static inline void aiot__timer_init(aiot__timer *tm, aiot__timer_fn fn)
{
        tm->at = 0;
        tm->seq = 0;
        tm->idx = 0;
        tm->fn = fn;
}

static inline int aiot__timer_armed(const aiot__timer *tm)
{
        return tm->idx != 0;
}

void aiot__timer_arm(aiot_loop *l, aiot__timer *tm, uint64_t at);
void aiot__timer_disarm(aiot_loop *l, aiot__timer *tm);
int aiot__sleep_until(uint64_t at);

/* ---- between task.c and scope.c only */

/* Deadline scopes, the layout behind the public aiot_deadline. */
struct aiot__deadline {
        aiot__timer tm;
        struct aiot__deadline *prev; /* the enclosing deadline of the task */
        aiot_task *task;
        int expired;
        int active;
};

/* Called by task.c. */
int aiot__scope_child_done(aiot_task *t);        /* in the ending child (t->scope set),
                                                    shielded: runs the error handler and
                                                    hook (may block) and returns 1; with
                                                    neither, ends t (below), returns 0 */
void aiot__scope_child_ended(aiot_task *t);      /* after a 1, t cleaned up: no longer live */
void aiot__scope_cancel_hosted(aiot_task *t, struct aiot__deadline *d);
                                                 /* d NULL: the host's cancellation was
                                                    delivered; else deadline d expired */
void aiot__scope_close_leftovers(aiot_task *t);  /* at task end: scopes left open */
void aiot__scope_release_child(aiot_task *t);    /* unlink + free an ended child */
int aiot__scope_inside_deadline(aiot_task *t, const struct aiot__deadline *d);
                                                 /* an open scope of t was opened inside d */

/* Called by scope.c. */
int aiot__task_new(aiot_scope *s, aiot_task_fn fn, void *arg, size_t stack_size, int want_handle,
                   aiot_task **ret);
void aiot__task_free(aiot_task *t);
int aiot__deadline_begin_ns(struct aiot__deadline *d, uint64_t at);
int aiot__deadline_end_any(struct aiot__deadline *d); /* also when not innermost */
int aiot__task_cancelled(const aiot_task *t);       /* delivered and not shielded */
int aiot__task_deadline_expired(const aiot_task *t);
int aiot__task_wait(aiot_task *t, int intr);         /* joiner wait; 0 or -ECANCELED/-ETIMEDOUT */

/* ---- the structures, shared by task.c and scope.c only */
#ifdef AIOT__TASK_PRIVATE
#include "ctx.h"
#include "stack.h"

#ifndef EV_H
#include <ev.h>
#endif

enum aiot__task_state {
        AIOT__T_READY = 0, /* in the run queue (or about to be) */
        AIOT__T_RUNNING,
        AIOT__T_PARKED,
        AIOT__T_DONE,
};

struct aiot__defer {
        struct aiot__defer *next;
        void (*fn)(void *arg);
        void *arg;
};

struct aiot_task {
        aiot__ctx ctx;
        aiot_loop *loop;
        aiot_task *rq_next;
        aiot_task_fn fn;
        void *arg;
        uint8_t state;
        uint8_t parked_intr;    /* parked with aiot__park(): cancel/deadline interrupt it */
        uint8_t has_handle;     /* the spawner holds a handle: freed at join / scope close */
        uint8_t cancelled;      /* cancellation delivered */
        uint8_t cancel_pending; /* requested inside a shield */
        uint8_t is_root;
        uint8_t mark;
        int result;
        int wake_rc;
        unsigned cancel_requests;
        unsigned shield;
        unsigned n_expired;     /* active deadlines that expired */
        struct aiot__deadline *deadlines; /* innermost first */
        aiot__unpark_fn unpark;
        void *unpark_arg;
        aiot_task *joiner;
        struct aiot__defer *defers;
        aiot_scope *scope;      /* NULL for the root, or once the scope closed */
        aiot_task *sc_prev, *sc_next;
        aiot_scope *hosted;     /* innermost open scope this task hosts */
        size_t tag;             /* the index for gather / race / as_completed */
        void *stack_lo;
        size_t stack_size;
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
#endif

#endif
