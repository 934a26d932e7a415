/* SPDX-License-Identifier: MIT */
/* The prefork lifecycle: a supervisor forks N workers (and optional extra
 * processes), each running the user's worker context as the root task of a
 * fresh task loop; see aiot_server_run(3). */
#ifndef AIOTOOLS_SERVER_H
#define AIOTOOLS_SERVER_H

#include <limits.h>
#include <stddef.h>

#include <aiotools/listen.h>
#include <aiotools/task.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

/* Exit statuses returned by aiot_server_run() (and aiotools-serve's). */
#define AIOT_EXIT_OK 0      /* stopped by a stop signal, everything clean */
#define AIOT_EXIT_FAILURE 1 /* a setup failed, a crash loop, a teardown error */
#define AIOT_EXIT_USAGE 2   /* a bad configuration: nothing was started */

/* The handle a context function receives.  Owned by the server; valid until
 * the context function returns. */
typedef struct aiot_worker aiot_worker;

/* What runs the context (aiot_worker_kind()). */
enum aiot_worker_kind {
        AIOT_WORKER = 1, /* one of the N workers */
        AIOT_EXTRA = 2,  /* an extra process */
        AIOT_MAIN = 3,   /* the main context, in the supervisor */
};

/* A context: setup, then aiot_worker_wait_stop(), then teardown.  Runs as the
 * root task of its process's loop.  Returns 0, or a negative errno that the
 * supervisor reports (before wait_stop: the setup failed). */
typedef int (*aiot_worker_fn)(aiot_worker *w);
typedef aiot_worker_fn aiot_main_fn;

/* The yield of the context.  Marks the process ready (in a worker or extra
 * process: reports to the supervisor; in the main context: lets the
 * supervisor fork the workers), then parks until the stop signal arrives and
 * returns its number (SIGINT, SIGTERM ...).  In the main context it returns
 * once every worker and extra process has exited.  Returns -EINVAL for NULL,
 * -EALREADY when called a second time, -EPERM outside w's root task. */
int aiot_worker_wait_stop(aiot_worker *w);

/* The stop signal once it has arrived (> 0), else 0, so that a connection
 * handler can answer "Connection: close" while the worker drains.  -EINVAL
 * for NULL. */
int aiot_worker_stopping(const aiot_worker *w);

/* aiot_worker_index() of the main context: not an index of any process, and
 * not negative, so that it cannot be taken for an error. */
#define AIOT_INDEX_MAIN INT_MAX

/* The index: 0..N-1 for workers, 0..n_extra-1 for extra processes,
 * AIOT_INDEX_MAIN for the main context; -EINVAL for NULL.  A respawned
 * worker keeps its index. */
int aiot_worker_index(const aiot_worker *w);

/* AIOT_WORKER, AIOT_EXTRA or AIOT_MAIN; -EINVAL for NULL. */
int aiot_worker_kind(const aiot_worker *w);

/* The process's task loop (NULL for NULL). */
aiot_loop *aiot_worker_loop(aiot_worker *w);

/* A scope hosted by the root task for the context's background tasks.  After
 * the context function returns it is cancelled and waited for.  NULL for NULL. */
aiot_scope *aiot_worker_scope(aiot_worker *w);

/* Stores in *ret the array of listening sockets (fd, name, bound address) and
 * returns how many there are.  Workers and the main context see every
 * listener (in --reuseport mode each worker its own socket per address);
 * extra processes see none.  The array and the sockets belong to the server. */
size_t aiot_worker_listeners(const aiot_worker *w, const aiot_listener **ret);

/* Closes this process's copies of its listening sockets (their fds read -1
 * afterwards).  A worker calls it when it stops accepting, after taking the
 * connections already queued: once every process has closed its copy (the
 * supervisor drops its own at the final stop, not at a reload) new connections
 * are refused instead of being queued for nobody and reset.  Returns 0,
 * -EINVAL for NULL, -EPERM in the main context. */
int aiot_worker_close_listeners(aiot_worker *w);

/* What the main context set with aiot_worker_set_data() (NULL if nothing). */
void *aiot_worker_data(const aiot_worker *w);

/* Main context only, before its aiot_worker_wait_stop(): data every worker
 * and extra process then reads with aiot_worker_data() (they inherit the
 * supervisor's memory, so it is a pointer into the same address layout).
 * Returns 0, -EINVAL (NULL), -EPERM (not the main context), -EALREADY (the
 * workers have already been forked). */
int aiot_worker_set_data(aiot_worker *m, void *data);

/* The arguments handed to the server (config argc/argv; for aiotools-serve
 * argv[0] is the module path and the rest are the arguments after "--").
 * argv is NULL-terminated.  argc is -EINVAL for NULL. */
int aiot_worker_argc(const aiot_worker *w);
char *const *aiot_worker_argv(const aiot_worker *w);

/* The generation of the process: 1 for the processes started first, one
 * more for each reload (SIGHUP) that was started.  A respawned or recycled
 * process keeps its generation.  0 for the main context, -EINVAL for NULL. */
int aiot_worker_generation(const aiot_worker *w);

/* Runs fn(arg) as a new task in aiot_worker_scope(w) each time signo reaches
 * the process, from its loop (never in signal-handler context).  The
 * supervisor forwards SIGUSR1 to every ready worker and extra process: the
 * place to reopen log files.  fn NULL removes the handler.  Worker and extra
 * processes only, from their own loop.  Returns 0, -EINVAL (NULL w, a signal
 * that cannot be caught, SIGCHLD, or a stop signal of the server), -EPERM (the
 * main context), -ENOSPC (too many handlers). */
int aiot_worker_on_signal(aiot_worker *w, int signo, aiot_task_fn fn, void *arg);

/* Asks the supervisor to replace this process (like gunicorn's max-requests):
 * a new process with the same index is started, and once it is ready this one
 * gets its graceful stop signal, so that no connection is dropped.  Returns
 * 0, -EINVAL (NULL), -EPERM (the main context), -EALREADY (asked before).
 * The supervisor ignores the request while a reload or a stop is under way. */
int aiot_worker_recycle(aiot_worker *w);

/* What a reload may change for the generation it starts (the reload hook
 * of struct aiot_server_config).  The processes already running keep what
 * they were forked with. */
struct aiot_server_reload {
        size_t size;                    /* sizeof(struct aiot_server_reload), set by the server */
        unsigned gen;                   /* the generation about to start */
        int workers;                    /* 1..1024 */
        aiot_worker_fn worker;          /* required */
        const aiot_worker_fn *extra;    /* the extra processes ... */
        size_t n_extra;                 /* ... and how many (at most 1024) */
        int argc;                       /* handed to every new context */
        char *const *argv;
        double stop_timeout;            /* seconds before SIGKILL; < 0: none at all */
        int restart_limit;              /* >= 1 */
        double restart_window;          /* > 0 */
        double max_lifetime;            /* as in struct aiot_server_config */
        double lifetime_jitter;
        size_t max_rss;
        char why[256];                  /* the reason, when the hook refuses */
};

struct aiot_server_config {
        size_t size;                    /* sizeof(struct aiot_server_config), so the struct can grow */
        int workers;                    /* 1..1024; 0: the number of online CPUs */
        aiot_worker_fn worker;          /* required */
        aiot_main_fn main_ctx;          /* optional */
        const aiot_worker_fn *extra;    /* optional extra processes ... */
        size_t n_extra;                 /* ... and how many */
        const char *const *binds;       /* bind addresses (see aiot_listen_parse(3)) ... */
        size_t n_binds;                 /* ... and how many */
        int reuseport;                  /* every worker binds its own SO_REUSEPORT socket */
        const int *stop_signals;        /* NULL/0: SIGINT and SIGTERM */
        size_t n_stop_signals;
        double stop_timeout;            /* seconds before SIGKILL; 0: 30; < 0: none at all */
        int restart_limit;              /* this many crashes ... 0: 5 */
        double restart_window;          /* ... within this many seconds stop the server; 0: 10 */
        int argc;                       /* handed to every context */
        char *const *argv;
        const char *user, *group;       /* workers and extra processes drop to these after binding */
        const char *pidfile;            /* written once listening, removed at exit */
        int no_pidfd;                   /* use the SIGCHLD fallback even where pidfd works */
        double worker_timeout;          /* a worker loop stuck this long is aborted (SIGABRT, then SIGKILL
                                         * after half of it, at most 5 s); 0: 30; < 0: never */
        const char *proc_title;         /* "NAME": show "NAME: supervisor", "NAME: worker N" in ps by
                                           overwriting the argv area; NULL: leave it.  Only for a caller
                                           that no longer uses its argv strings. */
        int blocking_threads;           /* threads of each process's blocking pool (aiot_run_blocking(3));
                                           0: the default, 4 */
        const char *control;            /* the path of a control socket (aiotools-serve ctl), or NULL:
                                           none; mode 0600, or 0660 with control_group */
        const char *control_group;      /* a group whose members may use it too, or NULL */
        const char *metrics;            /* an address (aiot_listen_parse(3)) for an HTTP listener
                                           serving GET /metrics and GET /healthz, or NULL */
        double setup_timeout;           /* a process not ready within this many seconds failed its
                                           setup; 0: 60; < 0: never */
        /* Optional: called in the supervisor at each reload (SIGHUP), before
         * the new generation is forked, with *r holding the running values;
         * it may change them for the new generation.  A negative errno
         * refuses the reload (r->why says why): the serving generation goes
         * on unchanged.  See aiot_server_run(3). */
        int (*reload)(struct aiot_server_reload *r, void *arg);
        /* Optional: called once for each generation that had processes, once
         * none of them is left (the place to unload its code). */
        void (*retired)(unsigned gen, void *arg);
        void *reload_arg;               /* handed to both */
        /* Recycling policies: a worker is replaced (ready-gated, as
         * aiot_worker_recycle()) once it has served max_lifetime seconds
         * plus a share of lifetime_jitter drawn for each one (0: forever),
         * or once its resident memory, as the supervisor reads it, exceeds
         * max_rss bytes (0: no limit). */
        double max_lifetime;
        double lifetime_jitter;
        size_t max_rss;
};

/* Runs the server until it stops and returns the process exit status:
 * (see aiot_server_run(3) for reload on SIGHUP, scaling on SIGTTIN/SIGTTOU,
 * SIGUSR1, socket activation, the worker watchdog and sd_notify.)
 * AIOT_EXIT_OK after a stop signal, AIOT_EXIT_FAILURE when a setup failed or
 * the crash-loop limit was hit, AIOT_EXIT_USAGE for a bad config (a bad or
 * busy address, an unknown user ...), with one log line saying why.  Must be
 * called outside any task loop, once per process; it installs handlers for
 * the stop signals and SIGPIPE (ignored) for its duration. */
int aiot_server_run(const struct aiot_server_config *cfg);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
