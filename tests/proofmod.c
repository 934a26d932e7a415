/* SPDX-License-Identifier: MIT */
/* proofmod: the module the proof-*.sh harnesses and tests/systemd/run.sh load
 * into the real aiotools-serve.  Every worker serves every listener with
 * aiot_worker_serve(3) and answers one command line per connection, then
 * closes it:
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
 * before aiot_worker_serve() every worker writes one line to stderr:
 *   "proofmod: ready index=I pid=P\n"
 * and after it returned (drained) "proofmod: stop index=I pid=P signal=S\n". */
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

/* One write, so that lines of concurrent processes never mix. */
static void say_stderr(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say_stderr(const char *fmt, ...)
{
        char buf[512];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (n > (int)sizeof(buf) - 1)
                n = (int)sizeof(buf) - 1;
        (void)!write(STDERR_FILENO, buf, (size_t)n);
}

/* Buffers an answer on c.  Returns 0 or -errno. */
static int answer(aiot_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int answer(aiot_conn *c, const char *fmt, ...)
{
        char buf[512];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (n > (int)sizeof(buf) - 1)
                n = (int)sizeof(buf) - 1;
        return aiot_conn_write(c, buf, (size_t)n);
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

/* One command line per connection (see the file comment); 0: the library
 * flushes the answer and closes the connection. */
static int serve_conn(aiot_conn *c, void *arg)
{
        aiot_worker *w = aiot_conn_worker(c);
        const aiot_listener *l = aiot_conn_listener(c);
        char line[256];
        const char *data;
        ssize_t n = aiot_conn_read_until(c, "\n", sizeof(line) - 1, &data);

        (void)arg;
        if (n == -EMSGSIZE) /* no newline in the first 255 bytes: not a command */
                return answer(c, "?\n");
        if (n <= 0)
                return (int)n;
        memcpy(line, data, (size_t)n - 1);
        line[n - 1] = '\0';
        if (!strcmp(line, "name"))
                return answer(c, "name=%s address=%s index=%d pid=%d ppid=%d\n", l->name ?: "(null)",
                              l->address ?: "(null)", aiot_worker_index(w), (int)getpid(), (int)getppid());
        if (!strncmp(line, "hang ", 5)) {
                int r = answer(c, "hanging index=%d pid=%d\n", aiot_worker_index(w), (int)getpid());

                if (r == 0)
                        r = aiot_conn_flush(c, NULL);
                if (r < 0)
                        return r;
                say_stderr("proofmod: hanging index=%d pid=%d for %s s\n", aiot_worker_index(w), (int)getpid(),
                           line + 5);
                block_for(atof(line + 5));
                return answer(c, "woke\n");
        }
        if (!strncmp(line, "orphan ", 7))
                return answer(c, "orphan=%d\n", orphan(atoi(line + 7)));
        return answer(c, "?\n");
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
        /* A hanging command blocks longer than any request timeout would
         * allow; the watchdog tests rely on it being answered "woke". */
        struct aiot_serve_opts so = {.size = sizeof(so), .handler = serve_conn, .request_timeout = -1};
        int ms = setup_ms(w), sig;

        if (must_fail(w))
                return -EADDRNOTAVAIL;
        if (ms > 0)
                aiot_sleep(ms / 1000.0);
        say_stderr("proofmod: ready index=%d pid=%d\n", aiot_worker_index(w), (int)getpid());
        sig = aiot_worker_serve(w, &so);
        if (sig < 0)
                return sig;
        say_stderr("proofmod: stop index=%d pid=%d signal=%d\n", aiot_worker_index(w), (int)getpid(), sig);
        return 0;
}

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI,
        .name = "proofmod",
        .worker = proof_worker,
};
