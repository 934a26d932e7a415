/* SPDX-License-Identifier: MIT */
/* bench-lifecycle: how long aiotools-serve takes to become ready and to go
 * away, compared with nginx.  Not a test: it prints "figure:" lines and never
 * fails on speed.
 *
 *   bench-lifecycle [-r REPS] [-s AIOTOOLS-SERVE] [-m MODULE] [-x NGINX] [-W 1,4,8,16]
 *
 * Ready: from just before fork()+exec() of "aiotools-serve -w N -b 127.0.0.1:0
 * MODULE" to the first of a READY=1 datagram on our own NOTIFY_SOCKET or the
 * supervisor's "ready:" log line on stderr.  Stop: from kill(SIGTERM) to the
 * whole tree gone, that is the supervisor reaped by waitpid() and the pidfd of
 * every worker (collected from /proc/PID/task/TID/children before the signal)
 * readable.  We are a child subreaper, so workers that outlive the supervisor
 * come to us and are reaped here.
 *
 * nginx (2 workers, its own config in a temp dir) is measured the same way:
 * ready is the port accepting a connection, stop is SIGTERM (fast shutdown)
 * to the tree gone.  Its master binds before forking, so "accepts" can come
 * before the workers exist; the time until both workers exist is printed too.
 *
 * Defaults are the build tree this program was built in: the real binary in
 * daemon/.libs (not the libtool wrapper script, whose shell start-up would
 * dominate) with LD_LIBRARY_PATH pointing at .libs. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#define MAX_PROCS 64
#define MAX_REPS 101
#define HANG_MS 10000

struct tree {
        pid_t pid[MAX_PROCS];
        int pidfd[MAX_PROCS];
        size_t n;
};

static pid_t current_pgid;

static double now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *what)
{
        perror(what);
        if (current_pgid > 0)
                kill(-current_pgid, SIGKILL);
        exit(1);
}

/* On ^C, take the process group we started with us. */
static void on_signal(int signo)
{
        if (current_pgid > 0)
                kill(-current_pgid, SIGKILL);
        signal(signo, SIG_DFL);
        raise(signo);
}

static int cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;

        return x < y ? -1 : x > y;
}

static double median(double *v, size_t n)
{
        qsort(v, n, sizeof(*v), cmp_double);
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Adds every descendant of pid to t (depth first). */
static void collect(pid_t pid, struct tree *t)
{
        char path[64], buf[4096];
        ssize_t len;
        int fd;

        snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return;
        len = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (len <= 0)
                return;
        buf[len] = '\0';
        for (char *p = buf, *end; *p; p = end) {
                long c = strtol(p, &end, 10);

                if (end == p)
                        break;
                if (t->n < MAX_PROCS) {
                        t->pid[t->n] = (pid_t)c;
                        t->pidfd[t->n] = (int)syscall(SYS_pidfd_open, (pid_t)c, 0);
                        t->n++;
                        collect((pid_t)c, t);
                }
        }
}

static size_t count_children(pid_t pid)
{
        struct tree t = {.n = 0};

        collect(pid, &t);
        for (size_t i = 0; i < t.n; i++)
                if (t.pidfd[i] >= 0)
                        close(t.pidfd[i]);
        return t.n;
}

/* Where the stop time goes: after SIGTERM, the first and the last worker
 * gone and the supervisor reaped (ms). */
struct stop_split {
        double first, last, top;
};

/* Sends SIGTERM to top and returns the milliseconds until top is reaped and
 * every process of t has exited; -1 on a hang (everything is then killed). */
static double stop_tree(pid_t top, struct tree *t, int *status, struct stop_split *split)
{
        struct pollfd pfd[MAX_PROCS + 1];
        int topfd = (int)syscall(SYS_pidfd_open, top, 0);
        size_t left = t->n + 1;
        double t0, end = 0;

        if (topfd < 0)
                die("pidfd_open");
        pfd[0] = (struct pollfd){.fd = topfd, .events = POLLIN};
        for (size_t i = 0; i < t->n; i++)
                pfd[i + 1] = (struct pollfd){.fd = t->pidfd[i], .events = POLLIN};
        *split = (struct stop_split){.first = -1, .last = -1, .top = -1};
        t0 = now_ms();
        if (kill(top, SIGTERM) < 0)
                die("kill");
        while (left > 0) {
                int r = poll(pfd, t->n + 1, HANG_MS);

                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0) {
                        fprintf(stderr, "bench-lifecycle: tree of %d still there %d ms after SIGTERM\n", (int)top,
                                HANG_MS);
                        kill(-top, SIGKILL);
                        end = -1;
                        break;
                }
                for (size_t i = 0; i < t->n + 1; i++) {
                        if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                                continue;
                        /* The supervisor counts as gone once reaped: that is what its parent sees. */
                        if (i == 0 && waitpid(top, status, 0) != top)
                                die("waitpid");
                        if (i == 0)
                                split->top = now_ms() - t0;
                        else {
                                if (split->first < 0)
                                        split->first = now_ms() - t0;
                                split->last = now_ms() - t0;
                        }
                        pfd[i].fd = -1;
                        left--;
                }
                end = now_ms();
        }
        close(topfd);
        for (size_t i = 0; i < t->n; i++)
                if (t->pidfd[i] >= 0)
                        close(t->pidfd[i]);
        if (end < 0)
                waitpid(top, status, 0);
        /* Workers that outlived the supervisor were reparented to us. */
        while (waitpid(-1, NULL, WNOHANG) > 0)
                ;
        return end < 0 ? -1 : end - t0;
}

static pid_t spawn(char **argv, int err_fd, const char *notify, const char *ld_path)
{
        pid_t pid = fork();

        if (pid < 0)
                die("fork");
        if (pid == 0) {
                setpgid(0, 0);
                if (err_fd >= 0 && dup2(err_fd, STDERR_FILENO) < 0)
                        _exit(127);
                if (notify)
                        setenv("NOTIFY_SOCKET", notify, 1);
                else
                        unsetenv("NOTIFY_SOCKET");
                if (ld_path)
                        setenv("LD_LIBRARY_PATH", ld_path, 1);
                execv(argv[0], argv);
                _exit(127);
        }
        setpgid(pid, pid);
        current_pgid = pid;
        return pid;
}

/* Returns the ms from t0 until READY=1 arrives on nfd or "ready:" appears on
 * efd, and which came first; -1 if the process died or hung. */
static double wait_ready(double t0, int nfd, int efd, const char **how)
{
        char line[8192];
        size_t len = 0;

        for (;;) {
                struct pollfd p[2] = {{.fd = nfd, .events = POLLIN}, {.fd = efd, .events = POLLIN}};
                double left = HANG_MS - (now_ms() - t0);
                int r;

                if (left <= 0)
                        return -1;
                r = poll(p, 2, (int)left + 1);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        die("poll");
                if (p[0].revents & POLLIN) {
                        char dg[4096];
                        ssize_t n = recv(nfd, dg, sizeof(dg) - 1, 0);

                        if (n > 0) {
                                dg[n] = '\0';
                                if (strncmp(dg, "READY=1", 7) == 0 || strstr(dg, "\nREADY=1")) {
                                        *how = "sd_notify READY=1";
                                        return now_ms() - t0;
                                }
                        }
                }
                if (p[1].revents & (POLLIN | POLLHUP)) {
                        ssize_t n = read(efd, line + len, sizeof(line) - 1 - len);

                        if (n <= 0)
                                return -1;
                        len += (size_t)n;
                        line[len] = '\0';
                        if (strstr(line, " ready: ")) {
                                *how = "\"ready:\" log line";
                                return now_ms() - t0;
                        }
                        /* Keep only the unfinished last line. */
                        char *nl = strrchr(line, '\n');
                        if (nl) {
                                len = strlen(nl + 1);
                                memmove(line, nl + 1, len + 1);
                        }
                        if (len == sizeof(line) - 1)
                                len = 0;
                }
        }
}

static void drain(int fd)
{
        char buf[4096];

        while (read(fd, buf, sizeof(buf)) > 0)
                ;
}

struct aiot_opts {
        const char *serve, *module, *ld_path;
};

/* One start/stop cycle of aiotools-serve with n workers. */
static int run_aiotools(const struct aiot_opts *o, int n, double *ready, double *stop, struct stop_split *split,
                        const char **how)
{
        char workers[16], notify[108];
        char *argv[] = {(char *)o->serve, "-w", workers, "-b", "127.0.0.1:0", (char *)o->module, NULL};
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        struct tree t = {.n = 0};
        int nfd, ep[2], status = 0;
        socklen_t salen;
        pid_t pid;
        double t0;

        snprintf(workers, sizeof(workers), "%d", n);
        /* An abstract socket: nothing to clean up in the file system. */
        snprintf(notify, sizeof(notify), "@bench-lifecycle-%d", (int)getpid());
        nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (nfd < 0)
                die("socket");
        memcpy(sa.sun_path + 1, notify + 1, strlen(notify) - 1);
        salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(notify));
        if (bind(nfd, (struct sockaddr *)&sa, salen) < 0)
                die("bind notify socket");
        if (pipe2(ep, O_CLOEXEC) < 0)
                die("pipe2");

        t0 = now_ms();
        pid = spawn(argv, ep[1], notify, o->ld_path);
        close(ep[1]);
        *ready = wait_ready(t0, nfd, ep[0], how);
        if (*ready < 0) {
                fprintf(stderr, "bench-lifecycle: aiotools-serve -w %d did not become ready\n", n);
                kill(-pid, SIGKILL);
                waitpid(pid, NULL, 0);
                close(nfd);
                close(ep[0]);
                return -1;
        }
        collect(pid, &t);
        if (t.n != (size_t)n)
                fprintf(stderr, "bench-lifecycle: %zu processes below the supervisor, expected %d\n", t.n, n);
        /* stderr stays open while stopping: a closed pipe would SIGPIPE the logger. */
        fcntl(ep[0], F_SETFL, O_NONBLOCK);
        drain(ep[0]);
        *stop = stop_tree(pid, &t, &status, split);
        current_pgid = 0;
        drain(ep[0]);
        close(ep[0]);
        close(nfd);
        if (*stop >= 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
                fprintf(stderr, "bench-lifecycle: aiotools-serve exited with status 0x%x\n", status);
        return *stop < 0 ? -1 : 0;
}

static int free_port(void)
{
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(a);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
            getsockname(fd, (struct sockaddr *)&a, &len) < 0)
                die("free port");
        close(fd);
        return ntohs(a.sin_port);
}

static bool port_accepts(int port)
{
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool ok;

        if (fd < 0)
                die("socket");
        ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
        close(fd);
        return ok;
}

static int write_nginx_conf(const char *dir, int port, int workers)
{
        char path[PATH_MAX];
        FILE *f;

        snprintf(path, sizeof(path), "%s/nginx.conf", dir);
        f = fopen(path, "w");
        if (!f)
                return -1;
        fprintf(f,
                "daemon off;\nmaster_process on;\nworker_processes %d;\npid %s/nginx.pid;\n"
                "error_log %s/error.log;\nevents { worker_connections 1024; }\n"
                "http {\n access_log off;\n client_body_temp_path %s/tmp;\n proxy_temp_path %s/tmp;\n"
                " fastcgi_temp_path %s/tmp;\n uwsgi_temp_path %s/tmp;\n scgi_temp_path %s/tmp;\n"
                " server {\n  listen 127.0.0.1:%d;\n  location / { return 200 \"hello\\n\"; }\n }\n}\n",
                workers, dir, dir, dir, dir, dir, dir, dir, port);
        return fclose(f);
}

/* One start/stop cycle of nginx with n workers. */
static int run_nginx(const char *nginx, const char *dir, int n, double *ready, double *forked, double *stop,
                     struct stop_split *split)
{
        char conf[PATH_MAX], elog[PATH_MAX];
        char *argv[] = {(char *)nginx, "-p", (char *)dir, "-c", conf, "-e", elog, NULL};
        struct tree t = {.n = 0};
        int port = free_port(), status = 0;
        double t0;
        pid_t pid;

        snprintf(conf, sizeof(conf), "%s/nginx.conf", dir);
        snprintf(elog, sizeof(elog), "%s/error.log", dir);
        if (write_nginx_conf(dir, port, n) < 0)
                die("nginx.conf");
        t0 = now_ms();
        pid = spawn(argv, -1, NULL, NULL);
        *ready = *forked = -1;
        /* No event to wait for: poll the port and the process table every 50 us. */
        while (now_ms() - t0 < HANG_MS && (*ready < 0 || *forked < 0)) {
                if (*ready < 0 && port_accepts(port))
                        *ready = now_ms() - t0;
                if (*forked < 0 && count_children(pid) == (size_t)n)
                        *forked = now_ms() - t0;
                if (waitpid(pid, NULL, WNOHANG) == pid) {
                        fprintf(stderr, "bench-lifecycle: nginx exited early (see %s)\n", elog);
                        current_pgid = 0;
                        return -1;
                }
                usleep(50);
        }
        if (*ready < 0 || *forked < 0) {
                fprintf(stderr, "bench-lifecycle: nginx did not become ready\n");
                kill(-pid, SIGKILL);
                waitpid(pid, NULL, 0);
                return -1;
        }
        collect(pid, &t);
        *stop = stop_tree(pid, &t, &status, split);
        current_pgid = 0;
        return *stop < 0 ? -1 : 0;
}

/* Medians of where the stop time went, as a comment. */
static void print_split(const struct stop_split *sp, size_t n)
{
        double first[MAX_REPS], last[MAX_REPS], top[MAX_REPS];

        for (size_t i = 0; i < n; i++)
                first[i] = sp[i].first, last[i] = sp[i].last, top[i] = sp[i].top;
        printf("#   after SIGTERM: first worker gone %.2f ms, last worker gone %.2f ms, supervisor reaped %.2f ms\n",
               median(first, n), median(last, n), median(top, n));
}

/* The build tree's top directory: this program is TOP/tests/bench/bench-lifecycle. */
static void build_top(char *top, size_t size)
{
        ssize_t n = readlink("/proc/self/exe", top, size - 1);
        char *s;

        if (n < 0)
                die("readlink");
        top[n] = '\0';
        for (int i = 0; i < 3 && (s = strrchr(top, '/')); i++)
                *s = '\0';
}

static void usage(void)
{
        fputs("usage: bench-lifecycle [-r REPS] [-s AIOTOOLS-SERVE] [-m MODULE] [-x NGINX|-x none] [-W 1,4,8,16]\n",
              stderr);
        exit(2);
}

int main(int argc, char **argv)
{
        static char top[PATH_MAX], serve[PATH_MAX + 64], module[PATH_MAX + 64], ld[PATH_MAX + 64];
        struct aiot_opts o = {.serve = serve, .module = module, .ld_path = ld};
        const char *nginx = "/usr/sbin/nginx", *wlist = "1,4,8,16", *how = "?";
        double ready[MAX_REPS], stop[MAX_REPS], forked[MAX_REPS];
        struct stop_split split[MAX_REPS];
        int reps = 7, c;

        build_top(top, sizeof(top));
        snprintf(serve, sizeof(serve), "%s/daemon/.libs/aiotools-serve", top);
        snprintf(module, sizeof(module), "%s/examples/.libs/echo.so", top);
        snprintf(ld, sizeof(ld), "%s/.libs%s%s", top, getenv("LD_LIBRARY_PATH") ? ":" : "",
                 getenv("LD_LIBRARY_PATH") ? getenv("LD_LIBRARY_PATH") : "");
        while ((c = getopt(argc, argv, "r:s:m:x:W:")) != -1) {
                switch (c) {
                case 'r':
                        reps = atoi(optarg);
                        if (reps < 1 || reps > MAX_REPS)
                                usage();
                        break;
                case 's':
                        o.serve = optarg;
                        o.ld_path = getenv("LD_LIBRARY_PATH");
                        break;
                case 'm':
                        o.module = optarg;
                        break;
                case 'x':
                        nginx = optarg;
                        break;
                case 'W':
                        wlist = optarg;
                        break;
                default:
                        usage();
                }
        }
        if (access(o.serve, X_OK) < 0 || access(o.module, R_OK) < 0) {
                fprintf(stderr, "bench-lifecycle: need %s and %s (run make first)\n", o.serve, o.module);
                return 1;
        }
        if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
                die("PR_SET_CHILD_SUBREAPER");
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        signal(SIGPIPE, SIG_IGN);
        printf("# %s, module %s, %d repetitions, median (min..max)\n", o.serve, o.module, reps);

        for (const char *p = wlist; *p;) {
                int n = (int)strtol(p, (char **)&p, 10), got = 0;
                double rmin, rmax, smin, smax;

                if (*p == ',')
                        p++;
                if (n < 1 || n > MAX_PROCS - 1)
                        usage();
                for (int i = 0; i < reps; i++)
                        if (run_aiotools(&o, n, &ready[got], &stop[got], &split[got], &how) == 0)
                                got++;
                if (got == 0) {
                        printf("# aiotools-serve -w %d: every run failed\n", n);
                        continue;
                }
                qsort(ready, (size_t)got, sizeof(double), cmp_double);
                qsort(stop, (size_t)got, sizeof(double), cmp_double);
                rmin = ready[0], rmax = ready[got - 1], smin = stop[0], smax = stop[got - 1];
                printf("figure: lifecycle_ready_ms_w%d %.2f ms\t# %.2f..%.2f, by %s\n", n, median(ready, (size_t)got),
                       rmin, rmax, how);
                printf("figure: lifecycle_stop_ms_w%d %.2f ms\t# %.2f..%.2f\n", n, median(stop, (size_t)got), smin,
                       smax);
                print_split(split, (size_t)got);
                fflush(stdout);
        }

        if (strcmp(nginx, "none") != 0 && access(nginx, X_OK) == 0) {
                char dir[] = "/tmp/bench-lifecycle-XXXXXX", sub[sizeof(dir) + 8];
                int got = 0;

                if (!mkdtemp(dir))
                        die("mkdtemp");
                snprintf(sub, sizeof(sub), "%s/tmp", dir);
                mkdir(sub, 0700);
                for (int i = 0; i < reps; i++)
                        if (run_nginx(nginx, dir, 2, &ready[got], &forked[got], &stop[got], &split[got]) == 0)
                                got++;
                if (got > 0) {
                        printf("figure: lifecycle_nginx_ready_ms_w2 %.2f ms\t# port accepts\n",
                               median(ready, (size_t)got));
                        printf("figure: lifecycle_nginx_forked_ms_w2 %.2f ms\t# both workers exist\n",
                               median(forked, (size_t)got));
                        printf("figure: lifecycle_nginx_stop_ms_w2 %.2f ms\n", median(stop, (size_t)got));
                        print_split(split, (size_t)got);
                } else
                        printf("# nginx: every run failed (see %s/error.log)\n", dir);
                /* The temp dir is small; remove what nginx leaves in it. */
                char cmd[sizeof(dir) + 16];
                snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
                if (got > 0 && system(cmd) != 0)
                        fprintf(stderr, "bench-lifecycle: could not remove %s\n", dir);
        } else
                printf("# nginx not found (%s): no comparison\n", nginx);
        return 0;
}
