/* SPDX-License-Identifier: MIT */
/* Periodic timers (aiotools' create_timer): a task that spawns a tick task every
 * interval on the loop's clock (virtual or real). */
#ifndef AIOTOOLS_TIMER_H
#define AIOTOOLS_TIMER_H

#include <aiotools/task.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

/* What happens to a tick still running when the next one is due. */
enum aiot_timer_policy {
        AIOT_TIMER_DEFAULT = 0, /* it keeps running; slow ticks pile up */
        AIOT_TIMER_CANCEL = 1,  /* it is cancelled and waited for before the next tick starts */
};

/* A tick: runs as its own task; its result is handled like any scope child's
 * (a negative value other than -ECANCELED goes to the error handler, i.e. is logged)
 * and never stops the timer. */
typedef int (*aiot_tick_fn)(double interval, void *arg);

/* Spawns into scope s a timer task that runs fn(interval, arg) as a new task at once
 * and then every interval seconds, on a fixed schedule (start + k * interval; ticks
 * missed because the loop was busy are skipped, not bunched).  The ticks run in a
 * scope of the timer task, so they never outlive it.  Stop the timer with
 * aiot_cancel_and_wait(*ret): it cancels every running tick and waits for them.
 * *ret (may be NULL) is the timer task, valid as a task handle from aiot_spawn().
 * Returns 0, -EINVAL (no fn, interval not > 0 and finite, bad policy), -ENOMEM, or
 * an error of aiot_spawn(). */
int aiot_timer_start(aiot_scope *s, aiot_tick_fn fn, void *arg, double interval,
                     enum aiot_timer_policy policy, aiot_task **ret);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
