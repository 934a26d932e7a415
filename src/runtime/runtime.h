/* SPDX-License-Identifier: MIT */
/* The task runtime's internal interface.  Internal: never installed.
 *
 * ---- What other modules (io.c, timer.c, ...) may use, and what it promises ----
 *
 *  aiot__loop_current()         the loop whose scheduler runs on this thread (NULL
 *                               outside aiot_loop_run(), and in a forked child);
 *                               also valid in libev callbacks and timer callbacks
 *                               of that loop.
 *  aiot__task_current()         the running task, NULL in callbacks (= aiot_current()).
 *  aiot__task_loop(t)           the loop of a task.
 *  aiot__loop_ev(l)             its struct ev_loop * (= aiot_loop_ev()).
 *  aiot__loop_ext_get/_set      per-loop extensions of other modules (io's fd
 *                               watcher table, blocking's thread pool), with a
 *                               destructor run by aiot_loop_free() before the
 *                               libev loop goes.
 *  aiot__task_set_namer(t, fn) t's name is made by fn(t's argument, buf, len)
 *                               only when the tasks are described: a name with
 *                               run-time parts (a connection's peer) costs
 *                               nothing per task run.  Overrides its name.
 *  aiot__spawn_named(s, fn, arg, stack, namer)  spawns (no handle) with one.
 *  aiot__loop_pub(l)->blocking_threads  the pool size the loop was made with.
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
 *  aiot__park_checked(u, arg)   the same without the first check, for a caller
 *                               that has just made it (aiot__task_check()) and
 *                               has not switched since.
 *  aiot__park_nointr()          parks until aiot__wake(); not interruptible.
 *  aiot__wake(t, rc)            makes a parked task runnable with rc; returns 1 if it
 *                               was parked, 0 if not (already woken / interrupted):
 *                               hand a resource (a semaphore unit) over only on 1.
 *                               May be called from tasks, libev callbacks and timer
 *                               callbacks; never switches.
 *  aiot__check()                = aiot_checkpoint(): -ECANCELED/-ETIMEDOUT/0.
 *  aiot__task_check(t)          the same for a task the caller already holds.
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
 * Everything runs on one thread per loop; nothing here takes locks.  The runtime
 * knows nothing of the modules above it: a forked child forgets the loop through
 * an atfork handler (loop.c), and fork.c detaches its children from a libev loop
 * being destroyed by its own ev_cleanup watchers.
 *
 * The accessors are inline: they run on every I/O wait.  They read the heads of
 * struct aiot_loop and struct aiot_task (aiot__loop_pub, aiot__task_pub below),
 * which runtime-private.h makes the first member of each; the rest of both
 * layouts stays private to src/runtime/. */
#ifndef AIOT_RUNTIME_H
#define AIOT_RUNTIME_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#include <aiotools/scope.h>
#include <aiotools/task.h>

struct ev_loop;

/* ---- loop and task access */

enum {
        AIOT__EXT_IO = 0, /* io.c: the fd watcher table and the task-forked children */
        AIOT__EXT_BLOCKING = 1, /* blocking.c: the thread pool */
        AIOT__NEXT = 2,
};

typedef void (*aiot__ext_destroy_fn)(aiot_loop *l, void *data);

/* The largest aiot_loop_opts.blocking_threads aiot_loop_new() takes. */
#define AIOT__BLOCKING_THREADS_MAX 1024

/* The head of every struct aiot_loop: what the inline accessors read. */
struct aiot__loop_pub {
        aiot_task *current; /* the running task; NULL in the scheduler and callbacks */
        struct ev_loop *ev;
        struct {
                void *data;
                aiot__ext_destroy_fn destroy;
        } ext[AIOT__NEXT];
        unsigned blocking_threads; /* aiot_loop_opts.blocking_threads, for blocking.c */
};

/* The head of every struct aiot_task: what a cancellation check reads. */
struct aiot__task_pub {
        aiot_loop *loop;
        unsigned shield;    /* shield depth */
        unsigned n_expired; /* active deadlines that expired */
        uint8_t cancelled;  /* cancellation delivered */
};

/* The loop running on this thread (defined in loop.c). */
extern __thread aiot_loop *aiot__tls_loop __attribute__((tls_model("initial-exec"), visibility("hidden")));

static inline struct aiot__loop_pub *aiot__loop_pub(aiot_loop *l)
{
        return (struct aiot__loop_pub *)(void *)l;
}

static inline const struct aiot__task_pub *aiot__task_pub(const aiot_task *t)
{
        return (const struct aiot__task_pub *)(const void *)t;
}

static inline aiot_loop *aiot__loop_current(void)
{
        return aiot__tls_loop;
}

static inline aiot_task *aiot__task_current(void)
{
        aiot_loop *l = aiot__tls_loop;

        return l ? aiot__loop_pub(l)->current : NULL;
}

static inline aiot_loop *aiot__task_loop(const aiot_task *t)
{
        return aiot__task_pub(t)->loop;
}

static inline struct ev_loop *aiot__loop_ev(aiot_loop *l)
{
        return aiot__loop_pub(l)->ev;
}

static inline void *aiot__loop_ext_get(aiot_loop *l, int ext)
{
        return aiot__loop_pub(l)->ext[ext].data;
}

/* Replaces the extension's data; destroy(l, data) runs at aiot_loop_free() (may be NULL). */
void aiot__loop_ext_set(aiot_loop *l, int ext, void *data, aiot__ext_destroy_fn destroy);

/* ---- park / wake */

typedef void (*aiot__unpark_fn)(aiot_task *t, void *arg);
int aiot__park(aiot__unpark_fn unpark, void *arg);
int aiot__park_checked(aiot__unpark_fn unpark, void *arg);
/* describe.c: what a parked task waits for is read from the unpark hook it
 * parked with; the files that park (task.c, sync.c, io.c) register theirs
 * (from a constructor) with a function that fills in the wait fields. */
struct aiot_task_info;
typedef void (*aiot__wait_info_fn)(const aiot_task *t, void *unpark_arg, struct aiot_task_info *ti);
void aiot__wait_kind_register(aiot__unpark_fn unpark, aiot__wait_info_fn info);
/* A name made only when tasks are described (see the list at the top). */
typedef void (*aiot__namer_fn)(void *arg, char *buf, size_t len);
void aiot__task_set_namer(aiot_task *t, aiot__namer_fn namer);
/* aiot_spawn_opts() without a handle, for a task named by namer. */
int aiot__spawn_named(aiot_scope *s, aiot_task_fn fn, void *arg, size_t stack_size, aiot__namer_fn namer);
/* The live tasks of l (a walk of the tree: for a periodic figure, not a hot path). */
size_t aiot__loop_task_count(aiot_loop *l);
int aiot__park_nointr(void);
int aiot__wake(aiot_task *t, int rc);

static inline int aiot__task_check(const aiot_task *t)
{
        const struct aiot__task_pub *p = aiot__task_pub(t);

        if (__builtin_expect(p->cancelled, 0) && !p->shield)
                return -ECANCELED;
        if (__builtin_expect(p->n_expired != 0, 0))
                return -ETIMEDOUT;
        return 0;
}

static inline int aiot__check(void)
{
        aiot_task *t = aiot__task_current();

        return t ? aiot__task_check(t) : 0;
}

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

#endif
