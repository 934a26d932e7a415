/* SPDX-License-Identifier: MIT */
/* aiot_scope_drain(): wait for a scope's children with a time limit, then
 * cancel the rest, leaving the scope open.
 *
 * It waits the way aiot_scope_close() does: with the scope's closing flag set
 * the last child to end wakes the host (scope.c, aiot__scope_child_ended()).
 * The flag is cleared again before returning, so the scope stays usable.  Its
 * own file because scope.c belongs to the runtime's hot path. */
#include <errno.h>
#include <math.h>

#include "runtime-private.h"

/* Cancels the live children one by one rather than the scope, so that tasks
 * spawned into it later are not cancelled. */
static void cancel_live(aiot_scope *s)
{
        for (aiot_task *t = s->children; t; t = t->sc_next)
                if (t->state != AIOT__T_DONE)
                        aiot_cancel(t);
}

int aiot_scope_drain(aiot_scope *s, double seconds)
{
        aiot_task *host = aiot__task_current();
        aiot_deadline d;
        int r = 0, cut = 0;

        aiot__return_if(!s || isnan(seconds), -EINVAL);
        if (host != s->host)
                return -EPERM;
        if (s->live == 0)
                return 0;
        aiot_deadline_begin(&d, seconds);
        s->closing = 1;
        while (s->live && r == 0)
                r = aiot__park(NULL, NULL);
        aiot_deadline_end(&d);
        if (s->live) {
                cut = 1;
                cancel_live(s);
                while (s->live)
                        aiot__park_nointr();
        }
        s->closing = 0;
        if (aiot__task_cancelled(host))
                return -ECANCELED;
        return cut ? -ETIMEDOUT : 0;
}
