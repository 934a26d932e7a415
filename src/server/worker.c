/* SPDX-License-Identifier: MIT */
/* The worker side: a worker or extra process from its fork to its exit, and
 * the public aiot_worker_* calls.
 *
 * The child runs aiot__worker_main() on the supervisor's stack, inside a callback
 * of the supervisor's loop, which it abandons.  All it knows of the server is
 * the const struct aiot__proc_spec that proc.c filled before the fork: this
 * file is compiled without the supervisor's structs (see server-internal.h).
 * It sets up the process (title, signals, fds, its own listening sockets with
 * reuseport, privileges), builds a fresh task loop, and runs the context as
 * its root task.  The supervisor learns of progress through the report channel
 * and of liveness through the heartbeat cell (channel.c).
 *
 * The same calls serve the main context, which runs in the supervisor; the
 * one call that needs the supervisor's state there, aiot_worker_wait_stop(),
 * hands over to supervisor.c. */
#include <errno.h>
#include <execinfo.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "aiotools/io.h"
#include "aiotools/log.h"
#include "macro.h"
#include "proctitle.h"
#include "server-internal.h"

/* ---------------------------------------------------------------- the process */

static bool spec_has_signal(const int *signals, size_t n, int signo)
{
        for (size_t i = 0; i < n; i++)
                if (signals[i] == signo)
                        return true;
        return false;
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

/* Closes every fd the process should not have: the supervisor's own (its loop,
 * the pidfds and report channels of other processes) and, for an extra process,
 * the listening sockets.  What the caller of aiot_server_run() had open and
 * what the main context opened in its setup stays. */
static void close_unwanted_fds(const struct aiot__proc_spec *spec)
{
        int *fds = NULL;
        size_t n = 0;

        if (aiot__fd_snapshot(&fds, &n) < 0)
                return;
        for (size_t i = 0; i < n; i++) {
                int fd = fds[i];

                if (fd <= STDERR_FILENO || fd == spec->report_fd)
                        continue;
                if (aiot__is_listener_fd(spec->listeners, spec->n_listeners, fd)) {
                        if (spec->kind == AIOT_EXTRA)
                                close(fd);
                        continue;
                }
                if (!aiot__fd_in(spec->keep_fds, spec->n_keep_fds, fd))
                        close(fd);
        }
        free(fds);
}

/* --reuseport: this worker's own SO_REUSEPORT socket per bound address;
 * sockets from socket activation stay shared. */
static int reopen_listeners(const struct aiot__proc_spec *spec, aiot_worker *w)
{
        aiot_listener *view = calloc(spec->n_listeners, sizeof(*view));
        char err[256];

        w->owned = calloc(spec->n_listeners, sizeof(*w->owned));
        if (!view || !w->owned) {
                free(view);
                return -ENOMEM;
        }
        w->listeners = view;
        w->n_listeners = spec->n_listeners;
        for (size_t i = 0; i < spec->n_listeners; i++) {
                aiot_listener *l;
                int r;

                if (i < spec->n_activated) {
                        view[i] = *spec->listeners[i];
                        continue;
                }
                r = aiot_listen_reopen(spec->listeners[i], NULL, &l, err, sizeof(err));
                if (r < 0) {
                        aiot_log(AIOT_LOG_ERR, "%s", err);
                        return r;
                }
                w->owned[i] = l;
                view[i] = *l;
                /* The supervisor's bind-only socket is of no use here. */
                close(spec->listeners[i]->fd);
        }
        return 0;
}

/* Supplementary groups, then the gid, then the uid: in this order, because
 * each step needs the privilege the next one gives up.  Verified afterwards,
 * so that a worker never runs as root by mistake. */
static int drop_privileges(const struct aiot__proc_spec *spec)
{
        gid_t rg, eg, sg, gid = spec->gid;
        uid_t ru, eu, su, uid = spec->uid;

        if (!spec->drop_gid && !spec->drop_uid)
                return 0;
        /* Nothing to change (an unprivileged supervisor started with its own user). */
        if (geteuid() != 0 && (!spec->drop_uid || getuid() == uid) && getgid() == gid && getegid() == gid)
                return 0;
        if (spec->drop_gid) {
                if (spec->drop_uid && spec->user) {
                        if (initgroups(spec->user, gid) < 0)
                                return -errno;
                } else if (setgroups(1, &gid) < 0)
                        return -errno;
                if (setresgid(gid, gid, gid) < 0)
                        return -errno;
        }
        if (spec->drop_uid && setresuid(uid, uid, uid) < 0)
                return -errno;
        if ((spec->drop_gid && (getresgid(&rg, &eg, &sg) < 0 || rg != gid || eg != gid || sg != gid)) ||
            (spec->drop_uid && (getresuid(&ru, &eu, &su) < 0 || ru != uid || eu != uid || su != uid)))
                return -EPERM;
        return 0;
}

static int worker_root(void *arg)
{
        aiot_worker *w = arg;
        int r, rc;

        w->root = aiot_current();
        snprintf(w->root_name, sizeof(w->root_name), "%s %d", w->kind == AIOT_EXTRA ? "extra" : "worker", w->index);
        aiot_task_set_name(w->root, w->root_name);
        r = aiot_scope_open(&w->scope, NULL);
        if (r < 0) {
                aiot__report_send(w->report_fd, MSG_FAILED, r);
                return r;
        }
        rc = w->fn(w);
        if (!w->waited)
                aiot__report_send(w->report_fd, MSG_FAILED, rc < 0 ? rc : SETUP_NO_WAIT);
        aiot_scope_cancel(w->scope);
        aiot_scope_close(w->scope);
        w->scope = NULL;
        return rc;
}

/* What the child allocated for itself (what it inherited dies with _exit). */
static void worker_free(aiot_worker *w)
{
        if (w->loop) {
                struct ev_loop *evl = aiot_loop_ev(w->loop);

                for (size_t i = 0; i < w->n_signals; i++)
                        ev_signal_stop(evl, &w->sigw[i]);
                for (size_t i = 0; i < MAX_HANDLERS; i++)
                        if (w->handlers[i].fn)
                                ev_signal_stop(evl, &w->handlers[i].sw);
                aiot__beat_stop(evl, &w->beat);
                aiot__chan_stop(w);
                aiot_loop_free(w->loop);
        }
        aiot_event_free(w->stop_ev);
        aiot__names_free(w);
        if (w->owned) {
                aiot_listeners_free(w->owned, w->n_listeners);
                free((void *)w->listeners);
        }
}

/* The child's view of the process: title, log prefix, signals. */
static void worker_prepare(const struct aiot__proc_spec *spec)
{
        const char *what = spec->kind == AIOT_EXTRA ? "extra" : "worker";
        char buf[128], comm[16];

        snprintf(buf, sizeof(buf), "%s %d", what, spec->index);
        aiot_log_set_prefix(buf);
        if (spec->title) {
                snprintf(buf, sizeof(buf), "%s: %s %d", spec->title, what, spec->index);
                snprintf(comm, sizeof(comm), "aiot-%s-%d", what, spec->index);
                (void)aiot__proctitle_set(buf, comm);
        }
        spec->drop_parent(spec->parent);
        signal(SIGPIPE, SIG_IGN);
}

/* SIGABRT (the watchdog's, or an abort() of the program's own): says which
 * task was running and its backtrace on stderr, with write(2) only, then
 * lets the default action end the process (SA_RESETHAND). */
static void abort_handler(int signo)
{
        aiot_task *t = aiot_current();
        const char *name = t ? aiot_task_name(t) : NULL;
        char line[256];
        void *frames[48];
        int n = snprintf(line, sizeof(line), "pid %d: SIG%s while running %s%s%s; backtrace:\n", (int)getpid(),
                         sigabbrev_np(signo) ?: "?", !t ? "no task (the loop itself)" : name ? "task '" : "an unnamed task",
                         t && name ? name : "", t && name ? "'" : "");

        if (n > 0)
                (void)!write(STDERR_FILENO, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
        n = backtrace(frames, 48);
        backtrace_symbols_fd(frames, n, STDERR_FILENO);
        raise(signo);
}

static void abort_handler_install(void)
{
        struct sigaction sa = {.sa_handler = abort_handler, .sa_flags = SA_RESETHAND | SA_ONSTACK};
        void *frame;

        /* backtrace() loads libgcc on first use: not from a signal handler. */
        (void)backtrace(&frame, 1);
        sigemptyset(&sa.sa_mask);
        sigaction(SIGABRT, &sa, NULL);
}

/* The loop, the stop-signal watchers and the heartbeat. */
static int worker_loop(const struct aiot__proc_spec *spec, aiot_worker *w)
{
        struct aiot_loop_opts lo = { .size = sizeof(lo), .blocking_threads = (size_t)spec->blocking_threads };
        struct ev_loop *evl;
        int r;

        r = aiot_loop_new(&w->loop, &lo);
        if (r < 0)
                return r;
        r = aiot_event_new(&w->stop_ev);
        if (r < 0)
                return r;
        evl = aiot_loop_ev(w->loop);
        for (size_t i = 0; i < w->n_signals; i++) {
                ev_signal_init(&w->sigw[i], worker_signal_cb, w->signals[i]);
                w->sigw[i].data = w;
                ev_signal_start(evl, &w->sigw[i]);
        }
        w->beat.stat = spec->stat_cell;
        w->beat.loop = w->loop;
        aiot__beat_start(evl, &w->beat, spec->beat_cell, spec->beat_period);
        aiot__chan_start(w);
        abort_handler_install();
        return 0;
}

static void log_drop_failure(const struct aiot__proc_spec *spec, int r)
{
        aiot_log(AIOT_LOG_ERR, "cannot drop privileges to %s%s%s%s%s: %s", spec->drop_uid ? "user " : "",
                 spec->drop_uid ? (spec->user ? spec->user : "?") : "",
                 spec->drop_uid && spec->group ? ", " : "", spec->group ? "group " : "",
                 spec->group ? spec->group : "", strerror(-r));
}

/* Runs in the new process, on the supervisor's stack, inside a callback of its
 * loop, which is abandoned here: never run, freed or touched again. */
int aiot__worker_main(void *arg)
{
        const struct aiot__proc_spec *spec = arg;
        aiot_worker w = {.kind = spec->kind,
                         .index = spec->index,
                         .gen = spec->gen,
                         .fn = spec->fn,
                         .signals = spec->signals,
                         .n_signals = spec->n_signals,
                         .data = spec->data,
                         .argc = spec->argc,
                         .argv = spec->argv,
                         .report_fd = spec->report_fd};
        int r, rc;

        /* Die with the supervisor; the check closes the race with a supervisor
         * that died before the prctl. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != spec->supervisor_pid)
                return 1;
        worker_prepare(spec);
        close_unwanted_fds(spec);

        if (spec->kind == AIOT_WORKER) {
                if (spec->reuseport) {
                        r = reopen_listeners(spec, &w);
                        if (r < 0)
                                goto fail;
                } else {
                        w.listeners = spec->views;
                        w.n_listeners = spec->n_listeners;
                }
        }
        r = drop_privileges(spec);
        if (r < 0) {
                log_drop_failure(spec, r);
                goto fail;
        }
        r = worker_loop(spec, &w);
        if (r < 0)
                goto fail;
        rc = aiot_loop_run(w.loop, worker_root, &w);
        if (rc < 0 && w.waited)
                aiot_log(AIOT_LOG_ERR, "teardown failed: %s", strerror(-rc));
        else if (rc < 0 && !w.root) {
                /* The root task never ran. */
                r = rc;
                goto fail;
        }
        worker_free(&w);
        return rc < 0 ? 1 : 0;
fail:
        aiot__report_send(spec->report_fd, MSG_FAILED, r);
        worker_free(&w);
        return 1;
}

/* ---------------------------------------------------------------- the context API */

int aiot_worker_wait_stop(aiot_worker *w)
{
        int r;

        aiot__return_if(!w, -EINVAL);
        aiot__return_if(w->waited, -EALREADY);
        aiot__return_if(!aiot_current() || aiot_current() != w->root, -EPERM);
        w->waited = true;
        if (w->kind == AIOT_MAIN)
                return aiot__main_wait_stop(w);
        aiot__stat_ready(&w->beat);
        aiot__report_send(w->report_fd, MSG_READY, 0);
        while (!w->stop_signo) {
                r = aiot_event_wait(w->stop_ev);
                if (r < 0)
                        return r;
        }
        return w->stop_signo;
}

int aiot_worker_stopping(const aiot_worker *w)
{
        aiot__return_if(!w, -EINVAL);
        return w->stop_signo;
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
        return w ? w->data : NULL;
}

/* The main context's data reaches every process through its spec. */
int aiot_worker_set_data(aiot_worker *m, void *data)
{
        aiot__return_if(!m, -EINVAL);
        aiot__return_if(m->kind != AIOT_MAIN, -EPERM);
        aiot__return_if(m->waited, -EALREADY);
        m->data = data;
        return 0;
}

int aiot_worker_argc(const aiot_worker *w)
{
        aiot__return_if(!w, -EINVAL);
        return w->argc;
}

char *const *aiot_worker_argv(const aiot_worker *w)
{
        return w ? w->argv : NULL;
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
        aiot__return_if(signo <= 0 || signo >= NSIG || signo == SIGKILL || signo == SIGSTOP ||
                                signo == SIGCHLD,
                        -EINVAL);
        aiot__return_if(spec_has_signal(w->signals, w->n_signals, signo) || !w->loop, -EINVAL);
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
                        if (spec_has_signal(aiot__ctl_signals, N_CTL, signo))
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
        aiot__report_send(w->report_fd, MSG_RECYCLE, 0);
        return 0;
}
