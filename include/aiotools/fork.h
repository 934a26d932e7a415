/* SPDX-License-Identifier: MIT */
#ifndef AIOTOOLS_FORK_H
#define AIOTOOLS_FORK_H

#include <sys/types.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

struct ev_loop;

/* A child process started by aiot_fork(), tracked by a pidfd (or, without
 * pidfd support, by SIGCHLD-driven reaping of exactly this PID). */
typedef struct aiot_child aiot_child;

/* Runs in the child; its return value (masked with 0xff) is the exit code. */
typedef int (*aiot_child_fn)(void *arg);

/* Called once, from the loop, after the child has been reaped.  status is the
 * exit code (0..255) or minus the number of the signal that killed it, or
 * AIOT_CHILD_LOST.  The callback may free c and may fork new children. */
typedef void (*aiot_child_exit_cb)(aiot_child *c, int status, void *userdata);

/* The status of a child that something else in the process reaped first (a
 * stray waitpid(-1), libev's default loop): its real status is unknown. */
#define AIOT_CHILD_LOST (-1000)

/* How aiot_fork() tracks children: the value of aiot_fork_mode(). */
enum aiot_fork_mode {
        AIOT_FORK_PIDFD = 1,   /* pidfd_open + waitid(P_PIDFD) + pidfd_send_signal */
        AIOT_FORK_SIGCHLD = 2, /* SIGCHLD handler + waitpid(pid) of tracked PIDs only */
};

/* Forks a child that runs fn(arg) with default signal dispositions and an empty
 * signal mask, then _exit()s with its return value.  Returns once the child
 * runs, so a signal sent right after return reaches it with default handling
 * in place.  The child is watched on loop, which must come from ev_loop_new():
 * libev's default loop reaps every child itself.  on_exit may be NULL.
 * On success *ret is the handle, which owns the pidfd and reaps the process.
 * Returns 0, -EINVAL (bad argument or the default loop), -EBUSY (libev's
 * default loop exists in this process), -ECHILD (SIGCHLD is ignored, so the
 * kernel would discard the status), or the -errno of a failed system call.
 * A child that something else reaped before its pidfd was opened is reported
 * with AIOT_CHILD_LOST, from the loop, and never signalled.
 * fn runs in a copy of the caller: called from a task, it must not use the
 * parent's aiot loop or tasks; it may start a loop of its own (aiot_loop_run()
 * sees the fork and forgets the parent's). */
int aiot_fork(struct ev_loop *loop, aiot_child_fn fn, void *arg, aiot_child_exit_cb on_exit, void *userdata,
              aiot_child **ret);

/* The child's PID, or -EINVAL for NULL.  Only a label once the child has been
 * reaped: the PID may belong to another process by then. */
pid_t aiot_child_pid(const aiot_child *c);

/* Sends signo (0 checks existence).  Returns 0, -ESRCH once the child has been
 * reaped (no system call is made, so a reused PID is never hit), -EINVAL, or
 * -ECHILD when called in another process than the one that forked c. */
int aiot_child_signal(aiot_child *c, int signo);

/* Stores the exit status (see aiot_child_exit_cb) in *status.  Returns 0,
 * -EAGAIN while the child has not been reaped yet, or -EINVAL. */
int aiot_child_status(const aiot_child *c, int *status);

/* Replaces the exit callback (NULL: none).  Returns 0, -EINVAL, -ECHILD (see
 * aiot_child_signal), -EBUSY for a child of aiot_task_fork() (whose callback
 * aiot_child_wait() needs), or -ESRCH when the child has already been reaped:
 * the callback will not run then, read aiot_child_status() instead. */
int aiot_child_set_exit_cb(aiot_child *c, aiot_child_exit_cb on_exit, void *userdata);

/* Frees the handle; NULL-safe; legal inside the child's own exit callback.  It
 * does not signal the child: a running child stays watched by its loop (and
 * keeps ev_run() going) until it exits and is reaped, silently.
 * When an aiot loop is freed (aiot_loop_free()) while children forked on its
 * libev loop still run, they are detached: their exit callbacks never run, and
 * they are reaped when the process next forks with aiot_fork() or sees another
 * watched child exit; a held handle then reports the status through
 * aiot_child_status().  A raw libev loop must outlive its children. */
void aiot_child_free(aiot_child *c);

/* The mode the next aiot_fork() uses: AIOT_FORK_SIGCHLD when the kernel lacks
 * pidfd support (probed once) or AIOTOOLS_NO_PIDFD=1, else AIOT_FORK_PIDFD. */
int aiot_fork_mode(void);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
