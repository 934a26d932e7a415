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
 * Slots belong to a generation.  A reload (SIGHUP) starts a whole new
 * generation beside the serving one and stops the old one only once every
 * new process is ready; a new process that fails its setup rolls the reload
 * back.  A recycled worker gets a replacement slot of its own generation and
 * index in the same way.  Slots that are gone for good stay EXITED until
 * sweep_slots() frees them from a top-level callback.
 *
 * Workers report over a CLOEXEC pipe (one per process): READY when they reach
 * aiot_worker_wait_stop(), FAILED with the -errno of a setup that returned
 * before it, RECYCLE from aiot_worker_recycle().  Liveness goes through a
 * shared anonymous mapping instead, one counter per process bumped by each
 * iteration of its loop: no system call per request.  Exits are seen through
 * aiot_fork()'s exit callback, which also reaps, so no zombie is left
 * whatever the order of events. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <math.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "aiotools/fork.h"
#include "aiotools/io.h"
#include "aiotools/listen.h"
#include "aiotools/log.h"
#include "aiotools/scope.h"
#include "aiotools/sd.h"
#include "aiotools/server.h"
#include "aiotools/task.h"
#include "macro.h"
#include "proctitle.h"

#define MAX_WORKERS 1024
#define MAX_SIGNALS 16
#define MAX_HANDLERS 8
#define BACKOFF_FIRST 0.1
#define BACKOFF_CAP 3.2
#define MAX_CRASHES 1024
#define HB_SLOTS 4096           /* heartbeat counters in the shared page(s) */
#define ABORT_GRACE 5.0         /* seconds from SIGABRT to SIGKILL for a hung process */
#define ORPHAN_POLL 0.1         /* seconds between orphan sweeps as PID 1 without pidfd */
#define WORKER_TIMEOUT 30.0

/* The signals the supervisor acts on besides the stop signals (when they are
 * not stop signals themselves).  Children ignore them, except SIGUSR1 while a
 * handler is registered. */
static const int ctl_signals[] = {SIGHUP, SIGTTIN, SIGTTOU, SIGUSR1};
#define N_CTL (sizeof(ctl_signals) / sizeof(ctl_signals[0]))

/* ---------------------------------------------------------------- messages */

enum msg_type { MSG_READY = 1, MSG_FAILED = 2, MSG_RECYCLE = 3 };

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

struct sig_handler {
        aiot_worker *w;
        int signo;
        aiot_task_fn fn;
        void *arg;
        ev_signal sw;
};

struct aiot_worker {
        struct server *srv;
        int kind;
        int index;
        unsigned gen;
        aiot_worker_fn fn;
        aiot_loop *loop;
        aiot_scope *scope;
        aiot_task *root;
        aiot_event *stop_ev;
        int stop_signo;
        bool waited;
        bool recycled;
        int report_fd;                  /* worker side: write end; -1 in the main context */
        const aiot_listener *listeners;
        size_t n_listeners;
        aiot_listener **owned;          /* --reuseport: this worker's own sockets */
        ev_signal sigw[MAX_SIGNALS];
        uint64_t *hb;                   /* this process's heartbeat counter, or NULL */
        uint64_t beats;
        ev_prepare hb_prep;
        ev_timer hb_tick;
        struct sig_handler handlers[MAX_HANDLERS];
};

struct slot {
        struct server *srv;
        int kind, index;
        unsigned gen;
        aiot_worker_fn fn;
        enum slot_state state;
        aiot_child *child;
        pid_t pid;
        int report_rd;
        ev_io report_w;
        ev_timer respawn_w;
        ev_timer kill_w;                /* stop timeout, or the grace after SIGABRT */
        int setup_error;                /* from a FAILED message */
        bool ever_ready;
        bool killed;                    /* we sent SIGKILL */
        bool hung;                      /* we sent SIGABRT */
        bool recycle_asked;
        bool gone;                      /* EXITED for good: sweep_slots() frees it */
        struct slot *replaces, *replaced_by;
        double ready_at;
        double backoff;
        int hb;                         /* index into srv->hb, or -1 */
        uint64_t hb_last;
        double hb_change;               /* when hb_last was last seen to change */
};

struct server {
        enum server_state state;
        int exit_status;
        int stop_signo;
        pid_t pid;

        aiot_worker_fn worker_fn;
        aiot_main_fn main_fn;
        const aiot_worker_fn *extra_fns;
        size_t n_extra;
        size_t n_workers;               /* the target count (scaled by TTIN/TTOU) */
        int signals[MAX_SIGNALS];
        size_t n_signals;
        double stop_timeout;
        double worker_timeout;          /* < 0: off */
        int restart_limit;
        double restart_window;
        int argc;
        char *const *argv;
        bool reuseport;
        bool drop_uid, drop_gid;
        uid_t uid;
        gid_t gid;
        const char *user, *group;
        const char *pidfile;
        bool pidfile_written;
        const char *proc_title;

        unsigned gen;                   /* the serving generation */
        unsigned new_gen;               /* the generation a reload is starting, or 0 */
        unsigned next_gen;
        bool reload_pending;

        aiot_loop *loop;
        struct ev_loop *evl;
        ev_signal sigw[MAX_SIGNALS];
        ev_signal ctlw[N_CTL];
        bool ctl_on[N_CTL];
        ev_signal chldw;                /* PID 1: reaps orphans */
        ev_timer start_w;
        ev_timer live_w;                /* heartbeat checks, orphan reaping */
        ev_timer wd_w;                  /* WATCHDOG=1 */
        double hb_period;
        double wd_half;                 /* half of WATCHDOG_USEC, s; 0: no watchdog */

        struct slot **slots;
        size_t n_slots, cap_slots;

        double crashes[MAX_CRASHES];   /* ring of crash times */
        size_t n_crashes;

        uint64_t *hb;                   /* HB_SLOTS counters, MAP_SHARED */
        bool hb_used[HB_SLOTS];

        aiot_listener **listeners;
        size_t n_listeners;
        size_t n_activated;             /* listeners[0..n_activated) came from LISTEN_FDS */
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
static void reload_start(struct server *srv);
static void reload_next(struct server *srv);
static void recycle_pending(struct server *srv);

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

static bool is_stop_signal(const struct server *srv, int signo)
{
        for (size_t i = 0; i < srv->n_signals; i++)
                if (srv->signals[i] == signo)
                        return true;
        return false;
}

/* The signal a graceful stop sends when no signal asked for it (a failure,
 * the old generation after a reload, TTOU, a recycle): SIGTERM if it is a
 * stop signal, else the first one. */
static int graceful_signal(const struct server *srv)
{
        return is_stop_signal(srv, SIGTERM) ? SIGTERM : srv->signals[0];
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
        if (w->stop_signo)
                return;
        w->stop_signo = sw->signum;
        /* --reuseport: this worker's own sockets leave the port's group at once,
         * so that the kernel sends new connections to the sockets of processes
         * that keep serving rather than queue them here until this one exits
         * (see CAVEATS in aiot_server_run(3)).  Accept then fails with EINVAL. */
        if (w->owned)
                for (size_t i = 0; i < w->n_listeners; i++)
                        if (w->owned[i])
                                (void)shutdown(w->owned[i]->fd, SHUT_RDWR);
        aiot_event_set(w->stop_ev);
}

/* Every iteration of the worker's loop bumps its counter: a plain store into
 * the shared page.  The periodic timer only makes an idle loop iterate. */
static void hb_prepare_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
        aiot_worker *w = p->data;

        __atomic_store_n(w->hb, ++w->beats, __ATOMIC_RELAXED);
}

static void hb_tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
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

/* --reuseport: this worker's own SO_REUSEPORT socket per bound address;
 * sockets from socket activation stay shared. */
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
        w->n_listeners = srv->n_listeners;
        for (size_t i = 0; i < srv->n_listeners; i++) {
                aiot_listener *l;
                int r;

                if (i < srv->n_activated) {
                        view[i] = *srv->listeners[i];
                        continue;
                }
                r = aiot_listen_reopen(srv->listeners[i], NULL, &l, err, sizeof(err));
                if (r < 0) {
                        aiot_log(AIOT_LOG_ERR, "%s", err);
                        return r;
                }
                w->owned[i] = l;
                view[i] = *l;
                /* The supervisor's bind-only socket is of no use here. */
                close(srv->listeners[i]->fd);
        }
        return 0;
}

/* Supplementary groups, then the gid, then the uid: in this order, because
 * each step needs the privilege the next one gives up.  Verified afterwards,
 * so that a worker never runs as root by mistake. */
static int drop_privileges(struct server *srv)
{
        gid_t rg, eg, sg;
        uid_t ru, eu, su;

        if (!srv->drop_gid && !srv->drop_uid)
                return 0;
        /* Nothing to change (an unprivileged supervisor started with its own user). */
        if (geteuid() != 0 && (!srv->drop_uid || getuid() == srv->uid) && getgid() == srv->gid &&
            getegid() == srv->gid)
                return 0;
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
        if ((srv->drop_gid && (getresgid(&rg, &eg, &sg) < 0 || rg != srv->gid || eg != srv->gid || sg != srv->gid)) ||
            (srv->drop_uid && (getresuid(&ru, &eu, &su) < 0 || ru != srv->uid || eu != srv->uid || su != srv->uid)))
                return -EPERM;
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

/* What the child allocated for itself (what it inherited dies with _exit). */
static void child_free(struct server *srv, aiot_worker *w)
{
        if (w->loop) {
                struct ev_loop *evl = aiot_loop_ev(w->loop);

                for (size_t i = 0; i < srv->n_signals; i++)
                        ev_signal_stop(evl, &w->sigw[i]);
                for (size_t i = 0; i < MAX_HANDLERS; i++)
                        if (w->handlers[i].fn)
                                ev_signal_stop(evl, &w->handlers[i].sw);
                ev_prepare_stop(evl, &w->hb_prep);
                ev_timer_stop(evl, &w->hb_tick);
                aiot_loop_free(w->loop);
        }
        aiot_event_free(w->stop_ev);
        if (w->owned) {
                aiot_listeners_free(w->owned, srv->n_listeners);
                free((void *)w->listeners);
        }
}

/* The child's view of the process: title, signals, fds. */
static void child_prepare(struct server *srv, struct slot *s)
{
        const char *what = s->kind == AIOT_EXTRA ? "extra" : "worker";
        char buf[128], comm[16];

        snprintf(buf, sizeof(buf), "%s %d", what, s->index);
        aiot_log_set_prefix(buf);
        if (srv->proc_title) {
                snprintf(buf, sizeof(buf), "%s: %s %d", srv->proc_title, what, s->index);
                snprintf(comm, sizeof(comm), "aiot-%s-%d", what, s->index);
                (void)aiot__proctitle_set(buf, comm);
        }
        /* libev ties each signal to one loop process-wide; the supervisor's
         * watchers are dropped so that this process's loop can take them. */
        for (size_t i = 0; i < srv->n_signals; i++)
                ev_signal_stop(srv->evl, &srv->sigw[i]);
        for (size_t i = 0; i < N_CTL; i++)
                if (srv->ctl_on[i]) {
                        ev_signal_stop(srv->evl, &srv->ctlw[i]);
                        /* A HUP or TTIN sent to the whole process group must not
                         * kill or stop a worker; SIGUSR1 is caught once a handler
                         * is registered (aiot_worker_on_signal). */
                        signal(ctl_signals[i], SIG_IGN);
                }
        if (srv->pid == 1)
                ev_signal_stop(srv->evl, &srv->chldw);
        signal(SIGPIPE, SIG_IGN);
}

/* Runs in the new process, on the supervisor's stack, inside a callback of its
 * loop, which is abandoned here: never run, freed or touched again. */
static int child_main(void *arg)
{
        struct slot *s = arg;
        struct server *srv = s->srv;
        aiot_worker w = {.srv = srv, .kind = s->kind, .index = s->index, .gen = s->gen, .fn = s->fn,
                         .report_fd = -1};
        struct ev_loop *evl;
        int r, rc;

        /* Die with the supervisor; the check closes the race with a supervisor
         * that died before the prctl. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != srv->pid)
                return 1;
        child_prepare(srv, s);
        /* Here s->report_rd is the write end of this process's report pipe. */
        w.report_fd = s->report_rd;
        close_unwanted_fds(srv, s, w.report_fd);

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
                aiot_log(AIOT_LOG_ERR, "cannot drop privileges to %s%s%s%s%s: %s", srv->drop_uid ? "user " : "",
                         srv->drop_uid ? (srv->user ? srv->user : "?") : "", srv->drop_uid && srv->group ? ", " : "",
                         srv->group ? "group " : "", srv->group ? srv->group : "", strerror(-r));
                goto fail;
        }
        r = aiot_loop_new(&w.loop, NULL);
        if (r < 0)
                goto fail;
        r = aiot_event_new(&w.stop_ev);
        if (r < 0)
                goto fail;
        evl = aiot_loop_ev(w.loop);
        for (size_t i = 0; i < srv->n_signals; i++) {
                ev_signal_init(&w.sigw[i], worker_signal_cb, srv->signals[i]);
                w.sigw[i].data = &w;
                ev_signal_start(evl, &w.sigw[i]);
        }
        if (s->hb >= 0) {
                w.hb = &srv->hb[s->hb];
                ev_prepare_init(&w.hb_prep, hb_prepare_cb);
                w.hb_prep.data = &w;
                ev_prepare_start(evl, &w.hb_prep);
                ev_timer_init(&w.hb_tick, hb_tick_cb, srv->hb_period, srv->hb_period);
                ev_timer_start(evl, &w.hb_tick);
        }
        rc = aiot_loop_run(w.loop, worker_root, &w);
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

int aiot_worker_generation(const aiot_worker *w)
{
        aiot__return_if(!w, -EINVAL);
        return (int)w->gen;
}

aiot_loop *aiot_worker_loop(aiot_worker *w)
{
        return w ? w->loop : NULL;
}

aiot_scope *aiot_worker_scope(aiot_worker *w)
{
        return w ? w->scope : NULL;
}

int aiot_worker_close_listeners(aiot_worker *w)
{
        aiot_listener *view;

        aiot__return_if(!w, -EINVAL);
        aiot__return_if(w->kind == AIOT_MAIN, -EPERM);
        /* The view is this process's own copy (copy-on-write after fork). */
        view = (aiot_listener *)w->listeners;
        for (size_t i = 0; i < w->n_listeners; i++) {
                if (view[i].fd < 0)
                        continue;
                /* aiot_close: an acceptor still parked on it wakes with -EBADF. */
                (void)aiot_close(view[i].fd);
                view[i].fd = -1;
                if (w->owned && w->owned[i])
                        w->owned[i]->fd = -1;
        }
        return 0;
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

static void handler_cb(struct ev_loop *loop, ev_signal *sw, int revents)
{
        struct sig_handler *h = sw->data;

        /* The scope is gone once the context returned: nothing to run then. */
        if (h->fn && h->w->scope)
                (void)aiot_spawn(h->w->scope, h->fn, h->arg, NULL);
}

int aiot_worker_on_signal(aiot_worker *w, int signo, aiot_task_fn fn, void *arg)
{
        struct ev_loop *evl;
        struct sig_handler *h = NULL, *free_h = NULL;

        aiot__return_if(!w, -EINVAL);
        aiot__return_if(w->kind == AIOT_MAIN, -EPERM);
        aiot__return_if(signo <= 0 || signo >= NSIG || signo == SIGKILL || signo == SIGSTOP || signo == SIGCHLD,
                        -EINVAL);
        aiot__return_if(is_stop_signal(w->srv, signo) || !w->loop, -EINVAL);
        evl = aiot_loop_ev(w->loop);
        for (size_t i = 0; i < MAX_HANDLERS; i++) {
                if (w->handlers[i].fn && w->handlers[i].signo == signo)
                        h = &w->handlers[i];
                else if (!w->handlers[i].fn && !free_h)
                        free_h = &w->handlers[i];
        }
        if (!fn) {
                if (h) {
                        ev_signal_stop(evl, &h->sw);
                        h->fn = NULL;
                        /* libev restored the default action; the supervisor's
                         * control signals stay harmless. */
                        for (size_t i = 0; i < N_CTL; i++)
                                if (ctl_signals[i] == signo)
                                        signal(signo, SIG_IGN);
                }
                return 0;
        }
        if (h) {
                h->fn = fn;
                h->arg = arg;
                return 0;
        }
        aiot__return_if(!free_h, -ENOSPC);
        *free_h = (struct sig_handler){.w = w, .signo = signo, .fn = fn, .arg = arg};
        ev_signal_init(&free_h->sw, handler_cb, signo);
        free_h->sw.data = free_h;
        ev_signal_start(evl, &free_h->sw);
        return 0;
}

int aiot_worker_recycle(aiot_worker *w)
{
        aiot__return_if(!w, -EINVAL);
        aiot__return_if(w->kind == AIOT_MAIN, -EPERM);
        aiot__return_if(w->recycled, -EALREADY);
        w->recycled = true;
        report(w, MSG_RECYCLE, 0);
        return 0;
}

/* ---------------------------------------------------------------- the supervisor: slots */

static void respawn_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void kill_cb(struct ev_loop *loop, ev_timer *w, int revents);

static struct slot *slot_new(struct server *srv, int kind, int index, unsigned gen, aiot_worker_fn fn)
{
        struct slot *s;

        if (srv->n_slots == srv->cap_slots) {
                size_t cap = srv->cap_slots ? srv->cap_slots * 2 : 16;
                struct slot **ns = realloc(srv->slots, cap * sizeof(*ns));

                if (!ns)
                        return NULL;
                srv->slots = ns;
                srv->cap_slots = cap;
        }
        s = calloc(1, sizeof(*s));
        if (!s)
                return NULL;
        *s = (struct slot){.srv = srv, .kind = kind, .index = index, .gen = gen, .fn = fn, .state = SLOT_IDLE,
                           .report_rd = -1, .backoff = BACKOFF_FIRST, .hb = -1};
        ev_timer_init(&s->respawn_w, respawn_cb, 0., 0.);
        s->respawn_w.data = s;
        ev_timer_init(&s->kill_w, kill_cb, 0., 0.);
        s->kill_w.data = s;
        srv->slots[srv->n_slots++] = s;
        return s;
}

static void slot_free(struct server *srv, struct slot *s)
{
        if (s->report_rd >= 0) {
                ev_io_stop(srv->evl, &s->report_w);
                close(s->report_rd);
        }
        ev_timer_stop(srv->evl, &s->respawn_w);
        ev_timer_stop(srv->evl, &s->kill_w);
        if (s->hb >= 0)
                srv->hb_used[s->hb] = false;
        aiot_child_free(s->child);
        free(s);
}

/* Frees the slots that are gone for good.  Only from top-level callbacks,
 * where no slot pointer is held on the stack. */
static void sweep_slots(struct server *srv)
{
        size_t k = 0;

        for (size_t i = 0; i < srv->n_slots; i++) {
                struct slot *s = srv->slots[i];

                if (s->gone && s->state == SLOT_EXITED && !s->child)
                        slot_free(srv, s);
                else
                        srv->slots[k++] = s;
        }
        srv->n_slots = k;
}

/* EXITED for good: never respawned; the links of a recycle are cut. */
static void slot_gone(struct slot *s)
{
        s->state = SLOT_EXITED;
        s->gone = true;
        ev_timer_stop(s->srv->evl, &s->respawn_w);
        ev_timer_stop(s->srv->evl, &s->kill_w);
        if (s->replaces)
                s->replaces->replaced_by = NULL;
        if (s->replaced_by)
                s->replaced_by->replaces = NULL;
        s->replaces = s->replaced_by = NULL;
}

static bool slot_active(const struct slot *s)
{
        return s->state == SLOT_IDLE || s->state == SLOT_STARTING || s->state == SLOT_READY;
}

static size_t live_slots(const struct server *srv)
{
        size_t n = 0;

        for (size_t i = 0; i < srv->n_slots; i++)
                if (srv->slots[i]->state == SLOT_STARTING || srv->slots[i]->state == SLOT_READY ||
                    srv->slots[i]->state == SLOT_STOPPING)
                        n++;
        return n;
}

/* Every active process of generation gen is ready (and there is one). */
static bool gen_ready(const struct server *srv, unsigned gen)
{
        size_t n = 0;

        for (size_t i = 0; i < srv->n_slots; i++) {
                const struct slot *s = srv->slots[i];

                if (s->gen != gen || !slot_active(s))
                        continue;
                if (s->state != SLOT_READY)
                        return false;
                n++;
        }
        return n > 0;
}

static size_t gen_workers(const struct server *srv, unsigned gen, struct slot **highest, int *free_index)
{
        size_t n = 0;
        bool used[MAX_WORKERS + 1] = {false};

        if (highest)
                *highest = NULL;
        for (size_t i = 0; i < srv->n_slots; i++) {
                struct slot *s = srv->slots[i];

                if (s->gen != gen || s->kind != AIOT_WORKER || !slot_active(s) || s->replaces)
                        continue;
                n++;
                if (s->index >= 0 && s->index <= MAX_WORKERS)
                        used[s->index] = true;
                if (highest && (!*highest || s->index > (*highest)->index))
                        *highest = s;
        }
        if (free_index) {
                int f = 0;

                while (f < MAX_WORKERS && used[f])
                        f++;
                *free_index = f;
        }
        return n;
}

static void status_text(const struct server *srv, char *buf, size_t len)
{
        snprintf(buf, len, "%zu worker%s, generation %u", srv->n_workers, srv->n_workers == 1 ? "" : "s", srv->gen);
}

static void server_check_done(struct server *srv)
{
        if (srv->state != SRV_STOPPING || live_slots(srv) > 0)
                return;
        for (size_t i = 0; i < srv->n_slots; i++)
                if (srv->slots[i]->state == SLOT_IDLE)
                        return;
        srv->state = SRV_DONE;
        ev_timer_stop(srv->evl, &srv->start_w);
        ev_timer_stop(srv->evl, &srv->live_w);
        ev_timer_stop(srv->evl, &srv->wd_w);
        aiot_log(AIOT_LOG_INFO, "all processes have exited");
        aiot_event_set(srv->done_ev);
        if (!srv->loop)
                ev_break(srv->evl, EVBREAK_ALL);
}

/* A failure: the server stops with exit status 1. */
static void server_fail(struct server *srv)
{
        srv->exit_status = AIOT_EXIT_FAILURE;
        server_stop(srv, graceful_signal(srv), false);
}

/* At the final stop nobody will accept again: the supervisor drops its copies
 * of the listening sockets, so that once the workers have closed theirs
 * (aiot_worker_close_listeners) the kernel refuses new connections instead of
 * queueing them for nobody and resetting them at exit.  Socket files are
 * still removed at exit. */
static void drop_listener_copies(struct server *srv)
{
        for (size_t i = 0; i < srv->n_listeners; i++) {
                srv->listeners[i]->fd = aiot__close(srv->listeners[i]->fd);
                srv->lview[i].fd = -1;
        }
}

/* Relays signo to every process.  A failure is not a stop signal: the main
 * context's aiot_worker_wait_stop() then returns 0. */
static void server_stop(struct server *srv, int signo, bool by_signal)
{
        char status[64];

        if (srv->state == SRV_DONE)
                return;
        if (srv->state != SRV_STOPPING) {
                srv->state = SRV_STOPPING;
                srv->stop_signo = by_signal ? signo : 0;
                if (by_signal)
                        snprintf(status, sizeof(status), "stopping (SIG%s)", sigabbrev_np(signo) ?: "?");
                else
                        snprintf(status, sizeof(status), "stopping (failure)");
                (void)aiot_sd_notify_stopping(status);
                drop_listener_copies(srv);
        }
        for (size_t i = 0; i < srv->n_slots; i++)
                slot_transition(srv->slots[i], SE_STOP, signo);
        server_check_done(srv);
}

static void sup_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
        struct server *srv = w->data;

        if (srv->state != SRV_STOPPING && srv->state != SRV_DONE)
                aiot_log(AIOT_LOG_NOTICE, "SIG%s received, stopping", sigabbrev_np(w->signum) ?: "?");
        server_stop(srv, w->signum, true);
}

static void kill_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct slot *s = w->data;

        if (s->hung && s->child && !s->killed) {
                aiot_log(AIOT_LOG_WARNING, "%s %d (pid %d) did not abort within %g s; killing it",
                         kind_name(s->kind), s->index, (int)s->pid, ABORT_GRACE);
                s->killed = true;
                (void)aiot_child_signal(s->child, SIGKILL);
                return;
        }
        slot_transition(s, SE_KILL, 0);
}

static void recycle_start(struct slot *s);

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
                else if (m.type == MSG_RECYCLE) {
                        if (s->state == SLOT_READY)
                                recycle_start(s);
                        else
                                s->recycle_asked = true;
                }
        }
}

static void report_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        slot_read_reports(w->data);
}

static bool pid_tracked(const struct server *srv, pid_t pid)
{
        for (size_t i = 0; i < srv->n_slots; i++)
                if (srv->slots[i]->child && srv->slots[i]->pid == pid)
                        return true;
        return false;
}

/* PID 1: orphans re-parented to us are reaped here; our own processes are
 * left to the fork module (reaping them here would lose their status).  A
 * waitid() peek sees one zombie at a time, so when it is ours, this runs
 * again after the fork module has reaped it (child_exit_cb) or on the next
 * liveness tick. */
static void reap_orphans(struct server *srv)
{
        for (int i = 0; i < 256; i++) {
                siginfo_t si;

                memset(&si, 0, sizeof(si));
                if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid <= 0)
                        return;
                if (pid_tracked(srv, si.si_pid))
                        return;
                if (waitpid(si.si_pid, NULL, WNOHANG) > 0)
                        aiot_log(AIOT_LOG_DEBUG, "reaped orphaned process %d", (int)si.si_pid);
        }
}

static void chld_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
        reap_orphans(w->data);
}

static void child_exit_cb(aiot_child *c, int status, void *userdata)
{
        struct slot *s = userdata;
        struct server *srv = s->srv;

        /* A message written just before the exit is read first. */
        slot_read_reports(s);
        aiot_child_free(c);
        s->child = NULL;
        slot_transition(s, SE_EXIT, status);
        if (srv->pid == 1)
                reap_orphans(srv);
}

static void respawn_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        slot_transition(w->data, SE_START, 0);
}

static void start_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct server *srv = w->data;
        char status[64];

        if (srv->state != SRV_STARTING)
                return;
        snapshot_keep(srv);
        srv->gen = srv->next_gen = 1;
        for (size_t i = 0; i < srv->n_workers + srv->n_extra; i++) {
                bool extra = i >= srv->n_workers;

                if (!slot_new(srv, extra ? AIOT_EXTRA : AIOT_WORKER, (int)(extra ? i - srv->n_workers : i), 1,
                              extra ? srv->extra_fns[i - srv->n_workers] : srv->worker_fn)) {
                        aiot_log(AIOT_LOG_ERR, "out of memory");
                        server_fail(srv);
                        return;
                }
        }
        aiot_log(AIOT_LOG_INFO, "starting %zu processes (tracked by %s)", srv->n_slots,
                 aiot_fork_mode() == AIOT_FORK_PIDFD ? "pidfd" : "SIGCHLD");
        snprintf(status, sizeof(status), "starting %zu worker%s", srv->n_workers, srv->n_workers == 1 ? "" : "s");
        (void)aiot_sd_notify_status(status);
        for (size_t i = 0; i < srv->n_slots && srv->state == SRV_STARTING; i++)
                slot_transition(srv->slots[i], SE_START, 0);
}

static int hb_alloc(struct server *srv)
{
        if (!srv->hb)
                return -1;
        for (int i = 0; i < HB_SLOTS; i++)
                if (!srv->hb_used[i]) {
                        srv->hb_used[i] = true;
                        __atomic_store_n(&srv->hb[i], 0, __ATOMIC_RELAXED);
                        return i;
                }
        return -1;
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
        s->hung = false;
        if (s->hb < 0)
                s->hb = hb_alloc(srv);
        else
                __atomic_store_n(&srv->hb[s->hb], 0, __ATOMIC_RELAXED);
        s->hb_last = 0;
        s->hb_change = now_mono();
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

/* ---------------------------------------------------------------- generations */

static void server_all_ready(struct server *srv)
{
        char status[96];

        srv->state = SRV_RUNNING;
        aiot_log(AIOT_LOG_NOTICE, "ready: %zu worker%s, %zu extra process%s (pid %d)", srv->n_workers,
                 srv->n_workers == 1 ? "" : "s", srv->n_extra, srv->n_extra == 1 ? "" : "es", (int)srv->pid);
        aiot_log(AIOT_LOG_NOTICE, "all %zu workers ready (generation %u)", srv->n_workers, srv->gen);
        status_text(srv, status, sizeof(status));
        (void)aiot_sd_notify_ready(status);
        recycle_pending(srv);
        reload_next(srv);
}

static void stop_generations_before(struct server *srv, unsigned gen)
{
        for (size_t i = 0; i < srv->n_slots; i++) {
                struct slot *s = srv->slots[i];

                if (s->gen < gen && slot_active(s))
                        slot_transition(s, SE_STOP, graceful_signal(srv));
        }
}

static void reload_next(struct server *srv)
{
        if (srv->reload_pending && srv->state == SRV_RUNNING && !srv->new_gen) {
                srv->reload_pending = false;
                reload_start(srv);
        }
}

static void reload_done(struct server *srv)
{
        unsigned old = srv->gen;
        char status[96];

        srv->gen = srv->new_gen;
        srv->new_gen = 0;
        aiot_log(AIOT_LOG_NOTICE, "reload: generation %u ready, stopping generation %u", srv->gen, old);
        stop_generations_before(srv, srv->gen);
        status_text(srv, status, sizeof(status));
        (void)aiot_sd_notify_ready(status);
        recycle_pending(srv);
        reload_next(srv);
}

/* The new generation failed: it is stopped, the serving one goes on. */
static void reload_fail(struct server *srv, const char *why)
{
        unsigned failed = srv->new_gen;
        char status[384], st[96];

        srv->new_gen = 0;
        aiot_log(AIOT_LOG_ERR, "reload failed: %s; generation %u keeps serving", why, srv->gen);
        for (size_t i = 0; i < srv->n_slots; i++) {
                struct slot *s = srv->slots[i];

                if (s->gen == failed && slot_active(s))
                        slot_transition(s, SE_STOP, graceful_signal(srv));
        }
        status_text(srv, st, sizeof(st));
        snprintf(status, sizeof(status), "reload failed: %s; %s", why, st);
        (void)aiot_sd_notify_ready(status);
        reload_next(srv);
}

static void reload_start(struct server *srv)
{
        unsigned gen;

        if (srv->state == SRV_STARTING || srv->new_gen) {
                aiot_log(AIOT_LOG_NOTICE, "SIGHUP received during %s: another reload follows it",
                         srv->new_gen ? "a reload" : "the start");
                srv->reload_pending = true;
                return;
        }
        if (srv->state != SRV_RUNNING)
                return;
        gen = srv->new_gen = ++srv->next_gen;
        aiot_log(AIOT_LOG_NOTICE, "SIGHUP received, reloading: starting generation %u", gen);
        {
                char status[64];

                snprintf(status, sizeof(status), "reloading: starting generation %u", gen);
                (void)aiot_sd_notify_reloading(status);
        }
        for (size_t i = 0; i < srv->n_workers + srv->n_extra && srv->new_gen == gen; i++) {
                bool extra = i >= srv->n_workers;
                struct slot *s = slot_new(srv, extra ? AIOT_EXTRA : AIOT_WORKER,
                                          (int)(extra ? i - srv->n_workers : i), gen,
                                          extra ? srv->extra_fns[i - srv->n_workers] : srv->worker_fn);

                if (!s) {
                        reload_fail(srv, "out of memory");
                        return;
                }
                slot_transition(s, SE_START, 0);
        }
}

static void recycle_start(struct slot *s)
{
        struct server *srv = s->srv;
        struct slot *r;

        s->recycle_asked = false;
        /* Asked before its generation was all ready: once it is. */
        if (s->state == SLOT_READY && (srv->state == SRV_STARTING || (srv->new_gen && s->gen == srv->new_gen))) {
                s->recycle_asked = true;
                return;
        }
        if (srv->state != SRV_RUNNING || srv->new_gen || s->gen != srv->gen || s->replaced_by || s->replaces ||
            s->state != SLOT_READY) {
                aiot_log(AIOT_LOG_INFO, "%s %d (pid %d) asked to be recycled: ignored (%s)", kind_name(s->kind),
                         s->index, (int)s->pid,
                         srv->state != SRV_RUNNING ? "not running" : srv->new_gen ? "a reload is under way"
                                                                                  : "it is being replaced");
                return;
        }
        r = slot_new(srv, s->kind, s->index, s->gen, s->fn);
        if (!r) {
                aiot_log(AIOT_LOG_ERR, "cannot recycle %s %d: out of memory", kind_name(s->kind), s->index);
                return;
        }
        r->replaces = s;
        s->replaced_by = r;
        aiot_log(AIOT_LOG_NOTICE, "%s %d (pid %d) asked to be recycled; starting its replacement",
                 kind_name(s->kind), s->index, (int)s->pid);
        slot_transition(r, SE_START, 0);
}

static void recycle_pending(struct server *srv)
{
        for (size_t i = 0; i < srv->n_slots; i++)
                if (srv->slots[i]->recycle_asked && srv->slots[i]->state == SLOT_READY)
                        recycle_start(srv->slots[i]);
}

static void recycle_done(struct slot *r)
{
        struct slot *old = r->replaces;

        r->replaces = NULL;
        old->replaced_by = NULL;
        aiot_log(AIOT_LOG_NOTICE, "%s %d (pid %d) replaced by pid %d", kind_name(old->kind), old->index,
                 (int)old->pid, (int)r->pid);
        slot_transition(old, SE_STOP, graceful_signal(r->srv));
}

/* ---------------------------------------------------------------- control signals */

static void scale_up(struct server *srv)
{
        unsigned gen = srv->new_gen ? srv->new_gen : srv->gen;
        int index;
        size_t n = gen_workers(srv, gen, NULL, &index);
        struct slot *s;

        if (n >= MAX_WORKERS || index >= MAX_WORKERS) {
                aiot_log(AIOT_LOG_WARNING, "SIGTTIN ignored: at most %d workers", MAX_WORKERS);
                return;
        }
        s = slot_new(srv, AIOT_WORKER, index, gen, srv->worker_fn);
        if (!s) {
                aiot_log(AIOT_LOG_ERR, "SIGTTIN: out of memory");
                return;
        }
        srv->n_workers = n + 1;
        aiot_log(AIOT_LOG_NOTICE, "SIGTTIN received: adding worker %d (%zu workers)", index, srv->n_workers);
        slot_transition(s, SE_START, 0);
}

static void scale_down(struct server *srv)
{
        unsigned gen = srv->new_gen ? srv->new_gen : srv->gen;
        struct slot *s;
        size_t n = gen_workers(srv, gen, &s, NULL);
        char status[96];

        if (n <= 1 || !s) {
                aiot_log(AIOT_LOG_WARNING, "SIGTTOU ignored: at least one worker must run");
                return;
        }
        srv->n_workers = n - 1;
        aiot_log(AIOT_LOG_NOTICE, "SIGTTOU received: stopping worker %d (%zu workers)", s->index, srv->n_workers);
        if (s->replaced_by)
                slot_transition(s->replaced_by, SE_STOP, graceful_signal(srv));
        slot_transition(s, SE_STOP, graceful_signal(srv));
        status_text(srv, status, sizeof(status));
        (void)aiot_sd_notify_status(status);
}

static void forward_signal(struct server *srv, int signo)
{
        size_t n = 0;

        for (size_t i = 0; i < srv->n_slots; i++) {
                struct slot *s = srv->slots[i];

                /* Only READY: before that the process may not handle it yet. */
                if (s->state == SLOT_READY && aiot_child_signal(s->child, signo) == 0)
                        n++;
        }
        aiot_log(AIOT_LOG_INFO, "SIG%s received: forwarded to %zu process%s", sigabbrev_np(signo) ?: "?", n,
                 n == 1 ? "" : "es");
}

static void ctl_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
        struct server *srv = w->data;

        sweep_slots(srv);
        if (srv->state == SRV_STOPPING || srv->state == SRV_DONE)
                return;
        switch (w->signum) {
        case SIGHUP:
                reload_start(srv);
                break;
        case SIGTTIN:
                scale_up(srv);
                break;
        case SIGTTOU:
                scale_down(srv);
                break;
        default:
                forward_signal(srv, w->signum);
                break;
        }
}

/* ---------------------------------------------------------------- liveness */

/* Reads the heartbeat counter of a running process; returns how long it has
 * not moved, in seconds (0 for a process without one). */
static double slot_stalled(struct slot *s, double now)
{
        uint64_t v;

        if (s->hb < 0 || !s->srv->hb || (s->state != SLOT_STARTING && s->state != SLOT_READY))
                return 0;
        v = __atomic_load_n(&s->srv->hb[s->hb], __ATOMIC_RELAXED);
        if (v != s->hb_last) {
                s->hb_last = v;
                s->hb_change = now;
        }
        return now - s->hb_change;
}

static void live_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct server *srv = w->data;
        double now = now_mono();

        sweep_slots(srv);
        for (size_t i = 0; i < srv->n_slots; i++) {
                struct slot *s = srv->slots[i];
                double stalled = slot_stalled(s, now);

                if (srv->worker_timeout <= 0 || s->hung || stalled <= srv->worker_timeout || !s->child)
                        continue;
                s->hung = true;
                aiot_log(AIOT_LOG_WARNING, "%s %d (pid %d) hung for %.1f s: aborting", kind_name(s->kind), s->index,
                         (int)s->pid, stalled);
                (void)aiot_child_signal(s->child, SIGABRT);
                ev_timer_stop(srv->evl, &s->kill_w);
                ev_timer_set(&s->kill_w, ABORT_GRACE, 0.);
                ev_timer_start(srv->evl, &s->kill_w);
        }
        if (srv->pid == 1)
                reap_orphans(srv);
}

/* WATCHDOG=1 only while every process's loop is responsive. */
static void wd_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct server *srv = w->data;
        double now = now_mono();
        bool ok = true;

        for (size_t i = 0; i < srv->n_slots; i++) {
                struct slot *s = srv->slots[i];

                if (slot_stalled(s, now) > srv->wd_half + srv->hb_period || (s->hung && slot_active(s)))
                        ok = false;
        }
        if (ok)
                (void)aiot_sd_notify_watchdog();
        else
                aiot_log(AIOT_LOG_DEBUG, "watchdog ping withheld: a process is not responsive");
}

/* ---------------------------------------------------------------- the state machine */

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

/* A process that never became ready exited. */
static void slot_setup_failed(struct slot *s, const char *how)
{
        struct server *srv = s->srv;
        char why[256];

        if (s->setup_error)
                snprintf(why, sizeof(why), "%s %d failed during setup: %s", kind_name(s->kind), s->index,
                         s->setup_error == SETUP_NO_WAIT ? "returned before aiot_worker_wait_stop()"
                                                         : strerror(-s->setup_error));
        else
                snprintf(why, sizeof(why), "%s %d %s during setup", kind_name(s->kind), s->index, how);
        if (s->replaces) {
                aiot_log(AIOT_LOG_ERR, "recycle failed: %s; pid %d keeps serving", why, (int)s->replaces->pid);
                slot_gone(s);
                return;
        }
        if (srv->new_gen && s->gen == srv->new_gen) {
                slot_gone(s);
                reload_fail(srv, why);
                return;
        }
        if (srv->state == SRV_RUNNING && s->kind == AIOT_WORKER) {
                /* Added by SIGTTIN: the others go on. */
                aiot_log(AIOT_LOG_ERR, "%s; not retried", why);
                slot_gone(s);
                srv->n_workers = gen_workers(srv, srv->gen, NULL, NULL);
                return;
        }
        /* At the start: the whole server stops, as aiotools does. */
        aiot_log(AIOT_LOG_ERR, "%s", why);
        s->state = SLOT_EXITED;
        server_fail(srv);
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
        ev_timer_stop(srv->evl, &s->kill_w);
        describe_status(status, how, sizeof(how));

        if (s->state == SLOT_STOPPING || srv->state == SRV_STOPPING || srv->state == SRV_DONE) {
                slot_gone(s);
                if (status > 0) {
                        aiot_log(AIOT_LOG_WARNING, "%s %d %s while stopping", kind_name(s->kind), s->index, how);
                        if (srv->state == SRV_STOPPING)
                                srv->exit_status = AIOT_EXIT_FAILURE;
                } else
                        aiot_log(AIOT_LOG_DEBUG, "%s %d (pid %d) %s", kind_name(s->kind), s->index, (int)s->pid,
                                 how);
                server_check_done(srv);
                return;
        }
        s->state = SLOT_EXITED;
        if (s->replaced_by) {
                aiot_log(AIOT_LOG_WARNING, "%s %d (pid %d) %s; its replacement takes over", kind_name(s->kind),
                         s->index, (int)s->pid, how);
                slot_gone(s);
                return;
        }
        if (!was_ready && !s->ever_ready) {
                slot_setup_failed(s, how);
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

static void slot_ready(struct slot *s)
{
        struct server *srv = s->srv;
        bool again = s->ever_ready;
        char status[96];

        s->state = SLOT_READY;
        s->ever_ready = true;
        s->ready_at = now_mono();
        if (srv->state == SRV_STARTING) {
                if (gen_ready(srv, srv->gen))
                        server_all_ready(srv);
        } else if (srv->state == SRV_RUNNING) {
                if (s->replaces)
                        recycle_done(s);
                else if (srv->new_gen && s->gen == srv->new_gen) {
                        if (gen_ready(srv, srv->new_gen))
                                reload_done(srv);
                } else if (again)
                        aiot_log(AIOT_LOG_INFO, "%s %d (pid %d) is ready again", kind_name(s->kind), s->index,
                                 (int)s->pid);
                else {
                        aiot_log(AIOT_LOG_NOTICE, "%s %d (pid %d) is ready", kind_name(s->kind), s->index,
                                 (int)s->pid);
                        status_text(srv, status, sizeof(status));
                        (void)aiot_sd_notify_status(status);
                }
        }
        if (s->recycle_asked && s->state == SLOT_READY && srv->state == SRV_RUNNING && !srv->new_gen)
                recycle_start(s);
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
                        char why[128];

                        snprintf(why, sizeof(why), "cannot fork %s %d: %s", kind_name(s->kind), s->index,
                                 strerror(-r));
                        if (s->replaces || (srv->new_gen && s->gen == srv->new_gen)) {
                                s->setup_error = r;
                                slot_setup_failed(s, why);
                                return;
                        }
                        aiot_log(AIOT_LOG_ERR, "%s", why);
                        s->state = SLOT_EXITED;
                        server_fail(srv);
                        return;
                }
                s->state = SLOT_STARTING;
                aiot_log(AIOT_LOG_DEBUG, "%s %d started (pid %d, generation %u)", kind_name(s->kind), s->index,
                         (int)s->pid, s->gen);
                return;
        case SE_READY:
                if (s->state == SLOT_STARTING)
                        slot_ready(s);
                return;
        case SE_STOP:
                switch (s->state) {
                case SLOT_IDLE:
                        slot_gone(s);
                        return;
                case SLOT_STARTING:
                case SLOT_READY:
                        s->state = SLOT_STOPPING;
                        if (srv->stop_timeout >= 0) {
                                ev_timer_stop(srv->evl, &s->kill_w);
                                ev_timer_set(&s->kill_w, srv->stop_timeout, 0.);
                                ev_timer_start(srv->evl, &s->kill_w);
                        }
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
                srv->group = cfg->group;
                /* An explicit group replaces the user's supplementary groups. */
                srv->user = NULL;
        }
        /* Said before anything is forked: an unprivileged supervisor cannot
         * switch to another user, and must not start workers that run as itself. */
        if (geteuid() != 0 && ((srv->drop_uid && srv->uid != getuid()) || (srv->drop_gid && srv->gid != getgid()))) {
                aiot_log(AIOT_LOG_ERR, "cannot drop privileges to %s '%s': not running as root",
                         srv->drop_uid && srv->uid != getuid() ? "user" : "group",
                         srv->drop_uid && srv->uid != getuid() ? cfg->user : cfg->group);
                return -EPERM;
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
            isnan(cfg->stop_timeout) || cfg->restart_limit < 0 || !(cfg->restart_window >= 0) || cfg->argc < 0 ||
            isnan(cfg->worker_timeout)) {
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
        srv->extra_fns = cfg->extra;
        srv->n_extra = cfg->n_extra;
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
        srv->worker_timeout = cfg->worker_timeout == 0 ? WORKER_TIMEOUT
                              : cfg->worker_timeout < 0 ? -1 : cfg->worker_timeout;
        srv->restart_limit = cfg->restart_limit ? cfg->restart_limit : 5;
        srv->restart_window = cfg->restart_window > 0 ? cfg->restart_window : 10.0;
        srv->argc = cfg->argc;
        srv->argv = cfg->argv;
        srv->reuseport = cfg->reuseport;
        srv->pidfile = cfg->pidfile;
        srv->proc_title = cfg->proc_title;
        if (srv->reuseport && cfg->n_binds == 0) {
                aiot_log(AIOT_LOG_ERR, "reuseport needs at least one bind address");
                return -EINVAL;
        }
        srv->n_workers = (size_t)cfg->workers;
        if (srv->n_workers == 0) {
                cpus = sysconf(_SC_NPROCESSORS_ONLN);
                srv->n_workers = cpus > 0 ? (size_t)(cpus > MAX_WORKERS ? MAX_WORKERS : cpus) : 1;
        }
        return resolve_ids(srv, cfg);
}

/* Sockets from socket activation first (LISTEN_FDS, for this process only),
 * then the bind addresses. */
static int open_listeners(struct server *srv, const struct aiot_server_config *cfg)
{
        struct aiot_listen_opts o = {.size = sizeof(o), .reuseport = cfg->reuseport, .bind_only = cfg->reuseport};
        aiot_listener **act = NULL;
        size_t n_act = 0, total;
        char err[256];
        int r;

        r = aiot_listen_from_env(&act, &n_act, 1, err, sizeof(err));
        if (r < 0) {
                aiot_log(AIOT_LOG_ERR, "socket activation: %s", err);
                return r;
        }
        total = n_act + cfg->n_binds;
        if (!total)
                return 0;
        srv->listeners = calloc(total, sizeof(*srv->listeners));
        srv->lview = calloc(total, sizeof(*srv->lview));
        if (!srv->listeners || !srv->lview) {
                aiot_listeners_free(act, n_act);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n_act; i++) {
                srv->listeners[i] = act[i];
                srv->lview[i] = *act[i];
        }
        free(act);
        srv->n_listeners = srv->n_activated = n_act;
        for (size_t i = 0; i < cfg->n_binds; i++) {
                if (!cfg->binds[i]) {
                        aiot_log(AIOT_LOG_ERR, "bind address %zu is NULL", i);
                        return -EINVAL;
                }
                r = aiot_listen_open(cfg->binds[i], &o, &srv->listeners[n_act + i], err, sizeof(err));
                if (r < 0) {
                        aiot_log(AIOT_LOG_ERR, "%s", err);
                        return r;
                }
                srv->n_listeners++;
                srv->lview[n_act + i] = *srv->listeners[n_act + i];
        }
        /* Only once all are bound, so that a bad address is the only line. */
        for (size_t i = 0; i < srv->n_listeners; i++) {
                if (i < n_act)
                        aiot_log(AIOT_LOG_INFO, "listening on %s (socket activation, name %s)",
                                 srv->listeners[i]->address, srv->listeners[i]->name);
                else
                        aiot_log(AIOT_LOG_INFO, "listening on %s%s", srv->listeners[i]->address,
                                 cfg->reuseport ? " (reuseport)" : "");
        }
        return 0;
}

/* The PID in the pidfile, or 0 (none, unreadable, garbage). */
static pid_t pidfile_read(const char *path)
{
        char buf[32];
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        ssize_t n;
        long pid;
        char *end;

        if (fd < 0)
                return 0;
        n = AIOT_RETRY_EINTR(read(fd, buf, sizeof(buf) - 1));
        close(fd);
        if (n <= 0)
                return 0;
        buf[n] = '\0';
        pid = strtol(buf, &end, 10);
        if (end == buf || (*end && *end != '\n') || pid <= 0 || pid > INT32_MAX)
                return 0;
        return (pid_t)pid;
}

/* Refuses a pidfile held by a live process; replaces a stale one atomically
 * (a temporary file renamed over it), so that a reader never sees it empty. */
static int write_pidfile(struct server *srv)
{
        char buf[32], *tmp = NULL;
        int fd, n, r = 0;
        pid_t old;

        if (!srv->pidfile)
                return 0;
        old = pidfile_read(srv->pidfile);
        if (old > 0 && old != srv->pid && (kill(old, 0) == 0 || errno == EPERM)) {
                aiot_log(AIOT_LOG_ERR, "pidfile %s is held by running process %d", srv->pidfile, (int)old);
                return -EEXIST;
        }
        if (asprintf(&tmp, "%s.%d.tmp", srv->pidfile, (int)srv->pid) < 0)
                return -ENOMEM;
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0) {
                r = -errno;
                goto out;
        }
        n = snprintf(buf, sizeof(buf), "%d\n", (int)srv->pid);
        if (write(fd, buf, (size_t)n) != n)
                r = errno ? -errno : -EIO;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0 && rename(tmp, srv->pidfile) < 0)
                r = -errno;
        if (r < 0)
                unlink(tmp);
out:
        if (r < 0)
                aiot_log(AIOT_LOG_ERR, "cannot write pidfile %s: %s", srv->pidfile, strerror(-r));
        else
                srv->pidfile_written = true;
        free(tmp);
        return r;
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
        for (size_t i = 0; i < srv->n_slots; i++)
                slot_free(srv, srv->slots[i]);
        if (srv->evl) {
                for (size_t i = 0; i < srv->n_signals; i++)
                        ev_signal_stop(srv->evl, &srv->sigw[i]);
                for (size_t i = 0; i < N_CTL; i++)
                        if (srv->ctl_on[i])
                                ev_signal_stop(srv->evl, &srv->ctlw[i]);
                if (srv->pid == 1)
                        ev_signal_stop(srv->evl, &srv->chldw);
                ev_timer_stop(srv->evl, &srv->live_w);
                ev_timer_stop(srv->evl, &srv->wd_w);
                ev_timer_stop(srv->evl, &srv->start_w);
        }
        /* Only our own: a successor may have replaced it meanwhile. */
        if (srv->pidfile_written && pidfile_read(srv->pidfile) == srv->pid)
                unlink(srv->pidfile);
        aiot_listeners_free(srv->listeners, srv->n_listeners);
        aiot_event_free(srv->done_ev);
        if (srv->loop)
                aiot_loop_free(srv->loop);
        else if (srv->evl)
                ev_loop_destroy(srv->evl);
        if (srv->hb)
                munmap(srv->hb, HB_SLOTS * sizeof(*srv->hb));
        free(srv->lview);
        free(srv->slots);
        free(srv->entry_fds);
        free(srv->internal_fds);
        free(srv->keep_fds);
}

/* The signal watchers, the liveness timer, the watchdog and the heartbeat page. */
static void setup_watchers(struct server *srv)
{
        uint64_t wd_usec = 0;
        double p = 1.0;

        for (size_t i = 0; i < srv->n_signals; i++) {
                ev_signal_init(&srv->sigw[i], sup_signal_cb, srv->signals[i]);
                srv->sigw[i].data = srv;
                ev_signal_start(srv->evl, &srv->sigw[i]);
        }
        for (size_t i = 0; i < N_CTL; i++) {
                if (is_stop_signal(srv, ctl_signals[i]))
                        continue;
                ev_signal_init(&srv->ctlw[i], ctl_signal_cb, ctl_signals[i]);
                srv->ctlw[i].data = srv;
                ev_signal_start(srv->evl, &srv->ctlw[i]);
                srv->ctl_on[i] = true;
        }
        /* PID 1 reaps orphans.  On the SIGCHLD fallback the fork module owns
         * the handler; the liveness tick and every exit then do it. */
        if (srv->pid == 1 && aiot_fork_mode() == AIOT_FORK_PIDFD) {
                ev_signal_init(&srv->chldw, chld_cb, SIGCHLD);
                srv->chldw.data = srv;
                ev_signal_start(srv->evl, &srv->chldw);
        }
        /* ... and without a SIGCHLD watcher of our own, orphans are found by
         * polling: often enough that none lingers as a zombie for long. */
        if (srv->pid == 1 && aiot_fork_mode() != AIOT_FORK_PIDFD)
                p = ORPHAN_POLL;
        if (aiot_sd_watchdog_usec(&wd_usec) > 0 && wd_usec > 0)
                srv->wd_half = (double)wd_usec / 2e6;
        if (srv->worker_timeout > 0 || srv->wd_half > 0) {
                void *m = mmap(NULL, HB_SLOTS * sizeof(*srv->hb), PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_ANONYMOUS, -1, 0);

                if (m == MAP_FAILED)
                        aiot_log(AIOT_LOG_WARNING, "no worker heartbeats: mmap: %s", strerror(errno));
                else
                        srv->hb = m;
        }
        if (srv->worker_timeout > 0 && srv->worker_timeout / 4 < p)
                p = srv->worker_timeout / 4;
        if (srv->wd_half > 0 && srv->wd_half / 2 < p)
                p = srv->wd_half / 2;
        srv->hb_period = p < 0.005 ? 0.005 : p;
        ev_timer_init(&srv->live_w, live_cb, srv->hb_period, srv->hb_period);
        srv->live_w.data = srv;
        if (srv->hb || srv->pid == 1)
                ev_timer_start(srv->evl, &srv->live_w);
        ev_timer_init(&srv->wd_w, wd_cb, srv->wd_half, srv->wd_half);
        srv->wd_w.data = srv;
        if (srv->wd_half > 0)
                ev_timer_start(srv->evl, &srv->wd_w);
        ev_timer_init(&srv->start_w, start_cb, 0., 0.);
        srv->start_w.data = srv;
}

int aiot_server_run(const struct aiot_server_config *cfg)
{
        struct server *srv;
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
        /* On the heap: the heartbeat bookkeeping makes it large. */
        srv = calloc(1, sizeof(*srv));
        if (!srv) {
                aiot_log(AIOT_LOG_ERR, "out of memory");
                return AIOT_EXIT_FAILURE;
        }
        srv->exit_status = AIOT_EXIT_OK;
        srv->pid = getpid();
        srv->main = (aiot_worker){.srv = srv, .kind = AIOT_MAIN, .index = -1, .report_fd = -1};
        if (check_config(srv, cfg) < 0) {
                server_free(srv);
                free(srv);
                return AIOT_EXIT_USAGE;
        }
        if (cfg->no_pidfd)
                setenv("AIOTOOLS_NO_PIDFD", "1", 1);
        if (srv->proc_title) {
                char title[128];

                /* The log prefix would otherwise follow argv[0] into the title. */
                aiot_log_set_prefix(program_invocation_short_name);
                snprintf(title, sizeof(title), "%s: supervisor", srv->proc_title);
                (void)aiot__proctitle_set(title, NULL);
        }
        (void)fd_snapshot(&srv->entry_fds, &srv->n_entry_fds);
        sigemptyset(&ign.sa_mask);
        sigaction(SIGPIPE, &ign, &old_pipe);

        /* Without a main context the supervisor needs no task loop, only libev. */
        if (srv->main_fn) {
                r = aiot_loop_new(&srv->loop, NULL);
                srv->evl = r < 0 ? NULL : aiot_loop_ev(srv->loop);
        } else {
                srv->evl = ev_loop_new(EVFLAG_AUTO);
                r = srv->evl ? 0 : -ENOMEM;
        }
        if (r >= 0)
                r = aiot_event_new(&srv->done_ev);
        if (r < 0) {
                aiot_log(AIOT_LOG_ERR, "cannot create the supervisor loop: %s", strerror(-r));
                status = AIOT_EXIT_FAILURE;
                goto out;
        }
        srv->main.loop = srv->loop;
        setup_watchers(srv);

        if (open_listeners(srv, cfg) < 0 || write_pidfile(srv) < 0) {
                status = AIOT_EXIT_USAGE;
                goto out;
        }
        srv->main.listeners = srv->lview;
        srv->main.n_listeners = srv->n_listeners;
        (void)snapshot_internal(srv);
        /* From here the supervisor's fds are known; the main context's are kept. */
        if (srv->loop)
                r = aiot_loop_run(srv->loop, main_root, srv);
        else {
                /* What main_root() would do with a main context that only waits. */
                srv->main.waited = true;
                ev_timer_start(srv->evl, &srv->start_w);
                r = ev_run(srv->evl, 0) < 0 ? -EIO : 0;
        }
        if (r < 0) {
                aiot_log(AIOT_LOG_ERR, "cannot run the supervisor loop: %s", strerror(-r));
                srv->exit_status = AIOT_EXIT_FAILURE;
        }
        status = srv->exit_status;
out:
        server_free(srv);
        free(srv);
        sigaction(SIGPIPE, &old_pipe, NULL);
        return status;
}
