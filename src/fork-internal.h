/* SPDX-License-Identifier: MIT */
/* What modules above fork (io) may call.  Internal: never installed.
 *
 *  aiot__child_own_exit_cb(c)   the exit callback of c belongs to the caller
 *                               (io.c's task-forked children): from now on
 *                               aiot_child_set_exit_cb(c) returns -EBUSY.
 *  aiot__fork_force_sigchld(on) on != 0: every later fork of this process (and
 *                               of its children) uses the SIGCHLD fallback, as
 *                               AIOTOOLS_NO_PIDFD=1 does; aiot_fork_mode() says so.
 *  aiot__child_adopt(loop, pid, on_exit, userdata, &c)
 *                               tracks a child an earlier image of this process
 *                               forked before it executed this one (an in-place
 *                               upgrade), as aiot_fork() tracks its own.
 *
 * A loop destroyed while children it watches run needs no call: fork.c detaches
 * them itself, from ev_cleanup watchers (see fork.c). */
#ifndef AIOT_FORK_INTERNAL_H
#define AIOT_FORK_INTERNAL_H

#include <aiotools/fork.h>

void aiot__child_own_exit_cb(aiot_child *c);
void aiot__fork_force_sigchld(int on);
int aiot__child_adopt(struct ev_loop *loop, pid_t pid, aiot_child_exit_cb on_exit, void *userdata,
                      aiot_child **ret);

#endif
