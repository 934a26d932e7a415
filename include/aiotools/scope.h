/* SPDX-License-Identifier: MIT */
/* Structured concurrency: task scopes (aiotools' TaskScope, Trio's nursery) and the
 * gather / as-completed / race helpers built on them.
 *
 * A scope is opened by a task, its host, and owns every task spawned into it;
 * closing it waits for all of them.  Children run to completion whatever their
 * siblings do; a child's error (rc < 0, not -ECANCELED) goes to the scope's error
 * handler.  When the host's cancellation is delivered while the scope is open, every
 * child is cancelled, and close still waits for them. */
#ifndef AIOTOOLS_SCOPE_H
#define AIOTOOLS_SCOPE_H

#include <stddef.h>

#include <aiotools/task.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

/* Called once for every child that ended with rc < 0 other than -ECANCELED, in
 * that child, after its deferred callbacks; it may block (it runs shielded).  t is
 * valid during the call only. */
typedef void (*aiot_error_fn)(aiot_task *t, int rc, void *userdata);

struct aiot_scope_opts {
        size_t size;            /* sizeof(struct aiot_scope_opts), so the struct can grow */
        int shield;             /* the host is shielded while the scope is open */
        int fail_fast;          /* the first child error cancels the other children */
        double timeout;         /* > 0: a deadline for the scope (and the host's body) */
        aiot_error_fn on_error; /* NULL: log the error at info level */
        void *userdata;         /* for on_error */
};

/* Opens a scope hosted by the current task.  opts may be NULL.  With shield, the
 * host's cancellation is deferred until the scope closes (children are cancelled
 * only by the scope itself).  With a timeout, every blocking call of the host
 * inside the scope returns -ETIMEDOUT once it passes and every child is cancelled,
 * shield or not.  Returns 0, -EINVAL, -ENOMEM, -EPERM outside a task. */
int aiot_scope_open(aiot_scope **ret, const struct aiot_scope_opts *opts);

/* Waits for every child to end (not interruptible: cancellation or an expired
 * deadline of the host cancels the children and the wait goes on), ends the
 * scope's shield and timeout, and frees the scope and every child handle not yet
 * joined.  Scopes close in the reverse order of opening, by their host.
 * Returns 0; -ECANCELED when the host's cancellation is delivered (also one that
 * a shielded scope deferred until now); -ETIMEDOUT when the scope's timeout or a
 * deadline around it expired; with fail_fast, the first child error.  -EINVAL /
 * -EPERM (not the host, not the innermost scope) leave the scope open. */
int aiot_scope_close(aiot_scope *s);

/* Waits up to seconds for every child of s to end, then cancels the ones still
 * running and waits for them (not interruptible, as aiot_scope_close()).  s
 * stays open; children spawned later are not cancelled.  Host only.  Returns 0
 * when all ended in time; -ETIMEDOUT when some were cancelled (also when a
 * deadline around the call expired first); -ECANCELED when the host's
 * cancellation was delivered (the children were cancelled at once and waited
 * for); -EINVAL (NULL, NaN), -EPERM (not the host). */
int aiot_scope_drain(aiot_scope *s, double seconds);

/* Cancels every child, and every child spawned later.  The host is not cancelled
 * and close still waits; the cancellation is absorbed (close does not report it).
 * Does not block.  Returns 0 or -EINVAL. */
int aiot_scope_cancel(aiot_scope *s);

/* Runs fns[i](args[i]) as n concurrent tasks in a scope of their own and waits for
 * all; results[i] gets each task's result (errors are reported there, not logged).
 * args may be NULL.  Returns 0 when all were waited for; -ECANCELED / -ETIMEDOUT
 * when the caller was interrupted (the tasks were cancelled and waited for, and
 * results are filled); -EINVAL, -ENOMEM, -EPERM. */
int aiot_gather(size_t n, const aiot_task_fn fns[], void *const args[], int results[]);

/* Runs the n tasks concurrently; the first to succeed (result >= 0) wins, the others
 * are cancelled and waited for.  Stores the winner's index and result.  Returns 0
 * with a winner; when every task failed, the first error (in completion order) and
 * *winner untouched; -ECANCELED / -ETIMEDOUT when the caller was interrupted; no
 * task is left running in any case.  -EINVAL (n == 0), -ENOMEM, -EPERM. */
int aiot_race(size_t n, const aiot_task_fn fns[], void *const args[], size_t *winner, int *result);

/* Results in completion order (aiotools' as_completed_safe). */
typedef struct aiot_as_completed aiot_as_completed;

/* Starts the n tasks.  Returns 0, -EINVAL, -ENOMEM, -EPERM outside a task. */
int aiot_as_completed_open(aiot_as_completed **ret, size_t n, const aiot_task_fn fns[],
                           void *const args[]);

/* Waits for the next task to end and stores its index and result (both may be
 * NULL).  Returns 0; -ENOENT once all n were reported; -ECANCELED / -ETIMEDOUT
 * when the caller is interrupted (the tasks keep running); -EINVAL. */
int aiot_as_completed_next(aiot_as_completed *ac, size_t *index, int *result);

/* Cancels the tasks still running, waits for them and frees ac.  Must be called by
 * the task that opened it.  Returns 0 or -ECANCELED / -ETIMEDOUT as
 * aiot_scope_close(); NULL-safe (returns 0).  -EPERM (not the task that opened
 * it) and -EBUSY (a scope opened after it is still open) change nothing. */
int aiot_as_completed_close(aiot_as_completed *ac);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
