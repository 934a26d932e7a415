/* SPDX-License-Identifier: MIT */
/* The supervisor: aiot_server_run(), its loop, watchers and teardown, the
 * start, the stop and the end of the server.
 *
 * With a main context the supervisor runs on a task loop whose root task is
 * the main context; without one, on a plain libev loop.  Once the main context
 * reaches aiot_worker_wait_stop() (at once without one), start_cb() creates a
 * process record per worker and extra process (proc.c) and starts each; the
 * children run worker.c from a description built before the fork.  A stop
 * signal sends every process through its PE_STOP transition; the server is
 * done once none is live.  As PID 1 the supervisor also reaps the orphans
 * re-parented to it.  The files beside this one: proc.c (the process table
 * and its state machine), generation.c (reload, recycle, scaling), channel.c
 * (report channel, heartbeat, service-manager notifications), config.c
 * (configuration, listeners, pidfile, fd snapshots), worker.c (the child),
 * control.c and ctlproto.c (the control socket and the metrics listener),
 * wstat.c (the child's status records and its end of the control requests). */
#define AIOT__SUPERVISOR_SIDE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "aiotools/fork.h"
#include "aiotools/log.h"
#include "fork-internal.h"
#include "macro.h"
#include "proctitle.h"
#include "server-internal.h"

/* SIGUSR2 and SIGWINCH have no use here: caught (and logged) rather than
 * left to their default, so that a stray one (an upgrade signal meant for
 * another server, a terminal resize) never kills the supervisor. */
const int aiot__ctl_signals[N_CTL] = {SIGHUP, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2, SIGWINCH};

/* ---------------------------------------------------------------- small helpers */

const char *aiot__kind_name(int kind)
{
        return kind == AIOT_EXTRA ? "extra process" : kind == AIOT_MAIN ? "main context" : "worker";
}

double aiot__now_mono(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

bool aiot__is_stop_signal(const struct server *srv, int signo)
{
        for (size_t i = 0; i < srv->n_signals; i++)
                if (srv->signals[i] == signo)
                        return true;
        return false;
}

/* The signal a graceful stop sends when no signal asked for it (a failure,
 * the old generation after a reload, TTOU, a recycle): SIGTERM if it is a
 * stop signal, else the first one. */
int aiot__graceful_signal(const struct server *srv)
{
        return aiot__is_stop_signal(srv, SIGTERM) ? SIGTERM : srv->signals[0];
}

void aiot__status_text(const struct server *srv, char *buf, size_t len)
{
        snprintf(buf, len, "%zu worker%s, generation %u", srv->n_workers, srv->n_workers == 1 ? "" : "s",
                 srv->gen);
}

/* What `ctl status` calls the server's state. */
const char *aiot__server_state_name(const struct server *srv)
{
        switch (srv->state) {
        case SRV_STARTING:
                return "starting";
        case SRV_RUNNING:
                return srv->new_gen ? "reloading" : "ready";
        case SRV_STOPPING:
                return "stopping";
        default:
                return "done";
        }
}

/* ---------------------------------------------------------------- stop and done */

void aiot__server_check_done(struct server *srv)
{
        if (srv->state != SRV_STOPPING)
                return;
        for (size_t i = 0; i < srv->n_procs; i++)
                if (aiot__proc_live(srv->procs[i]) || srv->procs[i]->state == PROC_IDLE)
                        return;
        srv->state = SRV_DONE;
        ev_timer_stop(srv->evl, &srv->start_w);
        ev_timer_stop(srv->evl, &srv->live_w);
        ev_timer_stop(srv->evl, &srv->wd_w);
        ev_timer_stop(srv->evl, &srv->policy_w);
        aiot_log(AIOT_LOG_INFO, "all processes have exited");
        aiot_event_set(srv->done_ev);
        if (!srv->loop)
                ev_break(srv->evl, EVBREAK_ALL);
}

/* A failure: the server stops with exit status 1. */
void aiot__server_fail(struct server *srv)
{
        srv->exit_status = AIOT_EXIT_FAILURE;
        aiot__server_stop(srv, aiot__graceful_signal(srv), false);
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
void aiot__server_stop(struct server *srv, int signo, bool by_signal)
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
                aiot__notify(srv, AIOT__SD_STOPPING, status);
                drop_listener_copies(srv);
                /* A `ctl reload` still waiting gets its answer now. */
                aiot__control_reload_ended(srv, 0, "the server is stopping");
        }
        for (size_t i = 0; i < srv->n_procs; i++)
                aiot__proc_transition(srv->procs[i], PE_STOP, signo);
        aiot__server_check_done(srv);
}

static void sup_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
        struct server *srv = w->data;

        if (srv->state != SRV_STOPPING && srv->state != SRV_DONE)
                aiot_log(AIOT_LOG_NOTICE, "SIG%s received, stopping", sigabbrev_np(w->signum) ?: "?");
        aiot__server_stop(srv, w->signum, true);
}

/* ---------------------------------------------------------------- PID 1 */

static bool pid_tracked(const struct server *srv, pid_t pid)
{
        for (size_t i = 0; i < srv->n_procs; i++)
                if (srv->procs[i]->child && srv->procs[i]->pid == pid)
                        return true;
        return false;
}

/* PID 1: orphans re-parented to us are reaped here; our own processes are
 * left to the fork module (reaping them here would lose their status).  A
 * waitid() peek sees one zombie at a time, so when it is ours, this runs
 * again after the fork module has reaped it (the exit callback) or on the
 * next liveness tick. */
void aiot__reap_orphans(struct server *srv)
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
        aiot__reap_orphans(w->data);
}

/* ---------------------------------------------------------------- the start */

static void start_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct server *srv = w->data;
        char status[64];

        if (srv->state != SRV_STARTING)
                return;
        aiot__snapshot_keep(srv);
        srv->gen = srv->next_gen = 1;
        if (aiot__gen_open(srv, 1) < 0) {
                aiot_log(AIOT_LOG_ERR, "out of memory");
                aiot__server_fail(srv);
                return;
        }
        for (size_t i = 0; i < srv->n_workers + srv->n_extra; i++) {
                bool extra = i >= srv->n_workers;

                if (!aiot__proc_new(srv, extra ? AIOT_EXTRA : AIOT_WORKER,
                                    (int)(extra ? i - srv->n_workers : i), 1,
                                    extra ? srv->extra_fns[i - srv->n_workers] : srv->worker_fn)) {
                        aiot_log(AIOT_LOG_ERR, "out of memory");
                        aiot__server_fail(srv);
                        return;
                }
        }
        aiot_log(AIOT_LOG_INFO, "starting %zu processes (tracked by %s)", srv->n_procs,
                 aiot_fork_mode() == AIOT_FORK_PIDFD ? "pidfd" : "SIGCHLD");
        snprintf(status, sizeof(status), "starting %zu worker%s", srv->n_workers,
                 srv->n_workers == 1 ? "" : "s");
        aiot__notify(srv, AIOT__SD_STATUS, status);
        for (size_t i = 0; i < srv->n_procs && srv->state == SRV_STARTING; i++)
                aiot__proc_transition(srv->procs[i], PE_START, 0);
}

/* ---------------------------------------------------------------- the main context */

/* The main context's half of aiot_worker_wait_stop(): it runs in the
 * supervisor, so it waits for the server's end. */
int aiot__main_wait_stop(aiot_worker *m)
{
        struct server *srv = (struct server *)((char *)m - offsetof(struct server, main));
        int r;

        /* Fork from a libev callback, not from this task's stack. */
        if (srv->state == SRV_STARTING)
                ev_timer_start(srv->evl, &srv->start_w);
        while (srv->state != SRV_DONE) {
                r = aiot_event_wait(srv->done_ev);
                if (r < 0)
                        return r;
        }
        return srv->stop_signo;
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

/* ---------------------------------------------------------------- setup and teardown */

/* In a child, through its spec's drop_parent hook: libev ties each signal to
 * one loop process-wide, so the supervisor's watchers are dropped for the
 * child's loop to take them. */
void aiot__drop_parent_watchers(void *arg)
{
        struct server *srv = arg;

        for (size_t i = 0; i < srv->n_signals; i++)
                ev_signal_stop(srv->evl, &srv->sigw[i]);
        for (size_t i = 0; i < N_CTL; i++)
                if (srv->ctl_on[i]) {
                        ev_signal_stop(srv->evl, &srv->ctlw[i]);
                        /* A HUP or TTIN sent to the whole process group must not
                         * kill or stop a worker; SIGUSR1 is caught once a handler
                         * is registered (aiot_worker_on_signal). */
                        signal(aiot__ctl_signals[i], SIG_IGN);
                }
        if (srv->pid == 1)
                ev_signal_stop(srv->evl, &srv->chldw);
}

static void server_free(struct server *srv)
{
        for (size_t i = 0; i < srv->n_procs; i++)
                aiot__proc_free(srv, srv->procs[i]);
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
                ev_timer_stop(srv->evl, &srv->policy_w);
                aiot__notify_free(srv);
        }
        aiot__control_close(srv);
        aiot__remove_pidfile(srv);
        aiot_listeners_free(srv->listeners, srv->n_listeners);
        aiot_event_free(srv->done_ev);
        if (srv->loop)
                aiot_loop_free(srv->loop);
        else if (srv->evl)
                ev_loop_destroy(srv->evl);
        aiot__beats_free(srv);
        free(srv->lview);
        free(srv->procs);
        free(srv->entry_fds);
        free(srv->internal_fds);
        free(srv->keep_fds);
        free(srv->open_gens);
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
                if (aiot__is_stop_signal(srv, aiot__ctl_signals[i]))
                        continue;
                ev_signal_init(&srv->ctlw[i], aiot__ctl_signal_cb, aiot__ctl_signals[i]);
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
        /* The control socket reads the status records beside the heartbeats. */
        if (srv->worker_timeout > 0 || srv->wd_half > 0 || srv->control_path || srv->metrics_addr)
                (void)aiot__beats_setup(srv);
        /* Eight ticks per timeout: a stall is seen at most a quarter of the
         * timeout late, which leaves room for the abort grace within
         * worker-timeout + 1 s. */
        if (srv->worker_timeout > 0 && srv->worker_timeout / 8 < p)
                p = srv->worker_timeout / 8;
        if (srv->wd_half > 0 && srv->wd_half / 2 < p)
                p = srv->wd_half / 2;
        srv->beat_period = p < 0.005 ? 0.005 : p;
        ev_timer_init(&srv->live_w, aiot__live_cb, srv->beat_period, srv->beat_period);
        srv->live_w.data = srv;
        if (srv->beats || srv->pid == 1)
                ev_timer_start(srv->evl, &srv->live_w);
        ev_timer_init(&srv->wd_w, aiot__wd_cb, srv->wd_half, srv->wd_half);
        srv->wd_w.data = srv;
        if (srv->wd_half > 0)
                ev_timer_start(srv->evl, &srv->wd_w);
        ev_timer_init(&srv->start_w, start_cb, 0., 0.);
        srv->start_w.data = srv;
        aiot__policy_start(srv);
        aiot__notify_init(srv);
}

/* The loop, and what runs on it: the main context or the start timer. */
static int run_loop(struct server *srv)
{
        if (srv->loop)
                return aiot_loop_run(srv->loop, main_root, srv);
        /* What main_root() would do with a main context that only waits. */
        srv->main.waited = true;
        ev_timer_start(srv->evl, &srv->start_w);
        return ev_run(srv->evl, 0) < 0 ? -EIO : 0;
}

static int new_loop(struct server *srv)
{
        int r;

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
        return r;
}

/* A server holds a socket per connection: the soft fd limit (1024 by default)
 * goes up to the hard one, as systemd advises for programs that do not use
 * select(2).  Every process forked from here inherits it. */
static void raise_nofile(void)
{
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return;
        if (rl.rlim_cur < rl.rlim_max) {
                rlim_t was = rl.rlim_cur;

                rl.rlim_cur = rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
                        aiot_log(AIOT_LOG_DEBUG, "RLIMIT_NOFILE raised from %llu to %llu",
                                 (unsigned long long)was, (unsigned long long)rl.rlim_cur);
                return;
        }
        aiot_log(AIOT_LOG_DEBUG, "RLIMIT_NOFILE is %llu", (unsigned long long)rl.rlim_cur);
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
        srv->started_at = aiot__now_mono();
        srv->main = (aiot_worker){.kind = AIOT_MAIN, .index = AIOT_INDEX_MAIN, .report_fd = -1};
        if (aiot__check_config(srv, cfg) < 0) {
                server_free(srv);
                free(srv);
                return AIOT_EXIT_USAGE;
        }
        srv->main.signals = srv->signals;
        srv->main.n_signals = srv->n_signals;
        srv->main.argc = srv->argc;
        srv->main.argv = srv->argv;
        if (cfg->no_pidfd)
                aiot__fork_force_sigchld(1);
        raise_nofile();
        if (srv->proc_title) {
                char title[128];

                /* The log prefix would otherwise follow argv[0] into the title. */
                aiot_log_set_prefix(program_invocation_short_name);
                snprintf(title, sizeof(title), "%s: supervisor", srv->proc_title);
                (void)aiot__proctitle_set(title, NULL);
        }
        (void)aiot__fd_snapshot(&srv->entry_fds, &srv->n_entry_fds);
        sigemptyset(&ign.sa_mask);
        sigaction(SIGPIPE, &ign, &old_pipe);

        r = new_loop(srv);
        if (r < 0) {
                aiot_log(AIOT_LOG_ERR, "cannot create the supervisor loop: %s", strerror(-r));
                status = AIOT_EXIT_FAILURE;
                goto out;
        }
        srv->main.loop = srv->loop;
        setup_watchers(srv);

        if (aiot__open_listeners(srv, cfg) < 0 || aiot__control_open(srv) < 0 || aiot__write_pidfile(srv) < 0) {
                status = AIOT_EXIT_USAGE;
                goto out;
        }
        srv->main.listeners = srv->lview;
        srv->main.n_listeners = srv->n_listeners;
        /* From here the supervisor's fds are known; the main context's are kept. */
        (void)aiot__snapshot_internal(srv);
        r = run_loop(srv);
        if (r < 0) {
                aiot_log(AIOT_LOG_ERR, "cannot run the supervisor loop: %s", strerror(-r));
                srv->exit_status = AIOT_EXIT_FAILURE;
        }
        status = srv->exit_status;
out:
        server_free(srv);
        free(srv);
        if (cfg->no_pidfd)
                aiot__fork_force_sigchld(0);
        sigaction(SIGPIPE, &old_pipe, NULL);
        return status;
}
