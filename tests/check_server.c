/* SPDX-License-Identifier: MIT */
/* The prefork server end to end: aiotools-serve with real modules, real
 * processes and sockets on 127.0.0.1.  The test process is a child
 * subreaper, so that a worker orphaned by a dying supervisor becomes its
 * child: "no process left" is then "no child left to reap". */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "aiotools.h"
#include "testutil.h"

#define T_LONG 10.0 /* seconds: only to catch hangs */

/* Socket activation for the next srv_start(): this fd becomes fd 3 with
 * LISTEN_FDS=1, LISTEN_PID and LISTEN_FDNAMES=activation_name. */
static int activation_fd = -1;
static const char *activation_name;

struct srv {
        pid_t pid;
        int errfd;
        char err[1 << 16];
        size_t errlen;
        char dir[64];
        char log[128];
        int status;
        bool exited;
};

static double now(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const char *builddir(void)
{
        const char *b = getenv("top_builddir");

        return b ? b : ".";
}

static void setup(void)
{
        ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
        signal(SIGPIPE, SIG_IGN);
}

/* Starts aiotools-serve with args; "@MOD" is the test module, "@ECHO" the echo
 * example, "@NOSYM"/"@BADABI" the broken modules, "@LOG" the log= argument. */
static void srv_start(struct srv *s, const char *const *args)
{
        char *argv[64], paths[8][256];
        int p[2], argc = 0, np = 0;

        memset(s, 0, sizeof(*s));
        snprintf(s->dir, sizeof(s->dir), "/tmp/aiot-srv-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(s->dir));
        snprintf(s->log, sizeof(s->log), "%s/log", s->dir);
        {
                /* Writable for workers that dropped privileges. */
                int fd = open(s->log, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);

                ck_assert_int_ge(fd, 0);
                fchmod(fd, 0666);
                close(fd);
                chmod(s->dir, 0755);
        }
        if (*args && !strcmp(*args, "@STANDALONE")) {
                snprintf(paths[np], sizeof(paths[0]), "%s/examples/standalone", builddir());
                args++;
        } else
                snprintf(paths[np], sizeof(paths[0]), "%s/daemon/aiotools-serve", builddir());
        argv[argc++] = paths[np++];
        for (; *args; args++) {
                const char *a = *args;

                if (!strcmp(a, "@MOD") || !strcmp(a, "@NOSYM") || !strcmp(a, "@BADABI"))
                        snprintf(paths[np], sizeof(paths[0]), "%s/tests/.libs/%s.so", builddir(),
                                 !strcmp(a, "@MOD") ? "srvtest" : !strcmp(a, "@NOSYM") ? "nosym" : "badabi");
                else if (!strcmp(a, "@ECHO") || !strcmp(a, "@HTTP") || !strcmp(a, "@TICKER"))
                        snprintf(paths[np], sizeof(paths[0]), "%s/examples/.libs/%s.so", builddir(),
                                 !strcmp(a, "@ECHO") ? "echo" : !strcmp(a, "@HTTP") ? "http-hello" : "ticker");
                else if (!strcmp(a, "@LOG"))
                        snprintf(paths[np], sizeof(paths[0]), "log=%s", s->log);
                else {
                        argv[argc++] = (char *)a;
                        continue;
                }
                argv[argc++] = paths[np++];
        }
        argv[argc] = NULL;
        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        s->pid = fork();
        ck_assert_int_ge(s->pid, 0);
        if (s->pid == 0) {
                int null = open("/dev/null", O_RDWR);

                dup2(null, STDIN_FILENO);
                dup2(null, STDOUT_FILENO);
                dup2(p[1], STDERR_FILENO);
                /* Whatever the test runner left open must not count as the server's. */
                if (activation_fd >= 0) {
                        char pid[16];

                        dup2(activation_fd, 3);
                        closefrom(4);
                        snprintf(pid, sizeof(pid), "%d", (int)getpid());
                        setenv("LISTEN_FDS", "1", 1);
                        setenv("LISTEN_PID", pid, 1);
                        setenv("LISTEN_FDNAMES", activation_name, 1);
                } else
                        closefrom(3);
                execv(argv[0], argv);
                _exit(127);
        }
        close(p[1]);
        s->errfd = p[0];
        fcntl(s->errfd, F_SETFL, O_NONBLOCK);
}

/* Reads what stderr has, waiting up to ms for something. */
static void srv_pump(struct srv *s, int ms)
{
        struct pollfd pfd = {.fd = s->errfd, .events = POLLIN};
        ssize_t n = -1;

        if (s->errfd < 0 || poll(&pfd, 1, ms) <= 0)
                return;
        while (s->errlen < sizeof(s->err) - 1 &&
               (n = read(s->errfd, s->err + s->errlen, sizeof(s->err) - 1 - s->errlen)) > 0)
                s->errlen += (size_t)n;
        s->err[s->errlen] = '\0';
        if (n == 0) {
                close(s->errfd);
                s->errfd = -1;
        }
}

static int count_in(const char *hay, const char *needle)
{
        int n = 0;

        for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
                n++;
        return n;
}

/* Waits until stderr holds needle at least times times. */
static bool srv_wait_err(struct srv *s, const char *needle, int times, double timeout)
{
        double end = now() + timeout;

        while (count_in(s->err, needle) < times) {
                if (now() > end || s->errfd < 0)
                        return count_in(s->err, needle) >= times;
                srv_pump(s, 20);
        }
        return true;
}

/* Waits for the supervisor to exit; returns its exit code or -signal. */
static int srv_wait_exit(struct srv *s, double timeout)
{
        double end = now() + timeout;

        while (!s->exited) {
                int st;
                pid_t p = waitpid(s->pid, &st, WNOHANG);

                if (p == s->pid) {
                        s->exited = true;
                        s->status = WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
                        break;
                }
                ck_assert_msg(now() < end, "aiotools-serve did not exit in %g s; stderr:\n%s", timeout, s->err);
                srv_pump(s, 10);
        }
        /* The rest of stderr (its writers are gone). */
        while (s->errfd >= 0)
                srv_pump(s, 1000);
        return s->status;
}

/* The port of the first "listening on 127.0.0.1:PORT" line. */
static int srv_port(struct srv *s)
{
        const char *p;

        ck_assert_msg(srv_wait_err(s, "listening on 127.0.0.1:", 1, T_LONG), "not listening:\n%s", s->err);
        p = strstr(s->err, "listening on 127.0.0.1:");
        return atoi(p + strlen("listening on 127.0.0.1:"));
}

static void srv_ready(struct srv *s)
{
        ck_assert_msg(srv_wait_err(s, "notice: ready: ", 1, T_LONG), "never ready; stderr:\n%s", s->err);
}

static char *read_file(const char *path)
{
        static char buf[1 << 16];
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd < 0 ? 0 : read(fd, buf, sizeof(buf) - 1);

        if (fd >= 0)
                close(fd);
        buf[n > 0 ? n : 0] = '\0';
        return buf;
}

/* Counts log lines starting with the formatted prefix. */
static int log_count(struct srv *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int log_count(struct srv *s, const char *fmt, ...)
{
        char prefix[128], *log = read_file(s->log), *line;
        int n = 0;
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(prefix, sizeof(prefix), fmt, ap);
        va_end(ap);
        for (line = log; *line; line = strchr(line, '\n') + 1) {
                if (!strncmp(line, prefix, strlen(prefix)))
                        n++;
                if (!strchr(line, '\n'))
                        break;
        }
        return n;
}

/* The PID in the last "EVENT KIND INDEX PID ..." line for kind/index, or -1. */
static pid_t log_pid(struct srv *s, const char *event, const char *kind, int index)
{
        char prefix[64], *log = read_file(s->log), *p = log;
        pid_t pid = -1;

        snprintf(prefix, sizeof(prefix), "%s %s %d ", event, kind, index);
        while ((p = strstr(p, prefix))) {
                if (p == log || p[-1] == '\n')
                        pid = atoi(p + strlen(prefix));
                p += strlen(prefix);
        }
        return pid;
}

/* The last field of the last "EVENT KIND INDEX PID VALUE" line, or -9999. */
static int log_value(struct srv *s, const char *event, const char *kind, int index)
{
        char prefix[64], *log = read_file(s->log), *p = log;
        int value = -9999;

        snprintf(prefix, sizeof(prefix), "%s %s %d ", event, kind, index);
        while ((p = strstr(p, prefix))) {
                if (p == log || p[-1] == '\n') {
                        int pid, v;
                        if (sscanf(p + strlen(prefix), "%d %d", &pid, &v) == 2)
                                value = v;
                }
                p += strlen(prefix);
        }
        return value;
}

/* The offset of the first line starting with prefix in the log, or -1. */
static long log_offset(struct srv *s, const char *prefix)
{
        char *log = read_file(s->log), *p = log;

        while ((p = strstr(p, prefix))) {
                if (p == log || p[-1] == '\n')
                        return p - log;
                p++;
        }
        return -1;
}

/* Reaps every child (orphans included, we are their subreaper); true if none
 * is left within timeout. */
static bool no_children_within(double timeout)
{
        double end = now() + timeout;

        for (;;) {
                pid_t p = waitpid(-1, NULL, WNOHANG);

                if (p < 0 && errno == ECHILD)
                        return true;
                if (p > 0)
                        continue;
                if (now() > end)
                        return false;
                usleep(5000);
        }
}

static void srv_cleanup(struct srv *s)
{
        char cmd[128];

        if (!s->exited) {
                kill(s->pid, SIGKILL);
                srv_wait_exit(s, T_LONG);
        }
        if (s->errfd >= 0)
                close(s->errfd);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
        (void)!system(cmd);
}

/* Every test ends here: no process of the server may outlive it. */
static void srv_finish(struct srv *s)
{
        ck_assert(no_children_within(1.0));
        srv_cleanup(s);
}

/* The common ending: SIGTERM, a clean exit 0, nothing left behind. */
static void srv_stop_clean(struct srv *s)
{
        kill(s->pid, SIGTERM);
        ck_assert_int_eq(srv_wait_exit(s, T_LONG), 0);
        srv_finish(s);
}

static int tcp_connect(int port)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ck_assert_int_ge(fd, 0);
        ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect to %d: %s", port,
                      strerror(errno));
        return fd;
}

/* The errno of a connect to 127.0.0.1:port (0 when it succeeds). */
static int connect_errno(int port)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), e;

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ck_assert_int_ge(fd, 0);
        e = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : errno;
        close(fd);
        return e;
}

/* Reads until EOF into buf (NUL-terminated). */
static void read_all(int fd, char *buf, size_t len)
{
        size_t got = 0;
        ssize_t n;

        while (got < len - 1 && (n = read(fd, buf + got, len - 1 - got)) > 0)
                got += (size_t)n;
        buf[got] = '\0';
}

/* What the test module answers on a fresh connection: "w INDEX PID". */
static int ask_worker(int port, pid_t *pid)
{
        char buf[64];
        int fd = tcp_connect(port), idx = -1, p = -1;

        read_all(fd, buf, sizeof(buf));
        close(fd);
        ck_assert_int_eq(sscanf(buf, "w %d %d", &idx, &p), 2);
        if (pid)
                *pid = p;
        return idx;
}

/* ---------------------------------------------------------------- lifecycle */

static void lifecycle(int n, int signo, const char *signals_opt)
{
        char nbuf[16];
        struct srv s;
        const char *args[] = {"-w", nbuf, "-b", "127.0.0.1:0", signals_opt ? signals_opt : "--log-level=info",
                              "@MOD", "--", "@LOG", "data=4242", "slow=0", NULL};
        long teardown;

        snprintf(nbuf, sizeof(nbuf), "%d", n);
        srv_start(&s, args);
        srv_ready(&s);
        /* Ready only after every process reached wait_stop (worker 0 was slow). */
        ck_assert_int_eq(log_count(&s, "ready w "), n);
        for (int i = 0; i < n; i++)
                ck_assert_msg(log_count(&s, "ready w %d ", i) == 1, "worker %d ready %d times", i,
                              log_count(&s, "ready w %d ", i));
        ck_assert_int_eq(log_count(&s, "ready e 0 "), 1);
        /* The main context's data is visible in every process. */
        ck_assert_int_eq(count_in(read_file(s.log), " 4242\n"), n + 2);
        ck_assert_int_eq(log_count(&s, "main-setup m -1 "), 1);
        /* The worker API answered as documented everywhere. */
        for (int i = 0; i < n; i++)
                ck_assert_int_eq(log_value(&s, "api", "w", i), 1);
        ck_assert_int_eq(log_value(&s, "api", "e", 0), 1);
        ck_assert_int_eq(log_value(&s, "api", "m", -1), 1);
        /* Each process has its own loop only, its report channel (a socketpair)
         * only, no pidfd of a sibling, and the listener (workers) or nothing
         * (the extra process). */
        for (int i = 0; i < n; i++) {
                ck_assert_int_eq(log_value(&s, "fd-epoll", "w", i), 1);
                ck_assert_int_eq(log_value(&s, "fd-pipe", "w", i), 0);
                ck_assert_int_eq(log_value(&s, "fd-pidfd", "w", i), 0);
                ck_assert_int_eq(log_value(&s, "fd-socket", "w", i), 2);
        }
        ck_assert_int_eq(log_value(&s, "fd-epoll", "e", 0), 1);
        ck_assert_int_eq(log_value(&s, "fd-pipe", "e", 0), 0);
        ck_assert_int_eq(log_value(&s, "fd-pidfd", "e", 0), 0);
        ck_assert_int_eq(log_value(&s, "fd-socket", "e", 0), 1);
        /* The children are tracked the way the fork module's own probe finds
         * (the server inherits this process's kernel, filter and environment),
         * unless --no-pidfd forces the fallback.  Under run-nopidfd.sh the probe
         * must also have seen the filter. */
        {
                const char *mode = getenv("AIOTOOLS_EXPECT_FORK_MODE");
                bool forced = signals_opt && !strcmp(signals_opt, "--no-pidfd");
                bool sigchld = forced || aiot_fork_mode() == AIOT_FORK_SIGCHLD;

                if (mode && !strcmp(mode, "sigchld"))
                        ck_assert_int_eq(aiot_fork_mode(), AIOT_FORK_SIGCHLD);

                ck_assert_msg(strstr(s.err, sigchld ? "(tracked by SIGCHLD)" : "(tracked by pidfd)"), "stderr:\n%s",
                              s.err);
        }

        ck_assert_int_eq(kill(s.pid, signo), 0);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        /* Every worker and the extra process saw exactly that signal, once. */
        ck_assert_int_eq(log_count(&s, "stop w "), n);
        for (int i = 0; i < n; i++) {
                ck_assert_int_eq(log_count(&s, "stop w %d ", i), 1);
                ck_assert_int_eq(log_value(&s, "stop", "w", i), signo);
        }
        ck_assert_int_eq(log_count(&s, "stop e 0 "), 1);
        ck_assert_int_eq(log_value(&s, "stop", "e", 0), signo);
        /* The main teardown ran after the last process exited, with the signal. */
        teardown = log_offset(&s, "main-teardown m -1 ");
        ck_assert_int_ge(teardown, 0);
        ck_assert_int_eq(log_count(&s, "main-teardown"), 1);
        ck_assert_int_eq(log_value(&s, "main-teardown", "m", -1), signo);
        for (int i = 0; i < n; i++) {
                char pre[32];
                snprintf(pre, sizeof(pre), "stop w %d ", i);
                ck_assert_int_lt(log_offset(&s, pre), teardown);
        }
        ck_assert_int_lt(log_offset(&s, "stop e 0 "), teardown);
        ck_assert_int_eq(log_value(&s, "api-late", "m", -1), 1);
        ck_assert_int_eq(log_count(&s, "api-again-failed"), 0);
        ck_assert(no_children_within(1.0));
        ck_assert_int_eq(testutil_count_zombies(), 0);
        srv_cleanup(&s);
}

START_TEST(test_workers_n)
{
        static const int ns[] = {1, 4, 16};

        lifecycle(ns[_i], SIGTERM, NULL);
}
END_TEST

START_TEST(test_sigint)
{
        lifecycle(2, SIGINT, NULL);
}
END_TEST

START_TEST(test_custom_stop_signal)
{
        lifecycle(2, SIGUSR1, "--stop-signals=USR1");
}
END_TEST

START_TEST(test_no_pidfd_option)
{
        lifecycle(2, SIGTERM, "--no-pidfd");
}
END_TEST

START_TEST(test_setup_failure)
{
        struct srv s;
        const char *args[] = {"-w", "4", "@MOD", "--", "@LOG", "fail=2", NULL};

        srv_start(&s, args);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 1);
        ck_assert_msg(strstr(s.err, "worker 2 failed during setup: Cannot assign requested address"), "stderr:\n%s",
                      s.err);
        ck_assert_ptr_null(strstr(s.err, "notice: ready"));
        srv_finish(&s);
}
END_TEST

START_TEST(test_main_setup_failure)
{
        struct srv s;
        const char *args[] = {"-w", "2", "@MOD", "--", "@LOG", "mainfail=1", NULL};

        srv_start(&s, args);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 1);
        ck_assert_msg(strstr(s.err, "main context failed during setup: Transport endpoint is not connected"),
                      "stderr:\n%s", s.err);
        /* Nothing was forked. */
        ck_assert_int_eq(log_count(&s, "ready "), 0);
        srv_finish(&s);
}
END_TEST

/* A stop signal while a worker is still in its setup: a clean stop. */
START_TEST(test_stop_during_startup)
{
        struct srv s;
        const char *args[] = {"-w", "2", "--log-level=debug", "@MOD", "--", "@LOG", "slow=1", NULL};

        srv_start(&s, args);
        ck_assert(srv_wait_err(&s, "worker 1 started", 1, T_LONG));
        kill(s.pid, SIGTERM);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        ck_assert_ptr_null(strstr(s.err, "notice: ready"));
        ck_assert_ptr_null(strstr(s.err, "failed during setup"));
        srv_finish(&s);
}
END_TEST

START_TEST(test_pidfile_and_user)
{
        struct srv s;
        char pidfile[128];
        const char *args[] = {"-w", "1", "-p", pidfile, "-u", "nobody", "@MOD", "--", "@LOG", NULL};
        struct passwd *pw = getpwnam("nobody");

        if (getuid() != 0 || !pw) {
                /* Dropping privileges needs root; the pidfile alone then. */
                args[3] = "@MOD";
                args[4] = "--";
                args[5] = "@LOG";
                args[6] = NULL;
        }
        snprintf(pidfile, sizeof(pidfile), "/tmp/aiot-pid-%d", (int)getpid());
        srv_start(&s, args);
        srv_ready(&s);
        ck_assert_int_eq(atoi(read_file(pidfile)), s.pid);
        if (getuid() == 0 && pw) {
                ck_assert_int_eq(log_value(&s, "uid", "w", 0), (int)pw->pw_uid);
                ck_assert_int_eq(log_value(&s, "uid", "e", 0), (int)pw->pw_uid);
        }
        kill(s.pid, SIGTERM);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        ck_assert_int_eq(access(pidfile, F_OK) < 0 && errno == ENOENT, 1);
        srv_finish(&s);
}
END_TEST

/* aiot_server_run() itself refuses a bad config with AIOT_EXIT_USAGE. */
static int never(aiot_worker *w)
{
        (void)w;
        return -EPROTO;
}

START_TEST(test_run_bad_config)
{
        const char *bind = "127.0.0.1:99999";
        static const int kill_sig[] = {SIGKILL};
        struct aiot_server_config ok = {.size = sizeof(ok), .workers = 1, .worker = never}, c;

        c = ok;
        c.size = 1;
        ck_assert_int_eq(aiot_server_run(&c), AIOT_EXIT_USAGE);
        ck_assert_int_eq(aiot_server_run(NULL), AIOT_EXIT_USAGE);
        c = ok;
        c.worker = NULL;
        ck_assert_int_eq(aiot_server_run(&c), AIOT_EXIT_USAGE);
        c = ok;
        c.workers = 5000;
        ck_assert_int_eq(aiot_server_run(&c), AIOT_EXIT_USAGE);
        c = ok;
        c.stop_signals = kill_sig;
        c.n_stop_signals = 1;
        ck_assert_int_eq(aiot_server_run(&c), AIOT_EXIT_USAGE);
        c = ok;
        c.binds = &bind;
        c.n_binds = 1;
        ck_assert_int_eq(aiot_server_run(&c), AIOT_EXIT_USAGE);
        c = ok;
        c.reuseport = 1;
        ck_assert_int_eq(aiot_server_run(&c), AIOT_EXIT_USAGE);
        c = ok;
        c.group = "no-such-group-xyz";
        ck_assert_int_eq(aiot_server_run(&c), AIOT_EXIT_USAGE);
        /* The in-process path forks for real too: a failing setup is exit 1. */
        ck_assert_int_eq(aiot_server_run(&ok), AIOT_EXIT_FAILURE);
        ck_assert(no_children_within(1.0));
        ck_assert_int_eq(testutil_count_zombies(), 0);
}
END_TEST

/* The reload hook in aiot_server_run() itself: the first SIGHUP is refused
 * (nothing forked, the serving generation goes on), the second one (sent by
 * the first hook call) gets a new worker function and count; each
 * generation is reported retired once, the refused one at once. */
static int hook_pipe = -1, hook_calls, retired_gens[8], n_retired;

static void hook_say(const char *kind, aiot_worker *w)
{
        char line[64];
        int n = snprintf(line, sizeof(line), "%s gen=%d index=%d\n", kind, aiot_worker_generation(w),
                         aiot_worker_index(w));

        ck_assert_int_eq(write(hook_pipe, line, (size_t)n), n);
}

static int hook_worker_a(aiot_worker *w)
{
        hook_say("a", w);
        if (aiot_worker_index(w) == 0)
                kill(getppid(), SIGHUP);
        return aiot_worker_wait_stop(w) < 0 ? -1 : 0;
}

static int hook_worker_b(aiot_worker *w)
{
        hook_say("b", w);
        return aiot_worker_wait_stop(w) < 0 ? -1 : 0;
}

static int hook_reload(struct aiot_server_reload *r, void *arg)
{
        ck_assert_ptr_eq(arg, &hook_calls);
        ck_assert_uint_eq(r->size, sizeof(*r));
        ck_assert_int_eq(r->workers, 1);
        ck_assert_ptr_eq(r->worker, hook_worker_a);
        if (++hook_calls == 1) {
                ck_assert_uint_eq(r->gen, 2);
                /* The next reload, once this one is refused. */
                kill(getpid(), SIGHUP);
                snprintf(r->why, sizeof(r->why), "refused by the test");
                return -EINVAL;
        }
        ck_assert_uint_eq(r->gen, 3);
        r->workers = 2;
        r->worker = hook_worker_b;
        return 0;
}

static void hook_retired(unsigned gen, void *arg)
{
        ck_assert_ptr_eq(arg, &hook_calls);
        if (n_retired < 8)
                retired_gens[n_retired++] = (int)gen;
        /* Generation 1 has gone: the test is over. */
        if (gen == 1)
                kill(getpid(), SIGTERM);
}

START_TEST(test_reload_hook)
{
        struct aiot_server_config c = {.size = sizeof(c), .workers = 1, .worker = hook_worker_a,
                                       .stop_timeout = 5, .reload = hook_reload,
                                       .retired = hook_retired, .reload_arg = &hook_calls};
        int pfd[2];
        char buf[512] = "";
        ssize_t n;

        ck_assert_int_eq(pipe(pfd), 0);
        hook_pipe = pfd[1];
        alarm(20);
        ck_assert_int_eq(aiot_server_run(&c), AIOT_EXIT_OK);
        alarm(0);
        close(pfd[1]);
        n = read(pfd[0], buf, sizeof(buf) - 1);
        ck_assert_int_gt(n, 0);
        buf[n] = '\0';
        ck_assert_int_eq(hook_calls, 2);
        ck_assert_msg(strstr(buf, "a gen=1 index=0\n") && strstr(buf, "b gen=3 index=0\n") &&
                              strstr(buf, "b gen=3 index=1\n") && !strstr(buf, "gen=2"),
                      "workers said:\n%s", buf);
        ck_assert_int_eq(count_in(buf, "\n"), 3);
        /* The refused generation 2 first, then 1; 3 retires at the stop. */
        ck_assert_int_eq(n_retired, 3);
        ck_assert_int_eq(retired_gens[0], 2);
        ck_assert_int_eq(retired_gens[1], 1);
        ck_assert_int_eq(retired_gens[2], 3);
        close(pfd[0]);
}
END_TEST

START_TEST(test_stop_timeout_kills)
{
        struct srv s;
        const char *args[] = {"-w", "2", "-t", "0.3", "@MOD", "--", "@LOG", "ignore=1", NULL};
        double t0;

        srv_start(&s, args);
        srv_ready(&s);
        t0 = now();
        kill(s.pid, SIGTERM);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        ck_assert_double_ge(now() - t0, 0.25);
        ck_assert_int_eq(count_in(s.err, "did not stop within 0.3 s; killing it"), 2);
        ck_assert_int_eq(log_count(&s, "stop w "), 2);
        srv_finish(&s);
}
END_TEST

START_TEST(test_supervisor_killed)
{
        struct srv s;
        const char *args[] = {"-w", "4", "@MOD", "--", "@LOG", NULL};
        pid_t pids[5];
        double t0;

        srv_start(&s, args);
        srv_ready(&s);
        for (int i = 0; i < 4; i++)
                pids[i] = log_pid(&s, "ready", "w", i);
        pids[4] = log_pid(&s, "ready", "e", 0);
        kill(s.pid, SIGKILL);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), -SIGKILL);
        t0 = now();
        /* The orphans are ours to reap now; all must die within a second. */
        ck_assert(no_children_within(1.0));
        ck_assert_double_lt(now() - t0, 1.0);
        for (int i = 0; i < 5; i++)
                ck_assert_int_eq(kill(pids[i], 0) < 0 && errno == ESRCH, 1);
        srv_cleanup(&s);
}
END_TEST

START_TEST(test_worker_killed_respawns)
{
        struct srv s;
        const char *args[] = {"-w", "2", "-b", "127.0.0.1:0", "@MOD", "--", "@LOG", NULL};
        pid_t old, fresh, seen;
        int port, served[2] = {0, 0};

        srv_start(&s, args);
        port = srv_port(&s);
        srv_ready(&s);
        old = log_pid(&s, "ready", "w", 1);
        ck_assert_int_gt(old, 0);
        kill(old, SIGKILL);
        ck_assert_msg(srv_wait_err(&s, "worker 1 (pid ", 2, T_LONG) && srv_wait_err(&s, "is ready again", 1, T_LONG),
                      "stderr:\n%s", s.err);
        fresh = log_pid(&s, "ready", "w", 1);
        ck_assert_int_ne(fresh, old);
        ck_assert_int_eq(log_count(&s, "ready w 1 "), 2);
        ck_assert_int_eq(log_count(&s, "ready w 0 "), 1);
        /* Still serving, and the new worker 1 is the one with the new PID. */
        for (int i = 0; i < 40; i++) {
                int idx = ask_worker(port, &seen);

                ck_assert(idx == 0 || idx == 1);
                served[idx]++;
                if (idx == 1)
                        ck_assert_int_eq(seen, fresh);
        }
        srv_stop_clean(&s);
}
END_TEST

START_TEST(test_crash_loop)
{
        struct srv s;
        const char *args[] = {"-w", "2", "--restart-limit=2/10", "@MOD", "--", "@LOG", "crash=1", NULL};

        srv_start(&s, args);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 1);
        ck_assert_msg(strstr(s.err, "crash loop: more than 2 restarts within 10 s"), "stderr:\n%s", s.err);
        /* Respawned with the same index: three incarnations of worker 1. */
        ck_assert_int_eq(log_count(&s, "ready w 1 "), 3);
        ck_assert_int_eq(log_count(&s, "ready w 0 "), 1);
        srv_finish(&s);
}
END_TEST

/* ---------------------------------------------------------------- serving */

START_TEST(test_echo_1000_connections)
{
        struct srv s;
        const char *args[] = {"-w", "4", "-b", "127.0.0.1:0", "-t", "5", "@ECHO", NULL};
        int port;

        srv_start(&s, args);
        port = srv_port(&s);
        srv_ready(&s);
        for (int i = 0; i < 1000; i++) {
                char msg[64], back[64];
                int fd = tcp_connect(port), n = snprintf(msg, sizeof(msg), "hello %d from the test\n", i);

                ck_assert_int_eq(write(fd, msg, (size_t)n), n);
                shutdown(fd, SHUT_WR);
                read_all(fd, back, sizeof(back));
                ck_assert_str_eq(back, msg);
                close(fd);
        }
        srv_stop_clean(&s);
}
END_TEST

/* On the stop signal echo stops accepting but lets an open connection finish. */
START_TEST(test_echo_graceful_stop)
{
        struct srv s;
        const char *args[] = {"-w", "1", "-b", "127.0.0.1:0", "-t", "20", "@ECHO", NULL};
        char back[16];
        int port, fd;
        double t0;

        srv_start(&s, args);
        port = srv_port(&s);
        srv_ready(&s);
        fd = tcp_connect(port);
        ck_assert_int_eq(write(fd, "one\n", 4), 4);
        ck_assert_int_eq(read(fd, back, sizeof(back)), 4);
        kill(s.pid, SIGTERM);
        ck_assert(srv_wait_err(&s, "SIGTERM received", 1, T_LONG));
        /* Still served after the stop signal ... */
        ck_assert_int_eq(write(fd, "two\n", 4), 4);
        ck_assert_int_eq(read(fd, back, sizeof(back)), 4);
        ck_assert_int_eq(memcmp(back, "two\n", 4), 0);
        ck_assert(!s.exited && waitpid(s.pid, NULL, WNOHANG) == 0);
        /* ... while a new connection is refused: no process holds the listening
         * socket any more, so nothing is queued for nobody and reset at exit. */
        t0 = now();
        while (connect_errno(port) != ECONNREFUSED && now() - t0 < T_LONG)
                usleep(10 * 1000);
        ck_assert_int_eq(connect_errno(port), ECONNREFUSED);
        ck_assert_int_eq(write(fd, "three\n", 6), 6);
        ck_assert_int_eq(read(fd, back, sizeof(back)), 6);
        /* ... and the server is gone soon after the client closes, long before the timeout. */
        t0 = now();
        close(fd);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        ck_assert_double_lt(now() - t0, 5.0);
        ck_assert_ptr_null(strstr(s.err, "did not stop"));
        srv_finish(&s);
}
END_TEST

START_TEST(test_reuseport)
{
        struct srv s;
        const char *args[] = {"-w", "4", "--reuseport", "-b", "127.0.0.1:0", "@MOD", "--", "@LOG", NULL};
        int port, served[4] = {0}, distinct = 0;

        srv_start(&s, args);
        port = srv_port(&s);
        srv_ready(&s);
        ck_assert_ptr_nonnull(strstr(s.err, "(reuseport)"));
        for (int i = 0; i < 200; i++) {
                int idx = ask_worker(port, NULL);

                ck_assert(idx >= 0 && idx < 4);
                served[idx]++;
        }
        for (int i = 0; i < 4; i++)
                distinct += served[i] > 0;
        /* Each worker has its own accept queue; the kernel spreads connections. */
        ck_assert_int_ge(distinct, 2);
        srv_stop_clean(&s);
}
END_TEST

START_TEST(test_unix_listener)
{
        struct srv s;
        char bind[160], path[100], buf[64];
        const char *args[] = {"-w", "2", "-b", bind, "@MOD", "--", "@LOG", NULL};
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd, idx, pid;

        srv_start(&s, (const char *[]){"-V", NULL}); /* only to get a temp dir */
        srv_wait_exit(&s, T_LONG);
        snprintf(path, sizeof(path), "%s/sock", s.dir);
        snprintf(bind, sizeof(bind), "unix:%s", path);
        {
                char dir[64];
                memcpy(dir, s.dir, sizeof(dir));
                srv_start(&s, args);
                memcpy(s.dir, dir, sizeof(dir)); /* clean up the first one too */
                snprintf(s.log, sizeof(s.log), "%s/log", dir);
        }
        srv_ready(&s);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        read_all(fd, buf, sizeof(buf));
        close(fd);
        ck_assert_int_eq(sscanf(buf, "w %d %d", &idx, &pid), 2);
        ck_assert(idx == 0 || idx == 1);
        kill(s.pid, SIGTERM);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        ck_assert(no_children_within(1.0));
        /* The socket file goes with the server. */
        ck_assert_int_eq(access(path, F_OK) < 0 && errno == ENOENT, 1);
        srv_cleanup(&s);
}
END_TEST

/* Sends req on a fresh connection and returns everything until EOF. */
static char *http(int port, const char *req, size_t len)
{
        static char buf[1 << 14];
        int fd = tcp_connect(port);

        ck_assert_int_eq(write(fd, req, len), (ssize_t)len);
        read_all(fd, buf, sizeof(buf));
        close(fd);
        return buf;
}

static char *http_str(int port, const char *req)
{
        return http(port, req, strlen(req));
}

START_TEST(test_http_hello)
{
        struct srv s;
        const char *args[] = {"-w", "2", "-b", "127.0.0.1:0", "@HTTP", "--", "drain=0.3", NULL};
        static const char pipelined[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                                        "POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde"
                                        "HEAD /c HTTP/1.1\r\n\r\n"
                                        "GET /d HTTP/1.1\r\nConnection: close\r\n\r\n"
                                        "GET /never HTTP/1.1\r\n\r\n";
        static char big[10000];
        char *r;
        int port;

        srv_start(&s, args);
        port = srv_port(&s);
        srv_ready(&s);
        /* Pipelined: four answers in order, the HEAD one without a body, then close. */
        r = http(port, pipelined, sizeof(pipelined) - 1);
        ck_assert_int_eq(count_in(r, "HTTP/1.1 200 OK\r\n"), 4);
        ck_assert_int_eq(count_in(r, "\r\n\r\nhello\n"), 3);
        ck_assert_int_eq(count_in(r, "Connection: close"), 1);
        ck_assert_ptr_nonnull(strstr(r, "Connection: close\r\n\r\nhello\n"));
        /* HTTP/1.0 closes after one answer. */
        r = http_str(port, "GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n");
        ck_assert_int_eq(count_in(r, "200 OK"), 1);
        /* Oversized head: 431; malformed: 400; chunked body: 501. */
        memset(big, 'a', sizeof(big));
        memcpy(big, "GET / HTTP/1.1\r\nX: ", 20);
        r = http(port, big, sizeof(big));
        ck_assert_ptr_nonnull(strstr(r, "HTTP/1.1 431 "));
        r = http_str(port, "garbage\r\n\r\n");
        ck_assert_ptr_nonnull(strstr(r, "HTTP/1.1 400 "));
        r = http_str(port, "GET / HTTP/2.0\r\n\r\n");
        ck_assert_ptr_nonnull(strstr(r, "HTTP/1.1 400 "));
        r = http_str(port, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        ck_assert_ptr_nonnull(strstr(r, "HTTP/1.1 501 "));
        /* An idle keep-alive connection does not hold up the stop beyond the drain time. */
        {
                int idle = tcp_connect(port);
                double t0 = now();

                kill(s.pid, SIGTERM);
                ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
                ck_assert_double_lt(now() - t0, 5.0);
                close(idle);
        }
        srv_finish(&s);
}
END_TEST

START_TEST(test_ticker)
{
        struct srv s;
        const char *args[] = {"-w", "2", "@TICKER", "--", "0.05", NULL};

        srv_start(&s, args);
        srv_ready(&s);
        ck_assert(srv_wait_err(&s, "heartbeat: the workers tick every 0.05 s", 1, T_LONG));
        ck_assert_int_ge(count_in(s.err, "tick (every 0.05 s, configured by the main context)"), 4);
        ck_assert_ptr_nonnull(strstr(s.err, "worker 0["));
        ck_assert_ptr_nonnull(strstr(s.err, "worker 1["));
        kill(s.pid, SIGTERM);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        ck_assert_ptr_nonnull(strstr(s.err, "main context: every process has exited (signal 15)"));
        srv_finish(&s);
        /* A bad interval is a main-context setup failure. */
        srv_start(&s, (const char *[]){"-w", "1", "@TICKER", "--", "soon", NULL});
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 1);
        ck_assert_ptr_nonnull(strstr(s.err, "ticker: bad interval 'soon'"));
        srv_cleanup(&s);
}
END_TEST

START_TEST(test_standalone)
{
        struct srv s;
        const char *args[] = {"@STANDALONE", "127.0.0.1:0", "3", NULL};
        char buf[64];
        int port, fd;

        srv_start(&s, args);
        port = srv_port(&s);
        srv_ready(&s);
        ck_assert_ptr_nonnull(strstr(s.err, "ready: 3 workers"));
        fd = tcp_connect(port);
        read_all(fd, buf, sizeof(buf));
        close(fd);
        ck_assert_ptr_nonnull(strstr(buf, "hello from pid "));
        kill(s.pid, SIGINT);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        ck_assert_int_eq(count_in(s.err, "stopping on signal 2"), 3);
        srv_finish(&s);
}
END_TEST

/* ---------------------------------------------------------------- bad input */

static const struct {
        const char *args[6];
        const char *needle;
} bad[] = {
        {{"--frobnicate", "@MOD"}, "unknown option '--frobnicate'"},
        {{"-w", "0", "@MOD"}, "invalid worker count '0'"},
        {{"-w", "abc", "@MOD"}, "invalid worker count 'abc'"},
        {{"-b", "127.0.0.1:99999", "@MOD"}, "127.0.0.1:99999"},
        {{"-b", "nonsense", "@MOD"}, "nonsense"},
        {{"-b", "@BUSY", "@MOD"}, "Address already in use"},
        {{"/nonexistent/module.so"}, "cannot open module '/nonexistent/module.so': No such file or directory"},
        {{"@TEXT"}, "cannot load module"},
        {{"@NOSYM"}, "does not export 'aiot_module'"},
        {{"@BADABI"}, "built for module ABI 42"},
        {{"-u", "no-such-user-xyz", "@MOD"}, "unknown user 'no-such-user-xyz'"},
        {{"--log-level=loud", "@MOD"}, "invalid log level 'loud'"},
        {{"-c", "@BADCONF"}, ".conf:2: invalid worker count 'lots' for --workers"},
        {{"-c", "/nonexistent/serve.conf"}, "cannot read config file '/nonexistent/serve.conf'"},
};

START_TEST(test_bad_input)
{
        struct srv s;
        const char *args[8];
        char busy[64], text[128];
        int n = 0, lfd = -1;

        for (int j = 0; j < 6 && bad[_i].args[j]; j++) {
                const char *a = bad[_i].args[j];

                if (!strcmp(a, "@BUSY")) {
                        /* A port that is taken: listening already. */
                        struct sockaddr_in sa = {.sin_family = AF_INET};
                        socklen_t len = sizeof(sa);

                        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                        lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                        ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
                        ck_assert_int_eq(listen(lfd, 1), 0);
                        getsockname(lfd, (struct sockaddr *)&sa, &len);
                        snprintf(busy, sizeof(busy), "127.0.0.1:%d", ntohs(sa.sin_port));
                        a = busy;
                } else if (!strcmp(a, "@BADCONF")) {
                        int fd;

                        snprintf(text, sizeof(text), "/tmp/aiot-badconf-%d.conf", (int)getpid());
                        fd = open(text, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                        ck_assert_int_eq(write(fd, "# bad\nworkers = lots\nmodule = m.so\n", 35), 35);
                        close(fd);
                        a = text;
                } else if (!strcmp(a, "@TEXT")) {
                        int fd;

                        snprintf(text, sizeof(text), "/tmp/aiot-notso-%d.so", (int)getpid());
                        fd = open(text, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                        ck_assert_int_eq(write(fd, "not an ELF file\n", 16), 16);
                        close(fd);
                        a = text;
                }
                args[n++] = a;
        }
        args[n] = NULL;
        srv_start(&s, args);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 2);
        ck_assert_msg(strstr(s.err, bad[_i].needle), "case %d: stderr lacks '%s':\n%s", _i, bad[_i].needle, s.err);
        /* One line, whatever the input. */
        ck_assert_msg(count_in(s.err, "\n") == 1, "case %d: not one line:\n%s", _i, s.err);
        ck_assert(no_children_within(1.0));
        if (lfd >= 0)
                close(lfd);
        if (!strcmp(bad[_i].args[0], "@TEXT") || (bad[_i].args[1] && !strcmp(bad[_i].args[1], "@BADCONF")))
                unlink(text);
        srv_cleanup(&s);
}
END_TEST

START_TEST(test_check_help_version)
{
        struct srv s;

        srv_start(&s, (const char *[]){"--check", "-b", "127.0.0.1:0", "@MOD", NULL});
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        srv_cleanup(&s);
        srv_start(&s, (const char *[]){"--check", "-b", "127.0.0.1:x", "@MOD", NULL});
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 2);
        srv_cleanup(&s);
        srv_start(&s, (const char *[]){"--help", NULL});
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        srv_cleanup(&s);
        srv_start(&s, (const char *[]){"--version", NULL});
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        srv_cleanup(&s);
}
END_TEST


/* ---------------------------------------------------------------- issue 5: production lifecycle */

/* A notify socket like systemd's: NOTIFY_SOCKET for the servers started next. */
struct notify {
        int fd;
        char path[108];
        char msgs[64][512];
        double at[64];
        int n;
};

/* Returns false when the build has no libsystemd (sd_notify is a no-op). */
static bool notify_open(struct notify *nt)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        static int seq;

        memset(nt, 0, sizeof(*nt));
        snprintf(nt->path, sizeof(nt->path), "/tmp/aiot-notify-%d-%d", (int)getpid(), seq++);
        unlink(nt->path);
        nt->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        ck_assert_int_ge(nt->fd, 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", nt->path);
        ck_assert_int_eq(bind(nt->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        setenv("NOTIFY_SOCKET", nt->path, 1);
        if (aiot_sd_notify("X_PROBE=1") <= 0)
                return false;
        (void)!recv(nt->fd, nt->msgs[0], sizeof(nt->msgs[0]), 0);
        return true;
}

static void notify_pump(struct notify *nt, int ms)
{
        struct pollfd pfd = {.fd = nt->fd, .events = POLLIN};

        if (poll(&pfd, 1, ms) <= 0)
                return;
        while (nt->n < 64) {
                ssize_t k = recv(nt->fd, nt->msgs[nt->n], sizeof(nt->msgs[0]) - 1, 0);

                if (k <= 0)
                        return;
                nt->msgs[nt->n][k] = '\0';
                nt->at[nt->n++] = now();
        }
}

/* Waits for a message containing needle after message index *from; returns its index. */
static int notify_wait(struct notify *nt, struct srv *s, const char *needle, int from, double timeout)
{
        double end = now() + timeout;

        for (;;) {
                for (int i = from; i < nt->n; i++)
                        if (strstr(nt->msgs[i], needle))
                                return i;
                ck_assert_msg(now() < end, "no notify message '%s'; stderr:\n%s", needle, s->err);
                notify_pump(nt, 10);
                srv_pump(s, 0);
        }
}

static void notify_close(struct notify *nt)
{
        unsetenv("NOTIFY_SOCKET");
        unsetenv("WATCHDOG_USEC");
        close(nt->fd);
        unlink(nt->path);
}

/* READY=1 only after the last worker is ready; RELOADING=1 ... READY=1 around
 * a SIGHUP, with a failed reload too; STOPPING=1 on SIGTERM. */
START_TEST(test_notify_sequence)
{
        struct notify nt;
        struct srv s;
        char failfile[160];
        const char *args[] = {"-w", "2", "@MOD", "--", "@LOG", "slow=1", failfile, NULL};
        int i, r;

        if (!notify_open(&nt)) {
                notify_close(&nt);
                return;
        }
        snprintf(failfile, sizeof(failfile), "failfile=/tmp/aiot-failfile-%d", (int)getpid());
        unlink(failfile + 9);
        srv_start(&s, args);
        i = notify_wait(&nt, &s, "STATUS=starting 2 workers", 0, T_LONG);
        i = notify_wait(&nt, &s, "READY=1", i, T_LONG);
        /* Both workers had reported (they log before they report). */
        ck_assert_int_eq(log_count(&s, "ready w "), 2);
        ck_assert_ptr_nonnull(strstr(nt.msgs[i], "STATUS=2 workers, generation 1"));
        {
                char mainpid[32];

                snprintf(mainpid, sizeof(mainpid), "MAINPID=%d", (int)s.pid);
                ck_assert_ptr_nonnull(strstr(nt.msgs[i], mainpid));
        }
        for (int k = 0; k < i; k++)
                ck_assert_ptr_null(strstr(nt.msgs[k], "READY=1"));
        kill(s.pid, SIGHUP);
        r = notify_wait(&nt, &s, "RELOADING=1", i + 1, T_LONG);
        ck_assert_ptr_nonnull(strstr(nt.msgs[r], "MONOTONIC_USEC="));
        i = notify_wait(&nt, &s, "READY=1", r + 1, T_LONG);
        ck_assert_ptr_nonnull(strstr(nt.msgs[i], "STATUS=2 workers, generation 2"));
        /* A reload whose workers fail: rolled back, READY=1 says so. */
        close(open(failfile + 9, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
        kill(s.pid, SIGHUP);
        r = notify_wait(&nt, &s, "RELOADING=1", i + 1, T_LONG);
        i = notify_wait(&nt, &s, "READY=1", r + 1, T_LONG);
        ck_assert_msg(strstr(nt.msgs[i], "STATUS=reload failed: worker ") &&
                              strstr(nt.msgs[i], "; 2 workers, generation 2"), "%s", nt.msgs[i]);
        ck_assert(srv_wait_err(&s, "; generation 2 keeps serving", 1, T_LONG));
        unlink(failfile + 9);
        kill(s.pid, SIGTERM);
        i = notify_wait(&nt, &s, "STOPPING=1", i + 1, T_LONG);
        ck_assert_ptr_nonnull(strstr(nt.msgs[i], "STATUS=stopping (SIGTERM)"));
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        ck_assert(no_children_within(1.0));
        notify_close(&nt);
        srv_cleanup(&s);
}
END_TEST

/* A worker whose loop blocks: aborted after --worker-timeout, respawned, and
 * the WATCHDOG=1 pings pause meanwhile. */
START_TEST(test_worker_hang_watchdog)
{
        struct notify nt;
        struct srv s;
        const char *args[] = {"-w", "2", "--worker-timeout=0.6", "@MOD", "--", "@LOG", "hang=1", NULL};
        bool sd = notify_open(&nt);
        double gap = 0, t0;
        int first;

        setenv("WATCHDOG_USEC", "200000", 1);
        srv_start(&s, args);
        srv_ready(&s);
        /* Both pumped together: the pings' arrival times matter. */
        for (double end = now() + T_LONG; !strstr(s.err, "is ready again") && now() < end;) {
                srv_pump(&s, 5);
                if (sd)
                        notify_pump(&nt, 5);
        }
        ck_assert_msg(strstr(s.err, "hung for ") && strstr(s.err, "is ready again"), "stderr:\n%s", s.err);
        ck_assert_msg(strstr(s.err, "worker 1 (pid ") && strstr(s.err, "was killed by SIGABRT; respawning"),
                      "stderr:\n%s", s.err);
        ck_assert_int_eq(log_count(&s, "ready w 1 "), 2);
        if (sd) {
                /* Pings every 0.1 s; a gap of several while worker 1 hung; then pings again. */
                t0 = now();
                while (now() - t0 < 0.5)
                        notify_pump(&nt, 20);
                first = notify_wait(&nt, &s, "WATCHDOG=1", 0, T_LONG);
                for (int i = first + 1, prev = first; i < nt.n; i++)
                        if (!strcmp(nt.msgs[i], "WATCHDOG=1")) {
                                if (nt.at[i] - nt.at[prev] > gap)
                                        gap = nt.at[i] - nt.at[prev];
                                prev = i;
                        }
                ck_assert_msg(gap > 0.35, "watchdog pings did not pause (largest gap %.3f s)", gap);
                ck_assert_int_eq(strcmp(nt.msgs[nt.n - 1], "WATCHDOG=1"), 0);
        }
        kill(s.pid, SIGTERM);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        ck_assert(no_children_within(1.0));
        notify_close(&nt);
        srv_cleanup(&s);
}
END_TEST

/* Issue 9 item 5: a SIGSTOPped worker cannot act on SIGABRT; it is still
 * replaced within worker-timeout + 1 s. */
START_TEST(test_stopped_worker_replaced)
{
        struct srv s;
        const char *args[] = {"-w", "2", "--worker-timeout=1", "@MOD", "--", "@LOG", NULL};
        pid_t old;
        double t0;

        srv_start(&s, args);
        srv_ready(&s);
        old = log_pid(&s, "ready", "w", 1);
        ck_assert_int_gt(old, 0);
        kill(old, SIGSTOP);
        t0 = now();
        while (log_count(&s, "ready w 1 ") < 2 && now() - t0 < T_LONG)
                srv_pump(&s, 5);
        /* The contract is worker-timeout + 1 s (2 s here; about 1.25 s measured);
         * the bound leaves room for a loaded machine and still fails the old
         * behaviour (6.35 s: SIGABRT on a stopped process, then a 5 s grace). */
        ck_assert_msg(now() - t0 < 4.0, "replaced after %.2f s (worker-timeout 1 s); stderr:\n%s", now() - t0, s.err);
        ck_assert_int_ne(log_pid(&s, "ready", "w", 1), old);
        srv_stop_clean(&s);
}
END_TEST

/* Issue 9 item 5: a stop that begins during a hung worker's abort grace keeps
 * the grace's kill deadline instead of waiting the whole stop timeout. */
START_TEST(test_stop_during_abort_grace)
{
        struct srv s;
        const char *args[] = {"-w", "2", "--worker-timeout=1", "-t", "10", "@MOD", "--", "@LOG", "hang=1", "noabort=1",
                              NULL};
        double t0;

        srv_start(&s, args);
        srv_ready(&s);
        ck_assert_msg(srv_wait_err(&s, "hung for ", 1, T_LONG), "stderr:\n%s", s.err);
        kill(s.pid, SIGTERM);
        t0 = now();
        ck_assert_int_eq(srv_wait_exit(&s, 2 * T_LONG), 0);
        /* The grace is 0.5 s here; the old behaviour waited the whole 10 s. */
        ck_assert_msg(now() - t0 < 6.0, "stopped after %.2f s (stop timeout 10 s); stderr:\n%s", now() - t0, s.err);
        ck_assert_msg(strstr(s.err, "did not abort within") && !strstr(s.err, "did not stop within"), "stderr:\n%s",
                      s.err);
        srv_finish(&s);
}
END_TEST

/* The supervisor's children, from /proc (CONFIG_PROC_CHILDREN); false if unknown. */
static bool children_of(pid_t pid, pid_t *kids, int *n, int cap)
{
        char path[64], *buf, *p, *end;

        snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
        if (access(path, R_OK) < 0)
                return false;
        buf = read_file(path);
        *n = 0;
        for (p = buf; *n < cap; p = end) {
                long v = strtol(p, &end, 10);

                if (end == p)
                        break;
                kids[(*n)++] = (pid_t)v;
        }
        return true;
}

/* Seconds from now until the supervisor has a child that is not in old[0..n). */
static double until_new_child(struct srv *s, const pid_t *old, int n)
{
        double t0 = now();

        while (now() - t0 < T_LONG) {
                pid_t kids[64];
                int k = 0;

                ck_assert(children_of(s->pid, kids, &k, 64));
                for (int i = 0; i < k; i++) {
                        bool known = false;

                        for (int j = 0; j < n; j++)
                                known |= kids[i] == old[j];
                        if (!known)
                                return now() - t0;
                }
                usleep(200);
        }
        return T_LONG;
}

/* Issue 9 item 8: the first crash of a serving worker is answered at once;
 * a second crash of the same index soon after waits the backoff. */
START_TEST(test_first_crash_respawns_at_once)
{
        struct srv s;
        const char *args[] = {"-w", "2", "@MOD", "--", "@LOG", NULL};
        pid_t kids[64];
        int n = 0;
        double first, second;
        char probe[64];

        snprintf(probe, sizeof(probe), "/proc/%d/task/%d/children", (int)getpid(), (int)getpid());
        ck_assert_msg(access(probe, R_OK) == 0, "%s: the test needs CONFIG_PROC_CHILDREN (Debian's kernels have it)",
                      probe);
        srv_start(&s, args);
        srv_ready(&s);
        ck_assert(children_of(s.pid, kids, &n, 64));
        kill(log_pid(&s, "ready", "w", 1), SIGKILL);
        first = until_new_child(&s, kids, n);
        /* Goal 5 ms; the old first backoff step was 100 ms. */
        ck_assert_msg(first < 0.07, "first respawn after %.3f s; stderr:\n%s", first, s.err);
        ck_assert_msg(srv_wait_err(&s, "is ready again", 1, T_LONG), "stderr:\n%s", s.err);
        ck_assert(children_of(s.pid, kids, &n, 64));
        kill(log_pid(&s, "ready", "w", 1), SIGKILL);
        second = until_new_child(&s, kids, n);
        ck_assert_msg(second >= 0.09, "second respawn after %.3f s: no backoff; stderr:\n%s", second, s.err);
        ck_assert(srv_wait_err(&s, "is ready again", 2, T_LONG));
        srv_stop_clean(&s);
}
END_TEST

/* Issue 9 item 6: a service manager that never drains its notify socket
 * must not stall the supervisor: reloads go on, SIGTERM stops it. */
START_TEST(test_notify_never_drained)
{
        struct notify nt;
        struct srv s;
        const char *args[] = {"-w", "1", "@MOD", "--", "@LOG", NULL};
        int small = 1;
        double t0;

        /* Without libsystemd the library sends no notifications at all. */
#ifdef HAVE_SYSTEMD
        ck_assert_msg(notify_open(&nt), "aiot_sd_notify() sent nothing to a notify socket");
#else
        if (!notify_open(&nt)) {
                notify_close(&nt);
                return;
        }
#endif
        (void)setsockopt(nt.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
        srv_start(&s, args);
        srv_ready(&s);
        for (int i = 1; i <= 20; i++) {
                kill(s.pid, SIGHUP);
                ck_assert_msg(srv_wait_err(&s, "ready, stopping generation", i, 5.0), "reload %d stalled; stderr:\n%s",
                              i, s.err);
        }
        ck_assert_int_eq(count_in(s.err, "notify socket is full"), 1);
        kill(s.pid, SIGTERM);
        t0 = now();
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        ck_assert_double_lt(now() - t0, 3.0);
        ck_assert(no_children_within(1.0));
        notify_close(&nt);
        srv_cleanup(&s);
}
END_TEST

/* Issue 10: the supervisor raises the soft fd limit to the hard one, and the
 * workers inherit it. */
START_TEST(test_nofile_raised)
{
        struct srv s;
        const char *args[] = {"-w", "1", "--log-level=debug", "@MOD", "--", "@LOG", NULL};
        struct rlimit rl;

        ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
        if (rl.rlim_max > 8192)
                rl.rlim_max = 8192;
        ck_assert_int_gt(rl.rlim_max, 256);
        rl.rlim_cur = 256;
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
        srv_start(&s, args);
        srv_ready(&s);
        ck_assert_int_eq(log_value(&s, "nofile", "w", 0), (int)rl.rlim_max);
        ck_assert_msg(strstr(s.err, "RLIMIT_NOFILE raised from 256 to "), "stderr:\n%s", s.err);
        srv_stop_clean(&s);
}
END_TEST

/* SIGHUP: a new generation serves, the old one stops only after it; no
 * connection is refused meanwhile. */
START_TEST(test_reload_generations)
{
        struct srv s;
        const char *args[] = {"-w", "2", "-b", "127.0.0.1:0", "@MOD", "--", "@LOG", NULL};
        pid_t old[2], fresh[2], seen;
        int port;
        long stop_old, ready_new;

        srv_start(&s, args);
        port = srv_port(&s);
        srv_ready(&s);
        ck_assert(srv_wait_err(&s, "all 2 workers ready (generation 1)", 1, T_LONG));
        for (int i = 0; i < 2; i++)
                old[i] = log_pid(&s, "ready", "w", i);
        kill(s.pid, SIGHUP);
        /* Connections keep being answered throughout. */
        while (!strstr(s.err, "reload: generation 2 ready, stopping generation 1")) {
                ask_worker(port, NULL);
                srv_pump(&s, 1);
                ck_assert(!s.exited);
        }
        for (int i = 0; i < 2; i++) {
                char pre[64];

                fresh[i] = log_pid(&s, "ready", "w", i);
                ck_assert_int_ne(fresh[i], old[i]);
                ck_assert_int_eq(log_value(&s, "gen", "w", i), 2);
                snprintf(pre, sizeof(pre), "ready w %d %d ", i, (int)fresh[i]);
                ready_new = log_offset(&s, pre);
                /* The old worker got its stop signal after the new one was ready. */
                snprintf(pre, sizeof(pre), "stop w %d %d ", i, (int)old[0]);
                (void)pre;
                ck_assert_int_ge(ready_new, 0);
        }
        for (double end = now() + T_LONG; log_count(&s, "stop w ") < 2 && now() < end;)
                usleep(10000);
        {
                char pre[64];

                snprintf(pre, sizeof(pre), "stop w 0 %d ", (int)old[0]);
                stop_old = log_offset(&s, pre);
                snprintf(pre, sizeof(pre), "ready w 0 %d ", (int)fresh[0]);
                ck_assert_int_gt(stop_old, log_offset(&s, pre));
        }
        for (int i = 0; i < 10; i++) {
                ask_worker(port, &seen);
                ck_assert(seen == fresh[0] || seen == fresh[1]);
        }
        ck_assert_int_eq(log_count(&s, "ready e 0 "), 2);
        srv_stop_clean(&s);
}
END_TEST

/* SIGTTIN / SIGTTOU scale by one, never below one; SIGUSR1 reaches the handlers. */
START_TEST(test_scale_and_usr1)
{
        struct srv s;
        const char *args[] = {"-w", "1", "@MOD", "--", "@LOG", "usr1=1", NULL};

        srv_start(&s, args);
        srv_ready(&s);
        kill(s.pid, SIGTTIN);
        ck_assert_msg(srv_wait_err(&s, "SIGTTIN received: adding worker 1 (2 workers)", 1, T_LONG) &&
                              srv_wait_err(&s, "worker 1 (pid ", 1, T_LONG) && srv_wait_err(&s, "is ready", 1, T_LONG),
                      "stderr:\n%s", s.err);
        for (double end = now() + T_LONG; log_count(&s, "ready w 1 ") < 1 && now() < end;)
                usleep(5000);
        ck_assert(srv_wait_err(&s, "worker 1 (pid ", 1, T_LONG));
        kill(s.pid, SIGUSR1);
        for (double end = now() + T_LONG; log_count(&s, "usr1 w ") < 2 && now() < end;)
                usleep(5000);
        ck_assert_int_eq(log_count(&s, "usr1 w 0 "), 1);
        ck_assert_int_eq(log_count(&s, "usr1 w 1 "), 1);
        ck_assert_int_eq(log_count(&s, "usr1-failed"), 0);
        ck_assert_int_eq(log_count(&s, "api-signal-failed"), 0);
        kill(s.pid, SIGTTOU);
        ck_assert(srv_wait_err(&s, "SIGTTOU received: stopping worker 1 (1 workers)", 1, T_LONG));
        for (double end = now() + T_LONG; log_count(&s, "stop w 1 ") < 1 && now() < end;)
                usleep(5000);
        ck_assert_int_eq(log_count(&s, "stop w 0 "), 0);
        kill(s.pid, SIGTTOU);
        ck_assert(srv_wait_err(&s, "SIGTTOU ignored: at least one worker must run", 1, T_LONG));
        kill(s.pid, SIGTERM);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        ck_assert_int_eq(log_count(&s, "stop w 0 "), 1);
        ck_assert_int_eq(log_value(&s, "api-late", "m", -1), 1);
        srv_finish(&s);
}
END_TEST

/* aiot_worker_recycle(): the replacement is ready before the old one stops. */
START_TEST(test_recycle)
{
        struct srv s;
        const char *args[] = {"-w", "2", "-b", "127.0.0.1:0", "@MOD", "--", "@LOG", "recycle=0", NULL};
        pid_t old, fresh;
        char pre[64];
        int port;

        srv_start(&s, args);
        port = srv_port(&s);
        srv_ready(&s);
        ck_assert_msg(srv_wait_err(&s, "replaced by pid ", 1, T_LONG), "stderr:\n%s", s.err);
        for (double end = now() + T_LONG; log_count(&s, "stop w 0 ") < 1 && now() < end;)
                ask_worker(port, NULL);
        ck_assert_int_eq(log_count(&s, "recycle w 0 "), 1);
        ck_assert_int_eq(log_value(&s, "recycle", "w", 0), 1);
        old = log_pid(&s, "recycle", "w", 0);
        fresh = log_pid(&s, "ready", "w", 0);
        ck_assert_int_ne(old, fresh);
        snprintf(pre, sizeof(pre), "stop w 0 %d ", (int)old);
        {
                long stop = log_offset(&s, pre);

                snprintf(pre, sizeof(pre), "ready w 0 %d ", (int)fresh);
                ck_assert_int_gt(stop, log_offset(&s, pre));
        }
        ck_assert_int_eq(log_count(&s, "ready w 0 "), 2);
        ck_assert_int_eq(log_count(&s, "ready w 1 "), 1);
        srv_stop_clean(&s);
}
END_TEST

/* LISTEN_FDS: the passed socket is served, with its name, beside a --bind one. */
START_TEST(test_socket_activation)
{
        struct srv s;
        const char *args[] = {"-w", "1", "-b", "127.0.0.1:0", "@MOD", "--", "@LOG", NULL};
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        ck_assert_int_eq(listen(fd, 16), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
        activation_fd = fcntl(fd, F_DUPFD_CLOEXEC, 10);
        activation_name = "web";
        srv_start(&s, args);
        activation_fd = -1;
        close(fd);
        srv_ready(&s);
        ck_assert_msg(strstr(s.err, "(socket activation, name web)"), "stderr:\n%s", s.err);
        port = ntohs(sa.sin_port);
        ck_assert_int_eq(ask_worker(port, NULL), 0);
        ck_assert_int_eq(ask_worker(srv_port(&s), NULL), 0);
        ck_assert_int_eq(log_count(&s, "lname web w 0"), 1);
        ck_assert_int_eq(log_count(&s, "lname 127.0.0.1:0 w 0"), 1);
        srv_stop_clean(&s);
}
END_TEST

static void read_cmdline(pid_t pid, const char *file, char *buf, size_t len)
{
        char path[64];
        int fd;
        ssize_t n;

        snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        n = read(fd, buf, len - 1);
        close(fd);
        buf[n > 0 ? n : 0] = '\0';
        if (n > 0 && buf[n - 1] == '\n')
                buf[n - 1] = '\0';
}

/* Titles in ps; the pidfile is refused while held, a stale one replaced. */
START_TEST(test_titles_and_pidfile)
{
        struct srv s;
        char pidfile[128], buf[256];
        const char *args[] = {"-w", "1", "-p", pidfile, "@MOD", "--", "@LOG", NULL};
        pid_t dead = fork();
        int fd;

        ck_assert_int_ge(dead, 0);
        if (dead == 0)
                _exit(0);
        waitpid(dead, NULL, 0);
        snprintf(pidfile, sizeof(pidfile), "/tmp/aiot-pid-%d", (int)getpid());
        /* Held by a live process (this one): exit 2, naming it. */
        fd = open(pidfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        dprintf(fd, "%d\n", (int)getpid());
        close(fd);
        srv_start(&s, args);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 2);
        snprintf(buf, sizeof(buf), "pidfile %s is held by running process %d", pidfile, (int)getpid());
        ck_assert_msg(strstr(s.err, buf), "stderr:\n%s", s.err);
        srv_cleanup(&s);
        /* Stale: replaced. */
        fd = open(pidfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        dprintf(fd, "%d\n", (int)dead);
        close(fd);
        srv_start(&s, args);
        srv_ready(&s);
        ck_assert_int_eq(atoi(read_file(pidfile)), s.pid);
        read_cmdline(s.pid, "cmdline", buf, sizeof(buf));
        ck_assert_str_eq(buf, "aiotools-serve: supervisor");
        read_cmdline(log_pid(&s, "ready", "w", 0), "cmdline", buf, sizeof(buf));
        ck_assert_str_eq(buf, "aiotools-serve: worker 0");
        read_cmdline(log_pid(&s, "ready", "w", 0), "comm", buf, sizeof(buf));
        ck_assert_str_eq(buf, "aiot-worker-0");
        read_cmdline(log_pid(&s, "ready", "e", 0), "cmdline", buf, sizeof(buf));
        ck_assert_str_eq(buf, "aiotools-serve: extra 0");
        /* The log prefix did not follow argv[0]. */
        ck_assert_ptr_nonnull(strstr(s.err, "aiotools-serve["));
        ck_assert_ptr_null(strstr(s.err, "supervisor["));
        kill(s.pid, SIGTERM);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        ck_assert_int_eq(access(pidfile, F_OK) < 0 && errno == ENOENT, 1);
        srv_finish(&s);
}
END_TEST

/* As root, a module that others can write is refused. */
START_TEST(test_unsafe_module_as_root)
{
        struct srv s;
        char dir[] = "/tmp/aiot-mod-XXXXXX", mod[128], cmd[512];
        const char *args[] = {"--check", mod, NULL};

        if (geteuid() != 0)
                return;
        ck_assert_ptr_nonnull(mkdtemp(dir));
        snprintf(mod, sizeof(mod), "%s/m.so", dir);
        snprintf(cmd, sizeof(cmd), "cp '%s/tests/.libs/srvtest.so' '%s'", builddir(), mod);
        ck_assert_int_eq(system(cmd), 0);
        chmod(dir, 0755);
        chmod(mod, 0666);
        srv_start(&s, args);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 2);
        ck_assert_msg(strstr(s.err, "refusing to load module") && strstr(s.err, "writable by group or others"),
                      "stderr:\n%s", s.err);
        srv_cleanup(&s);
        chmod(mod, 0755);
        chmod(dir, 0777);
        srv_start(&s, args);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 2);
        ck_assert_msg(strstr(s.err, "its directory"), "stderr:\n%s", s.err);
        srv_cleanup(&s);
        chmod(dir, 0755);
        srv_start(&s, args);
        ck_assert_int_eq(srv_wait_exit(&s, T_LONG), 0);
        srv_cleanup(&s);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        (void)!system(cmd);
}
END_TEST

/* http-hello drains: a keep-alive connection's next request after the stop
 * signal (of a reload) gets "Connection: close", then EOF. */
START_TEST(test_http_drain_on_reload)
{
        struct srv s;
        const char *args[] = {"-w", "1", "-b", "127.0.0.1:0", "@HTTP", "--", "drain=5", NULL};
        static const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        char buf[1024];
        int port, fd;
        ssize_t n;

        srv_start(&s, args);
        port = srv_port(&s);
        srv_ready(&s);
        fd = tcp_connect(port);
        ck_assert_int_eq(write(fd, req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
        n = read(fd, buf, sizeof(buf) - 1);
        ck_assert_int_gt(n, 0);
        buf[n] = '\0';
        ck_assert_ptr_null(strstr(buf, "Connection: close"));
        kill(s.pid, SIGHUP);
        ck_assert(srv_wait_err(&s, "reload: generation 2 ready, stopping generation 1", 1, T_LONG));
        usleep(100000); /* the old worker has its stop signal */
        ck_assert_int_eq(write(fd, req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
        read_all(fd, buf, sizeof(buf));
        ck_assert_msg(strstr(buf, "200 OK") && strstr(buf, "Connection: close\r\n\r\nhello\n"), "%s", buf);
        close(fd);
        /* The old worker is gone at once (not after the drain time); the new one serves. */
        ck_assert(srv_wait_err(&s, "worker 0 (pid ", 0, T_LONG));
        ck_assert_int_eq(count_in(http_str(port, "GET / HTTP/1.0\r\n\r\n"), "200 OK"), 1);
        srv_stop_clean(&s);
}
END_TEST

static Suite *server_suite(void)
{
        Suite *s = suite_create("server");
        TCase *life = tcase_create("lifecycle"), *fail = tcase_create("failures"), *serve = tcase_create("serving"),
              *cli = tcase_create("bad input");

        tcase_add_checked_fixture(life, setup, NULL);
        tcase_add_checked_fixture(fail, setup, NULL);
        tcase_add_checked_fixture(serve, setup, NULL);
        tcase_add_checked_fixture(cli, setup, NULL);
        tcase_set_timeout(life, 30);
        tcase_set_timeout(fail, 30);
        tcase_set_timeout(serve, 30);
        tcase_set_timeout(cli, 30);
        tcase_add_loop_test(life, test_workers_n, 0, 3);
        tcase_add_test(life, test_sigint);
        tcase_add_test(life, test_custom_stop_signal);
        tcase_add_test(life, test_no_pidfd_option);
        tcase_add_test(life, test_nofile_raised);
        tcase_add_test(fail, test_setup_failure);
        tcase_add_test(fail, test_main_setup_failure);
        tcase_add_test(fail, test_stop_during_startup);
        tcase_add_test(fail, test_pidfile_and_user);
        tcase_add_test(fail, test_run_bad_config);
        tcase_add_test(fail, test_reload_hook);
        tcase_add_test(fail, test_stop_timeout_kills);
        tcase_add_test(fail, test_supervisor_killed);
        tcase_add_test(fail, test_worker_killed_respawns);
        tcase_add_test(fail, test_crash_loop);
        tcase_add_test(serve, test_echo_1000_connections);
        tcase_add_test(serve, test_echo_graceful_stop);
        tcase_add_test(serve, test_reuseport);
        tcase_add_test(serve, test_unix_listener);
        tcase_add_test(serve, test_http_hello);
        tcase_add_test(serve, test_ticker);
        tcase_add_test(serve, test_standalone);
        tcase_add_loop_test(cli, test_bad_input, 0, (int)(sizeof(bad) / sizeof(bad[0])));
        tcase_add_test(cli, test_check_help_version);
        {
                TCase *prod = tcase_create("production");

                tcase_add_checked_fixture(prod, setup, NULL);
                tcase_set_timeout(prod, 30);
                tcase_add_test(prod, test_notify_sequence);
                tcase_add_test(prod, test_worker_hang_watchdog);
                tcase_add_test(prod, test_reload_generations);
                tcase_add_test(prod, test_scale_and_usr1);
                tcase_add_test(prod, test_recycle);
                tcase_add_test(prod, test_socket_activation);
                tcase_add_test(prod, test_titles_and_pidfile);
                tcase_add_test(prod, test_unsafe_module_as_root);
                tcase_add_test(prod, test_http_drain_on_reload);
                suite_add_tcase(s, prod);
        }
        {
                /* Issue 9 items 5, 6 and 8. */
                TCase *reg = tcase_create("regressions");

                tcase_add_checked_fixture(reg, setup, NULL);
                tcase_set_timeout(reg, 40);
                tcase_add_test(reg, test_stopped_worker_replaced);
                tcase_add_test(reg, test_stop_during_abort_grace);
                tcase_add_test(reg, test_first_crash_respawns_at_once);
                tcase_add_test(reg, test_notify_never_drained);
                suite_add_tcase(s, reg);
        }
        suite_add_tcase(s, life);
        suite_add_tcase(s, fail);
        suite_add_tcase(s, serve);
        suite_add_tcase(s, cli);
        return s;
}

int main(void)
{
        return testutil_run(server_suite());
}
