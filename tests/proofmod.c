/* SPDX-License-Identifier: MIT */
/* proofmod: the module the proof-*.sh harnesses and tests/systemd/run.sh load
 * into the real aiotools-serve.  Every worker accepts on every listener and
 * answers one command line per connection, then closes it:
 *
 *   name        "name=NAME address=ADDR index=I pid=P ppid=Q\n" for the
 *               listener that accepted the connection (socket activation)
 *   hang SEC    "hanging index=I pid=P\n", then blocks the whole worker (its
 *               loop included) for SEC seconds without yielding, the way a
 *               module with a blocking call or an endless loop would; then
 *               "woke\n" (watchdog and --worker-timeout tests); logs
 *               "proofmod: hanging index=I pid=P for SEC s" to stderr
 *   orphan MS   double-forks: the child exits at once, the grandchild (now an
 *               orphan, reparented to the nearest subreaper or PID 1) lives
 *               MS milliseconds and exits; answers "orphan=GPID\n" (the
 *               PID-namespace reaping test)
 *   anything else: "?\n"
 *
 * Module arguments (after "--"): slow=I:MS makes worker I take MS ms for its
 * setup (so that READY can be checked to wait for the last worker);
 * failif=PATH makes every worker's setup fail with -EADDRNOTAVAIL while PATH
 * exists (a reload whose new generation cannot start).  Just
 * before aiot_worker_wait_stop() every worker writes one line to stderr:
 *   "proofmod: ready index=I pid=P\n"
 * and after it returns "proofmod: stop index=I pid=P signal=S\n". */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <aiotools.h>

struct acceptor {
        const aiot_listener *l;
        aiot_worker *w;
        aiot_scope *conns;
        aiot_task *task;
};

struct conn {
        int fd;
        const struct acceptor *a;
};

/* One write, so that lines of concurrent processes never mix. */
static void say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(int fd, const char *fmt, ...)
{
        char buf[512];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (n > (int)sizeof(buf) - 1)
                n = (int)sizeof(buf) - 1;
        if (fd == STDERR_FILENO)
                (void)!write(fd, buf, (size_t)n);
        else
                aiot_write_all(fd, buf, (size_t)n);
}

/* Blocks the process, loop included, until SEC seconds have passed: signal
 * handlers run (and only set flags) but the wait goes on. */
static void block_for(double sec)
{
        struct timespec end;

        clock_gettime(CLOCK_MONOTONIC, &end);
        end.tv_sec += (time_t)sec;
        end.tv_nsec += (long)((sec - (double)(time_t)sec) * 1e9);
        if (end.tv_nsec >= 1000000000L) {
                end.tv_sec++;
                end.tv_nsec -= 1000000000L;
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &end, NULL) == EINTR)
                ;
}

/* Child exits at once; the grandchild closes every inherited fd (so that it
 * holds neither the listener nor the connection) and lives ms milliseconds.
 * Returns the grandchild's pid or -errno. */
static int orphan(int ms)
{
        int p[2], gpid = -1;
        pid_t child;

        if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
        child = fork();
        if (child < 0) {
                close(p[0]);
                close(p[1]);
                return -errno;
        }
        if (child == 0) {
                pid_t g = fork();

                if (g == 0) {
                        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

                        close_range(3, ~0U, 0);
                        nanosleep(&ts, NULL);
                        _exit(0);
                }
                (void)!write(p[1], &g, sizeof(g));
                _exit(g < 0);
        }
        close(p[1]);
        if (read(p[0], &gpid, sizeof(gpid)) != (ssize_t)sizeof(gpid))
                gpid = -EIO;
        close(p[0]);
        /* The child exits at once; this reaps exactly it. */
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
                ;
        return gpid;
}

static int serve_conn(void *arg)
{
        struct conn *c = arg;
        aiot_worker *w = c->a->w;
        char line[256];
        size_t len = 0;
        char *nl = NULL;

        while (!nl && len < sizeof(line) - 1) {
                ssize_t n = aiot_read(c->fd, line + len, sizeof(line) - 1 - len);

                if (n <= 0)
                        goto out;
                len += (size_t)n;
                line[len] = '\0';
                nl = strchr(line, '\n');
        }
        if (nl)
                *nl = '\0';
        if (!strcmp(line, "name")) {
                say(c->fd, "name=%s address=%s index=%d pid=%d ppid=%d\n", c->a->l->name ?: "(null)",
                    c->a->l->address ?: "(null)", aiot_worker_index(w), (int)getpid(), (int)getppid());
        } else if (!strncmp(line, "hang ", 5)) {
                say(c->fd, "hanging index=%d pid=%d\n", aiot_worker_index(w), (int)getpid());
                say(STDERR_FILENO, "proofmod: hanging index=%d pid=%d for %s s\n", aiot_worker_index(w),
                    (int)getpid(), line + 5);
                block_for(atof(line + 5));
                say(c->fd, "woke\n");
        } else if (!strncmp(line, "orphan ", 7)) {
                say(c->fd, "orphan=%d\n", orphan(atoi(line + 7)));
        } else {
                say(c->fd, "?\n");
        }
out:
        aiot_close(c->fd);
        free(c);
        return 0;
}

static int accept_loop(void *arg)
{
        struct acceptor *a = arg;

        for (;;) {
                int fd = aiot_accept(a->l->fd, NULL, NULL);
                struct conn *c;

                if (fd == -ECANCELED || fd == -ETIMEDOUT)
                        return 0;
                if (fd < 0) {
                        if (aiot_sleep(0.05) < 0)
                                return 0;
                        continue;
                }
                c = malloc(sizeof(*c));
                if (!c || aiot_spawn(a->conns, serve_conn, c, NULL) < 0) {
                        free(c);
                        aiot_close(fd);
                        continue;
                }
                *c = (struct conn){.fd = fd, .a = a};
        }
}

/* slow=I:MS for this worker's index, else 0. */
static int setup_ms(aiot_worker *w)
{
        char *const *argv = aiot_worker_argv(w);
        int ms = 0;

        for (int i = 1; i < aiot_worker_argc(w); i++) {
                int idx, v;

                if (sscanf(argv[i], "slow=%d:%d", &idx, &v) == 2 && idx == aiot_worker_index(w))
                        ms = v;
        }
        return ms;
}

/* True when a failif=PATH argument names an existing file. */
static bool must_fail(aiot_worker *w)
{
        char *const *argv = aiot_worker_argv(w);

        for (int i = 1; i < aiot_worker_argc(w); i++)
                if (!strncmp(argv[i], "failif=", 7) && access(argv[i] + 7, F_OK) == 0)
                        return true;
        return false;
}

static int proof_worker(aiot_worker *w)
{
        const aiot_listener *ls;
        size_t n = aiot_worker_listeners(w, &ls);
        struct acceptor *acc = calloc(n ? n : 1, sizeof(*acc));
        aiot_scope *conns;
        int r, ms = setup_ms(w), sig;

        if (!acc)
                return -ENOMEM;
        if (must_fail(w)) {
                free(acc);
                return -EADDRNOTAVAIL;
        }
        r = aiot_scope_open(&conns, NULL);
        if (r < 0) {
                free(acc);
                return r;
        }
        if (ms > 0)
                aiot_sleep(ms / 1000.0);
        for (size_t i = 0; i < n && r == 0; i++) {
                acc[i] = (struct acceptor){.l = &ls[i], .w = w, .conns = conns};
                r = aiot_spawn(aiot_worker_scope(w), accept_loop, &acc[i], &acc[i].task);
        }
        if (r == 0) {
                say(STDERR_FILENO, "proofmod: ready index=%d pid=%d\n", aiot_worker_index(w), (int)getpid());
                sig = aiot_worker_wait_stop(w);
                say(STDERR_FILENO, "proofmod: stop index=%d pid=%d signal=%d\n", aiot_worker_index(w),
                    (int)getpid(), sig);
        }
        for (size_t i = 0; i < n; i++)
                if (acc[i].task)
                        aiot_cancel_and_wait(acc[i].task);
        aiot_scope_cancel(conns);
        aiot_scope_close(conns);
        free(acc);
        return r;
}

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI,
        .name = "proofmod",
        .worker = proof_worker,
};
