/* SPDX-License-Identifier: MIT */
/* Blocking work off the loop: a small pool of threads per loop runs functions
 * that block (getaddrinfo, file I/O, hashing, client libraries without a
 * non-blocking API) while the calling task is parked and the loop serves
 * everything else.  On top of it: name resolution, connecting a socket by name
 * (Happy Eyeballs, RFC 8305) and whole-file / positioned file I/O.
 *
 * The pool starts its threads lazily, at the first call in each process: a
 * process forked while calls run never inherits a half-used pool.  Its threads
 * block every signal.  See aiot_run_blocking(3) for the cancellation rules. */
#ifndef AIOTOOLS_BLOCKING_H
#define AIOTOOLS_BLOCKING_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <aiotools/task.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

struct addrinfo;

/* ---- running a function on a pool thread */

/* The function a pool thread runs.  It must not use the loop or any aiot_*
 * call that needs a task.  Its return value is handed to the caller. */
typedef int (*aiot_blocking_fn)(void *arg);

/* Told that a call was abandoned (default rule, see below) once the thread is
 * done with arg: result is what fn returned, or -ECANCELED when fn never ran
 * (the call was abandoned before a thread took it).  It frees what fn made and
 * arg itself.  Runs on a pool thread, or on the loop's thread outside any task;
 * it must not block on the loop. */
typedef void (*aiot_abandon_fn)(void *arg, int result);

/* The task waits for the thread even when cancelled or past a deadline
 * (shielded): the call returns 0 with fn's result and the cancellation or the
 * deadline is seen by the next blocking call. */
#define AIOT_BLOCKING_WAIT 1u

struct aiot_blocking_opts {
        size_t size;             /* sizeof(struct aiot_blocking_opts), so the struct can grow */
        unsigned flags;          /* AIOT_BLOCKING_WAIT */
        aiot_abandon_fn abandon; /* default rule only; NULL: nothing to free */
};

/* Runs fn(arg) on a thread of the current loop's pool and parks the calling
 * task until it returns; stores its return value in *result (may be NULL).
 * Returns 0 when fn ran to its end.  Default rule: when the task is cancelled
 * or a deadline passes while fn runs, the call returns -ECANCELED / -ETIMEDOUT
 * at once, the call is abandoned, and abandon(arg, result) runs once the
 * thread is done with it (so arg must outlive the call: allocate it).  With
 * AIOT_BLOCKING_WAIT the task waits instead (arg may live on its stack).  A
 * task already cancelled runs nothing.  Also -EPERM outside a task, -EINVAL,
 * -ENOMEM, -EAGAIN (no thread could be started). */
int aiot_run_blocking(aiot_blocking_fn fn, void *arg, int *result);
int aiot_run_blocking_opts(aiot_blocking_fn fn, void *arg, const struct aiot_blocking_opts *opts, int *result);

/* What a loop's pool does now. */
struct aiot_blocking_stats {
        size_t size;          /* sizeof(struct aiot_blocking_stats) */
        unsigned max_threads; /* aiot_loop_opts.blocking_threads, or the default */
        unsigned threads;     /* started and not ended (0 until the first call) */
        unsigned queued;      /* calls waiting for a thread */
        unsigned running;     /* calls on a thread */
        unsigned abandoned;   /* of the queued and running calls, those abandoned */
        uint64_t calls;       /* calls submitted since the pool started */
};

/* Fills *st for loop (NULL: the current loop).  Returns 0, -EINVAL. */
int aiot_blocking_stats(aiot_loop *loop, struct aiot_blocking_stats *st);

/* ---- name resolution */

/* getaddrinfo(3)'s EAI_* errors come back as negative codes distinct from every
 * -errno: AIOT_EAI(EAI_NONAME) and so on.  EAI_SYSTEM comes back as -errno. */
#define AIOT_EAI_BASE 20000
#define AIOT_EAI(eai) (-AIOT_EAI_BASE - ((eai) < 0 ? -(eai) : (eai)))

/* getaddrinfo(3) on the pool: the task is parked while the resolver blocks.
 * Free *res with freeaddrinfo(3).  Returns 0, AIOT_EAI(...), -ECANCELED,
 * -ETIMEDOUT (the resolver's answer is then dropped), -EINVAL, -ENOMEM, -EPERM. */
int aiot_getaddrinfo(const char *host, const char *service, const struct addrinfo *hints,
                     struct addrinfo **res);

/* The EAI_* code of an AIOT_EAI() return, or 0 when rc is not one. */
int aiot_eai_code(int rc);

/* The text of any negative return of this library: gai_strerror(3) for
 * AIOT_EAI() codes, strerror(3) for -errno.  Never NULL. */
const char *aiot_strerror(int rc);

/* ---- connecting by name */

struct aiot_connect_opts {
        size_t size;          /* sizeof(struct aiot_connect_opts) */
        double timeout;       /* seconds for the whole call; 0: 30; < 0: none */
        double attempt_delay; /* seconds before the next address is tried; 0: 0.25 */
        int family;           /* AF_UNSPEC (0), AF_INET or AF_INET6 */
        char *err;            /* when not NULL: one line naming host and reason */
        size_t errlen;
};

/* Resolves host and service on the pool and connects a TCP socket to them,
 * racing the addresses as RFC 8305 (Happy Eyeballs) describes: families
 * alternate, starting with the resolver's first; the next attempt starts when
 * one fails or after attempt_delay, while the earlier ones go on; the first
 * connection wins and the others are closed.  Returns the connected socket
 * (non-blocking, close-on-exec), or AIOT_EAI(...) from the resolver, the
 * error of the last attempt that failed, -ETIMEDOUT, -ECANCELED, -EINVAL,
 * -ENOMEM, -EPERM outside a task.  opts may be NULL. */
int aiot_connect_host(const char *host, const char *service, const struct aiot_connect_opts *opts);

/* The same race over addresses the caller has (a getaddrinfo(3) list, or one
 * built by hand); opts->family is ignored.  The error line names the addresses. */
int aiot_connect_addrinfo(const struct addrinfo *res, const struct aiot_connect_opts *opts);

/* ---- files */

/* Reads the whole file at path into a new buffer (free(3) it), with a NUL
 * after the last byte; *len (may be NULL) gets its length.  max bounds the
 * size (0: no bound).  Returns 0, -EFBIG (larger than max), -errno of open or
 * read, -ECANCELED / -ETIMEDOUT at once (the read is then dropped), -EINVAL,
 * -ENOMEM, -EPERM. */
int aiot_read_file(const char *path, size_t max, void **data, size_t *len);

/* pread(2) / pwrite(2) on the pool, retried until n bytes (or the end of the
 * file for pread) and on EINTR.  The buffer is the caller's, so these wait for
 * the system call even when cancelled; the cancellation or deadline is seen by
 * the next blocking call.  Return the bytes done, -errno, -EINVAL, -EPERM. */
ssize_t aiot_pread(int fd, void *buf, size_t n, off_t off);
ssize_t aiot_pwrite(int fd, const void *buf, size_t n, off_t off);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
