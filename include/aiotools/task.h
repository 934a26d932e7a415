/* SPDX-License-Identifier: MIT */
/* The task runtime: a loop wrapping a libev loop, stackful coroutine tasks, a
 * scheduler, cancellation, shields, deadlines, defer, events and semaphores.
 *
 * Ownership in one paragraph: a loop owns its tasks and its libev loop.  A task is
 * spawned into a scope (scope.h) and owned by it.  Asking aiot_spawn() for a handle
 * makes the handle valid until it is released or the task's scope closes,
 * whichever comes first.  Any number of tasks may wait for one (aiot_join(),
 * aiot_cancel_and_wait()); the last of them to return after the task has ended
 * releases the handle.  A task spawned without a handle is freed as soon as it
 * ends.  The handle that
 * aiot_current() returns is valid while that task runs.
 *
 * Times are seconds as double on the loop's clock (monotonic, or virtual). */
#ifndef AIOTOOLS_TASK_H
#define AIOTOOLS_TASK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

struct ev_loop;

typedef struct aiot_loop aiot_loop;
typedef struct aiot_task aiot_task;
typedef struct aiot_scope aiot_scope;

/* A task's function: its return value is the task's result, 0 (or a positive
 * value) for success, a negative errno for failure, -ECANCELED when it ended by
 * cancellation. */
typedef int (*aiot_task_fn)(void *arg);

/* ---- loop */

struct aiot_loop_opts {
        size_t size;          /* sizeof(struct aiot_loop_opts), so the struct can grow */
        size_t stack_size;    /* usable bytes per task stack; 0: 256 KiB */
        int virtual_clock;    /* nonzero: the clock jumps to the next deadline when idle */
        size_t blocking_threads; /* threads of the blocking pool (aiot_run_blocking(3)); 0: 4 */
};

/* Creates a loop with its own libev loop (ev_loop_new()).  opts may be NULL.
 * Returns 0, -EINVAL (bad opts->size), -ENOMEM. */
int aiot_loop_new(aiot_loop **ret, const struct aiot_loop_opts *opts);

/* Frees the loop and its libev loop.  NULL-safe.  Must not be running. */
void aiot_loop_free(aiot_loop *loop);

/* The libev loop, for raw watchers beside tasks.  Owned by the loop. */
struct ev_loop *aiot_loop_ev(aiot_loop *loop);

/* Runs main(arg) as the root task until it ends (with every task it spawned) and
 * returns its result.  When the root task cannot start, returns -EINVAL, -EBUSY
 * (already running, or called from inside a task) or -ENOMEM instead. */
int aiot_loop_run(aiot_loop *loop, aiot_task_fn main, void *arg);

/* The current loop's clock in seconds (virtual or monotonic); 0 outside a loop. */
double aiot_now(void);

/* ---- tasks */

/* The running task, or NULL outside a task (e.g. in a libev callback). */
aiot_task *aiot_current(void);

/* Options for aiot_spawn_opts(). */
struct aiot_spawn_opts {
        size_t size;          /* sizeof(struct aiot_spawn_opts) */
        size_t stack_size;    /* 0: the loop's stack size */
        const char *name;     /* the task's name (aiot_task_set_name()), or NULL */
};

/* Spawns fn(arg) as a new task in scope s; it starts at the next scheduling
 * point.  May be called from any task of the scope's loop, or from a callback
 * on that loop.  ret may be NULL; see the ownership paragraph above.  A task
 * spawned into a cancelled scope starts cancelled.  Returns 0, -EINVAL, -ENOMEM. */
int aiot_spawn(aiot_scope *s, aiot_task_fn fn, void *arg, aiot_task **ret);
int aiot_spawn_opts(aiot_scope *s, aiot_task_fn fn, void *arg, const struct aiot_spawn_opts *opts,
                    aiot_task **ret);

/* Waits for t to end, stores its result in *result (may be NULL) and releases
 * the handle (when no other task still waits for t).  Any number of tasks may
 * join one.  Returns 0; -ECANCELED / -ETIMEDOUT when the caller is interrupted
 * (t keeps running and the handle stays valid); -EDEADLK when t is the caller;
 * -EINVAL; -EPERM outside a task. */
int aiot_join(aiot_task *t, int *result);

/* Names t for aiot_loop_describe() and the watchdog's log.  The string is not
 * copied: it must stay valid while t lives (a literal, or memory of the task's
 * own state).  NULL removes the name.  Returns 0, -EINVAL (NULL t). */
int aiot_task_set_name(aiot_task *t, const char *name);

/* t's name, or NULL (no name, NULL t). */
const char *aiot_task_name(const aiot_task *t);

/* What a task is doing, as aiot_loop_describe() reports it. */
enum aiot_task_state {
        AIOT_TASK_RUNNING = 1, /* the caller of aiot_loop_describe(), typically */
        AIOT_TASK_RUNNABLE,    /* in the run queue */
        AIOT_TASK_PARKED,      /* waiting: see wait */
        AIOT_TASK_DONE,        /* ended; its handle is not released yet */
};

/* What a parked task waits for. */
enum aiot_task_wait {
        AIOT_WAIT_NONE = 0,
        AIOT_WAIT_FD_READ,  /* fd readable (aiot_read, aiot_accept ...) */
        AIOT_WAIT_FD_WRITE, /* fd writable */
        AIOT_WAIT_FD_RW,    /* either */
        AIOT_WAIT_SLEEP,    /* a sleep; wake_in says until when */
        AIOT_WAIT_EVENT,    /* an aiot_event */
        AIOT_WAIT_SEM,      /* an aiot_sem */
        AIOT_WAIT_JOIN,     /* the end of wait_task */
        AIOT_WAIT_CHILD,    /* the end of child process wait_id */
        AIOT_WAIT_OTHER,    /* something else (a scope's close, a drain ...) */
};

struct aiot_task_info {
        const aiot_task *task;
        const aiot_task *parent;    /* the task hosting its scope; NULL for the root */
        int depth;                  /* 0 for the root, its children 1 ... */
        const char *name;           /* NULL: unnamed */
        int state;                  /* enum aiot_task_state */
        int wait;                   /* enum aiot_task_wait, for a parked task */
        long wait_id;               /* the fd (AIOT_WAIT_FD_*), the pid (AIOT_WAIT_CHILD), else -1 */
        const aiot_task *wait_task; /* AIOT_WAIT_JOIN: the task waited for */
        const void *wait_object;    /* AIOT_WAIT_EVENT / _SEM: the event or semaphore */
        double parked_for;          /* seconds since it parked (about: the loop's last poll) */
        double wake_in;             /* AIOT_WAIT_SLEEP: seconds until it wakes; else -1 */
        double deadline_in;         /* seconds until its innermost deadline expires; -1: none */
        unsigned cancel_count;      /* cancellation requests (aiot_cancelling()) */
        int shielded;               /* inside aiot_shield_begin() */
};

typedef void (*aiot_describe_fn)(const struct aiot_task_info *info, void *arg);

/* Calls fn once per task of loop, the tree of scopes depth first (each task
 * before the tasks of the scopes it hosts), without switching: from a task of
 * the loop or from a callback on it.  Costs nothing until called (what a task
 * waits for is read from what it parked with).  Returns the number of tasks,
 * or -EINVAL. */
int aiot_loop_describe(aiot_loop *loop, aiot_describe_fn fn, void *arg);

/* aiot_loop_describe() as text on f, one line per task, indented by depth
 * (flags 0), or as a JSON array of objects (AIOT_DUMP_JSON).  Returns the
 * number of tasks, or -EINVAL. */
#define AIOT_DUMP_JSON 1
int aiot_loop_dump_tasks(aiot_loop *loop, FILE *f, unsigned flags);

/* 1 once t has ended, 0 while it runs (also 0 for NULL). */
int aiot_task_done(const aiot_task *t);

/* Stores t's result in *result.  Returns 0, -EAGAIN while t runs, -EINVAL. */
int aiot_task_result(const aiot_task *t, int *result);

/* ---- cancellation */

/* Requests cancellation of t.  Idempotent and counted: every request counts (see
 * aiot_cancelling()) but one or many have the same effect.  When t is not
 * shielded, the request is delivered at once: every blocking call in t returns
 * -ECANCELED from then on, and the tasks of scopes t hosts are cancelled.
 * Inside a shield it is delivered at the end of the outermost shield.  A no-op on
 * an ended task.  Does not block; may be called from callbacks.  Returns 0 or
 * -EINVAL. */
int aiot_cancel(aiot_task *t);

/* The number of cancellation requests t has received (0 for NULL). */
int aiot_cancelling(const aiot_task *t);

/* Cancels t and waits until it has ended, then releases the handle (when no
 * other task still waits for t).  The target's cancellation is absorbed: returns 0
 * however t ended (use aiot_cancel() + aiot_join() to see its result).  When the
 * caller itself is cancelled (before or during the call) or hits a deadline, it
 * still waits until t has ended, shielded cleanup included, then returns its own
 * -ECANCELED / -ETIMEDOUT.  Whatever it returns but -EDEADLK (t is the caller),
 * -EINVAL and -EPERM, t has ended. */
int aiot_cancel_and_wait(aiot_task *t);

/* The same for a set of n distinct tasks: cancels all, waits for all, stores each
 * result in results[i] (may be NULL) and releases every handle, only once all have
 * ended, also when it then returns the caller's -ECANCELED / -ETIMEDOUT.  -EINVAL
 * also for duplicates in ts; -EDEADLK as above, for any of them, before anything
 * is cancelled. */
int aiot_cancel_and_wait_all(aiot_task *const ts[], size_t n, int results[]);

/* A shield: cancellation requested inside is delivered at the end of the
 * outermost shield, so cleanup can block.  Deadlines still apply inside.  Shields
 * nest; they are per task and must be balanced within it. */
void aiot_shield_begin(void);
void aiot_shield_end(void);

/* Returns -ECANCELED or -ETIMEDOUT when a blocking call would, else 0.  Never
 * blocks. */
int aiot_checkpoint(void);

/* Lets every other runnable task run once.  Returns 0, -ECANCELED, -ETIMEDOUT,
 * -EPERM outside a task. */
int aiot_yield(void);

/* Sleeps for seconds on the loop's clock; +INFINITY sleeps until cancelled or a
 * deadline passes (no timer: a virtual clock never jumps to it).  Returns 0,
 * -ECANCELED, -ETIMEDOUT, -EINVAL (NaN), -EPERM outside a task. */
int aiot_sleep(double seconds);

/* ---- deadlines (move_on_after) */

/* A deadline scope, allocated by the caller (usually on the task's stack).  The
 * contents are private. */
typedef struct aiot_deadline {
        uint64_t priv_[10];
} aiot_deadline;

/* Starts a deadline seconds from now: once it passes, every blocking call of the
 * task returns -ETIMEDOUT until aiot_deadline_end(d), even inside a shield.
 * Deadlines nest; every one is honoured.  seconds <= 0 expires at once,
 * +INFINITY never.  Returns 0, -EINVAL (NULL, NaN), -EPERM outside a task (then
 * aiot_deadline_end(d) returns -EINVAL). */
int aiot_deadline_begin(aiot_deadline *d, double seconds);

/* Ends the innermost deadline scope d.  Returns 1 if it expired, 0 if not,
 * -EINVAL when d is not the innermost active deadline of the calling task, -EBUSY
 * while a scope opened inside d is still open. */
int aiot_deadline_end(aiot_deadline *d);

/* ---- defer */

/* Registers fn(arg) to run when the current task ends, however it ends.
 * Callbacks run in LIFO order, in the task, shielded: they may block.  Returns 0,
 * -EINVAL, -ENOMEM, -EPERM outside a task. */
int aiot_defer(void (*fn)(void *arg), void *arg);

/* ---- events */

/* An event: a flag that tasks wait for; setting it wakes every waiter, in FIFO
 * order.  Not bound to a loop; waiters must all be on one loop. */
typedef struct aiot_event aiot_event;

int aiot_event_new(aiot_event **ret);

/* NULL-safe.  Tasks still waiting are woken with -EIDRM. */
void aiot_event_free(aiot_event *ev);

/* Sets the flag and wakes all waiters.  Returns 0 or -EINVAL. */
int aiot_event_set(aiot_event *ev);

/* Clears the flag (NULL-safe). */
void aiot_event_clear(aiot_event *ev);

/* 1 when set, 0 when clear or NULL. */
int aiot_event_is_set(const aiot_event *ev);

/* Waits until the flag is set (returns at once when it is).  Returns 0,
 * -ECANCELED, -ETIMEDOUT, -EIDRM (freed meanwhile), -EINVAL, -EPERM outside a task. */
int aiot_event_wait(aiot_event *ev);

/* ---- semaphores */

/* A counting semaphore with FIFO waiters: a release hands its unit straight to
 * the longest waiter. */
typedef struct aiot_sem aiot_sem;

int aiot_sem_new(aiot_sem **ret, unsigned value);

/* NULL-safe.  Tasks still waiting are woken with -EIDRM. */
void aiot_sem_free(aiot_sem *s);

/* Takes one unit, waiting while there is none.  Returns 0, -ECANCELED,
 * -ETIMEDOUT, -EIDRM, -EINVAL, -EPERM outside a task.  On an error no unit was
 * taken. */
int aiot_sem_acquire(aiot_sem *s);

/* Takes one unit if one is free and nobody waits.  Returns 0, -EAGAIN, -EINVAL. */
int aiot_sem_try_acquire(aiot_sem *s);

/* Returns one unit.  Returns 0, -EINVAL, -EOVERFLOW. */
int aiot_sem_release(aiot_sem *s);

/* The free units (0 while tasks wait), or -EINVAL. */
int aiot_sem_value(const aiot_sem *s);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
