/* SPDX-License-Identifier: MIT */
/* A module for the server tests, configured by its arguments (after "--"):
 *   log=PATH      append one line per event: "EVENT KIND INDEX PID VALUE"
 *                 (ready: VALUE = the main context's data; stop: the signal;
 *                 main-teardown: the signal)
 *   data=N        the main context hands N to every process
 *   fail=I        worker I fails its setup with -EADDRNOTAVAIL
 *   slow=I        worker I takes 300 ms for its setup
 *   crash=I       worker I exits with status 3 50 ms after it is ready
 *   ignore=1      workers ignore the stop signal (they must be killed)
 *   mainfail=1    the main context fails its setup with -ENOTCONN
 *   failfile=PATH workers fail their setup (-EADDRNOTAVAIL) while PATH exists
 *   hang=I        worker I blocks its loop (a plain sleep()) 100 ms after it is
 *                 ready, once per log file (the respawned one does not)
 *   noabort=1     the hanging worker (hang=I) ignores SIGABRT first, so that
 *                 only SIGKILL ends it
 *   recycle=I     worker I calls aiot_worker_recycle() once it is ready, once
 *   usr1=1        workers log "usr1 w INDEX PID GEN" on each SIGUSR1
 * Workers also log "gen w INDEX PID GENERATION".
 * Every process also logs "uid KIND INDEX PID UID" and "api KIND INDEX PID OK"
 * where OK is 1 when the worker API answered as documented.
 * Every worker answers each connection with "w INDEX PID\n" and closes it
 * (aiot_worker_serve(3); a worker without a listener only waits for the stop).
 * One extra process is always there; it only waits. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <aiotools.h>

struct opts {
        const char *log;
        int data, fail, slow, crash, ignore, mainfail, hang, noabort, recycle, usr1;
        const char *failfile;
};

static struct opts parse_opts(aiot_worker *w)
{
        struct opts o = {.fail = -1, .slow = -1, .crash = -1, .hang = -1, .recycle = -1};
        char *const *argv = aiot_worker_argv(w);

        for (int i = 1; i < aiot_worker_argc(w); i++) {
                const char *a = argv[i];

                if (!strncmp(a, "log=", 4))
                        o.log = a + 4;
                else if (!strncmp(a, "data=", 5))
                        o.data = atoi(a + 5);
                else if (!strncmp(a, "fail=", 5))
                        o.fail = atoi(a + 5);
                else if (!strncmp(a, "slow=", 5))
                        o.slow = atoi(a + 5);
                else if (!strncmp(a, "crash=", 6))
                        o.crash = atoi(a + 6);
                else if (!strncmp(a, "ignore=", 7))
                        o.ignore = atoi(a + 7);
                else if (!strncmp(a, "mainfail=", 9))
                        o.mainfail = atoi(a + 9);
                else if (!strncmp(a, "failfile=", 9))
                        o.failfile = a + 9;
                else if (!strncmp(a, "hang=", 5))
                        o.hang = atoi(a + 5);
                else if (!strncmp(a, "noabort=", 8))
                        o.noabort = atoi(a + 8);
                else if (!strncmp(a, "recycle=", 8))
                        o.recycle = atoi(a + 8);
                else if (!strncmp(a, "usr1=", 5))
                        o.usr1 = atoi(a + 5);
        }
        return o;
}

static void event(const struct opts *o, const char *what, aiot_worker *w, int value)
{
        char line[128];
        int n, fd;
        const char *kind = aiot_worker_kind(w) == AIOT_MAIN ? "m" : aiot_worker_kind(w) == AIOT_EXTRA ? "e" : "w";

        if (!o->log)
                return;
        /* The log names the main context's index -1, whatever the API says for it
         * (AIOT_INDEX_MAIN, checked in api_ok()). */
        n = snprintf(line, sizeof(line), "%s %s %d %d %d\n", what, kind,
                     aiot_worker_kind(w) == AIOT_MAIN ? -1 : aiot_worker_index(w), (int)getpid(), value);
        /* O_APPEND and one write: lines of concurrent processes never mix. */
        fd = open(o->log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
                (void)!write(fd, line, (size_t)n);
                close(fd);
        }
}

/* Logs how many fds of each kind the process has beyond 0, 1 and 2. */
static void log_fds(const struct opts *o, aiot_worker *w)
{
        static const char *const kinds[][2] = {
                {"fd-epoll", "anon_inode:[eventpoll]"}, {"fd-pidfd", "anon_inode:[pidfd]"},
                {"fd-pipe", "pipe:"}, {"fd-socket", "socket:"},
        };
        int counts[4] = {0};
        DIR *d = opendir("/proc/self/fd");
        struct dirent *de;

        if (!d)
                return;
        while ((de = readdir(d))) {
                char path[64], target[128];
                int fd = atoi(de->d_name);
                ssize_t n;

                if (de->d_name[0] == '.' || fd <= 2 || fd == dirfd(d))
                        continue;
                snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
                n = readlink(path, target, sizeof(target) - 1);
                if (n < 0)
                        continue;
                target[n] = '\0';
                for (int k = 0; k < 4; k++)
                        if (!strncmp(target, kinds[k][1], strlen(kinds[k][1])))
                                counts[k]++;
        }
        closedir(d);
        for (int k = 0; k < 4; k++)
                event(o, kinds[k][0], w, counts[k]);
}

/* The documented answers of the worker API in a worker or extra process. */
static int api_ok(aiot_worker *w)
{
        const aiot_listener *ls = (const aiot_listener *)1;
        int kind = aiot_worker_kind(w);

        return aiot_worker_loop(w) != NULL && aiot_worker_scope(w) != NULL && (kind == AIOT_WORKER || kind == AIOT_EXTRA) &&
               aiot_worker_index(NULL) == -EINVAL && aiot_worker_kind(NULL) == -EINVAL &&
               aiot_worker_argc(NULL) == -EINVAL && aiot_worker_argv(NULL) == NULL &&
               aiot_worker_loop(NULL) == NULL && aiot_worker_scope(NULL) == NULL && aiot_worker_data(NULL) == NULL &&
               aiot_worker_listeners(NULL, &ls) == 0 && ls == NULL &&
               aiot_worker_wait_stop(NULL) == -EINVAL && aiot_worker_set_data(w, NULL) == -EPERM &&
               aiot_worker_close_listeners(NULL) == -EINVAL &&
               aiot_worker_set_data(NULL, NULL) == -EINVAL && aiot_worker_argv(w)[aiot_worker_argc(w)] == NULL &&
               (kind == AIOT_WORKER || aiot_worker_listeners(w, NULL) == 0);
}

/* wait_stop from another task than the root: -EPERM. */
static int not_root(void *arg)
{
        return aiot_worker_wait_stop(arg) == -EPERM ? 0 : -EPROTO;
}

static int data_of(aiot_worker *w)
{
        int *d = aiot_worker_data(w);

        return d ? *d : -1;
}

/* Runs at accept (server_first): one line naming the worker, then the
 * library flushes it and closes the connection. */
static int greet(aiot_conn *c, void *arg)
{
        char line[64];
        int n = snprintf(line, sizeof(line), "w %d %d\n", aiot_worker_index(aiot_conn_worker(c)), (int)getpid());

        (void)arg;
        return aiot_conn_write(c, line, (size_t)n);
}

static int crash_later(void *arg)
{
        (void)arg;
        if (aiot_sleep(0.05) == 0)
                _exit(3);
        return 0;
}

/* True the first time this process's (tag, index) asks, per log file. */
static int first_time(const struct opts *o, const char *tag, int index)
{
        char path[512];
        int fd;

        if (!o->log)
                return 0;
        snprintf(path, sizeof(path), "%s.%s%d", o->log, tag, index);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0)
                return 0;
        close(fd);
        return 1;
}

static int hang_later(void *arg)
{
        const struct opts *o = arg;

        if (o->noabort)
                signal(SIGABRT, SIG_IGN);
        if (aiot_sleep(0.1) == 0)
                do
                        sleep(3600); /* blocks the whole loop, not just this task */
                while (o->noabort); /* a caught stop signal ends sleep() early */
        return 0;
}

struct usr1_arg {
        struct opts *o;
        aiot_worker *w;
};

static int on_usr1(void *arg)
{
        struct usr1_arg *u = arg;

        event(u->o, "usr1", u->w, aiot_worker_generation(u->w));
        return 0;
}

static int test_worker(aiot_worker *w)
{
        struct opts o = parse_opts(w);
        int idx = aiot_worker_index(w), sig;
        const aiot_listener *ls;
        size_t n = aiot_worker_listeners(w, &ls);
        struct aiot_serve_opts so = {.size = sizeof(so), .handler = greet, .server_first = 1};

        if (idx == o.slow)
                aiot_sleep(0.3);
        if (idx == o.fail || (o.failfile && access(o.failfile, F_OK) == 0))
                return -EADDRNOTAVAIL;
        if (idx == o.crash)
                aiot_spawn(aiot_worker_scope(w), crash_later, NULL, NULL);
        log_fds(&o, w);
        {
                aiot_task *t;
                int rc = -1;

                aiot_spawn(aiot_worker_scope(w), not_root, w, &t);
                aiot_join(t, &rc);
                event(&o, "api", w, api_ok(w) && rc == 0);
        }
        event(&o, "uid", w, (int)getuid());
        event(&o, "gen", w, aiot_worker_generation(w));
        {
                struct rlimit rl;

                getrlimit(RLIMIT_NOFILE, &rl);
                event(&o, "nofile", w, rl.rlim_cur > INT32_MAX ? INT32_MAX : (int)rl.rlim_cur);
        }
        for (size_t i = 0; i < n && o.log; i++) {
                char line[256];
                int fd = open(o.log, O_WRONLY | O_APPEND | O_CLOEXEC);

                if (fd >= 0) {
                        snprintf(line, sizeof(line), "lname %s w %d\n", ls[i].name, idx);
                        (void)!write(fd, line, strlen(line));
                        close(fd);
                }
        }
        {
                static struct usr1_arg u;

                u = (struct usr1_arg){.o = &o, .w = w};
                if (o.usr1 && aiot_worker_on_signal(w, SIGUSR1, on_usr1, &u) < 0)
                        event(&o, "usr1-failed", w, 0);
                if (aiot_worker_on_signal(NULL, SIGUSR1, on_usr1, &u) != -EINVAL ||
                    aiot_worker_on_signal(w, SIGKILL, on_usr1, &u) != -EINVAL ||
                    aiot_worker_on_signal(w, SIGTERM, on_usr1, &u) != -EINVAL ||
                    aiot_worker_recycle(NULL) != -EINVAL || aiot_worker_generation(NULL) != -EINVAL)
                        event(&o, "api-signal-failed", w, 0);
        }
        if (idx == o.hang && first_time(&o, "hang", idx)) {
                static struct opts hang_opts;

                hang_opts = o;
                aiot_spawn(aiot_worker_scope(w), hang_later, &hang_opts, NULL);
        }
        event(&o, "ready", w, data_of(w));
        if (idx == o.recycle && first_time(&o, "recycle", idx))
                event(&o, "recycle", w,
                      aiot_worker_recycle(w) == 0 && aiot_worker_recycle(w) == -EALREADY);
        sig = n ? aiot_worker_serve(w, &so) : aiot_worker_wait_stop(w);
        event(&o, "stop", w, sig);
        if (sig < 0)
                return sig;
        if (aiot_worker_wait_stop(w) != -EALREADY)
                event(&o, "api-again-failed", w, 0);
        if (o.ignore)
                for (;;)
                        aiot_sleep(3600);
        return 0;
}

static int test_extra(aiot_worker *w)
{
        struct opts o = parse_opts(w);
        int sig;

        log_fds(&o, w);
        event(&o, "api", w, api_ok(w));
        event(&o, "uid", w, (int)getuid());
        event(&o, "ready", w, data_of(w));
        sig = aiot_worker_wait_stop(w);
        event(&o, "stop", w, sig);
        return 0;
}

static int test_main(aiot_worker *m)
{
        struct opts o = parse_opts(m);
        int *data = malloc(sizeof(*data)), sig;

        if (!data)
                return -ENOMEM;
        *data = o.data;
        if (o.mainfail) {
                free(data);
                return -ENOTCONN;
        }
        aiot_worker_set_data(m, data);
        event(&o, "main-setup", m, *data);
        event(&o, "api", m,
              aiot_worker_kind(m) == AIOT_MAIN && aiot_worker_index(m) == AIOT_INDEX_MAIN &&
                      aiot_worker_loop(m) != NULL && aiot_worker_data(m) == data);
        sig = aiot_worker_wait_stop(m);
        event(&o, "main-teardown", m, sig);
        event(&o, "api-late", m,
              aiot_worker_set_data(m, NULL) == -EALREADY && aiot_worker_recycle(m) == -EPERM &&
                      aiot_worker_generation(m) == 0 && aiot_worker_on_signal(m, SIGUSR1, NULL, NULL) == -EPERM &&
                      aiot_worker_close_listeners(m) == -EPERM);
        free(data);
        return 0;
}

static const aiot_worker_fn extras[] = {test_extra};

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI,
        .name = "srvtest",
        .worker = test_worker,
        .main_ctx = test_main,
        .extra = extras,
        .n_extra = 1,
};
