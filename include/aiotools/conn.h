/* SPDX-License-Identifier: MIT */
/* The serving layer: the library runs the accept loop of a worker, makes a
 * connection object for every accepted fd and runs the user's handler for it
 * in a task; see aiot_worker_serve(3).
 *
 * A handler serves one message (a request, a line, a chunk) and returns
 * AIOT_CONN_KEEP to give the connection back to the library until the next
 * one: its task ends (the stack goes back to the pool), an empty read buffer
 * is freed, and the library watches the fd; the next bytes run the handler
 * again in a fresh task, with the same per-connection state.  Bytes already
 * buffered (pipelining) run it again at once.
 *
 * Every call on a connection runs in its handler's task and follows the
 * runtime's rules: -ECANCELED once the task is cancelled (after the drain
 * time at a stop), -ETIMEDOUT once the request timeout or another deadline
 * has passed. */
#ifndef AIOTOOLS_CONN_H
#define AIOTOOLS_CONN_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <aiotools/server.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

/* An accepted connection, owned by the library: valid while its handler runs. */
typedef struct aiot_conn aiot_conn;

/* A handler's return value that hands the connection back to the library
 * until its next bytes arrive (or the idle timeout closes it). */
#define AIOT_CONN_KEEP 1

/* Runs in a task of its own when bytes arrive on c.  Returns 0 to close the
 * connection, AIOT_CONN_KEEP to keep it, or a negative errno (logged at debug
 * level; the connection is closed).  What it wrote and did not flush is
 * flushed unless it failed. */
typedef int (*aiot_conn_fn)(aiot_conn *c, void *arg);

/* Options of aiot_worker_serve().  A zero field takes its default; a negative
 * timeout means none. */
struct aiot_serve_opts {
        size_t size;            /* sizeof(struct aiot_serve_opts), so the struct can grow */
        aiot_conn_fn handler;   /* required */
        void *arg;              /* for handler */
        size_t state_size;      /* a zeroed area per connection, kept across KEEP
                                   (aiot_conn_state()); 0: none */
        size_t max_connections; /* accepting pauses at this many open connections; 0: 10000 */
        double idle_timeout;    /* a new or kept connection with no bytes for this long is closed; 0: 60 s */
        double request_timeout; /* a handler run may last this long from its first byte
                                   (a deadline: -ETIMEDOUT); 0: 60 s */
        double drain_timeout;   /* after the stop signal: how long connections may finish
                                   and kept ones may send a last request; 0: 10 s */
        size_t stack_size;      /* of a handler's task; 0: the loop's */
        int server_first;       /* the handler first runs at accept, not at the first byte
                                   (protocols where the server speaks first); the request
                                   timeout then counts from the accept */
        double write_timeout;   /* a write may wait this long for a peer that does not
                                   read (from the first time the socket is full; then
                                   -ETIMEDOUT); 0: 60 s */
        double stop_grace;      /* at the stop: a kept connection idle this long is
                                   closed (at once if it already was); 0: 1 s;
                                   < 0: kept ones wait the whole drain time */
};

/* The standard worker body: one acceptor task per listener of w, a connection
 * per accepted fd.  Marks the worker ready and waits for the stop signal
 * (aiot_worker_wait_stop()), then stops accepting, serves the connections
 * already queued, closes this process's listeners, lets running handlers
 * finish, closes each kept connection once it has been idle for stop_grace
 * (a request that arrives first is served), and after the drain time closes
 * what is still kept and cancels the rest.  On
 * EMFILE / ENFILE accepting pauses for 0.1 s (logged at most every 10 s, with
 * the fd limit).  Returns the stop signal (> 0); -EINVAL (NULL, no handler,
 * bad opts, no listener), -ENOMEM, -EPERM (not w's root task, the main
 * context), -ECANCELED. */
int aiot_worker_serve(aiot_worker *w, const struct aiot_serve_opts *opts);

/* The connection's state area (NULL when state_size was 0). */
void *aiot_conn_state(aiot_conn *c);

/* The socket, for anything the calls below do not cover (setsockopt ...).
 * Owned by the library: never close it. */
int aiot_conn_fd(const aiot_conn *c);

/* The peer's address (getpeername(2)); *len in/out.  Returns 0 or -errno. */
int aiot_conn_peer(const aiot_conn *c, struct sockaddr_storage *ss, socklen_t *len);

/* The worker that serves c. */
aiot_worker *aiot_conn_worker(const aiot_conn *c);

/* The listening socket that accepted c (its name and address tell a
 * multi-port server which service the client asked for); NULL for NULL.
 * Valid while the handler runs, also after the listeners were closed at the
 * stop (its fd then reads -1). */
const aiot_listener *aiot_conn_listener(const aiot_conn *c);

/* Reads until delim (a NUL-terminated string, not empty) has arrived and
 * consumes the bytes up to and including it; *data points at them until the
 * next read call on c.  Returns their number; 0 at end of file (bytes before
 * it stay buffered: aiot_conn_peek()); -EMSGSIZE when max bytes arrived
 * without delim (nothing consumed); -errno. */
ssize_t aiot_conn_read_until(aiot_conn *c, const char *delim, size_t max, const char **data);

/* The buffered bytes, reading once when there are none.  *data stays valid
 * until the next read call on c.  Returns their number, 0 at end of file,
 * -errno.  Nothing is consumed. */
ssize_t aiot_conn_peek(aiot_conn *c, const char **data);

/* Drops the first n buffered bytes (at most what is buffered). */
void aiot_conn_consume(aiot_conn *c, size_t n);

/* Reads exactly n bytes into buf.  Returns 0, -ENODATA when the stream ended
 * first, -errno. */
int aiot_conn_read_exact(aiot_conn *c, void *buf, size_t n);

/* Buffers n bytes for writing; a large write goes out at once together with
 * what is buffered, in one writev.  Returns 0 or -errno (some bytes may have
 * gone out; the buffer is then dropped). */
int aiot_conn_write(aiot_conn *c, const void *buf, size_t n);

/* Sends what is buffered, in one writev when the socket takes it.  *sent (may
 * be NULL) gets the number of bytes that went out, also on an error.
 * Returns 0 or -errno (-EPIPE, -ECANCELED, -ETIMEDOUT ...). */
int aiot_conn_flush(aiot_conn *c, size_t *sent);

/* Flushes what is buffered, then sends up to count bytes of the file fd
 * from *offset (advanced by what went out; NULL: from fd's file offset,
 * which advances) with sendfile(2), parking while the socket is full, under
 * the write timeout.  Returns the number of bytes sent (fewer than count
 * only when the file ended first), or -errno (-ETIMEDOUT, -ECANCELED,
 * -EPIPE ...); after an error *offset says how far it got. */
ssize_t aiot_conn_sendfile(aiot_conn *c, int fd, off_t *offset, size_t count);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
