/* SPDX-License-Identifier: MIT */
/* In-place upgrade: SIGUSR2 re-executes the program in the same process.
 *
 * The PID a service manager follows stays the supervisor's, and so do its
 * children: an exec keeps both.  The steps, in the old image:
 *
 *  1. A check: the program at the path it was started from is run once in a
 *     child with AIOTOOLS_UPGRADE_CHECK=1 and the same arguments; its
 *     aiot_server_run() returns 0 at once after validating its config, so a
 *     file that is no program, a library or module that no longer loads or a
 *     config that no longer parses ends the check, not the supervisor.
 *  2. The state: a memfd (its fd in AIOTOOLS_UPGRADE_STATE) holds one line
 *     per listener set and socket, and one per live process (kind, index,
 *     generation, pid, report channel, heartbeat cell, state); those fds and
 *     the heartbeat and status pages' memfds lose FD_CLOEXEC.  Every signal
 *     is blocked across the exec, so that none finds the new image before it
 *     has its handlers.
 *  3. execv(): if it fails, CLOEXEC is set again and the old image goes on.
 *
 * The new image (aiot__upgrade_read() at the start of aiot_server_run())
 * takes the fds, maps the pages, rebuilds the listener sets from the passed
 * sockets and, instead of a start, adopts the processes (aiot__child_adopt())
 * as the serving generation; then it starts a generation of its own from its
 * config exactly as a reload does (without the reload hook: the new image has
 * just loaded its module) and retires the adopted one once the new one is
 * ready.  If the new generation fails, the adopted one serves on and the
 * failure is logged and reported ("upgrade failed: ...").  An adopted process
 * that crashes is respawned from the new image's code.
 *
 * Refused (logged, nothing changes): with a main context (it lives in the
 * supervisor's memory, which an exec cannot carry), during a reload, a start,
 * a stop, another upgrade, or while a process of the serving generation is
 * not ready or is being replaced. */
#define AIOT__SUPERVISOR_SIDE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "aiotools/fork.h"
#include "aiotools/log.h"
#include "fork-internal.h"
#include "listen-internal.h"
#include "macro.h"
#include "server-internal.h"

#define STATE_ENV "AIOTOOLS_UPGRADE_STATE"
#define CHECK_ENV "AIOTOOLS_UPGRADE_CHECK"
#define CHECK_TIMEOUT 30.0
#define STATE_MAX (1 << 20)

extern char **environ;

/* ---------------------------------------------------------------- at start */

/* The program's path and arguments, as it was started: read before the
 * process title overwrites the argument area. */
void aiot__upgrade_remember(struct server *srv)
{
        char path[PATH_MAX], *buf = NULL;
        size_t len = 0, cap = 0, n = 0;
        ssize_t r;
        FILE *f;

        r = readlink("/proc/self/exe", path, sizeof(path) - 1);
        if (r <= 0)
                return;
        path[r] = '\0';
        f = fopen("/proc/self/cmdline", "re");
        if (!f)
                return;
        for (;;) {
                if (len + 4096 > cap) {
                        char *nb = realloc(buf, cap += 4096);

                        if (!nb)
                                goto out;
                        buf = nb;
                }
                size_t got = fread(buf + len, 1, 4096, f);

                len += got;
                if (got == 0)
                        break;
        }
        for (size_t i = 0; i < len; i++)
                n += buf[i] == '\0';
        srv->exec_argv = calloc(n + 1, sizeof(*srv->exec_argv));
        srv->exec_path = strdup(path);
        if (!srv->exec_argv || !srv->exec_path)
                goto out;
        for (size_t i = 0, k = 0; i < len && k < n; k++) {
                srv->exec_argv[k] = buf + i;
                i += strlen(buf + i) + 1;
        }
        srv->exec_buf = buf;
        buf = NULL;
out:
        free(buf);
        fclose(f);
}

void aiot__upgrade_free(struct server *srv)
{
        free(srv->exec_argv);
        free(srv->exec_buf);
        free(srv->exec_path);
        free(srv->up_state);
        if (srv->evl)
                ev_timer_stop(srv->evl, &srv->up_timer);
        aiot_child_free(srv->up_child);
        srv->up_child = NULL;
}

/* The check run of step 1: true when this process is one. */
bool aiot__upgrade_is_check(void)
{
        return getenv(CHECK_ENV) != NULL;
}

/* Reads the state an earlier image handed over, if any: 1 (this image
 * adopts), 0 (a plain start), -1 (a state that cannot be read: a plain
 * start is impossible too, since its sockets are held; logged). */
int aiot__upgrade_read(struct server *srv)
{
        const char *e = getenv(STATE_ENV);
        char *end, *buf;
        long fd;
        ssize_t n, got = 0;

        if (!e)
                return 0;
        fd = strtol(e, &end, 10);
        unsetenv(STATE_ENV);
        if (*end || fd < 3 || fd > INT_MAX || !(buf = calloc(1, STATE_MAX + 1)))
                goto bad;
        while ((n = AIOT_RETRY_EINTR(pread((int)fd, buf + got, STATE_MAX - (size_t)got, got))) > 0)
                got += n;
        close((int)fd);
        if (n < 0 || strncmp(buf, "aiotools-upgrade 1\n", 19) != 0) {
                free(buf);
                goto bad;
        }
        srv->up_state = buf;
        return 1;
bad:
        aiot_log(AIOT_LOG_ERR, "upgrade: the state handed over in %s=%s cannot be read", STATE_ENV, e);
        return -1;
}

/* Applies fn to every fd the state names ("fd N" lines): CLOEXEC again, or
 * a close. */
static void state_fds(const char *state, void (*fn)(int fd))
{
        for (const char *l = state; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
                int fd;

                if (sscanf(l, "fd %d", &fd) == 1 && fd > 2)
                        fn(fd);
        }
}

static void set_cloexec(int fd)
{
        int fl = fcntl(fd, F_GETFD);

        if (fl >= 0)
                (void)fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
}

static void clear_cloexec(int fd)
{
        int fl = fcntl(fd, F_GETFD);

        if (fl >= 0)
                (void)fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
}

/* The handed-over fds are the supervisor's own: CLOEXEC, and not among the
 * fds that children keep (entry_fds is taken after this). */
void aiot__upgrade_take_fds(struct server *srv)
{
        int b = -1, s = -1;

        if (!srv->up_state)
                return;
        state_fds(srv->up_state, set_cloexec);
        if (sscanf(strstr(srv->up_state, "\npages ") ? strstr(srv->up_state, "\npages ") : "", "\npages %d %d", &b,
                   &s) == 2) {
                srv->beats_fd = b;
                srv->stats_fd = s;
        }
}

/* Whether fd was handed over (entry_fds leaves them out). */
bool aiot__upgrade_passed_fd(const struct server *srv, int fd)
{
        char line[32];

        if (!srv->up_state)
                return false;
        snprintf(line, sizeof(line), "\nfd %d\n", fd);
        return strstr(srv->up_state, line) != NULL;
}

/* The listener sets from the state ("lset FIRST N NACT", then N "l FD
 * OPENED NAME\tBIND" lines), instead of aiot__open_listeners(). */
int aiot__upgrade_listeners(struct server *srv)
{
        struct lset *s = NULL;
        size_t k = 0;

        for (char *l = srv->up_state; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
                unsigned first;
                size_t n, nact;
                int fd, opened, off = 0;

                if (sscanf(l, "lset %u %zu %zu", &first, &n, &nact) == 3) {
                        if (srv->n_lsets == MAX_LSETS || nact > n || n > 4096)
                                return -EINVAL;
                        s = calloc(1, sizeof(*s));
                        if (!s)
                                return -ENOMEM;
                        srv->lsets[srv->n_lsets++] = s;
                        *s = (struct lset){.first_gen = first, .n = n, .n_activated = nact, .owns_arrays = true};
                        s->ls = calloc(n ? n : 1, sizeof(*s->ls));
                        s->views = calloc(n ? n : 1, sizeof(*s->views));
                        s->binds = calloc(n ? n : 1, sizeof(*s->binds));
                        s->opened = calloc(n ? n : 1, sizeof(*s->opened));
                        if (!s->ls || !s->views || !s->binds || !s->opened)
                                return -ENOMEM;
                        k = 0;
                } else if (s && k < s->n && sscanf(l, "l %d %d %n", &fd, &opened, &off) == 2 && off > 0) {
                        char *eol = strchrnul(l, '\n'), *tab = memchr(l + off, '\t', (size_t)(eol - l - off));
                        char name[256];
                        int r;

                        if (!tab)
                                return -EINVAL;
                        snprintf(name, sizeof(name), "%.*s", (int)(tab - l - off), l + off);
                        /* A socket two sets share is one object. */
                        for (size_t i = 0; i + 1 < srv->n_lsets && !s->ls[k]; i++)
                                for (size_t j = 0; j < srv->lsets[i]->n; j++)
                                        if (srv->lsets[i]->ls[j]->fd == fd)
                                                s->ls[k] = srv->lsets[i]->ls[j];
                        for (size_t j = 0; j < k && !s->ls[k]; j++)
                                if (s->ls[j]->fd == fd)
                                        s->ls[k] = s->ls[j];
                        if (!s->ls[k]) {
                                r = aiot__listener_from_fd(fd, name, &s->ls[k]);
                                if (r < 0)
                                        return r;
                                s->opened[k] = true;
                        }
                        if (eol > tab + 1 && !(s->binds[k] = strndup(tab + 1, (size_t)(eol - tab - 1))))
                                return -ENOMEM;
                        s->views[k] = *s->ls[k];
                        k++;
                }
        }
        return srv->n_lsets ? 0 : -EINVAL;
}

/* ---------------------------------------------------------------- adoption */

static enum proc_state state_of(const char *name)
{
        if (strcmp(name, "ready") == 0)
                return PROC_READY;
        if (strcmp(name, "starting") == 0)
                return PROC_STARTING;
        return PROC_STOPPING;
}

/* In an adopting image, before its loop runs: the processes of the state
 * become the serving generation (the start callback then starts one of this
 * image's own), and the signals blocked across the exec are let in. */
void aiot__upgrade_adopt(struct server *srv)
{
        unsigned gen = 0, next = 0, done = 0, failed = 0;
        size_t n = 0;
        sigset_t none;

        sscanf(strstr(srv->up_state, "\ngen ") ? strstr(srv->up_state, "\ngen ") : "", "\ngen %u %u %u %u", &gen,
               &next, &done, &failed);
        srv->gen = gen;
        srv->next_gen = next > gen ? next : gen;
        srv->reloads_done = done;
        srv->reloads_failed = failed;
        for (char *l = srv->up_state; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
                int kind, index, pid, rfd, beat;
                unsigned pgen, restarts, ever;
                char st[16];
                struct proc *p;
                aiot_worker_fn fn;

                if (sscanf(l, "proc %d %d %u %d %d %d %15s %u %u", &kind, &index, &pgen, &pid, &rfd, &beat, st,
                           &restarts, &ever) != 9)
                        continue;
                fn = kind == AIOT_EXTRA && index >= 0 && (size_t)index < srv->n_extra ? srv->extra_fns[index]
                                                                                    : srv->worker_fn;
                p = aiot__proc_new(srv, kind, index, pgen, fn);
                if (!p || aiot__proc_adopt(p, pid, rfd, beat, state_of(st)) < 0) {
                        aiot_log(AIOT_LOG_ERR, "upgrade: cannot adopt %s %d (pid %d)", aiot__kind_name(kind), index,
                                 pid);
                        if (p)
                                aiot__proc_transition(p, PE_STOP, SIGKILL);
                        continue;
                }
                p->restarts = restarts;
                p->ever_ready = ever != 0;
                n++;
        }
        for (size_t i = 0; i < srv->n_procs; i++) {
                bool known = false;

                for (size_t j = 0; j < srv->n_open_gens; j++)
                        known = known || srv->open_gens[j] == srv->procs[i]->gen;
                if (!known)
                        (void)aiot__gen_open(srv, srv->procs[i]->gen);
        }
        aiot_log(AIOT_LOG_NOTICE, "upgrade: %s (pid %d) adopted %zu process%s of generation %u and before",
                 srv->exec_path ? srv->exec_path : "?", (int)srv->pid, n, n == 1 ? "" : "es", gen);
        free(srv->up_state);
        srv->up_state = NULL;
        srv->upgrading = true;
        srv->state = SRV_RUNNING;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
}

/* ---------------------------------------------------------------- in the old image */

static int state_printf(FILE *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int state_printf(FILE *f, const char *fmt, ...)
{
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vfprintf(f, fmt, ap);
        va_end(ap);
        return r;
}

static const char *state_name(enum proc_state st)
{
        return st == PROC_READY ? "ready" : st == PROC_STARTING ? "starting" : "stopping";
}

/* The state as text (malloc'ed), or NULL. */
static char *state_text(struct server *srv)
{
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);

        if (!f)
                return NULL;
        state_printf(f, "aiotools-upgrade 1\ngen %u %u %u %u\npages %d %d\n", srv->gen, srv->next_gen,
                     srv->reloads_done, srv->reloads_failed, srv->beats_fd, srv->stats_fd);
        if (srv->beats_fd >= 0)
                state_printf(f, "fd %d\n", srv->beats_fd);
        if (srv->stats_fd >= 0)
                state_printf(f, "fd %d\n", srv->stats_fd);
        for (size_t i = 0; i < srv->n_lsets; i++) {
                const struct lset *s = srv->lsets[i];

                state_printf(f, "lset %u %zu %zu\n", s->first_gen, s->n, s->n_activated);
                for (size_t j = 0; j < s->n; j++)
                        state_printf(f, "l %d %d %s\t%s\nfd %d\n", s->ls[j]->fd, 0, s->ls[j]->name ? s->ls[j]->name : "",
                                     s->binds[j] ? s->binds[j] : "", s->ls[j]->fd);
        }
        for (size_t i = 0; i < srv->n_procs; i++) {
                const struct proc *p = srv->procs[i];

                if (!p->child || p->state == PROC_GONE || p->state == PROC_IDLE || p->state == PROC_EXITED)
                        continue;
                state_printf(f, "proc %d %d %u %d %d %d %s %u %u\n", p->kind, p->index, p->gen, (int)p->pid,
                             p->report_rd, p->beat, state_name(p->state), p->restarts, p->ever_ready ? 1 : 0);
                if (p->report_rd >= 0)
                        state_printf(f, "fd %d\n", p->report_rd);
        }
        if (fclose(f) != 0) {
                free(text);
                return NULL;
        }
        return text;
}

/* The state in a new memfd (kept across exec); its fd, or -errno. */
static int write_state(const char *text)
{
        int fd = memfd_create("aiotools-upgrade", 0);
        size_t len = strlen(text), done = 0;

        if (fd < 0)
                return -errno;
        while (done < len) {
                ssize_t n = AIOT_RETRY_EINTR(write(fd, text + done, len - done));

                if (n <= 0) {
                        close(fd);
                        return n < 0 ? -errno : -EIO;
                }
                done += (size_t)n;
        }
        return fd;
}

static void upgrade_failed(struct server *srv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void upgrade_failed(struct server *srv, const char *fmt, ...)
{
        char why[300], st[96], status[420];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        srv->upgrades_failed++;
        aiot_log(AIOT_LOG_ERR, "upgrade failed: %s; generation %u keeps serving", why, srv->gen);
        aiot__status_text(srv, st, sizeof(st));
        snprintf(status, sizeof(status), "upgrade failed: %s; %s", why, st);
        aiot__notify(srv, AIOT__SD_READY, status);
}

/* Step 2 and 3: hands over and executes; returns only when execv failed. */
static void upgrade_exec(struct server *srv)
{
        char env[32], *state = state_text(srv);
        sigset_t all, old;
        int fd = state ? write_state(state) : -ENOMEM, e;

        if (fd < 0) {
                free(state);
                upgrade_failed(srv, "cannot write the state: %s", strerror(-fd));
                return;
        }
        state_fds(state, clear_cloexec);
        snprintf(env, sizeof(env), "%d", fd);
        setenv(STATE_ENV, env, 1);
        aiot_log(AIOT_LOG_NOTICE, "upgrade: executing %s in place (pid %d)", srv->exec_path, (int)srv->pid);
        aiot__notify(srv, AIOT__SD_RELOADING, "upgrading: executing the program in place");
        sigfillset(&all);
        sigprocmask(SIG_SETMASK, &all, &old);
        execv(srv->exec_path, srv->exec_argv);
        e = errno;
        sigprocmask(SIG_SETMASK, &old, NULL);
        unsetenv(STATE_ENV);
        state_fds(state, set_cloexec);
        free(state);
        close(fd);
        upgrade_failed(srv, "cannot execute %s: %s", srv->exec_path, strerror(e));
}

static int check_child(void *arg)
{
        struct server *srv = arg;

        setenv(CHECK_ENV, "1", 1);
        execv(srv->exec_path, srv->exec_argv);
        return 127;
}

static void check_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct server *srv = w->data;

        if (srv->up_child) {
                (void)aiot_child_signal(srv->up_child, SIGKILL);
                srv->up_timed_out = true;
        }
}

static void check_exit_cb(aiot_child *c, int status, void *arg)
{
        struct server *srv = arg;
        bool timed_out = srv->up_timed_out;

        aiot_child_free(c);
        srv->up_child = NULL;
        srv->up_timed_out = false;
        ev_timer_stop(srv->evl, &srv->up_timer);
        if (status != 0) {
                if (timed_out)
                        upgrade_failed(srv, "the check run of %s did not end within %g s", srv->exec_path,
                                       CHECK_TIMEOUT);
                else if (status == 127)
                        upgrade_failed(srv, "cannot execute %s (the check run exited with 127)", srv->exec_path);
                else if (status < 0)
                        upgrade_failed(srv, "the check run of %s was killed by SIG%s", srv->exec_path,
                                       sigabbrev_np(-status) ?: "?");
                else
                        upgrade_failed(srv, "the check run of %s exited with status %d", srv->exec_path, status);
                return;
        }
        aiot__proc_sweep(srv);
        if (srv->state != SRV_RUNNING || srv->new_gen) {
                upgrade_failed(srv, "the server is %s", srv->new_gen ? "reloading" : "not running");
                return;
        }
        upgrade_exec(srv);
}

/* Why an upgrade cannot start now, or NULL. */
static const char *upgrade_refusal(const struct server *srv)
{
        if (srv->main_fn)
                return "a main context lives in the supervisor's memory, which an exec cannot carry (restart instead)";
        if (!srv->exec_path || !srv->exec_argv)
                return "the program's path or arguments are unknown (no /proc)";
        if (srv->up_child)
                return "an upgrade is under way";
        if (srv->state != SRV_RUNNING)
                return "the server is not running";
        if (srv->new_gen)
                return "a reload or an upgrade is under way";
        /* Its own generation would leave two draining (see generation.c). */
        if (aiot__gen_draining(srv))
                return "an older generation is still draining";
        for (size_t i = 0; i < srv->n_procs; i++) {
                const struct proc *p = srv->procs[i];

                if (p->gen == srv->gen && (p->replaces || p->replaced_by))
                        return "a process is being replaced";
                if (p->gen == srv->gen && aiot__proc_active(p) && p->state != PROC_READY)
                        return "a process of the serving generation is not ready";
        }
        return NULL;
}

/* SIGUSR2 or `ctl upgrade`: 0 started, -EBUSY refused (logged). */
int aiot__upgrade_start(struct server *srv, const char *cause)
{
        const char *no = upgrade_refusal(srv);
        int r;

        if (no) {
                aiot_log(AIOT_LOG_WARNING, "%s: upgrade refused: %s", cause, no);
                return -EBUSY;
        }
        aiot_log(AIOT_LOG_NOTICE, "%s: upgrading in place: checking that %s starts", cause, srv->exec_path);
        r = aiot_fork(srv->evl, check_child, srv, check_exit_cb, srv, &srv->up_child);
        if (r < 0) {
                upgrade_failed(srv, "cannot fork the check run: %s", strerror(-r));
                return r;
        }
        ev_timer_init(&srv->up_timer, check_timeout_cb, CHECK_TIMEOUT, 0.);
        srv->up_timer.data = srv;
        ev_timer_start(srv->evl, &srv->up_timer);
        return 0;
}
