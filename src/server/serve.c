/* SPDX-License-Identifier: MIT */
/* aiot_worker_serve(): the one accept loop, connection lifecycle and drain of
 * the library (the connection's stream is src/conn.c).
 *
 * A connection is in one of two states.  Watched: no task, a libev watcher on
 * its fd, and a place in the idle list (oldest first, so that one timer for
 * the head closes every connection idle past the idle timeout).  Every new
 * connection starts there (unless server_first), so that a client that
 * connects and sends nothing costs no stack.  Busy: a task runs the handler;
 * it starts when the watcher reports bytes, runs the handler under the
 * request timeout (a deadline, so it counts from the first byte however
 * slowly the rest trickles in), runs it again at once while bytes are
 * buffered (pipelining) and, when the handler returns AIOT_CONN_KEEP, frees
 * the empty buffers and goes back to watched.  The watcher stays registered
 * in between (see conn_readable()).
 *
 * Closing: a connection that ends with input unread (buffered, or still in
 * the socket) or that was cut off (a timeout, an error) lingers, as with
 * nginx's lingering_close: its write side is shut down (FIN after the answer)
 * and a watcher reads and drops what still arrives until the peer's EOF, for
 * LINGER_TIME at most (its own list and timer, like the idle list); a plain
 * close() with unread input sends a reset, which can destroy the answer in
 * the peer's receive queue.  It holds no task, stack or buffer meanwhile.
 *
 * The stop, in order: the acceptors are cancelled and take what is already
 * queued (served, not reset), the listener copies are closed, then running
 * handlers finish (they see aiot_worker_stopping() and answer "Connection:
 * close") and kept connections are closed once they have been idle for the
 * stop grace: at once for those idle that long already, later for the others,
 * so that a client that just had an answer and is about to send its next
 * request is not raced; a request that arrives first is served (and a
 * connection whose bytes are waiting unreported is never closed as idle).
 * The idle list needs no second timer for it: the grace only shortens the
 * limit every entry has.  When every connection is gone, or the drain time
 * has passed, the connections still watched are closed and the handlers
 * still running are cancelled.
 *
 * TLS: a connection accepted on a listener marked for TLS (opts.tls set) is
 * watched like any other until its first bytes (the ClientHello); its task
 * then runs the handshake under the request timeout before the handler's
 * first run.  A failed handshake (a plaintext client, garbage) ends it as an
 * error: a lingering close. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "aiotools/conn.h"
#include "aiotools/io.h"
#include "aiotools/listen.h"
#include "aiotools/log.h"
#include "aiotools/scope.h"
#include "conn-internal.h"
#include "macro.h"
#include "runtime/runtime.h"
#include "server-internal.h" /* the status counters (wstat.c) */
#include "tls-internal.h"

#define DEFAULT_MAX_CONNECTIONS 10000
#define DEFAULT_IDLE_TIMEOUT 60.0
#define DEFAULT_REQUEST_TIMEOUT 60.0
#define DEFAULT_DRAIN_TIMEOUT 10.0
#define DEFAULT_WRITE_TIMEOUT 60.0
#define DEFAULT_STOP_GRACE 1.0
#define FD_PAUSE 0.1          /* accepting pauses this long on EMFILE / ENFILE ... */
#define FD_LOG_INTERVAL 10.0  /* ... and says so at most this often */
#define LINGER_TIME 2.0       /* a lingering close waits this long for the peer's end ... */
#define LINGER_BYTES 262144   /* ... and discards at most this much of what it sends */

/* Connections ordered by when they joined, with one timer for the head: every
 * entry has the same time limit, so the head always expires first. */
struct conn_list {
        aiot_conn *head, *tail;
        ev_timer timer;
};

struct aiot__serve {
        aiot_worker *w;
        struct aiot_serve_opts o; /* defaults resolved; timeouts < 0 are +INFINITY */
        struct ev_loop *ev;
        const aiot_listener *ls;  /* the worker's listeners (their fds read -1 once closed) */
        aiot_scope *conns;        /* the handlers' tasks */
        size_t n_conns;           /* open connections, watched ones included */
        aiot_event *room;         /* set while n_conns < max_connections */
        aiot_event *quiet;        /* set when the last connection closed */
        struct conn_list idle;    /* kept connections, oldest first */
        struct conn_list linger;  /* closing ones, reading what still arrives */
        bool stopping;            /* after the stop signal: kept ones close after stop_grace */
        bool closing;             /* after the drain: kept connections are closed */
        double fd_logged;         /* when the fd limit was last logged */
};

struct acceptor {
        struct aiot__serve *srv;
        unsigned short index; /* in the worker's listeners */
        int lfd;
};

aiot_worker *aiot__serve_worker(const struct aiot__serve *srv)
{
        return srv->w;
}

const aiot_listener *aiot__serve_listener(const struct aiot__serve *srv, unsigned short i)
{
        return &srv->ls[i];
}

double aiot__serve_write_timeout(const struct aiot__serve *srv)
{
        return srv->o.write_timeout;
}

/* ---------------------------------------------------------------- the idle list */

/* How long a kept connection may stay idle: the idle timeout, and at the stop
 * the grace if that is shorter.  The same for every connection, so the list
 * stays ordered by expiry and one timer serves it. */
static double idle_limit(const struct aiot__serve *srv)
{
        if (srv->stopping && srv->o.stop_grace < srv->o.idle_timeout)
                return srv->o.stop_grace;
        return srv->o.idle_timeout;
}

/* A lingering connection may take this long to send its end of file ... */
static double list_limit(const struct aiot__serve *srv, const struct conn_list *l)
{
        return l == &srv->linger ? LINGER_TIME : idle_limit(srv);
}

static struct conn_list *list_of(struct aiot__serve *srv, const aiot_conn *c)
{
        return c->lingering ? &srv->linger : &srv->idle;
}

static void list_arm(struct aiot__serve *srv, struct conn_list *l)
{
        double left, limit = list_limit(srv, l);

        if (!l->head || ev_is_active(&l->timer) || isinf(limit))
                return;
        left = l->head->idle_since + limit - ev_now(srv->ev);
        ev_timer_set(&l->timer, left > 0 ? left : 0, 0.);
        ev_timer_start(srv->ev, &l->timer);
}

static void list_append(struct aiot__serve *srv, aiot_conn *c)
{
        struct conn_list *l = list_of(srv, c);

        c->idle_since = ev_now(srv->ev);
        c->idle_next = NULL;
        c->idle_prev = l->tail;
        if (l->tail)
                l->tail->idle_next = c;
        else
                l->head = c;
        l->tail = c;
        list_arm(srv, l);
}

static void list_unlink(struct aiot__serve *srv, aiot_conn *c)
{
        struct conn_list *l = list_of(srv, c);

        if (c->idle_prev)
                c->idle_prev->idle_next = c->idle_next;
        else if (l->head == c)
                l->head = c->idle_next;
        else
                return; /* not in the list */
        if (c->idle_next)
                c->idle_next->idle_prev = c->idle_prev;
        else
                l->tail = c->idle_prev;
        c->idle_prev = c->idle_next = NULL;
}

/* ---------------------------------------------------------------- connections */

static void conn_close(aiot_conn *c)
{
        struct aiot__serve *srv = c->srv;

        ev_io_stop(srv->ev, &c->io);
        list_unlink(srv, c);
        aiot__conn_free(c);
        aiot__stat_conn(srv->w, -1);
        srv->n_conns--;
        if (srv->n_conns < srv->o.max_connections)
                aiot_event_set(srv->room);
        if (srv->n_conns == 0)
                aiot_event_set(srv->quiet);
}

static void conn_watch(aiot_conn *c);
static int conn_task(void *arg);
static void conn_namer(void *arg, char *buf, size_t len);

/* ---------------------------------------------------------------- lingering close */

/* Reads and drops what the peer still sends; its end of file (or an error,
 * or LINGER_BYTES) ends the connection.  Runs from libev: no task, no stack. */
static void conn_lingering(struct ev_loop *ev, ev_io *io, int revents)
{
        static char sink[16384];
        aiot_conn *c = io->data;

        (void)ev;
        (void)revents;
        for (;;) {
                ssize_t n = read(c->fd, sink, sizeof(sink));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return;
                if (n <= 0) {
                        conn_close(c);
                        return;
                }
        }
}

/* The peer did not end its side within LINGER_TIME: close (a reset now). */
static void linger_expired(struct ev_loop *ev, ev_timer *t, int revents)
{
        struct aiot__serve *srv = t->data;
        double now = ev_now(ev);

        (void)revents;
        while (srv->linger.head && srv->linger.head->idle_since + LINGER_TIME <= now)
                conn_close(srv->linger.head);
        list_arm(srv, &srv->linger);
}

/* Ends c's side (FIN after what is still queued for the peer) and reads what
 * it still sends until its end of file, from libev, the way nginx's
 * lingering_close does: closing with unread input would send a reset, and a
 * peer that gets one may lose the answer it was sent just before. */
static void conn_linger(aiot_conn *c)
{
        struct aiot__serve *srv = c->srv;

        aiot__conn_drop(c);
        (void)aiot_fd_forget(c->fd);
        if (shutdown(c->fd, SHUT_WR) < 0) {
                conn_close(c);
                return;
        }
        ev_io_stop(srv->ev, &c->io);
        ev_io_init(&c->io, conn_lingering, c->fd, EV_READ);
        c->io.data = c;
        ev_io_start(srv->ev, &c->io);
        c->busy = false;
        c->lingering = true;
        list_append(srv, c);
}

/* Whether bytes wait in c's socket that neither libev nor we have seen. */
static bool conn_has_input(const aiot_conn *c)
{
        int pending = 0;

        return ioctl(c->fd, FIONREAD, &pending) == 0 && pending > 0;
}

/* Whether closing c now could reset it: bytes it sent are unread (buffered,
 * or still in the socket). */
static bool conn_unread(const aiot_conn *c)
{
        return aiot__conn_buffered(c) > 0 || conn_has_input(c);
}

/* The end of a handler's connection: r is its last result.  A connection cut
 * off (a timeout, an error of ours) or with unread input lingers; one whose
 * peer ended or reset it, or any after the drain time, closes at once. */
static void conn_end(aiot_conn *c, int r)
{
        bool peer_gone = c->eof || r == -ECONNRESET || r == -EPIPE;

        if (!c->srv->closing && !peer_gone && (r < 0 || conn_unread(c)))
                conn_linger(c);
        else
                conn_close(c);
}

/* A task for c's handler, named "conn PEER" in task dumps. */
static int conn_spawn(aiot_conn *c)
{
        return aiot__spawn_named(c->srv->conns, conn_task, c, c->srv->o.stack_size, conn_namer);
}

/* From watched to busy: bytes (or EOF) have arrived. */
static void conn_start(aiot_conn *c)
{
        list_unlink(c->srv, c);
        c->busy = true;
        c->drained = false;
        if (conn_spawn(c) < 0) {
                aiot_log(AIOT_LOG_DEBUG, "connection fd %d: no task for it, closing it", c->fd);
                conn_close(c);
        }
}


/* The name of a connection's task in a task dump: "conn PEER" (fd N when the
 * peer is gone).  Made only when the tasks are described, so that naming the
 * task costs a request no getpeername(). */
static void conn_namer(void *arg, char *buf, size_t len)
{
        const aiot_conn *c = arg;
        struct aiot_bind_addr a = {.len = sizeof(a.u)};
        char peer[128];

        if (getpeername(c->fd, &a.u.sa, &a.len) == 0) {
                a.family = a.u.sa.sa_family;
                if (aiot_listen_format(&a, peer, sizeof(peer)) >= 0) {
                        snprintf(buf, len, "conn %s%s", peer, c->tls_todo || c->tls ? " (tls)" : "");
                        return;
                }
        }
        snprintf(buf, len, "conn fd %d", c->fd);
}

/* Runs the handler while there is something to serve; see the file comment.
 * The answers to pipelined messages gather in the write buffer and go out
 * together (a read that would wait flushes them first, see conn.c). */
static int conn_task(void *arg)
{
        aiot_conn *c = arg;
        struct aiot__serve *srv = c->srv;
        int r;

        if (c->tls_todo) {
                aiot_deadline d;

                aiot_deadline_begin(&d, srv->o.request_timeout);
                r = aiot__conn_tls_accept(c, srv->o.tls);
                aiot_deadline_end(&d);
                if (r < 0) {
                        conn_end(c, r);
                        return 0;
                }
                if (!srv->o.server_first && !aiot__conn_pending(c)) {
                        conn_watch(c); /* the request comes in its own time */
                        return 0;
                }
        }
        for (;;) {
                aiot_deadline d;
                bool keep, more;

                aiot_deadline_begin(&d, srv->o.request_timeout);
                r = srv->o.handler(c, srv->o.arg);
                aiot__stat_request(srv->w);
                keep = r == AIOT_CONN_KEEP && !c->eof && !srv->closing;
                more = keep && aiot__conn_pending(c);
                if (r >= 0 && !more) {
                        int f = aiot_conn_flush(c, NULL);

                        if (f < 0) {
                                r = f;
                                keep = false;
                        }
                }
                aiot_deadline_end(&d);
                if (!keep)
                        break;
                if (!more) {
                        conn_watch(c);
                        return 0;
                }
        }
        if (r < 0)
                aiot_log(AIOT_LOG_DEBUG, "connection fd %d: %s, closing it", c->fd, strerror(-r));
        conn_end(c, r);
        return 0;
}

/* The watcher stays registered while the handler runs, so that a keep-alive
 * request costs no epoll_ctl (stopping and restarting it costs one failing
 * EPOLL_CTL_ADD each time in libev).  Only when it reports bytes the running
 * handler has not read yet is it stopped, so that it cannot spin. */
static void conn_readable(struct ev_loop *ev, ev_io *io, int revents)
{
        aiot_conn *c = io->data;

        (void)revents;
        if (c->busy) {
                ev_io_stop(ev, io);
                return;
        }
        conn_start(c);
}

/* From busy (or new) to watched. */
static void conn_watch(aiot_conn *c)
{
        struct aiot__serve *srv = c->srv;

        aiot__conn_shrink(c);
        /* io.c's cached watcher would report the same readiness to nobody. */
        (void)aiot_fd_forget(c->fd);
        c->busy = false;
        if (!ev_is_active(&c->io)) {
                ev_io_init(&c->io, conn_readable, c->fd, EV_READ);
                c->io.data = c;
                ev_io_start(srv->ev, &c->io);
        }
        list_append(srv, c);
}

static void idle_expired(struct ev_loop *ev, ev_timer *t, int revents)
{
        struct aiot__serve *srv = t->data;
        double now = ev_now(ev);

        (void)revents;
        while (srv->idle.head && srv->idle.head->idle_since + idle_limit(srv) <= now) {
                aiot_conn *c = srv->idle.head;

                if (conn_has_input(c))
                        conn_start(c);
                else
                        conn_close(c);
        }
        list_arm(srv, &srv->idle);
}

/* At the stop: the kept connections idle for the grace already close now,
 * the others when they reach it (one timer, as for the idle timeout). */
static void idle_stop_grace(struct aiot__serve *srv)
{
        srv->stopping = true;
        ev_timer_stop(srv->ev, &srv->idle.timer);
        ev_now_update(srv->ev);
        idle_expired(srv->ev, &srv->idle.timer, 0);
}

static void conn_open(struct aiot__serve *srv, unsigned short listener, int fd)
{
        aiot_conn *c;

        if (aiot__conn_new(srv, listener, fd, srv->o.state_size, &c) < 0) {
                aiot_log(AIOT_LOG_DEBUG, "connection fd %d: out of memory, closing it", fd);
                (void)aiot_close(fd);
                return;
        }
        c->tls_todo = srv->o.tls && aiot__tls_listener(srv->ls[listener].name);
        srv->n_conns++;
        aiot__stat_conn(srv->w, +1);
        if (srv->n_conns >= srv->o.max_connections)
                aiot_event_clear(srv->room);
        if (!srv->o.server_first) {
                conn_watch(c);
                return;
        }
        c->drained = true; /* nothing has arrived yet: wait before reading */
        c->busy = true;
        if (conn_spawn(c) < 0) {
                aiot_log(AIOT_LOG_DEBUG, "connection fd %d: no task for it, closing it", fd);
                conn_close(c);
        }
}

/* ---------------------------------------------------------------- accepting */

static void log_fd_limit(struct aiot__serve *srv, int err)
{
        struct rlimit rl;
        double now = aiot_now();

        if (srv->fd_logged && now - srv->fd_logged < FD_LOG_INTERVAL)
                return;
        srv->fd_logged = now;
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                rl.rlim_cur = 0;
        aiot_log(AIOT_LOG_WARNING, "accept: %s (RLIMIT_NOFILE is %llu, %zu connections open): not accepting for %g s",
                 strerror(-err), (unsigned long long)rl.rlim_cur, srv->n_conns, FD_PAUSE);
}

/* At the stop: what is already queued is served rather than reset when the
 * listener closes.  Past the connection limit too: these clients are here. */
static void take_queued(struct acceptor *a)
{
        int fd;

        while ((fd = accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
                conn_open(a->srv, a->index, fd);
}

static int accept_loop(void *arg)
{
        struct acceptor *a = arg;
        struct aiot__serve *srv = a->srv;

        aiot_task_set_name(aiot_current(), aiot__accept_name(srv->w, a->lfd));
        for (;;) {
                int fd;

                while (srv->n_conns >= srv->o.max_connections)
                        if (aiot_event_wait(srv->room) < 0)
                                goto stop;
                fd = aiot_accept(a->lfd, NULL, NULL);
                if (fd >= 0) {
                        conn_open(srv, a->index, fd);
                        continue;
                }
                if (fd == -ECANCELED || fd == -ETIMEDOUT)
                        break;
                if (fd == -EBADF || fd == -EINVAL)
                        return 0; /* closed, or shut down at a --reuseport stop */
                if (fd == -EMFILE || fd == -ENFILE)
                        log_fd_limit(srv, fd);
                else
                        aiot_log(AIOT_LOG_WARNING, "accept: %s: not accepting for %g s", strerror(-fd), FD_PAUSE);
                if (aiot_sleep(FD_PAUSE) < 0)
                        break;
        }
stop:
        take_queued(a);
        return 0;
}

/* ---------------------------------------------------------------- serve */

static double timeout_or(double v, double dflt)
{
        if (v == 0)
                return dflt;
        return v < 0 ? INFINITY : v;
}

static int opts_resolve(const struct aiot_serve_opts *in, struct aiot__serve *srv)
{
        aiot__return_if(!in || in->size < offsetof(struct aiot_serve_opts, stack_size) + sizeof(size_t), -EINVAL);
        aiot__return_if(!in->handler, -EINVAL);
        aiot__return_if(isnan(in->idle_timeout) || isnan(in->request_timeout) || isnan(in->drain_timeout), -EINVAL);
        /* A caller built before the later fields gets them zeroed. */
        memcpy(&srv->o, in, in->size < sizeof(srv->o) ? in->size : sizeof(srv->o));
        srv->o.size = sizeof(srv->o);
        if (!srv->o.max_connections)
                srv->o.max_connections = DEFAULT_MAX_CONNECTIONS;
        srv->o.idle_timeout = timeout_or(in->idle_timeout, DEFAULT_IDLE_TIMEOUT);
        srv->o.request_timeout = timeout_or(in->request_timeout, DEFAULT_REQUEST_TIMEOUT);
        srv->o.drain_timeout = timeout_or(in->drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        /* Read from the copy: an older caller's struct ends before it (zero). */
        aiot__return_if(isnan(srv->o.write_timeout), -EINVAL);
        srv->o.write_timeout = timeout_or(srv->o.write_timeout, DEFAULT_WRITE_TIMEOUT);
        aiot__return_if(isnan(srv->o.stop_grace), -EINVAL);
        srv->o.stop_grace = timeout_or(srv->o.stop_grace, DEFAULT_STOP_GRACE);
        return 0;
}

/* Until every connection is gone, at most the drain time. */
static void drain(struct aiot__serve *srv)
{
        aiot_deadline d;

        aiot_deadline_begin(&d, srv->o.drain_timeout);
        while (srv->n_conns > 0) {
                aiot_event_clear(srv->quiet);
                if (aiot_event_wait(srv->quiet) < 0)
                        break;
        }
        aiot_deadline_end(&d);
}

static int serve_run(struct aiot__serve *srv, const aiot_listener *ls, size_t n)
{
        struct acceptor *acc = calloc(n, sizeof(*acc));
        aiot_scope *accs;
        int r;

        if (!acc)
                return -ENOMEM;
        r = aiot_scope_open(&accs, NULL);
        if (r < 0) {
                free(acc);
                return r;
        }
        for (size_t i = 0; i < n && r == 0; i++) {
                acc[i] = (struct acceptor){.srv = srv, .index = (unsigned short)i, .lfd = ls[i].fd};
                r = aiot_spawn(accs, accept_loop, &acc[i], NULL);
        }
        if (r == 0)
                r = aiot_worker_wait_stop(srv->w);
        aiot_scope_cancel(accs);
        aiot_scope_close(accs);
        free(acc);
        (void)aiot_worker_close_listeners(srv->w);
        if (r > 0) {
                idle_stop_grace(srv);
                drain(srv);
        }
        srv->closing = true;
        while (srv->idle.head)
                conn_close(srv->idle.head);
        while (srv->linger.head)
                conn_close(srv->linger.head);
        (void)aiot_scope_drain(srv->conns, 0);
        return r;
}

int aiot_worker_serve(aiot_worker *w, const struct aiot_serve_opts *opts)
{
        struct aiot__serve *srv;
        const aiot_listener *ls;
        size_t n;
        int r;

        aiot__return_if(!w, -EINVAL);
        if (aiot_worker_kind(w) == AIOT_MAIN)
                return -EPERM;
        n = aiot_worker_listeners(w, &ls);
        if (n == 0) {
                aiot_log(AIOT_LOG_ERR, "aiot_worker_serve: no listening socket (give a --bind address)");
                return -EINVAL;
        }
        srv = calloc(1, sizeof(*srv));
        if (!srv)
                return -ENOMEM;
        r = opts_resolve(opts, srv);
        for (size_t i = 0; r == 0 && i < n; i++)
                if (!srv->o.tls && aiot__tls_listener(ls[i].name)) {
                        aiot_log(AIOT_LOG_ERR, "aiot_worker_serve: listener '%s' is marked for TLS, "
                                 "but no certificate was given (aiot_serve_opts.tls, --tls-cert)", ls[i].name);
                        r = -EINVAL;
                }
        if (r == 0)
                r = aiot_event_new(&srv->room);
        if (r == 0)
                r = aiot_event_new(&srv->quiet);
        if (r == 0)
                r = aiot_scope_open(&srv->conns, NULL);
        if (r == 0) {
                srv->w = w;
                srv->ls = ls;
                srv->ev = aiot_loop_ev(aiot_worker_loop(w));
                ev_timer_init(&srv->idle.timer, idle_expired, 0., 0.);
                srv->idle.timer.data = srv;
                ev_timer_init(&srv->linger.timer, linger_expired, 0., 0.);
                srv->linger.timer.data = srv;
                aiot_event_set(srv->room);
                r = serve_run(srv, ls, n);
                aiot_scope_close(srv->conns);
                ev_timer_stop(srv->ev, &srv->idle.timer);
                ev_timer_stop(srv->ev, &srv->linger.timer);
        }
        aiot_event_free(srv->room);
        aiot_event_free(srv->quiet);
        free(srv);
        return r;
}
