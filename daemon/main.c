/* SPDX-License-Identifier: MIT */
/* aiotools-serve: loads a module and runs it under the prefork supervisor.
 * A thin client of the public API: option parsing is in cli.c, the lifecycle
 * in the library's server module. */
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <aiotools.h>

#include "cli.h"
#include "ctl.h"

static const char usage_text[] =
        "Usage: aiotools-serve [OPTIONS] MODULE [-- MODULE-ARGS...]\n"
        "       aiotools-serve ctl [--socket=PATH] [--json] COMMAND [ARG]   (see ctl --help)\n"
        "Run MODULE (a shared object exporting 'aiot_module') in prefork worker processes.\n"
        "\n"
        "  -w, --workers=N          worker processes (default: online CPUs)\n"
        "  -b, --bind=ADDR          HOST:PORT, [V6ADDR]:PORT or unix:PATH; repeatable\n"
        "      --reuseport          each worker binds its own SO_REUSEPORT socket\n"
        "  -t, --stop-timeout=S     seconds before remaining workers are killed (default 30)\n"
        "      --stop-signals=L     signals that stop the server (default INT,TERM)\n"
        "  -u, --user=U             workers drop to this user after binding\n"
        "  -g, --group=G            workers drop to this group after binding\n"
        "  -p, --pidfile=PATH       write the supervisor's PID to PATH\n"
        "      --restart-limit=N/S  stop after more than N crashes within S seconds (default 5/10)\n"
        "      --no-pidfd           track workers with SIGCHLD instead of pidfds\n"
        "      --worker-timeout=S   abort a worker whose loop is stuck for S seconds\n"
        "                           (default 30; 0: never)\n"
        "      --log-level=LEVEL    err, warning, notice, info (default) or debug\n"
        "      --max-connections=N  per worker, for a module with a connection handler\n"
        "                           (default 10000)\n"
        "      --blocking-threads=N threads per worker for blocking calls (default 4)\n"
        "      --idle-timeout=S     close a connection idle this long (default 60; 0: never)\n"
        "      --request-timeout=S  bound a handler run from its first byte (default 60; 0: none)\n"
        "      --drain-timeout=S    at a stop, let connections finish this long (default 10)\n"
        "      --write-timeout=S    cut off a peer that does not read for this long (default 60; 0: never)\n"
        "      --setup-timeout=S    a worker not ready within S seconds failed its setup\n"
        "                           (default 60; 0: never)\n"
        "      --control=PATH       a control socket for `aiotools-serve ctl` (default\n"
        "                           $RUNTIME_DIRECTORY/control.sock when that is set)\n"
        "      --control-group=G    let group G use the control socket too (mode 0660)\n"
        "      --metrics=ADDR       serve GET /metrics and GET /healthz over HTTP on ADDR\n"
        "      --check              load and validate MODULE (and the addresses), then exit\n"
        "  -h, --help               show this help and exit\n"
        "  -V, --version            show the version and exit\n"
        "\n"
        "Exit status: 0 after a clean stop, 1 when the server failed, 2 for usage and\n"
        "configuration errors.  See aiotools-serve(1).\n";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
        char line[1024];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        fprintf(stderr, "aiotools-serve: %s\n", line);
        return AIOT_EXIT_USAGE;
}

/* Run as root, the module is code that root executes: refuse a file, or a
 * directory it is in, that another user could change.  One line, exit 2. */
static int check_module_owner(const char *path)
{
        char *copy, *dir, *slash;
        struct stat st;
        int r = 0;

        if (geteuid() != 0)
                return 0;
        if (stat(path, &st) < 0)
                return 0; /* load_module() says why */
        if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)))
                return usage_error("refusing to load module '%s' as root: it is %s", path,
                                   st.st_uid != 0 ? "owned by another user than root" : "writable by group or others");
        copy = realpath(path, NULL);
        if (!copy)
                return usage_error("cannot resolve module path '%s': %s", path, strerror(errno));
        slash = strrchr(copy, '/');
        dir = slash == copy ? "/" : copy;
        if (slash && slash != copy)
                *slash = '\0';
        if (stat(dir, &st) == 0 && (st.st_uid != 0 || ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))))
                r = usage_error("refusing to load module '%s' as root: its directory %s is %s", path, dir,
                                st.st_uid != 0 ? "owned by another user than root" : "writable by group or others");
        free(copy);
        return r;
}

/* A copy of argv: the process title later overwrites the original strings. */
static void free_argv(int argc, char **argv)
{
        for (int i = 0; argv && i < argc; i++)
                free(argv[i]);
        free(argv);
}

static char **dup_argv(int argc, char **argv)
{
        char **copy = calloc((size_t)argc + 1, sizeof(*copy));

        if (!copy)
                return NULL;
        for (int i = 0; i < argc; i++)
                if (!(copy[i] = strdup(argv[i]))) {
                        free_argv(i, copy);
                        return NULL;
                }
        return copy;
}

/* The module, with the fields its object does not hold zeroed (see module.h). */
static struct aiot_module module;
/* The serving layer's options from the command line, for a module's handler. */
static struct aiot_serve_opts serve_opts;

/* How many bytes of struct aiot_module the module's object holds: the size of
 * its ELF symbol.  A module built before the connection fields has a smaller
 * object, and what follows it in memory is not ours to read. */
static size_t module_object_size(const struct aiot_module *m)
{
        const ElfW(Sym) *sym = NULL;
        Dl_info info;

        if (!dladdr1(m, &info, (void **)&sym, RTLD_DL_SYMENT) || !sym || sym->st_size == 0)
                return offsetof(struct aiot_module, conn);
        return sym->st_size < sizeof(*m) ? sym->st_size : sizeof(*m);
}

/* Loads the module; on failure prints one line and returns NULL. */
static const struct aiot_module *load_module(const char *path, void **handle)
{
        const struct aiot_module *m;
        struct stat st;
        char *full = NULL;
        const char *err;
        void *h;

        if (stat(path, &st) < 0) {
                usage_error("cannot open module '%s': %s", path, strerror(errno));
                return NULL;
        }
        if (!S_ISREG(st.st_mode)) {
                usage_error("cannot load module '%s': not a regular file", path);
                return NULL;
        }
        /* A bare name would make dlopen() search the library path, not the
         * current directory the user means. */
        if (!strchr(path, '/') && asprintf(&full, "./%s", path) < 0) {
                usage_error("out of memory");
                return NULL;
        }
        h = dlopen(full ? full : path, RTLD_NOW | RTLD_LOCAL);
        free(full);
        if (!h) {
                err = dlerror();
                usage_error("cannot load module '%s': %s", path, err ? err : "unknown error");
                return NULL;
        }
        dlerror();
        m = dlsym(h, AIOT_MODULE_SYMBOL);
        if (!m) {
                usage_error("module '%s' does not export '%s' (see aiot_module(3))", path, AIOT_MODULE_SYMBOL);
                dlclose(h);
                return NULL;
        }
        if (m->abi != AIOT_MODULE_ABI) {
                usage_error("module '%s' was built for module ABI %u, this aiotools-serve supports ABI %d", path,
                            m->abi, AIOT_MODULE_ABI);
                dlclose(h);
                return NULL;
        }
        memcpy(&module, m, module_object_size(m));
        m = &module;
        if (m->worker && m->conn) {
                usage_error("module '%s' gives both a worker function and a connection handler", path);
                dlclose(h);
                return NULL;
        }
        if ((!m->worker && !m->conn) || (m->n_extra && !m->extra)) {
                usage_error("module '%s' is incomplete: %s", path,
                            !m->worker && !m->conn ? "no worker function" : "extra processes without functions");
                dlclose(h);
                return NULL;
        }
        for (size_t i = 0; i < m->n_extra; i++)
                if (!m->extra[i]) {
                        usage_error("module '%s' is incomplete: extra process %zu has no function", path, i);
                        dlclose(h);
                        return NULL;
                }
        *handle = h;
        return m;
}

/* The worker of a module that gives a connection handler. */
static int conn_worker(aiot_worker *w)
{
        struct aiot_serve_opts o = serve_opts;
        int r = 0;

        if (module.conn_setup && (r = module.conn_setup(w, &o)) < 0)
                return r;
        r = aiot_worker_serve(w, &o);
        if (module.conn_teardown)
                module.conn_teardown(w, o.arg);
        return r < 0 ? r : 0;
}

/* The command line's limits; the option's 0 means "none" (a timeout) or "at
 * once" (the drain), the library's 0 the default. */
static void set_serve_opts(const struct cli_config *cli)
{
        serve_opts = (struct aiot_serve_opts){
                .size = sizeof(serve_opts),
                .handler = module.conn,
                .state_size = module.conn_state_size,
                .max_connections = (size_t)cli->max_connections,
        };
        if (cli->idle_timeout >= 0)
                serve_opts.idle_timeout = cli->idle_timeout > 0 ? cli->idle_timeout : -1;
        if (cli->request_timeout >= 0)
                serve_opts.request_timeout = cli->request_timeout > 0 ? cli->request_timeout : -1;
        if (cli->drain_timeout >= 0)
                serve_opts.drain_timeout = cli->drain_timeout > 0 ? cli->drain_timeout : 1e-9;
        if (cli->write_timeout >= 0)
                serve_opts.write_timeout = cli->write_timeout > 0 ? cli->write_timeout : -1;
}

/* --check also parses the addresses, without binding. */
static int check_binds(const struct cli_config *cli)
{
        for (size_t i = 0; i < cli->n_binds; i++) {
                struct aiot_bind_addr a;
                char err[256];

                if (aiot_listen_parse(cli->binds[i], 0, &a, err, sizeof(err)) < 0)
                        return usage_error("%s", err);
        }
        return 0;
}

/* Everything after the copy of argv; every string in the config points into it. */
static int serve(int argc, char **argv)
{
        struct cli_config cli;
        struct aiot_server_config cfg = {.size = sizeof(cfg)};
        const struct aiot_module *m;
        char err[512], **margv;
        void *handle = NULL;
        int status;

        if (cli_parse(argc, argv, &cli, err, sizeof(err)) < 0)
                return usage_error("%s", err);
        if (cli.help) {
                fputs(usage_text, stdout);
                return AIOT_EXIT_OK;
        }
        if (cli.version) {
                printf("aiotools-serve (%s) %s, module ABI %d\n", PACKAGE_NAME, PACKAGE_VERSION, AIOT_MODULE_ABI);
                return AIOT_EXIT_OK;
        }
        if (cli.log_level >= 0)
                aiot_log_set_level(cli.log_level);
        /* Syntax errors in addresses are reported before the module is even loaded. */
        if (check_binds(&cli) != 0)
                return AIOT_EXIT_USAGE;
        if (check_module_owner(cli.module) != 0)
                return AIOT_EXIT_USAGE;
        m = load_module(cli.module, &handle);
        if (!m)
                return AIOT_EXIT_USAGE;
        if (cli.check) {
                printf("module '%s' (%s): ABI %u, %s, %s main context, %zu extra process%s\n",
                               m->name ? m->name : "?", cli.module, m->abi,
                               m->conn ? "a connection handler" : "a worker function", m->main_ctx ? "with a" : "no",
                               m->n_extra, m->n_extra == 1 ? "" : "es");
                dlclose(handle);
                return AIOT_EXIT_OK;
        }

        /* The module sees argv[0] = its path, then the arguments after "--". */
        margv = calloc((size_t)cli.module_argc + 2, sizeof(*margv));
        if (!margv)
                return usage_error("out of memory");
        margv[0] = (char *)cli.module;
        memcpy(margv + 1, cli.module_argv, (size_t)cli.module_argc * sizeof(*margv));

        cfg.workers = cli.workers;
        set_serve_opts(&cli);
        cfg.worker = m->worker ? m->worker : conn_worker;
        cfg.main_ctx = m->main_ctx;
        cfg.extra = m->extra;
        cfg.n_extra = m->n_extra;
        cfg.binds = cli.binds;
        cfg.n_binds = cli.n_binds;
        cfg.reuseport = cli.reuseport;
        cfg.stop_signals = cli.stop_signals;
        cfg.n_stop_signals = cli.n_stop_signals;
        /* 0 means "the default" in the config; the option's 0 means "at once". */
        cfg.stop_timeout = cli.stop_timeout > 0 ? cli.stop_timeout : 1e-9;
        cfg.restart_limit = cli.restart_limit;
        cfg.restart_window = cli.restart_window;
        cfg.argc = cli.module_argc + 1;
        cfg.argv = margv;
        cfg.user = cli.user;
        cfg.group = cli.group;
        cfg.pidfile = cli.pidfile;
        cfg.no_pidfd = cli.no_pidfd;
        cfg.worker_timeout = cli.worker_timeout > 0 ? cli.worker_timeout : -1;
        cfg.blocking_threads = cli.blocking_threads;
        cfg.setup_timeout = cli.setup_timeout > 0 ? cli.setup_timeout : -1;
        cfg.control = cli.control;
        cfg.control_group = cli.control_group;
        cfg.metrics = cli.metrics;
        /* Every string in cfg points into the copy of argv. */
        cfg.proc_title = "aiotools-serve";
        aiot_log(AIOT_LOG_DEBUG, "module '%s' loaded from %s", m->name ? m->name : "?", cli.module);
        status = aiot_server_run(&cfg);
        free(margv);
        /* The module stays loaded: its code may still be referenced by atexit handlers. */
        return status;
}

int main(int argc, char **argv)
{
        char **copy;
        int status;

        if (argc > 1 && strcmp(argv[1], "ctl") == 0)
                return ctl_main(argc - 1, argv + 1);
        copy = dup_argv(argc, argv);
        if (!copy)
                return usage_error("out of memory");
        status = serve(argc, copy);
        free_argv(argc, copy);
        return status;
}
