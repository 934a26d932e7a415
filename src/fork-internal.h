/* SPDX-License-Identifier: MIT */
/* What modules above fork (task, io) may call.  Internal: never installed.
 *
 *  aiot__child_own_exit_cb(c)   the exit callback of c belongs to the caller
 *                               (io.c's task-forked children): from now on
 *                               aiot_child_set_exit_cb(c) returns -EBUSY.
 *  aiot__fork_loop_gone(loop)   loop is about to be destroyed: the children it
 *                               watches are detached from it.  Their exit
 *                               callbacks never run; they are still reaped (and
 *                               freed, if their handle was freed) when the
 *                               process next forks or sees any watched child end.
 *  aiot__fork_force_sigchld(on) on != 0: every later fork of this process (and
 *                               of its children) uses the SIGCHLD fallback, as
 *                               AIOTOOLS_NO_PIDFD=1 does; aiot_fork_mode() says so. */
#ifndef AIOT_FORK_INTERNAL_H
#define AIOT_FORK_INTERNAL_H

#include <aiotools/fork.h>

struct ev_loop;

void aiot__child_own_exit_cb(aiot_child *c);
void aiot__fork_loop_gone(struct ev_loop *loop);
void aiot__fork_force_sigchld(int on);

#endif
