/* SPDX-License-Identifier: MIT */
/* The prefork lifecycle: the supervisor and the worker side.
 *
 * With a main context the supervisor runs on a task loop whose root task is
 * the main context; without one, on a plain libev loop.  Once the main context
 * reaches aiot_worker_wait_stop() (at once without one), the supervisor forks
 * every worker and extra process from a libev callback; each child builds a
 * fresh task loop and runs its context as the root task.  Each process is a
 * "slot" with an explicit state machine (slot_transition()):
 *
 *   IDLE --start--> STARTING --ready msg--> READY
 *     ^                |  \                   |
 *     |   exit (crash, |   stop signal        | stop signal
 *     |   respawn      v          \           v
 *     +--backoff)-- EXITED <--exit-- STOPPING --(stop timeout: SIGKILL)
 *
 * Workers report over a CLOEXEC pipe (one per process): READY when they reach
 * aiot_worker_wait_stop(), FAILED with the -errno of a setup that returned
 * before it.  Exits are seen through aiot_fork()'s exit callback, which also
 * reaps, so no zombie is left whatever the order of events. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <math.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <unistd.h>

#include <ev.h>

#include "aiotools/fork.h"
#include "aiotools/listen.h"
#include "aiotools/log.h"
#include "aiotools/scope.h"
#include "aiotools/server.h"
#include "aiotools/task.h"
#include "macro.h"
#include "task-internal.h"

#define MAX_WORKERS 1024
#define MAX_SIGNALS 16
#define BACKOFF_FIRST 0.1
#define BACKOFF_CAP 3.2
#define MAX_CRASHES 1024

/* ---------------------------------------------------------------- messages */

enum msg_type { MSG_READY = 1, MSG_FAILED = 2 };

/* The value of MSG_FAILED when the context returned >= 0 without waiting. */
#define SETUP_NO_WAIT 1

/* Small enough to be written atomically to a pipe. */
struct msg {
        int32_t type;
        int32_t value;
};

/* ---------------------------------------------------------------- types */

enum slot_state { SLOT_IDLE, SLOT_STARTING, SLOT_READY, SLOT_STOPPING, SLOT_EXITED };
enum slot_event { SE_START, SE_READY, SE_STOP, SE_KILL, SE_EXIT };
enum server_state { SRV_STARTING, SRV_RUNNING, SRV_STOPPING, SRV_DONE };

struct server;

struct aiot_worker {
        struct server *srv;
        int kind;
        int index;
        aiot_worker_fn fn;
        aiot_loop *loop;
        aiot_scope *scope;
        aiot_task *root;
        aiot_event *stop_ev;
        int stop_signo;
        bool waited;
        int report_fd;                  /* worker side: write end; -1 in the main context */
        const aiot_listener *listeners;
        size_t n_listeners;
        aiot_listener **owned;          /* --reuseport: this worker's own sockets */
        ev_signal sigw[MAX_SIGNALS];
};

struct slot {
        struct server *srv;
        int kind, index;
        aiot_worker_fn fn;
        enum slot_state state;
        aiot_child *child;
        pid_t pid;
        int report_rd;
        ev_io report_w;
        ev_timer respawn_w;
        int setup_error;                /* from a FAILED message */
        bool ever_ready;
        bool killed;                    /* we sent SIGKILL */
        double ready_at;
        double backoff;
};

struct server {
        enum server_state state;
        int exit_status;
        int stop_signo;
        pid_t pid;

        aiot_worker_fn worker_fn;
        aiot_main_fn main_fn;
        int signals[MAX_SIGNALS];
        size_t n_signals;
        double stop_timeout;
        int restart_limit;
        double restart_window;
        int argc;
        char *const *argv;
        bool reuseport;
        bool drop_uid, drop_gid;
        uid_t uid;
        gid_t gid;
        const char *user;
        const char *pidfile;
        bool pidfile_written;

        aiot_loop *loop;
        struct ev_loop *evl;
        ev_signal sigw[MAX_SIGNALS];
        ev_timer stop_w;
        ev_timer start_w;

        struct slot *slots;
        size_t n_slots;
        size_t n_ready;

        double crashes[MAX_CRASHES];   /* ring of crash times */
        size_t n_crashes;

        aiot_listener **listeners;
        size_t n_listeners;
        aiot_listener *lview;           /* copies of *listeners[i], what contexts see */

        int *entry_fds, *internal_fds, *keep_fds;
        size_t n_entry_fds, n_internal_fds, n_keep_fds;

        aiot_worker main;
        void *data;
        aiot_event *done_ev;
};

static void slot_transition(struct slot *s, enum slot_event ev, int arg);
static void server_stop(struct server *srv, int signo, bool by_signal);
static void snapshot_keep(struct server *srv);

/* ---------------------------------------------------------------- small helpers */

static const char *kind_name(int kind)
{
        return kind == AIOT_EXTRA ? "extra process" : kind == AIOT_MAIN ? "main context" : "worker";
}

static double now_mono(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_int(const void *a, const void *b)
{
        int x = *(const int *)a, y = *(const int *)b;

        return (x > y) - (x < y);
}

static bool fd_in(const int *set, size_t n, int fd)
{
        return set && bsearch(&fd, set, n, sizeof(int), cmp_int) != NULL;
}

/* The fds open in this process, sorted.  Returns 0 or -errno (-ENOENT: no /proc). */
static int fd_snapshot(int **ret, size_t *n)
{
        DIR *d = opendir("/proc/self/fd");
        struct dirent *de;
        int *fds = NULL, self;
        size_t len = 0, cap = 0;

        if (!d)
                return -errno;
        self = dirfd(d);
        while ((de = readdir(d))) {
                char *end;
                long fd = strtol(de->d_name, &end, 10);

                if (de->d_name[0] < '0' || de->d_name[0] > '9' || *end || fd == self)
                        continue;
                if (len == cap) {
                        int *nf = realloc(fds, (cap = cap ? cap * 2 : 32) * sizeof(int));
                        if (!nf) {
                                free(fds);
                                closedir(d);
                                return -ENOMEM;
                        }
                        fds = nf;
                }
                fds[len++] = (int)fd;
        }
        closedir(d);
        if (fds)
                qsort(fds, len, sizeof(int), cmp_int);
        *ret = fds;
        *n = len;
        return 0;
}

static bool is_listener_fd(const struct server *srv, int fd)
{
        for (size_t i = 0; i < srv->n_listeners; i++)
                if (srv->listeners[i]->fd == fd)
                        return true;
        return false;
}

/* ---------------------------------------------------------------- the worker side */

static void report(aiot_worker *w, int type, int value)
{
        struct msg m = {.type = type, .value = value};

        if (w->report_fd >= 0)
                (void)AIOT_RETRY_EINTR(write(w->report_fd, &m, sizeof(m)));
}

static void worker_signal_cb(struct ev_loop *loop, ev_signal *sw, int revents)
{
        aiot_worker *w = sw->data;

        /* The first stop signal counts; later ones find the worker stopping already. */
        if (!w->stop_signo) {
                w->stop_signo = sw->signum;
                aiot_event_set(w->stop_ev);
        }
}

/* Closes every fd the process should not have: the supervisor's own (its loop,
 * the pidfds and report pipes of other processes) and, for an extra process,
 * the listening sockets.  What the caller of aiot_server_run() had open and
 * what the main context opened in its setup stays. */
static void close_unwanted_fds(struct server *srv, struct slot *s, int keep)
{
        int *fds = NULL;
        size_t n = 0;

        if (fd_snapshot(&fds, &n) < 0)
                return;
        for (size_t i = 0; i < n; i++) {
                int fd = fds[i];

                if (fd <= STDERR_FILENO || fd == keep)
                        continue;
                if (is_listener_fd(srv, fd)) {
                        if (s->kind == AIOT_EXTRA)
                                close(fd);
                        continue;
                }
                if (!fd_in(srv->keep_fds, srv->n_keep_fds, fd))
                        close(fd);
        }
        free(fds);
}

/* --reuseport: this worker's own SO_REUSEPORT socket per address. */
static int reopen_listeners(struct server *srv, aiot_worker *w)
{
        aiot_listener *view = calloc(srv->n_listeners, sizeof(*view));
        char err[256];

        w->owned = calloc(srv->n_listeners, sizeof(*w->owned));
        if (!view || !w->owned) {
                free(view);
                return -ENOMEM;
        }
        w->listeners = view;
        for (size_t i = 0; i < srv->n_listeners; i++) {
                aiot_listener *l;
                int r = aiot_listen_reopen(srv->listeners[i], NULL, &l, err, sizeof(err));

                if (r < 0) {
                        aiot_log(AIOT_LOG_ERR, "%s", err);
                        return r;
                }
                w->owned[i] = l;
                view[i] = *l;
                /* The supervisor's bind-only socket is of no use here. */
                close(srv->listeners[i]->fd);
        }
        w->n_listeners = srv->n_listeners;
        return 0;
}

static int drop_privileges(struct server *srv)
{
        if (srv->drop_gid) {
                if (srv->drop_uid && srv->user) {
                        if (initgroups(srv->user, srv->gid) < 0)
                                return -errno;
                } else if (setgroups(1, &srv->gid) < 0)
                        return -errno;
                if (setresgid(srv->gid, srv->gid, srv->gid) < 0)
                        return -errno;
        }
        if (srv->drop_uid && setresuid(srv->uid, srv->uid, srv->uid) < 0)
                return -errno;
        return 0;
}

static int worker_root(void *arg)
{
        aiot_worker *w = arg;
        int r, rc;

        w->root = aiot_current();
        r = aiot_scope_open(&w->scope, NULL);
        if (r < 0) {
                report(w, MSG_FAILED, r);
                return r;
        }
        rc = w->fn(w);
        if (!w->waited)
                report(w, MSG_FAILED, rc < 0 ? rc : SETUP_NO_WAIT);
        aiot_scope_cancel(w->scope);
        aiot_scope_close(w->scope);
        w->scope = NULL;
        return rc;
}

struct loop_thread {
        aiot_loop *loop;
        aiot_task_fn fn;
        void *arg;
        int rc;
};

static void *loop_thread_main(void *p)
{
        struct loop_thread *lt = p;

        lt->rc = aiot_loop_run(lt->loop, lt->fn, lt->arg);
        return NULL;
}

/* The child is forked from a libev callback under the supervisor's
 * aiot_loop_run(), whose thread-local "current loop" the task runtime still
 * sees here, so aiot_loop_run() would refuse with -EBUSY.  Until the runtime
 * offers a way to forget the abandoned loop after fork (requested), the
 * fresh loop runs on a thread of its own, which starts with no current loop;
 * this thread only waits for it.  Signals reach the loop whichever thread
 * catches them: libev's handler writes to the loop's wakeup pipe. */
static int run_fresh_loop(aiot_loop *loop, aiot_task_fn fn, void *arg)
{
        struct loop_thread lt = {.loop = loop, .fn = fn, .arg = arg};
        pthread_t th;
        int r;

        if (!aiot__loop_current())
                return aiot_loop_run(loop, fn, arg);
        r = pthread_create(&th, NULL, loop_thread_main, &lt);
        if (r != 0)
                return -r;
        pthread_join(th, NULL);
        return lt.rc;
}

/* What the child allocated for itself (what it inherited dies with _exit). */
static void child_free(struct server *srv, aiot_worker *w)
{
        if (w->loop) {
                for (size_t i = 0; i < srv->n_signals; i++)
                        ev_signal_stop(aiot_loop_ev(w->loop), &w->sigw[i]);
                aiot_loop_free(w->loop);
        }
        aiot_event_free(w->stop_ev);
        if (w->owned) {
                aiot_listeners_free(w->owned, srv->n_listeners);
                free((void *)w->listeners);
        }
}

/* Runs in the new process, on the supervisor's stack, inside a callback of its
 * loop, which is abandoned here: never run, freed or touched again. */
static int child_main(void *arg)
{
        struct slot *s = arg;
        struct server *srv = s->srv;
        aiot_worker w = {.srv = srv, .kind = s->kind, .index = s->index, .fn = s->fn, .report_fd = -1};
        aiot_task_fn root = worker_root;
        char prefix[64];
        int r, rc;

        /* Die with the supervisor; the check closes the race with a supervisor
         * that died before the prctl. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != srv->pid)
                return 1;
        snprintf(prefix, sizeof(prefix), "%s %d", s->kind == AIOT_EXTRA ? "extra" : "worker", s->index);
        aiot_log_set_prefix(prefix);
        /* libev ties each signal to one loop process-wide; the supervisor's
         * watchers are dropped so that this process's loop can take them. */
        for (size_t i = 0; i < srv->n_signals; i++)
                ev_signal_stop(srv->evl, &srv->sigw[i]);
        /* Here s->report_rd is the write end of this process's report pipe. */
        w.report_fd = s->report_rd;
        close_unwanted_fds(srv, s, w.report_fd);
        signal(SIGPIPE, SIG_IGN);

        if (s->kind == AIOT_WORKER) {
                if (srv->reuseport) {
                        r = reopen_listeners(srv, &w);
                        if (r < 0)
                                goto fail;
                } else {
                        w.listeners = srv->lview;
                        w.n_listeners = srv->n_listeners;
                }
        }
        r = drop_privileges(srv);
        if (r < 0) {
                aiot_log(AIOT_LOG_ERR, "cannot drop privileges: %s", strerror(-r));
                goto fail;
        }
        r = aiot_loop_new(&w.loop, NULL);
        if (r < 0)
                goto fail;
        r = aiot_event_new(&w.stop_ev);
        if (r < 0)
                goto fail;
        for (size_t i = 0; i < srv->n_signals; i++) {
                ev_signal_init(&w.sigw[i], worker_signal_cb, srv->signals[i]);
                w.sigw[i].data = &w;
                ev_signal_start(aiot_loop_ev(w.loop), &w.sigw[i]);
        }
        rc = run_fresh_loop(w.loop, root, &w);
        if (rc < 0 && w.waited)
                aiot_log(AIOT_LOG_ERR, "teardown failed: %s", strerror(-rc));
        else if (rc < 0 && !w.root) {
                /* The root task never ran. */
                r = rc;
                goto fail;
        }
        child_free(srv, &w);
        return rc < 0 ? 1 : 0;
fail:
        {
                struct msg m = {.type = MSG_FAILED, .value = r};
                (void)AIOT_RETRY_EINTR(write(s->report_rd, &m, sizeof(m)));
        }
        child_free(srv, &w);
        return 1;
}

/* ---------------------------------------------------------------- the context API */

int aiot_worker_wait_stop(aiot_worker *w)
{
        struct server *srv;
        int r;

        aiot__return_if(!w, -EINVAL);
        aiot__return_if(w->waited, -EALREADY);
        aiot__return_if(!aiot_current() || aiot_current() != w->root, -EPERM);
        srv = w->srv;
        w->waited = true;
        if (w->kind != AIOT_MAIN) {
                report(w, MSG_READY, 0);
                while (!w->stop_signo) {
                        r = aiot_event_wait(w->stop_ev);
                        if (r < 0)
                                return r;
                }
                return w->stop_signo;
        }
        /* The main context: fork from a libev callback, not from this task's stack. */
        if (srv->state == SRV_STARTING)
                ev_timer_start(srv->evl, &srv->start_w);
        while (srv->state != SRV_DONE) {
                r = aiot_event_wait(srv->done_ev);
                if (r < 0)
                        return r;
        }
        return srv->stop_signo;
}

int aiot_worker_index(const aiot_worker *w)
{
        aiot__return_if(!w, -EINVAL);
        return w->index;
}

int aiot_worker_kind(const aiot_worker *w)
{
        aiot__return_if(!w, -EINVAL);
        return w->kind;
}

aiot_loop *aiot_worker_loop(aiot_worker *w)
{
        return w ? w->loop : NULL;
}

aiot_scope *aiot_worker_scope(aiot_worker *w)
{
        return w ? w->scope : NULL;
}

size_t aiot_worker_listeners(const aiot_worker *w, const aiot_listener **ret)
{
        if (!w) {
                if (ret)
                        *ret = NULL;
                return 0;
        }
        if (ret)
                *ret = w->listeners;
        return w->n_listeners;
}

void *aiot_worker_data(const aiot_worker *w)
{
        return w ? w->srv->data : NULL;
}

int aiot_worker_set_data(aiot_worker *m, void *data)
{
        aiot__return_if(!m, -EINVAL);
        aiot__return_if(m->kind != AIOT_MAIN, -EPERM);
        aiot__return_if(m->waited, -EALREADY);
        m->srv->data = data;
        return 0;
}

int aiot_worker_argc(const aiot_worker *w)
{
        aiot__return_if(!w, -EINVAL);
        return w->srv->argc;
}

char *const *aiot_worker_argv(const aiot_worker *w)
{
        return w ? w->srv->argv : NULL;
}

/* ---------------------------------------------------------------- the supervisor */

static size_t live_slots(const struct server *srv)
{
        size_t n = 0;

        for (size_t i = 0; i < srv->n_slots; i++)
                if (srv->slots[i].state == SLOT_STARTING || srv->slots[i].state == SLOT_READY ||
                    srv->slots[i].state == SLOT_STOPPING)
                        n++;
        return n;
}

static void server_check_done(struct server *srv)
{
        if (srv->state != SRV_STOPPING || live_slots(srv) > 0)
                return;
        for (size_t i = 0; i < srv->n_slots; i++)
                if (srv->slots[i].state == SLOT_IDLE)
                        return;
        srv->state = SRV_DONE;
        ev_timer_stop(srv->evl, &srv->stop_w);
        ev_timer_stop(srv->evl, &srv->start_w);
        aiot_log(AIOT_LOG_INFO, "all processes have exited");
        aiot_event_set(srv->done_ev);
        if (!srv->loop)
                ev_break(srv->evl, EVBREAK_ALL);
}

/* A failure: the server stops with exit status 1. */
static void server_fail(struct server *srv)
{
        int signo = srv->signals[0];

        srv->exit_status = AIOT_EXIT_FAILURE;
        for (size_t i = 0; i < srv->n_signals; i++)
                if (srv->signals[i] == SIGTERM)
                        signo = SIGTERM;
        server_stop(srv, signo, false);
}

/* Relays signo to every process.  A failure is not a stop signal: the main
 * context's aiot_worker_wait_stop() then returns 0. */
static void server_stop(struct server *srv, int signo, bool by_signal)
{
        if (srv->state == SRV_DONE)
                return;
        if (srv->state != SRV_STOPPING) {
                srv->state = SRV_STOPPING;
                srv->stop_signo = by_signal ? signo : 0;
                if (srv->stop_timeout >= 0) {
                        ev_timer_set(&srv->stop_w, srv->stop_timeout, 0.);
                        ev_timer_start(srv->evl, &srv->stop_w);
                }
        }
        for (size_t i = 0; i < srv->n_slots; i++)
                slot_transition(&srv->slots[i], SE_STOP, signo);
        server_check_done(srv);
}

static void sup_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
        struct server *srv = w->data;

        if (srv->state != SRV_STOPPING && srv->state != SRV_DONE)
                aiot_log(AIOT_LOG_NOTICE, "SIG%s received, stopping", sigabbrev_np(w->signum) ?: "?");
        server_stop(srv, w->signum, true);
}

static void stop_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct server *srv = w->data;

        for (size_t i = 0; i < srv->n_slots; i++)
                slot_transition(&srv->slots[i], SE_KILL, 0);
}

/* Drains the report pipe; a FAILED message is kept for the exit log line. */
static void slot_read_reports(struct slot *s)
{
        struct msg m;
        ssize_t n;

        while (s->report_rd >= 0) {
                n = AIOT_RETRY_EINTR(read(s->report_rd, &m, sizeof(m)));
                if (n != (ssize_t)sizeof(m)) {
                        if (n == 0 || (n < 0 && errno != EAGAIN)) {
                                ev_io_stop(s->srv->evl, &s->report_w);
                                s->report_rd = aiot__close(s->report_rd);
                        }
                        return;
                }
                if (m.type == MSG_READY)
                        slot_transition(s, SE_READY, 0);
                else if (m.type == MSG_FAILED)
                        s->setup_error = m.value;
        }
}

static void report_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        slot_read_reports(w->data);
}

static void child_exit_cb(aiot_child *c, int status, void *userdata)
{
        struct slot *s = userdata;

        /* A message written just before the exit is read first. */
        slot_read_reports(s);
        aiot_child_free(c);
        s->child = NULL;
        slot_transition(s, SE_EXIT, status);
}

static void respawn_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        slot_transition(w->data, SE_START, 0);
}

static void start_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct server *srv = w->data;

        if (srv->state != SRV_STARTING)
                return;
        snapshot_keep(srv);
        aiot_log(AIOT_LOG_INFO, "starting %zu processes (tracked by %s)", srv->n_slots,
                 aiot_fork_mode() == AIOT_FORK_PIDFD ? "pidfd" : "SIGCHLD");
        for (size_t i = 0; i < srv->n_slots && srv->state == SRV_STARTING; i++)
                slot_transition(&srv->slots[i], SE_START, 0);
}

static int slot_spawn(struct slot *s)
{
        struct server *srv = s->srv;
        int p[2], r;

        if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
        /* The child gets the write end through s->report_rd (see child_main). */
        s->report_rd = p[1];
        s->setup_error = 0;
        s->killed = false;
        r = aiot_fork(srv->evl, child_main, s, child_exit_cb, s, &s->child);
        close(p[1]);
        s->report_rd = p[0];
        if (r < 0) {
                s->report_rd = aiot__close(s->report_rd);
                return r;
        }
        s->pid = aiot_child_pid(s->child);
        (void)fcntl(s->report_rd, F_SETFL, O_NONBLOCK);
        ev_io_init(&s->report_w, report_cb, s->report_rd, EV_READ);
        s->report_w.data = s;
        ev_io_start(srv->evl, &s->report_w);
        return 0;
}

static void server_all_ready(struct server *srv)
{
        size_t workers = 0;

        for (size_t i = 0; i < srv->n_slots; i++)
                if (srv->slots[i].kind == AIOT_WORKER)
                        workers++;
        srv->state = SRV_RUNNING;
        aiot_log(AIOT_LOG_NOTICE, "ready: %zu worker%s, %zu extra process%s (pid %d)", workers,
                 workers == 1 ? "" : "s", srv->n_slots - workers, srv->n_slots - workers == 1 ? "" : "es",
                 (int)srv->pid);
}

/* Counts a crash; returns true when the crash-loop limit is exceeded. */
static bool count_crash(struct server *srv)
{
        double now = now_mono();
        size_t recent = 0;

        srv->crashes[srv->n_crashes++ % MAX_CRASHES] = now;
        for (size_t i = 0; i < srv->n_crashes && i < MAX_CRASHES; i++)
                if (now - srv->crashes[i] <= srv->restart_window)
                        recent++;
        return recent > (size_t)srv->restart_limit;
}

static void describe_status(int status, char *buf, size_t len)
{
        if (status == AIOT_CHILD_LOST)
                snprintf(buf, len, "exited with an unknown status");
        else if (status < 0)
                snprintf(buf, len, "was killed by SIG%s", sigabbrev_np(-status) ?: "?");
        else
                snprintf(buf, len, "exited with status %d", status);
}

static void slot_exited(struct slot *s, int status)
{
        struct server *srv = s->srv;
        bool was_ready = s->state == SLOT_READY;
        char how[64];

        if (s->report_rd >= 0) {
                ev_io_stop(srv->evl, &s->report_w);
                s->report_rd = aiot__close(s->report_rd);
        }
        if (s->state == SLOT_READY)
                srv->n_ready--;
        describe_status(status, how, sizeof(how));

        if (s->state == SLOT_STOPPING || srv->state == SRV_STOPPING || srv->state == SRV_DONE) {
                s->state = SLOT_EXITED;
                if (status > 0) {
                        aiot_log(AIOT_LOG_WARNING, "%s %d %s while stopping", kind_name(s->kind), s->index, how);
                        srv->exit_status = AIOT_EXIT_FAILURE;
                } else
                        aiot_log(AIOT_LOG_DEBUG, "%s %d (pid %d) %s", kind_name(s->kind), s->index, (int)s->pid,
                                 how);
                server_check_done(srv);
                return;
        }
        s->state = SLOT_EXITED;
        if (!was_ready && !s->ever_ready) {
                /* The setup failed: the whole server stops, as aiotools does. */
                if (s->setup_error)
                        aiot_log(AIOT_LOG_ERR, "%s %d failed during setup: %s", kind_name(s->kind), s->index,
                                 s->setup_error == SETUP_NO_WAIT ? "returned before aiot_worker_wait_stop()"
                                                                 : strerror(-s->setup_error));
                else
                        aiot_log(AIOT_LOG_ERR, "%s %d %s during setup", kind_name(s->kind), s->index, how);
                server_fail(srv);
                return;
        }
        if (was_ready)
                aiot_log(AIOT_LOG_WARNING, "%s %d (pid %d) %s; respawning", kind_name(s->kind), s->index,
                         (int)s->pid, how);
        else
                aiot_log(AIOT_LOG_WARNING, "%s %d (pid %d) %s before it was ready%s%s; respawning",
                         kind_name(s->kind), s->index, (int)s->pid, how, s->setup_error < 0 ? ": " : "",
                         s->setup_error < 0 ? strerror(-s->setup_error) : "");
        if (count_crash(srv)) {
                aiot_log(AIOT_LOG_ERR, "crash loop: more than %d restarts within %g s; stopping", srv->restart_limit,
                         srv->restart_window);
                server_fail(srv);
                return;
        }
        /* A process that ran for a whole window starts its backoff afresh. */
        if (was_ready && now_mono() - s->ready_at > srv->restart_window)
                s->backoff = BACKOFF_FIRST;
        s->state = SLOT_IDLE;
        ev_timer_set(&s->respawn_w, s->backoff, 0.);
        ev_timer_start(srv->evl, &s->respawn_w);
        s->backoff = s->backoff * 2 > BACKOFF_CAP ? BACKOFF_CAP : s->backoff * 2;
}

/* The one place where a slot changes state. */
static void slot_transition(struct slot *s, enum slot_event ev, int arg)
{
        struct server *srv = s->srv;
        int r;

        switch (ev) {
        case SE_START:
                if (s->state != SLOT_IDLE && s->state != SLOT_EXITED)
                        return;
                r = slot_spawn(s);
                if (r < 0) {
                        aiot_log(AIOT_LOG_ERR, "cannot fork %s %d: %s", kind_name(s->kind), s->index, strerror(-r));
                        s->state = SLOT_EXITED;
                        server_fail(srv);
                        return;
                }
                s->state = SLOT_STARTING;
                aiot_log(AIOT_LOG_DEBUG, "%s %d started (pid %d)", kind_name(s->kind), s->index, (int)s->pid);
                return;
        case SE_READY:
                if (s->state != SLOT_STARTING)
                        return;
                s->state = SLOT_READY;
                s->ever_ready = true;
                s->ready_at = now_mono();
                if (++srv->n_ready == srv->n_slots && srv->state == SRV_STARTING)
                        server_all_ready(srv);
                else if (srv->state == SRV_RUNNING)
                        aiot_log(AIOT_LOG_INFO, "%s %d (pid %d) is ready again", kind_name(s->kind), s->index,
                                 (int)s->pid);
                return;
        case SE_STOP:
                switch (s->state) {
                case SLOT_IDLE:
                        ev_timer_stop(srv->evl, &s->respawn_w);
                        s->state = SLOT_EXITED;
                        return;
                case SLOT_STARTING:
                case SLOT_READY:
                        if (s->state == SLOT_READY)
                                srv->n_ready--;
                        s->state = SLOT_STOPPING;
                        /* fall through */
                case SLOT_STOPPING:
                        (void)aiot_child_signal(s->child, arg);
                        return;
                case SLOT_EXITED:
                        return;
                }
                return;
        case SE_KILL:
                if (s->state != SLOT_STOPPING)
                        return;
                aiot_log(AIOT_LOG_WARNING, "%s %d (pid %d) did not stop within %g s; killing it", kind_name(s->kind),
                         s->index, (int)s->pid, srv->stop_timeout);
                s->killed = true;
                (void)aiot_child_signal(s->child, SIGKILL);
                return;
        case SE_EXIT:
                slot_exited(s, arg);
                return;
        }
}

/* ---------------------------------------------------------------- setup and teardown */

static int resolve_ids(struct server *srv, const struct aiot_server_config *cfg)
{
        if (cfg->user) {
                struct passwd *pw = getpwnam(cfg->user);
                char *end;
                unsigned long id;

                if (!pw) {
                        errno = 0;
                        id = strtoul(cfg->user, &end, 10);
                        if (!*cfg->user || *end || errno || !(pw = getpwuid((uid_t)id))) {
                                aiot_log(AIOT_LOG_ERR, "unknown user '%s'", cfg->user);
                                return -EINVAL;
                        }
                }
                srv->drop_uid = true;
                srv->uid = pw->pw_uid;
                srv->drop_gid = true;
                srv->gid = pw->pw_gid;
                srv->user = cfg->user;
        }
        if (cfg->group) {
                struct group *gr = getgrnam(cfg->group);
                char *end;
                unsigned long id;

                if (!gr) {
                        errno = 0;
                        id = strtoul(cfg->group, &end, 10);
                        if (!*cfg->group || *end || errno || !(gr = getgrgid((gid_t)id))) {
                                aiot_log(AIOT_LOG_ERR, "unknown group '%s'", cfg->group);
                                return -EINVAL;
                        }
                }
                srv->drop_gid = true;
                srv->gid = gr->gr_gid;
                /* An explicit group replaces the user's supplementary groups. */
                srv->user = NULL;
        }
        return 0;
}

static int check_config(struct server *srv, const struct aiot_server_config *cfg)
{
        long cpus;

        if (!cfg->worker) {
                aiot_log(AIOT_LOG_ERR, "invalid server configuration: no worker function");
                return -EINVAL;
        }
        if (cfg->workers < 0 || cfg->workers > MAX_WORKERS) {
                aiot_log(AIOT_LOG_ERR, "invalid worker count %d (expected 1 to %d)", cfg->workers, MAX_WORKERS);
                return -EINVAL;
        }
        if (cfg->n_extra > MAX_WORKERS || (cfg->n_extra && !cfg->extra) || (cfg->n_binds && !cfg->binds) ||
            cfg->n_stop_signals > MAX_SIGNALS || (cfg->n_stop_signals && !cfg->stop_signals) ||
            isnan(cfg->stop_timeout) || cfg->restart_limit < 0 || !(cfg->restart_window >= 0) || cfg->argc < 0) {
                aiot_log(AIOT_LOG_ERR, "invalid server configuration");
                return -EINVAL;
        }
        for (size_t i = 0; i < cfg->n_extra; i++)
                if (!cfg->extra[i]) {
                        aiot_log(AIOT_LOG_ERR, "invalid server configuration: extra process %zu has no function", i);
                        return -EINVAL;
                }
        srv->worker_fn = cfg->worker;
        srv->main_fn = cfg->main_ctx;
        for (size_t i = 0; i < cfg->n_stop_signals; i++) {
                int s = cfg->stop_signals[i];

                if (s <= 0 || s >= NSIG || s == SIGKILL || s == SIGSTOP || s == SIGCHLD) {
                        aiot_log(AIOT_LOG_ERR, "invalid stop signal %d", s);
                        return -EINVAL;
                }
                for (size_t j = 0; j < i; j++)
                        if (cfg->stop_signals[j] == s) {
                                aiot_log(AIOT_LOG_ERR, "stop signal %d given twice", s);
                                return -EINVAL;
                        }
                srv->signals[srv->n_signals++] = s;
        }
        if (srv->n_signals == 0) {
                srv->signals[srv->n_signals++] = SIGINT;
                srv->signals[srv->n_signals++] = SIGTERM;
        }
        srv->stop_timeout = cfg->stop_timeout == 0 ? 30.0 : cfg->stop_timeout < 0 ? -1 : cfg->stop_timeout;
        srv->restart_limit = cfg->restart_limit ? cfg->restart_limit : 5;
        srv->restart_window = cfg->restart_window > 0 ? cfg->restart_window : 10.0;
        srv->argc = cfg->argc;
        srv->argv = cfg->argv;
        srv->reuseport = cfg->reuseport;
        srv->pidfile = cfg->pidfile;
        if (srv->reuseport && cfg->n_binds == 0) {
                aiot_log(AIOT_LOG_ERR, "reuseport needs at least one bind address");
                return -EINVAL;
        }
        srv->n_slots = (size_t)cfg->workers;
        if (srv->n_slots == 0) {
                cpus = sysconf(_SC_NPROCESSORS_ONLN);
                srv->n_slots = cpus > 0 ? (size_t)(cpus > MAX_WORKERS ? MAX_WORKERS : cpus) : 1;
        }
        srv->slots = calloc(srv->n_slots + cfg->n_extra, sizeof(*srv->slots));
        if (!srv->slots)
                return -ENOMEM;
        for (size_t i = 0; i < srv->n_slots + cfg->n_extra; i++) {
                struct slot *s = &srv->slots[i];
                bool extra = i >= srv->n_slots;

                s->srv = srv;
                s->kind = extra ? AIOT_EXTRA : AIOT_WORKER;
                s->index = (int)(extra ? i - srv->n_slots : i);
                s->fn = extra ? cfg->extra[i - srv->n_slots] : cfg->worker;
                s->state = SLOT_IDLE;
                s->report_rd = -1;
                s->backoff = BACKOFF_FIRST;
                ev_timer_init(&s->respawn_w, respawn_cb, 0., 0.);
                s->respawn_w.data = s;
        }
        srv->n_slots += cfg->n_extra;
        return resolve_ids(srv, cfg);
}

static int open_listeners(struct server *srv, const struct aiot_server_config *cfg)
{
        struct aiot_listen_opts o = {.size = sizeof(o), .reuseport = cfg->reuseport, .bind_only = cfg->reuseport};
        char err[256];

        if (!cfg->n_binds)
                return 0;
        srv->listeners = calloc(cfg->n_binds, sizeof(*srv->listeners));
        srv->lview = calloc(cfg->n_binds, sizeof(*srv->lview));
        if (!srv->listeners || !srv->lview)
                return -ENOMEM;
        for (size_t i = 0; i < cfg->n_binds; i++) {
                int r;

                if (!cfg->binds[i]) {
                        aiot_log(AIOT_LOG_ERR, "bind address %zu is NULL", i);
                        return -EINVAL;
                }
                r = aiot_listen_open(cfg->binds[i], &o, &srv->listeners[i], err, sizeof(err));
                if (r < 0) {
                        aiot_log(AIOT_LOG_ERR, "%s", err);
                        return r;
                }
                srv->n_listeners++;
                srv->lview[i] = *srv->listeners[i];
        }
        /* Only once all are bound, so that a bad address is the only line. */
        for (size_t i = 0; i < srv->n_listeners; i++)
                aiot_log(AIOT_LOG_INFO, "listening on %s%s", srv->listeners[i]->address,
                         cfg->reuseport ? " (reuseport)" : "");
        return 0;
}

static int write_pidfile(struct server *srv)
{
        char buf[32];
        int fd _cleanup_close_ = -1;
        int n;

        if (!srv->pidfile)
                return 0;
        fd = open(srv->pidfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0) {
                aiot_log(AIOT_LOG_ERR, "cannot write pidfile %s: %s", srv->pidfile, strerror(errno));
                return -errno;
        }
        n = snprintf(buf, sizeof(buf), "%d\n", (int)srv->pid);
        if (write(fd, buf, (size_t)n) != n) {
                aiot_log(AIOT_LOG_ERR, "cannot write pidfile %s: %s", srv->pidfile, strerror(errno ?: EIO));
                return -EIO;
        }
        srv->pidfile_written = true;
        return 0;
}

/* The fds the supervisor itself opened (its loop's, so far): closed in children. */
static int snapshot_internal(struct server *srv)
{
        int *now;
        size_t n, k = 0;
        int r = fd_snapshot(&now, &n);

        if (r < 0)
                return 0; /* no /proc: children keep what they inherit */
        for (size_t i = 0; i < n; i++)
                if (!fd_in(srv->entry_fds, srv->n_entry_fds, now[i]) && !is_listener_fd(srv, now[i]))
                        now[k++] = now[i];
        srv->internal_fds = now;
        srv->n_internal_fds = k;
        return 0;
}

/* What children keep: everything open now except the supervisor's own fds. */
static void snapshot_keep(struct server *srv)
{
        int *now;
        size_t n, k = 0;

        if (!srv->entry_fds || fd_snapshot(&now, &n) < 0)
                return;
        for (size_t i = 0; i < n; i++)
                if (!fd_in(srv->internal_fds, srv->n_internal_fds, now[i]))
                        now[k++] = now[i];
        srv->keep_fds = now;
        srv->n_keep_fds = k;
}

static int main_root(void *arg)
{
        struct server *srv = arg;
        aiot_worker *m = &srv->main;
        int rc;

        m->root = aiot_current();
        rc = aiot_scope_open(&m->scope, NULL);
        if (rc < 0)
                return rc;
        if (srv->main_fn)
                rc = srv->main_fn(m);
        else {
                rc = aiot_worker_wait_stop(m);
                rc = rc < 0 ? rc : 0;
        }
        aiot_scope_cancel(m->scope);
        aiot_scope_close(m->scope);
        m->scope = NULL;
        if (!m->waited) {
                aiot_log(AIOT_LOG_ERR, "main context failed during setup: %s",
                         rc < 0 ? strerror(-rc) : "returned before aiot_worker_wait_stop()");
                srv->exit_status = AIOT_EXIT_FAILURE;
        } else if (rc < 0) {
                aiot_log(AIOT_LOG_ERR, "main context teardown failed: %s", strerror(-rc));
                srv->exit_status = AIOT_EXIT_FAILURE;
        }
        return 0;
}

static void server_free(struct server *srv)
{
        for (size_t i = 0; i < srv->n_slots; i++) {
                struct slot *s = &srv->slots[i];

                if (s->report_rd >= 0) {
                        ev_io_stop(srv->evl, &s->report_w);
                        close(s->report_rd);
                }
                ev_timer_stop(srv->evl, &s->respawn_w);
                aiot_child_free(s->child);
        }
        if (srv->evl)
                for (size_t i = 0; i < srv->n_signals; i++)
                        ev_signal_stop(srv->evl, &srv->sigw[i]);
        if (srv->pidfile_written)
                unlink(srv->pidfile);
        aiot_listeners_free(srv->listeners, srv->n_listeners);
        aiot_event_free(srv->done_ev);
        if (srv->loop)
                aiot_loop_free(srv->loop);
        else if (srv->evl)
                ev_loop_destroy(srv->evl);
        free(srv->lview);
        free(srv->slots);
        free(srv->entry_fds);
        free(srv->internal_fds);
        free(srv->keep_fds);
}

int aiot_server_run(const struct aiot_server_config *cfg)
{
        struct server srv = {.exit_status = AIOT_EXIT_OK};
        struct sigaction ign = {.sa_handler = SIG_IGN}, old_pipe;
        struct aiot_server_config c = {0};
        int r, status;

        /* A caller built against an older, shorter struct gets zeroes for the rest. */
        if (!cfg || cfg->size < offsetof(struct aiot_server_config, main_ctx) || cfg->size > sizeof(c)) {
                aiot_log(AIOT_LOG_ERR, "invalid server configuration: bad size field");
                return AIOT_EXIT_USAGE;
        }
        memcpy(&c, cfg, cfg->size);
        cfg = &c;
        srv.pid = getpid();
        srv.main = (aiot_worker){.srv = &srv, .kind = AIOT_MAIN, .index = -1, .report_fd = -1};
        if (check_config(&srv, cfg) < 0) {
                server_free(&srv);
                return AIOT_EXIT_USAGE;
        }
        if (cfg->no_pidfd)
                setenv("AIOTOOLS_NO_PIDFD", "1", 1);
        (void)fd_snapshot(&srv.entry_fds, &srv.n_entry_fds);
        sigemptyset(&ign.sa_mask);
        sigaction(SIGPIPE, &ign, &old_pipe);

        /* Without a main context the supervisor needs no task loop, only libev:
         * workers are then forked outside any aiot_loop_run() (see
         * run_fresh_loop() for the other case). */
        if (srv.main_fn) {
                r = aiot_loop_new(&srv.loop, NULL);
                srv.evl = r < 0 ? NULL : aiot_loop_ev(srv.loop);
        } else {
                srv.evl = ev_loop_new(EVFLAG_AUTO);
                r = srv.evl ? 0 : -ENOMEM;
        }
        if (r >= 0)
                r = aiot_event_new(&srv.done_ev);
        if (r < 0) {
                aiot_log(AIOT_LOG_ERR, "cannot create the supervisor loop: %s", strerror(-r));
                status = AIOT_EXIT_FAILURE;
                goto out;
        }
        srv.main.loop = srv.loop;
        for (size_t i = 0; i < srv.n_signals; i++) {
                ev_signal_init(&srv.sigw[i], sup_signal_cb, srv.signals[i]);
                srv.sigw[i].data = &srv;
                ev_signal_start(srv.evl, &srv.sigw[i]);
        }
        ev_timer_init(&srv.stop_w, stop_timeout_cb, 0., 0.);
        srv.stop_w.data = &srv;
        ev_timer_init(&srv.start_w, start_cb, 0., 0.);
        srv.start_w.data = &srv;

        if (open_listeners(&srv, cfg) < 0 || write_pidfile(&srv) < 0) {
                status = AIOT_EXIT_USAGE;
                goto out;
        }
        srv.main.listeners = srv.lview;
        srv.main.n_listeners = srv.n_listeners;
        (void)snapshot_internal(&srv);
        /* From here the supervisor's fds are known; the main context's are kept. */
        if (srv.loop)
                r = aiot_loop_run(srv.loop, main_root, &srv);
        else {
                /* What main_root() would do with a main context that only waits. */
                srv.main.waited = true;
                ev_timer_start(srv.evl, &srv.start_w);
                r = ev_run(srv.evl, 0) < 0 ? -EIO : 0;
        }
        if (r < 0) {
                aiot_log(AIOT_LOG_ERR, "cannot run the supervisor loop: %s", strerror(-r));
                srv.exit_status = AIOT_EXIT_FAILURE;
        }
        status = srv.exit_status;
out:
        server_free(&srv);
        sigaction(SIGPIPE, &old_pipe, NULL);
        return status;
}
