/* SPDX-License-Identifier: MIT */
/* The process end of the status records and of the supervisor's requests.
 *
 * Status.  Each worker and extra process has a record (struct aiot__wstat) in
 * a mapping it shares with the supervisor, beside its heartbeat cell.  The
 * serving layer counts connections and requests into it with relaxed stores
 * (aiot__stat_conn(), aiot__stat_request(): no system call, nothing at all
 * without a record); the loop's longest stall is measured at each iteration
 * (the time from the end of the last poll to the next prepare: what the
 * loop's callbacks and tasks ran without polling), and the live tasks are
 * counted at each stats tick (a walk of the task tree, once a second at most).
 *
 * Requests.  The report channel is a socketpair: the supervisor sends
 * MSG_LOG_LEVEL (a new log level) and MSG_TASKS with an fd, on which this
 * process writes the description of its tasks from a task of its own, so
 * that the loop is never stopped and a slow reader blocks only that task. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "aiotools/io.h"
#include "aiotools/log.h"
#include "macro.h"
#include "runtime/runtime.h"
#include "server-internal.h"

#define STAT_WINDOW 1.0 /* seconds: the interval of the loop lag */

/* ---------------------------------------------------------------- counters */

void aiot__stat_conn(aiot_worker *w, int delta)
{
        struct aiot__wstat *st = w ? w->beat.stat : NULL;

        if (!st)
                return;
        __atomic_store_n(&st->conns_open, st->conns_open + (uint64_t)(int64_t)delta, __ATOMIC_RELAXED);
        if (delta > 0)
                __atomic_store_n(&st->conns_total, st->conns_total + 1, __ATOMIC_RELAXED);
}

void aiot__stat_request(aiot_worker *w)
{
        struct aiot__wstat *st = w ? w->beat.stat : NULL;

        if (st)
                __atomic_store_n(&st->requests, st->requests + 1, __ATOMIC_RELAXED);
}

/* From the heartbeat's tick: publishes the lag of the window that ended and
 * the task count; a stall longer than the published lag shows at once. */
void aiot__stat_tick(struct aiot__beat *b)
{
        struct ev_loop *evl;
        double now;

        if (!b->stat || !b->loop)
                return;
        evl = aiot_loop_ev(b->loop);
        now = ev_now(evl);
        if ((double)b->stat->lag_us < b->lag_max * 1e6)
                __atomic_store_n(&b->stat->lag_us, (uint64_t)(b->lag_max * 1e6), __ATOMIC_RELAXED);
        if (now - b->window_start < STAT_WINDOW)
                return;
        __atomic_store_n(&b->stat->lag_us, (uint64_t)(b->lag_max * 1e6), __ATOMIC_RELAXED);
        __atomic_store_n(&b->stat->tasks, (uint64_t)aiot__loop_task_count(b->loop), __ATOMIC_RELAXED);
        b->lag_max = 0;
        b->window_start = now;
}

/* ---------------------------------------------------------------- task names */

/* "accept ADDR" for the acceptor of listener fd lfd: made once per listener
 * and kept until the worker ends, as a task's name is not copied. */
const char *aiot__accept_name(aiot_worker *w, int lfd)
{
        const aiot_listener *ls;
        size_t n = aiot_worker_listeners(w, &ls);

        if (!w->accept_names && n)
                w->accept_names = calloc(n, sizeof(*w->accept_names));
        for (size_t i = 0; i < n && w->accept_names; i++)
                if (ls[i].fd == lfd) {
                        if (!w->accept_names[i] &&
                            asprintf(&w->accept_names[i], "accept %s", ls[i].address ? ls[i].address : "?") < 0)
                                w->accept_names[i] = NULL;
                        return w->accept_names[i] ? w->accept_names[i] : "accept";
                }
        return "accept";
}

void aiot__names_free(aiot_worker *w)
{
        const aiot_listener *ls;
        size_t n = aiot_worker_listeners(w, &ls);

        for (size_t i = 0; w->accept_names && i < n; i++)
                free(w->accept_names[i]);
        free(w->accept_names);
        w->accept_names = NULL;
}

/* At READY: the task count is right from the first status on. */
void aiot__stat_ready(struct aiot__beat *b)
{
        if (b->stat && b->loop)
                __atomic_store_n(&b->stat->tasks, (uint64_t)aiot__loop_task_count(b->loop), __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------- the task tree */

struct dump_req {
        aiot_worker *w;
        int fd;
        bool json;
};

/* Formats the tree in memory first: the description is taken at one instant,
 * and the writing that may wait for the reader comes after. */
static int dump_task(void *arg)
{
        struct dump_req *d = arg;
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);

        if (f) {
                if (d->json)
                        fprintf(f, "{\"kind\":\"%s\",\"index\":%d,\"pid\":%d,\"tasks\":", d->w->kind == AIOT_EXTRA ? "extra" : "worker",
                                d->w->index, (int)getpid());
                else
                        fprintf(f, "%s %d (pid %d), generation %u:\n", d->w->kind == AIOT_EXTRA ? "extra process" : "worker",
                                d->w->index, (int)getpid(), d->w->gen);
                (void)aiot_loop_dump_tasks(d->w->loop, f, d->json ? AIOT_DUMP_JSON : 0);
                if (d->json)
                        fputs("}\n", f);
                fclose(f);
        }
        if (buf)
                (void)aiot_write_all(d->fd, buf, len);
        free(buf);
        (void)aiot_close(d->fd);
        free(d);
        return 0;
}

static const struct aiot_spawn_opts dump_opts = {.size = sizeof(dump_opts), .name = "ctl tasks"};

static void tasks_request(aiot_worker *w, int fd, int flags)
{
        struct dump_req *d;

        if (fd < 0)
                return;
        d = malloc(sizeof(*d));
        if (!d || !w->scope) {
                free(d);
                close(fd);
                return;
        }
        *d = (struct dump_req){.w = w, .fd = fd, .json = flags & AIOT__TASKS_JSON};
        if (aiot_spawn_opts(w->scope, dump_task, d, &dump_opts, NULL) < 0) {
                free(d);
                close(fd);
        }
}

/* One request: a message, and for MSG_TASKS the fd that came with it. */
static void chan_cb(struct ev_loop *loop, ev_io *io, int revents)
{
        aiot_worker *w = io->data;
        struct msg m;
        struct iovec iov = {.iov_base = &m, .iov_len = sizeof(m)};
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int))];
        } u;
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
        struct cmsghdr *c;
        ssize_t n = AIOT_RETRY_EINTR(recvmsg(w->report_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
        int fd = -1;

        if (n == 0 || (n < 0 && errno != EAGAIN)) {
                /* The supervisor is gone: nothing more will come. */
                ev_io_stop(loop, io);
                return;
        }
        if (n < 0)
                return;
        for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
                    c->cmsg_len >= CMSG_LEN(sizeof(int)))
                        memcpy(&fd, CMSG_DATA(c), sizeof(int));
        if (n == (ssize_t)sizeof(m) && m.type == MSG_TASKS) {
                tasks_request(w, fd, m.value);
                return;
        }
        if (fd >= 0)
                close(fd);
        if (n == (ssize_t)sizeof(m) && m.type == MSG_LOG_LEVEL)
                aiot_log_set_level(m.value);
}

void aiot__chan_start(aiot_worker *w)
{
        if (w->report_fd < 0 || !w->loop)
                return;
        ev_io_init(&w->chan_w, chan_cb, w->report_fd, EV_READ);
        w->chan_w.data = w;
        ev_io_start(aiot_loop_ev(w->loop), &w->chan_w);
}

void aiot__chan_stop(aiot_worker *w)
{
        if (w->report_fd >= 0 && w->loop)
                ev_io_stop(aiot_loop_ev(w->loop), &w->chan_w);
}
