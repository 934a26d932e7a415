/* SPDX-License-Identifier: MIT */
/* The server's configuration and what the supervisor sets up from it before
 * anything is forked: checks and defaults, the user and group to drop to,
 * the listening sockets (socket activation, then the bind addresses), the
 * pidfile, and the fd snapshots that tell a child which fds are the
 * supervisor's own (closed in children) and which it keeps. */
#define AIOT__SUPERVISOR_SIDE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <math.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aiotools/log.h"
#include "macro.h"
#include "server-internal.h"

/* ---------------------------------------------------------------- fd sets */

static int cmp_int(const void *a, const void *b)
{
        int x = *(const int *)a, y = *(const int *)b;

        return (x > y) - (x < y);
}

bool aiot__fd_in(const int *set, size_t n, int fd)
{
        return set && bsearch(&fd, set, n, sizeof(int), cmp_int) != NULL;
}

/* The fds open in this process, sorted.  Returns 0 or -errno (-ENOENT: no /proc). */
int aiot__fd_snapshot(int **ret, size_t *n)
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

bool aiot__is_listener_fd(aiot_listener *const *ls, size_t n, int fd)
{
        for (size_t i = 0; i < n; i++)
                if (ls[i]->fd == fd)
                        return true;
        return false;
}

/* ---------------------------------------------------------------- configuration */

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
        if (geteuid() != 0 &&
            ((srv->drop_uid && srv->uid != getuid()) || (srv->drop_gid && srv->gid != getgid()))) {
                aiot_log(AIOT_LOG_ERR, "cannot drop privileges to %s '%s': not running as root",
                         srv->drop_uid && srv->uid != getuid() ? "user" : "group",
                         srv->drop_uid && srv->uid != getuid() ? cfg->user : cfg->group);
                return -EPERM;
        }
        return 0;
}

int aiot__check_config(struct server *srv, const struct aiot_server_config *cfg)
{
        long cpus;

        if (!cfg->worker) {
                aiot_log(AIOT_LOG_ERR, "invalid server configuration: no worker function");
                return -EINVAL;
        }
        if (cfg->workers < 0 || cfg->workers > MAX_WORKERS) {
                aiot_log(AIOT_LOG_ERR, "invalid worker count %d (expected 1 to %d)", cfg->workers,
                         MAX_WORKERS);
                return -EINVAL;
        }
        if (cfg->n_extra > MAX_WORKERS || (cfg->n_extra && !cfg->extra) || (cfg->n_binds && !cfg->binds) ||
            cfg->n_stop_signals > MAX_SIGNALS || (cfg->n_stop_signals && !cfg->stop_signals) ||
            isnan(cfg->stop_timeout) || cfg->restart_limit < 0 || !(cfg->restart_window >= 0) ||
            cfg->argc < 0 || isnan(cfg->worker_timeout) || cfg->blocking_threads < 0 ||
            cfg->blocking_threads > 1024 || isnan(cfg->setup_timeout)) {
                aiot_log(AIOT_LOG_ERR, "invalid server configuration");
                return -EINVAL;
        }
        for (size_t i = 0; i < cfg->n_extra; i++)
                if (!cfg->extra[i]) {
                        aiot_log(AIOT_LOG_ERR,
                                 "invalid server configuration: extra process %zu has no function", i);
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
        srv->worker_timeout = cfg->worker_timeout == 0  ? WORKER_TIMEOUT
                              : cfg->worker_timeout < 0 ? -1
                                                        : cfg->worker_timeout;
        /* Half the timeout, at most ABORT_GRACE: a hung process is then gone
         * within worker-timeout + 1 s for timeouts up to a second (a stall is
         * seen at most a quarter of the timeout late), and a long timeout
         * leaves a core dump its time. */
        srv->abort_grace = srv->worker_timeout > 0 && srv->worker_timeout / 2 < ABORT_GRACE
                                   ? srv->worker_timeout / 2
                                   : ABORT_GRACE;
        srv->restart_limit = cfg->restart_limit ? cfg->restart_limit : 5;
        srv->restart_window = cfg->restart_window > 0 ? cfg->restart_window : 10.0;
        srv->argc = cfg->argc;
        srv->argv = cfg->argv;
        srv->reuseport = cfg->reuseport;
        srv->pidfile = cfg->pidfile;
        srv->proc_title = cfg->proc_title;
        srv->blocking_threads = cfg->blocking_threads;
        srv->setup_timeout = cfg->setup_timeout == 0 ? SETUP_TIMEOUT : cfg->setup_timeout < 0 ? -1 : cfg->setup_timeout;
        srv->control_path = cfg->control && *cfg->control ? cfg->control : NULL;
        srv->control_group = cfg->control_group;
        srv->metrics_addr = cfg->metrics;
        srv->reload_fn = cfg->reload;
        srv->retired_fn = cfg->retired;
        srv->reload_arg = cfg->reload_arg;
        if (!(cfg->max_lifetime >= 0) || !(cfg->lifetime_jitter >= 0) || isinf(cfg->max_lifetime) ||
            isinf(cfg->lifetime_jitter)) {
                aiot_log(AIOT_LOG_ERR, "invalid server configuration: bad worker lifetime");
                return -EINVAL;
        }
        srv->max_lifetime = cfg->max_lifetime;
        srv->lifetime_jitter = cfg->lifetime_jitter;
        srv->max_rss = cfg->max_rss;
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
int aiot__open_listeners(struct server *srv, const struct aiot_server_config *cfg)
{
        struct aiot_listen_opts o = {
                .size = sizeof(o), .reuseport = cfg->reuseport, .bind_only = cfg->reuseport};
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
int aiot__write_pidfile(struct server *srv)
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

/* Only our own: a successor may have replaced it meanwhile. */
void aiot__remove_pidfile(struct server *srv)
{
        if (srv->pidfile_written && pidfile_read(srv->pidfile) == srv->pid)
                unlink(srv->pidfile);
}

/* ---------------------------------------------------------------- fd snapshots */

/* The fds the supervisor itself opened (its loop's, so far): closed in children. */
int aiot__snapshot_internal(struct server *srv)
{
        int *now;
        size_t n, k = 0;
        int r = aiot__fd_snapshot(&now, &n);

        if (r < 0)
                return 0; /* no /proc: children keep what they inherit */
        for (size_t i = 0; i < n; i++)
                if (!aiot__fd_in(srv->entry_fds, srv->n_entry_fds, now[i]) &&
                    !aiot__is_listener_fd(srv->listeners, srv->n_listeners, now[i]))
                        now[k++] = now[i];
        srv->internal_fds = now;
        srv->n_internal_fds = k;
        return 0;
}

/* What children keep: everything open now except the supervisor's own fds. */
void aiot__snapshot_keep(struct server *srv)
{
        int *now;
        size_t n, k = 0;

        if (!srv->entry_fds || aiot__fd_snapshot(&now, &n) < 0)
                return;
        for (size_t i = 0; i < n; i++)
                if (!aiot__fd_in(srv->internal_fds, srv->n_internal_fds, now[i]))
                        now[k++] = now[i];
        srv->keep_fds = now;
        srv->n_keep_fds = k;
}
