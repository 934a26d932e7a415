/* SPDX-License-Identifier: MIT */
/* Task-blocking I/O on non-blocking file descriptors, and waiting for a forked child.
 *
 * Every call here runs inside a task (see task.h).  It first tries the system call and
 * parks the task only when the call would block (EAGAIN); the libev watcher of an fd
 * stays registered across waits, so a read / EAGAIN / read cycle costs no epoll_ctl.
 * Because watchers are cached per fd, an fd that was waited on must be released with
 * aiot_close() (or aiot_fd_forget() before close(2)/dup2(2)), see aiot_wait_fd(3). */
#ifndef AIOTOOLS_IO_H
#define AIOTOOLS_IO_H

#include <sys/socket.h>
#include <sys/types.h>

#include <aiotools/fork.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

/* Directions for aiot_wait_fd(). */
#define AIOT_READ 0x1
#define AIOT_WRITE 0x2

/* Parks the current task until fd is ready for one of the requested directions.
 * Returns the ready directions (> 0, a subset of events); -ECANCELED or -ETIMEDOUT
 * when cancellation or a deadline is delivered (the fd stays usable); -EBUSY when
 * another task already waits on fd in one of those directions; -EBADF when fd is
 * closed with aiot_close() meanwhile, or is not below RLIMIT_NOFILE (no process
 * can have it open); -EINVAL for a negative fd or bad events; -EPERM outside a
 * task.  The blocking calls below return the same. */
int aiot_wait_fd(int fd, int events);

/* One read(2) from a non-blocking fd, parking while it would block.
 * Returns the bytes read (0 at end of file) or -errno (-ECANCELED, -ETIMEDOUT ...). */
ssize_t aiot_read(int fd, void *buf, size_t n);

/* Writes all n bytes, continuing after partial writes and parking while the fd is
 * full.  Sockets are written with MSG_NOSIGNAL, so a closed peer gives -EPIPE rather
 * than SIGPIPE.  Returns n, or -errno; on an error some prefix may have been written. */
ssize_t aiot_write_all(int fd, const void *buf, size_t n);

/* Accepts a connection on a non-blocking listening socket, parking until one comes.
 * Returns the new fd, which is non-blocking and close-on-exec and owned by the caller,
 * or -errno.  Transient network errors of the new connection are retried. */
int aiot_accept(int lfd, struct sockaddr *sa, socklen_t *len);

/* Connects a non-blocking socket, waiting for the handshake to finish.
 * Returns 0 or -errno (-ECONNREFUSED ...); after -ECANCELED / -ETIMEDOUT the socket
 * is half-connected and should be closed. */
int aiot_connect(int fd, const struct sockaddr *sa, socklen_t len);

/* Drops the cached watcher of fd in the current loop, waking a task parked on it with
 * -EBADF.  Call it before the fd is closed or replaced by other means.  Returns 0
 * (also when fd had no watcher) or -EINVAL for a negative fd. */
int aiot_fd_forget(int fd);

/* aiot_fd_forget(fd), then close(2).  Returns 0 or -errno from close. */
int aiot_close(int fd);

/* Forks a child running fn(arg) on the current task's loop, so that a task can wait
 * for it with aiot_child_wait().  Like aiot_fork(3) otherwise: returns once the child
 * runs; *ret is owned by the caller and freed with aiot_child_free() after it exited.
 * The child starts outside any loop: the parent's loop and tasks are not its to
 * use (blocking calls return -EPERM there); it may run a loop of its own.  The
 * exit callback belongs to aiot_child_wait(): aiot_child_set_exit_cb() on c
 * returns -EBUSY.  Returns 0 or -errno (-EPERM outside a task). */
int aiot_task_fork(aiot_child_fn fn, void *arg, aiot_child **ret);

/* Parks the current task until the child c, forked with aiot_task_fork() on this
 * loop, has exited, and stores its status (exit code, or -signo when killed) in
 * *status (may be NULL).  Returns at once when it already exited.  Any number of
 * tasks may wait for one child.  Returns 0, -ECANCELED, -ETIMEDOUT, or -EINVAL when c
 * is still running but was not forked with aiot_task_fork() on the current loop. */
int aiot_child_wait(aiot_child *c, int *status);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
