/* SPDX-License-Identifier: MIT */
/* Periodic timers (aiotools' create_timer): a task that sleeps on the runtime's timer
 * heap until each tick is due and spawns the tick into a scope of its own, so that
 * stopping the timer cancels and awaits every tick still running. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "aiotools/timer.h"
#include "macro.h"
#include "runtime/runtime.h"

struct timer {
        aiot_tick_fn fn;
        void *arg;
        double interval;
        uint64_t period; /* interval in ns */
        enum aiot_timer_policy policy;
};

static int tick_task(void *arg)
{
        const struct timer *tm = arg;

        return tm->fn(tm->interval, tm->arg);
}

/* The next due time after now on the schedule start + k * period: ticks missed while
 * the loop was busy are skipped rather than fired in a burst. */
static uint64_t next_due(uint64_t due, uint64_t period, uint64_t now)
{
        uint64_t k;

        /* Saturating: a virtual clock may be centuries ahead, and a period of
         * centuries must not wrap around into the past (a burst of ticks). */
        if (due >= AIOT__NEVER - period)
                return AIOT__NEVER;
        due += period;
        if (due > now)
                return due;
        k = (now - due) / period + 1;
        if (k > (AIOT__NEVER - 1 - due) / period)
                return AIOT__NEVER;
        return due + k * period;
}

static int timer_loop(struct timer *tm, aiot_scope *ticks)
{
        aiot_loop *l = aiot__task_loop(aiot__task_current());
        uint64_t due = aiot__now_ns(l);
        aiot_task *prev = NULL;
        int r;

        for (;;) {
                if (tm->policy == AIOT_TIMER_CANCEL && prev) {
                        /* Releases the handle of a finished tick too, so handles do
                         * not pile up in the scope. */
                        r = aiot_cancel_and_wait(prev);
                        if (r < 0)
                                return r;
                        prev = NULL;
                }
                r = aiot_spawn(ticks, tick_task, tm, tm->policy == AIOT_TIMER_CANCEL ? &prev : NULL);
                if (r < 0)
                        return r;
                due = next_due(due, tm->period, aiot__now_ns(l));
                r = aiot__sleep_until(due);
                if (r < 0)
                        return r;
        }
}

static int timer_task(void *arg)
{
        struct timer *tm = arg;
        aiot_scope *ticks;
        int r, rc;

        r = aiot_scope_open(&ticks, NULL);
        if (r == 0) {
                r = timer_loop(tm, ticks);
                /* The timer ends by cancellation (or a deadline): closing the scope
                 * in the cancelled host cancels every tick and waits for them. */
                aiot_scope_cancel(ticks);
                rc = aiot_scope_close(ticks);
                if (r == 0)
                        r = rc;
        }
        free(tm);
        return r;
}

int aiot_timer_start(aiot_scope *s, aiot_tick_fn fn, void *arg, double interval,
                     enum aiot_timer_policy policy, aiot_task **ret)
{
        struct timer *tm;
        aiot_task *t;
        uint64_t period;
        int r;

        aiot__return_if(!s || !fn || !(interval > 0) || isinf(interval), -EINVAL);
        aiot__return_if(policy != AIOT_TIMER_DEFAULT && policy != AIOT_TIMER_CANCEL, -EINVAL);
        period = aiot__s_to_ns(interval);
        aiot__return_if(period == 0, -EINVAL);

        tm = malloc(sizeof(*tm));
        if (!tm)
                return -ENOMEM;
        *tm = (struct timer){ .fn = fn, .arg = arg, .interval = interval, .period = period, .policy = policy };
        r = aiot_spawn(s, timer_task, tm, ret ? &t : NULL);
        if (r < 0) {
                free(tm);
                return r;
        }
        if (ret)
                *ret = t;
        return 0;
}
