/* SPDX-License-Identifier: MIT */
/* Task-blocking I/O: every call tries its system call first and parks the task only
 * on EAGAIN.  Each loop keeps a table fd -> {ev_io, reader, writer}; a watcher stays
 * registered after its wait ends and is narrowed only when libev reports readiness
 * nobody waits for, so a read / EAGAIN / read cycle makes no epoll_ctl at all. */
#include <errno.h>
#include <ev.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "aiotools/io.h"
#include "fork-internal.h"
#include "macro.h"
#include "runtime/runtime.h"

#define EV_RW (EV_READ | EV_WRITE)
/* The public direction bits are libev's: a mask of them passes to libev as is. */
_Static_assert(AIOT_READ == EV_READ, "AIOT_READ must equal EV_READ");
_Static_assert(AIOT_WRITE == EV_WRITE, "AIOT_WRITE must equal EV_WRITE");
/* A direction that is ready while nobody waits for it is reported by libev on every
 * iteration (epoll is level-triggered); after this many reports it is dropped.  Not 1:
 * a task alternating between reading and writing one socket would pay two epoll_ctl
 * per switch (measured on the echo test: 6624 epoll_ctl with 1, 1127 with 4, 601 --
 * one per fd and direction -- with 8). */
#define IDLE_REPORTS 8

struct fdw {
        ev_io io;          /* io.events: the directions registered with libev */
        aiot_task *reader; /* the task parked for AIOT_READ, or NULL */
        aiot_task *writer;
        int grace;         /* EV_READ / EV_WRITE: a waiter was woken and has not run yet */
        unsigned char idle[2]; /* reports of [0] READ / [1] WRITE with nobody waiting */
};

/* A task forked with aiot_task_fork() whose exit has not been reported yet. */
struct child_rec {
        struct child_rec *next;
        struct io_state *st;
        aiot_child *child;
        struct child_waiter *waiters;
};

struct child_waiter {
        struct child_waiter *next;
        struct child_rec *rec;
        aiot_task *task;
        int status;
};

struct io_state {
        struct ev_loop *ev;
        struct fdw **fds; /* indexed by fd; entries are allocated, as libev keeps pointers */
        size_t nfds;
        struct child_rec *children; /* newest first */
};

/* ------------------------------------------------------------ per-loop state */

static void io_state_free(aiot_loop *l, void *data)
{
        struct io_state *st = data;

        for (size_t i = 0; i < st->nfds; i++) {
                if (!st->fds[i])
                        continue;
                ev_io_stop(st->ev, &st->fds[i]->io);
                free(st->fds[i]);
        }
        free(st->fds);
        while (st->children) {
                struct child_rec *r = st->children;

                st->children = r->next;
                /* The exit callback must not find a freed record if the child handle
                 * outlives the loop and is watched elsewhere; it cannot: the child was
                 * watched on this loop's libev loop, which goes next. */
                free(r);
        }
        free(st);
}

static __attribute__((noinline)) struct io_state *io_state_create(aiot_loop *l)
{
        struct io_state *st = calloc(1, sizeof(*st));

        if (!st)
                return NULL;
        st->ev = aiot__loop_ev(l);
        aiot__loop_ext_set(l, AIOT__EXT_IO, st, io_state_free);
        return st;
}

/* The loop's table, created on first use when create is set.  Inline: every
 * wait looks it up (task -> loop -> extension, three loads). */
static inline struct io_state *io_state(aiot_loop *l, int create)
{
        struct io_state *st = aiot__loop_ext_get(l, AIOT__EXT_IO);

        if (st || !create)
                return st;
        return io_state_create(l);
}

/* ------------------------------------------------------------ fd watchers */

/* Sets the directions registered with libev, touching libev only on a change. */
static void fdw_set(struct ev_loop *ev, struct fdw *f, int events)
{
        if ((f->io.events & EV_RW) == events && !!ev_is_active(&f->io) == !!events)
                return;
        ev_io_stop(ev, &f->io);
        /* ev_io_modify keeps libev's notion that the fd is the same file. */
        ev_io_modify(&f->io, events);
        if (events)
                ev_io_start(ev, &f->io);
}

static void fdw_wake(struct fdw *f, aiot_task *t, int rc)
{
        if (f->reader == t) {
                f->reader = NULL;
                f->grace |= EV_READ;
        }
        if (f->writer == t) {
                f->writer = NULL;
                f->grace |= EV_WRITE;
        }
        aiot__wake(t, rc);
}

static void fdw_cb(struct ev_loop *ev, ev_io *w, int revents)
{
        struct fdw *f = aiot__container_of(w, struct fdw, io);
        aiot_task *r = f->reader, *wr = f->writer;
        int unwanted = 0;

        if (revents & EV_ERROR) {
                /* libev stopped the watcher: the fd is not open (closed behind our back). */
                if (r)
                        fdw_wake(f, r, -EBADF);
                if (wr && wr != r)
                        fdw_wake(f, wr, -EBADF);
                fdw_set(ev, f, 0);
                return;
        }
        if (!(revents & EV_READ))
                r = NULL;
        if (!(revents & EV_WRITE))
                wr = NULL;
        /* Readiness nobody waits for drops the direction after IDLE_REPORTS, but
         * not while a task woken for it has not run yet (the scheduler polls libev
         * between task switches): it will most likely consume it and wait again. */
        if ((revents & EV_READ) && !r && !(f->grace & EV_READ) && ++f->idle[0] >= IDLE_REPORTS)
                unwanted |= EV_READ;
        if ((revents & EV_WRITE) && !wr && !(f->grace & EV_WRITE) && ++f->idle[1] >= IDLE_REPORTS)
                unwanted |= EV_WRITE;
        if (r)
                f->idle[0] = 0;
        if (wr)
                f->idle[1] = 0;
        if (unwanted & EV_READ)
                f->idle[0] = 0;
        if (unwanted & EV_WRITE)
                f->idle[1] = 0;
        if (r)
                fdw_wake(f, r, AIOT_READ | (r == wr ? AIOT_WRITE : 0));
        if (wr && wr != r)
                fdw_wake(f, wr, AIOT_WRITE);
        if (unwanted)
                fdw_set(ev, f, (f->io.events & EV_RW) & ~unwanted);
}

static int fdw_get(struct io_state *st, int fd, struct fdw **ret)
{
        size_t i = (size_t)fd;

        if (i >= st->nfds) {
                size_t n = st->nfds ? st->nfds : 64;
                struct fdw **fds;
                struct rlimit rl;

                /* No such fd can be open: do not grow the table for it. */
                if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && i >= rl.rlim_cur)
                        return -EBADF;

                while (n <= i)
                        n *= 2;
                fds = realloc(st->fds, n * sizeof(*fds));
                if (!fds)
                        return -ENOMEM;
                for (size_t k = st->nfds; k < n; k++)
                        fds[k] = NULL;
                st->fds = fds;
                st->nfds = n;
        }
        if (!st->fds[i]) {
                struct fdw *f = calloc(1, sizeof(*f));

                if (!f)
                        return -ENOMEM;
                ev_io_init(&f->io, fdw_cb, fd, 0);
                st->fds[i] = f;
        }
        *ret = st->fds[i];
        return 0;
}

/* Called when cancellation or a deadline interrupts a parked waiter. */
static void fdw_unpark(aiot_task *t, void *arg)
{
        struct fdw *f = arg;

        if (f->reader == t)
                f->reader = NULL;
        if (f->writer == t)
                f->writer = NULL;
}

/* For aiot_loop_describe(): the fd and the direction t waits for. */
static void fdw_info(const aiot_task *t, void *arg, struct aiot_task_info *ti)
{
        struct fdw *f = arg;

        ti->wait = f->reader == t && f->writer == t ? AIOT_WAIT_FD_RW
                   : f->writer == t                 ? AIOT_WAIT_FD_WRITE
                                                    : AIOT_WAIT_FD_READ;
        ti->wait_id = f->io.fd;
}

/* Parks the current task t until fd is ready for events (AIOT_READ | AIOT_WRITE).
 * Relies on the cancellation check its caller has just made (io_enter(), or
 * io_recheck() before a later wait of the same call), with no switch since:
 * so park never returns early with this task still in a slot, and each wait
 * checks once. */
static int fd_wait(aiot_task *t, int fd, int events)
{
        struct io_state *st = io_state(aiot__task_loop(t), 1);
        struct fdw *f;
        int r;

        if (!st)
                return -ENOMEM;
        r = fdw_get(st, fd, &f);
        if (r < 0)
                return r;
        if (((events & AIOT_READ) && f->reader) || ((events & AIOT_WRITE) && f->writer))
                return -EBUSY;
        fdw_set(st->ev, f, (f->io.events & EV_RW) | events);
        if (events & AIOT_READ)
                f->reader = t;
        if (events & AIOT_WRITE)
                f->writer = t;
        r = aiot__park_checked(fdw_unpark, f);
        /* Running again: the grace of a wake is over.  Look the watcher up again,
         * as aiot_fd_forget() may have freed f meanwhile. */
        if ((size_t)fd < st->nfds && st->fds[fd])
                st->fds[fd]->grace &= ~events;
        return r;
}

/* The common entry check of the blocking calls: a cancelled task does no I/O,
 * even when data is ready.  It is also the check the call's first wait relies on. */
static inline int io_enter(aiot_task **t)
{
        *t = aiot__task_current();
        if (!*t)
                return -EPERM;
        return aiot__task_check(*t);
}

/* The check of a wait after the first of one call: a cancellation delivered
 * after the wake that ended the previous wait found the task runnable, not
 * parked, and interrupted nothing.  waits counts the call's waits so far. */
static inline int io_recheck(aiot_task *t, unsigned *waits)
{
        return (*waits)++ ? aiot__task_check(t) : 0;
}

int aiot_wait_fd(int fd, int events)
{
        aiot_task *t;
        int r;

        aiot__return_if(fd < 0 || !events || (events & ~(AIOT_READ | AIOT_WRITE)), -EINVAL);
        r = io_enter(&t);
        if (r < 0)
                return r;
        return fd_wait(t, fd, events);
}

ssize_t aiot_read(int fd, void *buf, size_t n)
{
        unsigned waits = 0;
        aiot_task *t;
        int r;

        aiot__return_if(fd < 0 || (!buf && n), -EINVAL);
        r = io_enter(&t);
        if (r < 0)
                return r;
        for (;;) {
                ssize_t k = read(fd, buf, n);

                if (k >= 0)
                        return k;
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                        return -errno;
                r = io_recheck(t, &waits);
                if (r == 0)
                        r = fd_wait(t, fd, AIOT_READ);
                if (r < 0)
                        return r;
        }
}

ssize_t aiot_write_all(int fd, const void *buf, size_t n)
{
        const char *p = buf;
        size_t done = 0;
        int sock = 1;
        unsigned waits = 0;
        aiot_task *t;
        int r;

        aiot__return_if(fd < 0 || (!buf && n) || n > SSIZE_MAX, -EINVAL);
        r = io_enter(&t);
        if (r < 0)
                return r;
        while (done < n) {
                ssize_t k = sock ? send(fd, p + done, n - done, MSG_NOSIGNAL) : write(fd, p + done, n - done);

                if (k >= 0) {
                        done += (size_t)k;
                        continue;
                }
                if (errno == ENOTSOCK && sock) {
                        sock = 0;
                        continue;
                }
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                        return -errno;
                r = io_recheck(t, &waits);
                if (r == 0)
                        r = fd_wait(t, fd, AIOT_WRITE);
                if (r < 0)
                        return r;
        }
        return (ssize_t)n;
}

/* Errors accept(2) reports for the new connection, not the listening socket. */
static int accept_transient(int e)
{
        switch (e) {
        case ECONNABORTED:
        case EPROTO:
        case ENETDOWN:
        case ENETUNREACH:
        case EHOSTDOWN:
        case EHOSTUNREACH:
        case ENONET:
        case ENOPROTOOPT:
        case EINTR:
                return 1;
        default:
                return 0;
        }
}

int aiot_accept(int lfd, struct sockaddr *sa, socklen_t *len)
{
        unsigned waits = 0;
        aiot_task *t;
        int r;

        aiot__return_if(lfd < 0 || (sa && !len), -EINVAL);
        r = io_enter(&t);
        if (r < 0)
                return r;
        for (;;) {
                int fd = accept4(lfd, sa, len, SOCK_NONBLOCK | SOCK_CLOEXEC);

                if (fd >= 0)
                        return fd;
                if (accept_transient(errno))
                        continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                        return -errno;
                r = io_recheck(t, &waits);
                if (r == 0)
                        r = fd_wait(t, lfd, AIOT_READ);
                if (r < 0)
                        return r;
        }
}

int aiot_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
        aiot_task *t;
        int r, err = 0;
        socklen_t elen = sizeof(err);

        aiot__return_if(fd < 0 || !sa, -EINVAL);
        r = io_enter(&t);
        if (r < 0)
                return r;
        if (connect(fd, sa, len) == 0)
                return 0;
        /* An interrupted connect goes on in the background, like EINPROGRESS. */
        if (errno != EINPROGRESS && errno != EINTR)
                return -errno;
        r = fd_wait(t, fd, AIOT_WRITE);
        if (r < 0)
                return r;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
                return -errno;
        return -err;
}

int aiot_fd_forget(int fd)
{
        aiot_loop *l = aiot__loop_current();
        struct io_state *st;
        struct fdw *f;

        aiot__return_if(fd < 0, -EINVAL);
        st = l ? io_state(l, 0) : NULL;
        if (!st || (size_t)fd >= st->nfds || !st->fds[fd])
                return 0;
        f = st->fds[fd];
        st->fds[fd] = NULL;
        ev_io_stop(st->ev, &f->io);
        if (f->reader)
                fdw_wake(f, f->reader, -EBADF);
        if (f->writer)
                fdw_wake(f, f->writer, -EBADF);
        free(f);
        return 0;
}

int aiot_close(int fd)
{
        aiot__return_if(fd < 0, -EBADF);
        aiot_fd_forget(fd);
        /* On Linux the fd is released even when close is interrupted: never retry. */
        if (close(fd) < 0 && errno != EINTR)
                return -errno;
        return 0;
}

/* ------------------------------------------------------------ children */

static void child_exited(aiot_child *c, int status, void *userdata)
{
        struct child_rec *rec = userdata, **pp;

        for (pp = &rec->st->children; *pp; pp = &(*pp)->next)
                if (*pp == rec) {
                        *pp = rec->next;
                        break;
                }
        while (rec->waiters) {
                struct child_waiter *w = rec->waiters;

                rec->waiters = w->next;
                w->rec = NULL;
                w->status = status;
                aiot__wake(w->task, 0);
        }
        free(rec);
}

static void child_info(const aiot_task *t, void *arg, struct aiot_task_info *ti);

static void child_unpark(aiot_task *t, void *arg)
{
        struct child_waiter *w = arg, **pp;

        if (!w->rec)
                return;
        for (pp = &w->rec->waiters; *pp; pp = &(*pp)->next)
                if (*pp == w) {
                        *pp = w->next;
                        break;
                }
        w->rec = NULL;
}

struct task_child {
        aiot_child_fn fn;
        void *arg;
};

/* The forked child starts outside any loop: the runtime's atfork handler made
 * it forget the parent's, which holds the parent's tasks. */
static int task_child_main(void *p)
{
        struct task_child *tc = p;

        return tc->fn(tc->arg);
}

int aiot_task_fork(aiot_child_fn fn, void *arg, aiot_child **ret)
{
        struct task_child tc = { .fn = fn, .arg = arg };
        aiot_task *t = aiot__task_current();
        struct io_state *st;
        struct child_rec *rec;
        aiot_child *c;
        int r;

        aiot__return_if(!fn || !ret, -EINVAL);
        if (!t)
                return -EPERM;
        st = io_state(aiot__task_loop(t), 1);
        if (!st)
                return -ENOMEM;
        rec = calloc(1, sizeof(*rec));
        if (!rec)
                return -ENOMEM;
        r = aiot_fork(st->ev, task_child_main, &tc, child_exited, rec, &c);
        if (r < 0) {
                free(rec);
                return r;
        }
        aiot__child_own_exit_cb(c);
        rec->st = st;
        rec->child = c;
        rec->next = st->children;
        st->children = rec;
        *ret = c;
        return 0;
}

int aiot_child_wait(aiot_child *c, int *status)
{
        struct child_waiter w = { 0 };
        struct io_state *st;
        struct child_rec *rec;
        aiot_task *t;
        int r, st_code;

        aiot__return_if(!c, -EINVAL);
        r = io_enter(&t);
        if (r < 0)
                return r;
        if (aiot_child_status(c, &st_code) == 0) {
                if (status)
                        *status = st_code;
                return 0;
        }
        st = io_state(aiot__task_loop(t), 0);
        for (rec = st ? st->children : NULL; rec; rec = rec->next)
                if (rec->child == c)
                        break;
        if (!rec)
                return -EINVAL;
        w.rec = rec;
        w.task = t;
        w.next = rec->waiters;
        rec->waiters = &w;
        /* io_enter() checked, and nothing switched since. */
        r = aiot__park_checked(child_unpark, &w);
        if (r < 0)
                return r;
        if (status)
                *status = w.status;
        return 0;
}

static void child_info(const aiot_task *t, void *arg, struct aiot_task_info *ti)
{
        struct child_waiter *w = arg;

        ti->wait = AIOT_WAIT_CHILD;
        ti->wait_id = w->rec ? (long)aiot_child_pid(w->rec->child) : -1;
}

__attribute__((constructor)) static void io_register_waits(void)
{
        aiot__wait_kind_register(fdw_unpark, fdw_info);
        aiot__wait_kind_register(child_unpark, child_info);
}
