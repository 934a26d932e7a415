/* SPDX-License-Identifier: MIT */
/* The supervisor's channels: to its processes, and to the service manager.
 *
 * Report channel.  Each process gets a CLOEXEC socketpair before it is
 * forked (control.c also sends it requests over it: MSG_TASKS, MSG_LOG_LEVEL); it
 * writes READY when it reaches aiot_worker_wait_stop(), FAILED with the
 * -errno of a setup that returned before it, RECYCLE from
 * aiot_worker_recycle().  The supervisor reads it non-blocking, and once more
 * before it handles an exit, so that a message written just before the exit
 * is not lost.
 *
 * Heartbeat.  Liveness goes through a shared anonymous mapping instead of the
 * channel: one cell per process, bumped by each iteration of its loop (a plain
 * store, no system call per request).  The liveness tick reads every cell; a
 * process whose cell has not moved for the worker timeout gets PE_HUNG
 * (SIGABRT, then SIGKILL after the abort grace: proc.c), and WATCHDOG=1 is
 * sent only while every process's loop moves.
 *
 * Notifications.  The supervisor never blocks on the service manager: each
 * message goes out without waiting, and while the socket is full the latest
 * message of each kind is kept and retried from the loop, in the order they
 * were queued, with one warning. */
#define AIOT__SUPERVISOR_SIDE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "aiotools/log.h"
#include "macro.h"
#include "server-internal.h"

/* ---------------------------------------------------------------- the worker ends */

void aiot__report_send(int fd, int type, int value)
{
        struct msg m = {.type = type, .value = value};

        if (fd >= 0)
                (void)AIOT_RETRY_EINTR(write(fd, &m, sizeof(m)));
}

/* Every iteration of the worker's loop bumps its counter: a plain store into
 * the shared page.  The periodic timer only makes an idle loop iterate. */
static void beat_prepare_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
        struct aiot__beat *b = p->data;

        __atomic_store_n(b->cell, ++b->beats, __ATOMIC_RELAXED);
        /* ev_now() is still the end of the last poll: what ran since is the stall. */
        if (b->stat) {
                double lag = ev_time() - ev_now(loop);

                if (lag > b->lag_max)
                        b->lag_max = lag;
        }
}

static void beat_tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
        aiot__stat_tick(t->data);
}

void aiot__beat_start(struct ev_loop *evl, struct aiot__beat *b, uint64_t *cell, double period)
{
        b->cell = cell;
        if (!cell)
                return;
        ev_prepare_init(&b->prep, beat_prepare_cb);
        b->prep.data = b;
        ev_prepare_start(evl, &b->prep);
        ev_timer_init(&b->tick, beat_tick_cb, period, period);
        b->tick.data = b;
        b->window_start = ev_now(evl);
        ev_timer_start(evl, &b->tick);
}

void aiot__beat_stop(struct ev_loop *evl, struct aiot__beat *b)
{
        if (!b->cell)
                return;
        ev_prepare_stop(evl, &b->prep);
        ev_timer_stop(evl, &b->tick);
}

/* ---------------------------------------------------------------- the report channel */

static int beat_alloc(struct server *srv)
{
        if (!srv->beats)
                return -1;
        for (int i = 0; i < BEAT_CELLS; i++)
                if (!srv->beat_used[i]) {
                        srv->beat_used[i] = true;
                        return i;
                }
        return -1;
}

void aiot__beat_release(struct proc *p)
{
        if (p->beat >= 0)
                p->srv->beat_used[p->beat] = false;
        p->beat = -1;
}

/* Before the fork: the channel (the child gets *write_fd) and a fresh
 * heartbeat cell.  A socketpair of datagrams rather than a pipe, so that the
 * supervisor can also ask the process things, with an fd to answer on. */
int aiot__channel_open(struct proc *p, int *write_fd)
{
        struct server *srv = p->srv;
        int fds[2];

        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) < 0)
                return -errno;
        p->report_rd = fds[0];
        *write_fd = fds[1];
        if (p->beat < 0)
                p->beat = beat_alloc(srv);
        if (p->beat >= 0) {
                __atomic_store_n(&srv->beats[p->beat], 0, __ATOMIC_RELAXED);
                if (srv->stats)
                        memset(&srv->stats[p->beat], 0, sizeof(srv->stats[p->beat]));
        }
        p->beat_last = 0;
        p->beat_change = aiot__now_mono();
        return 0;
}

static void report_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        aiot__channel_read(w->data);
}

/* After the fork: the supervisor starts reading. */
void aiot__channel_opened(struct proc *p)
{
        (void)fcntl(p->report_rd, F_SETFL, O_NONBLOCK);
        ev_io_init(&p->report_w, report_cb, p->report_rd, EV_READ);
        p->report_w.data = p;
        ev_io_start(p->srv->evl, &p->report_w);
}

void aiot__channel_close(struct proc *p)
{
        if (p->report_rd < 0)
                return;
        ev_io_stop(p->srv->evl, &p->report_w);
        p->report_rd = aiot__close(p->report_rd);
}

/* Drains the report channel; a FAILED message is kept for the exit log line. */
void aiot__channel_read(struct proc *p)
{
        struct msg m;
        ssize_t n;

        while (p->report_rd >= 0) {
                n = AIOT_RETRY_EINTR(read(p->report_rd, &m, sizeof(m)));
                if (n != (ssize_t)sizeof(m)) {
                        if (n == 0 || (n < 0 && errno != EAGAIN))
                                aiot__channel_close(p);
                        return;
                }
                if (m.type == MSG_READY)
                        aiot__proc_transition(p, PE_READY, 0);
                else if (m.type == MSG_FAILED)
                        p->setup_error = m.value;
                else if (m.type == MSG_RECYCLE) {
                        if (p->state == PROC_READY)
                                aiot__recycle_start(p);
                        else
                                p->recycle_asked = true;
                }
        }
}

/* A request to the process: type and value, and an fd it receives (or -1). */
int aiot__channel_send(struct proc *p, int type, int value, int fd)
{
        struct msg m = {.type = type, .value = value};
        struct iovec iov = {.iov_base = &m, .iov_len = sizeof(m)};
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int))];
        } u;
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

        if (p->report_rd < 0)
                return -ENOTCONN;
        if (fd >= 0) {
                memset(&u, 0, sizeof(u));
                mh.msg_control = u.buf;
                mh.msg_controllen = sizeof(u.buf);
                CMSG_FIRSTHDR(&mh)->cmsg_level = SOL_SOCKET;
                CMSG_FIRSTHDR(&mh)->cmsg_type = SCM_RIGHTS;
                CMSG_FIRSTHDR(&mh)->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(CMSG_FIRSTHDR(&mh)), &fd, sizeof(int));
        }
        if (AIOT_RETRY_EINTR(sendmsg(p->report_rd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL)) < 0)
                return -errno;
        return 0;
}

/* ---------------------------------------------------------------- the heartbeat page */

/* The heartbeat cells and, beside them, the status records (struct aiot__wstat). */
int aiot__beats_setup(struct server *srv)
{
        void *m = mmap(NULL, BEAT_CELLS * sizeof(*srv->beats), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        void *st;

        if (m == MAP_FAILED) {
                aiot_log(AIOT_LOG_WARNING, "no worker heartbeats: mmap: %s", strerror(errno));
                return -errno;
        }
        srv->beats = m;
        st = mmap(NULL, BEAT_CELLS * sizeof(*srv->stats), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                  -1, 0);
        srv->stats = st == MAP_FAILED ? NULL : st;
        return 0;
}

void aiot__beats_free(struct server *srv)
{
        if (srv->beats)
                munmap(srv->beats, BEAT_CELLS * sizeof(*srv->beats));
        if (srv->stats)
                munmap(srv->stats, BEAT_CELLS * sizeof(*srv->stats));
        srv->beats = NULL;
        srv->stats = NULL;
}

/* Reads the heartbeat counter of a running process; returns how long it has
 * not moved, in seconds (0 for a process without one). */
static double proc_stalled(struct proc *p, double now)
{
        uint64_t v;

        if (p->beat < 0 || !p->srv->beats || (p->state != PROC_STARTING && p->state != PROC_READY))
                return 0;
        v = __atomic_load_n(&p->srv->beats[p->beat], __ATOMIC_RELAXED);
        if (v != p->beat_last) {
                p->beat_last = v;
                p->beat_change = now;
        }
        return now - p->beat_change;
}

/* How long the heartbeat of p has not moved, in seconds; -1 without one. */
double aiot__proc_beat_age(struct proc *p, double now)
{
        if (p->beat < 0 || !p->srv->beats || (p->state != PROC_STARTING && p->state != PROC_READY))
                return -1;
        return proc_stalled(p, now);
}

void aiot__live_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct server *srv = w->data;
        double now = aiot__now_mono();

        aiot__proc_sweep(srv);
        for (size_t i = 0; i < srv->n_procs; i++) {
                struct proc *p = srv->procs[i];
                double stalled = proc_stalled(p, now);

                if (srv->worker_timeout <= 0 || stalled <= srv->worker_timeout || !p->child)
                        continue;
                /* A setup has its own bound, --setup-timeout (proc.c). */
                if (p->state == PROC_STARTING && srv->setup_timeout > 0)
                        continue;
                aiot_log(AIOT_LOG_WARNING, "%s %d (pid %d) hung for %.1f s: aborting",
                         aiot__kind_name(p->kind), p->index, (int)p->pid, stalled);
                aiot__proc_transition(p, PE_HUNG, 0);
        }
        if (srv->pid == 1)
                aiot__reap_orphans(srv);
}

/* WATCHDOG=1 only while every process's loop is responsive. */
void aiot__wd_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct server *srv = w->data;
        double now = aiot__now_mono();
        bool ok = true;

        for (size_t i = 0; i < srv->n_procs; i++) {
                struct proc *p = srv->procs[i];

                if (proc_stalled(p, now) > srv->wd_half + srv->beat_period || p->state == PROC_ABORTING)
                        ok = false;
        }
        if (ok)
                aiot__notify(srv, AIOT__SD_WATCHDOG, NULL);
        else
                aiot_log(AIOT_LOG_DEBUG, "watchdog ping withheld: a process is not responsive");
}

/* ---------------------------------------------------------------- the service manager */

static bool notify_pending(const struct notify_queue *q)
{
        for (int k = 0; k < AIOT__SD_KINDS; k++)
                if (q->msg[k])
                        return true;
        return false;
}

/* Sends what is queued, oldest first, until the socket is full again. */
static void notify_flush(struct server *srv)
{
        struct notify_queue *q = &srv->notify;

        for (;;) {
                int oldest = -1;

                for (int k = 0; k < AIOT__SD_KINDS; k++)
                        if (q->msg[k] && (oldest < 0 || (int)(q->seq[k] - q->seq[oldest]) < 0))
                                oldest = k;
                if (oldest < 0)
                        break;
                if (aiot__sd_send_nowait(q->msg[oldest]) == -EAGAIN)
                        break;
                free(q->msg[oldest]);
                q->msg[oldest] = NULL;
        }
        if (notify_pending(q))
                ev_timer_again(srv->evl, &q->retry);
        else
                ev_timer_stop(srv->evl, &q->retry);
}

static void notify_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        notify_flush(w->data);
}

void aiot__notify_init(struct server *srv)
{
        ev_timer_init(&srv->notify.retry, notify_retry_cb, 0., NOTIFY_RETRY);
        srv->notify.retry.data = srv;
}

/* Queues the message (replacing an older one of its kind) when the socket is
 * full or older ones still wait; sends it at once otherwise. */
void aiot__notify(struct server *srv, int kind, const char *status)
{
        struct notify_queue *q = &srv->notify;
        char buf[1024];
        char *copy;

        if (aiot__sd_format(kind, status, buf, sizeof(buf)) < 0)
                return;
        if (!notify_pending(q) && aiot__sd_send_nowait(buf) != -EAGAIN)
                return;
        if (!q->warned) {
                q->warned = true;
                aiot_log(AIOT_LOG_WARNING, "the service manager's notify socket is full: keeping the latest "
                                           "message of each kind and retrying");
        }
        copy = strdup(buf);
        if (!copy)
                return;
        free(q->msg[kind]);
        q->msg[kind] = copy;
        q->seq[kind] = q->next_seq++;
        if (!ev_is_active(&q->retry))
                ev_timer_again(srv->evl, &q->retry);
}

/* One last try for what is still queued (the final STOPPING=1, typically). */
void aiot__notify_free(struct server *srv)
{
        if (notify_pending(&srv->notify))
                notify_flush(srv);
        ev_timer_stop(srv->evl, &srv->notify.retry);
        for (int k = 0; k < AIOT__SD_KINDS; k++) {
                free(srv->notify.msg[k]);
                srv->notify.msg[k] = NULL;
        }
}
