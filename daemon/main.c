/* SPDX-License-Identifier: MIT */
/* aiotools-serve: loads a module and runs it under the prefork supervisor.
 * A thin client of the public API: option parsing is in cli.c (and the
 * config file's in conffile.c), the lifecycle in the library's server module.
 *
 * Reload: the server's reload hook (reload_cb) re-reads the config file and
 * loads the module file afresh from a private copy (a memfd: dlopen() would
 * hand back the handle it already has for the path), so that each generation
 * runs the code that was on disk when its reload began.  Every copy is a
 * struct load, covering a range of generations; a worker finds its copy by
 * its generation, and a copy is unloaded once all its generations are
 * retired.  A module with a main context keeps the copy loaded at start: the
 * main context runs in the supervisor for the server's whole life. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <aiotools.h>

#include "cli.h"
#include "ctl.h"
#include "conffile.h"

static const char usage_text[] =
        "Usage: aiotools-serve [OPTIONS] MODULE [-- MODULE-ARGS...]\n"
        "       aiotools-serve ctl [--socket=PATH] [--json] COMMAND [ARG]   (see ctl --help)\n"
        "Run MODULE (a shared object exporting 'aiot_module') in prefork worker processes.\n"
        "\n"
        "  -c, --config=FILE        read settings from FILE (see aiotools-serve.conf(5));\n"
        "                           the command line wins; SIGHUP re-reads it\n"
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
        "      --max-worker-lifetime=S  replace a worker once it has served S seconds ...\n"
        "      --max-worker-lifetime-jitter=J  ... plus up to J more, drawn per worker\n"
        "      --max-worker-memory=SIZE  replace a worker whose resident memory exceeds SIZE (e.g. 512M)\n"
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

/* A message into err; returns -1. */
static int say(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int say(char *err, size_t len, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
        return -1;
}

/* Run as root, the module is code that root executes: refuse a file, or a
 * directory it is in, that another user could change.  0, or -1 with err. */
static int check_module_owner(const char *path, char *err, size_t len)
{
        char *copy, *dir, *slash;
        struct stat st;
        int r = 0;

        if (geteuid() != 0)
                return 0;
        if (stat(path, &st) < 0)
                return 0; /* load_module() says why */
        if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)))
                return say(err, len, "refusing to load module '%s' as root: it is %s", path,
                           st.st_uid != 0 ? "owned by another user than root" : "writable by group or others");
        copy = realpath(path, NULL);
        if (!copy)
                return say(err, len, "cannot resolve module path '%s': %s", path, strerror(errno));
        slash = strrchr(copy, '/');
        dir = slash == copy ? "/" : copy;
        if (slash && slash != copy)
                *slash = '\0';
        if (stat(dir, &st) == 0 && (st.st_uid != 0 || ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))))
                r = say(err, len, "refusing to load module '%s' as root: its directory %s is %s", path, dir,
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

/* One loaded copy of the module, with the settings it was loaded with (the
 * config file merged with the command line), for generations first..last. */
struct load {
        void *handle;                   /* NULL: it shares the start copy's code */
        int fd;                         /* the memfd it was loaded from, or -1 */
        struct aiot_module module;      /* the fields its object does not hold zeroed */
        struct aiot_serve_opts opts;    /* the serving layer's limits, for a handler */
        struct cli_config cli;          /* strings point into merged, file and the argv copy */
        struct conf_file file;
        char **merged;
        char **margv;                   /* argv[0] = the module path, then its arguments */
        unsigned first, last, n_retired;
};

#define MAX_LOADS 64

/* The copies, oldest first; loads[0] is the one loaded at start. */
static struct load *loads[MAX_LOADS];
static size_t n_loads;
/* The command line (a copy of argv) and what it says on its own. */
static int cmd_argc;
static char **cmd_argv;
static struct cli_config cmd_cli;

static struct load *load_of_gen(unsigned gen)
{
        for (size_t i = n_loads; i-- > 0;)
                if (loads[i]->first <= gen && gen <= loads[i]->last)
                        return loads[i];
        return loads[0];
}

static void load_free(struct load *l)
{
        if (!l)
                return;
        if (l->handle)
                dlclose(l->handle);
        if (l->fd >= 0)
                close(l->fd);
        free(l->margv);
        free(l->merged);
        conffile_free(&l->file);
        free(l);
}

/* The config file's text, NUL-terminated; NULL with err. */
static char *read_text(const char *path, size_t *len, char *err, size_t errlen)
{
        FILE *f = fopen(path, "re");
        char *buf = NULL;
        size_t n = 0, cap = 0;

        if (!f) {
                say(err, errlen, "cannot read config file '%s': %s", path, strerror(errno));
                return NULL;
        }
        for (;;) {
                if (n + 4096 + 1 > cap) {
                        char *nb = cap > (16u << 20) ? NULL : realloc(buf, cap = cap ? cap * 2 : 8192);

                        if (!nb) {
                                say(err, errlen, "config file '%s' is too large", path);
                                free(buf);
                                fclose(f);
                                return NULL;
                        }
                        buf = nb;
                }
                size_t got = fread(buf + n, 1, 4096, f);

                n += got;
                if (got < 4096)
                        break;
        }
        if (ferror(f)) {
                say(err, errlen, "cannot read config file '%s': %s", path, strerror(errno));
                free(buf);
                fclose(f);
                return NULL;
        }
        fclose(f);
        buf[n] = '\0';
        *len = n;
        return buf;
}

/* l->cli from the command line and, with -c, the file merged in.  0, or -1
 * with one line in err. */
static int load_settings(struct load *l, char *err, size_t errlen)
{
        char *text;
        size_t len;
        int n, r;

        if (!cmd_cli.config) {
                l->cli = cmd_cli;
                return 0;
        }
        text = read_text(cmd_cli.config, &len, err, errlen);
        if (!text)
                return -1;
        r = conffile_parse(cmd_cli.config, text, len, &l->file, err, errlen);
        free(text);
        if (r < 0)
                return -1;
        n = conffile_merge(&l->file, cmd_argc, cmd_argv, &cmd_cli, &l->merged);
        if (n < 0)
                return say(err, errlen, "out of memory");
        if (cli_parse(n, l->merged, &l->cli, err, errlen) < 0)
                return -1;
        if (!l->cli.module)
                return say(err, errlen, "no MODULE given, neither on the command line nor in '%s'", cmd_cli.config);
        return cli_validate(&l->cli, err, errlen) < 0 ? -1 : 0;
}

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

/* Checks what dlopen() gave: the symbol, the ABI, a complete module; copies
 * it into *out.  0, or -1 with err (the handle is then closed). */
static int check_module(const char *path, void *h, struct aiot_module *out, char *err, size_t len)
{
        const struct aiot_module *m;

        dlerror();
        m = dlsym(h, AIOT_MODULE_SYMBOL);
        if (!m) {
                say(err, len, "module '%s' does not export '%s' (see aiot_module(3))", path, AIOT_MODULE_SYMBOL);
                goto bad;
        }
        if (m->abi != AIOT_MODULE_ABI) {
                say(err, len, "module '%s' was built for module ABI %u, this aiotools-serve supports ABI %d", path,
                    m->abi, AIOT_MODULE_ABI);
                goto bad;
        }
        memset(out, 0, sizeof(*out));
        memcpy(out, m, module_object_size(m));
        m = out;
        if (m->worker && m->conn) {
                say(err, len, "module '%s' gives both a worker function and a connection handler", path);
                goto bad;
        }
        if ((!m->worker && !m->conn) || (m->n_extra && !m->extra)) {
                say(err, len, "module '%s' is incomplete: %s", path,
                    !m->worker && !m->conn ? "no worker function" : "extra processes without functions");
                goto bad;
        }
        for (size_t i = 0; i < m->n_extra; i++)
                if (!m->extra[i]) {
                        say(err, len, "module '%s' is incomplete: extra process %zu has no function", path, i);
                        goto bad;
                }
        return 0;
bad:
        dlclose(h);
        return -1;
}

/* dlopen() of dlpath, the copy of the module at path, into l.  0, or -1 with err. */
static int load_module(const char *path, const char *dlpath, struct load *l, char *err, size_t len)
{
        const char *e;

        l->handle = dlopen(dlpath, RTLD_NOW | RTLD_LOCAL);
        if (!l->handle) {
                e = dlerror();
                return say(err, len, "cannot load module '%s': %s", path, e ? e : "unknown error");
        }
        if (check_module(path, l->handle, &l->module, err, len) < 0) {
                l->handle = NULL;
                return -1;
        }
        return 0;
}

/* Loads the file's current contents from a private copy (a memfd, loaded
 * from /proc/self/fd): a new object even where the path is the same, and one
 * that a later "cp new.so PATH" over the file cannot change under the running
 * code.  0, or -1 with err. */
static int load_module_copy(const char *path, struct load *l, char *err, size_t len)
{
        char dlpath[64], buf[65536];
        struct stat st;
        int in, fd, r;
        ssize_t n;

        in = open(path, O_RDONLY | O_CLOEXEC);
        if (in < 0)
                return say(err, len, "cannot open module '%s': %s", path, strerror(errno));
        if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode)) {
                close(in);
                return say(err, len, "cannot load module '%s': not a regular file", path);
        }
        /* Without /proc the file itself (a bare name would make dlopen()
         * search the library path, not the current directory). */
        if (access("/proc/self/fd", X_OK) < 0) {
                snprintf(dlpath, sizeof(dlpath), "%s%.50s", strchr(path, '/') ? "" : "./", path);
                close(in);
                if (strlen(path) > 50)
                        return say(err, len, "cannot load module '%s' without /proc: path too long", path);
                return load_module(path, dlpath, l, err, len);
        }
        fd = memfd_create("aiotools-module", MFD_CLOEXEC);
        if (fd < 0) {
                close(in);
                return say(err, len, "cannot copy module '%s': memfd_create: %s", path, strerror(errno));
        }
        while ((n = read(in, buf, sizeof(buf))) > 0)
                if (write(fd, buf, (size_t)n) != n) {
                        n = -1;
                        break;
                }
        if (n < 0) {
                say(err, len, "cannot copy module '%s': %s", path, strerror(errno));
                close(in);
                close(fd);
                return -1;
        }
        close(in);
        /* dlopen() also matches a loaded object by its name: the fd stays open
         * as long as the copy is loaded, so that no two live copies share a
         * name. */
        snprintf(dlpath, sizeof(dlpath), "/proc/self/fd/%d", fd);
        r = load_module(path, dlpath, l, err, len);
        if (r < 0)
                close(fd);
        else
                l->fd = fd;
        return r;
}

/* The worker of a module that gives a connection handler: the copy of its
 * own generation (forked after the reload that loaded it). */
static int conn_worker(aiot_worker *w)
{
        const struct load *l = load_of_gen((unsigned)aiot_worker_generation(w));
        struct aiot_serve_opts o = l->opts;
        int r = 0;

        if (l->module.conn_setup && (r = l->module.conn_setup(w, &o)) < 0)
                return r;
        r = aiot_worker_serve(w, &o);
        if (l->module.conn_teardown)
                l->module.conn_teardown(w, o.arg);
        return r < 0 ? r : 0;
}

/* The command line's limits; the option's 0 means "none" (a timeout) or "at
 * once" (the drain), the library's 0 the default. */
static void set_serve_opts(struct load *l)
{
        const struct cli_config *cli = &l->cli;

        l->opts = (struct aiot_serve_opts){
                .size = sizeof(l->opts),
                .handler = l->module.conn,
                .state_size = l->module.conn_state_size,
                .max_connections = (size_t)cli->max_connections,
        };
        if (cli->idle_timeout >= 0)
                l->opts.idle_timeout = cli->idle_timeout > 0 ? cli->idle_timeout : -1;
        if (cli->request_timeout >= 0)
                l->opts.request_timeout = cli->request_timeout > 0 ? cli->request_timeout : -1;
        if (cli->drain_timeout >= 0)
                l->opts.drain_timeout = cli->drain_timeout > 0 ? cli->drain_timeout : 1e-9;
        if (cli->write_timeout >= 0)
                l->opts.write_timeout = cli->write_timeout > 0 ? cli->write_timeout : -1;
}

/* The module sees argv[0] = its path, then its arguments. */
static int set_margv(struct load *l)
{
        l->margv = calloc((size_t)l->cli.module_argc + 2, sizeof(*l->margv));
        if (!l->margv)
                return -1;
        l->margv[0] = (char *)l->cli.module;
        memcpy(l->margv + 1, l->cli.module_argv, (size_t)l->cli.module_argc * sizeof(*l->margv));
        return 0;
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

/* ---------------------------------------------------------------- reload */

static bool same_str(const char *a, const char *b)
{
        return a == b || (a && b && strcmp(a, b) == 0);
}

/* What a reload cannot change (the sockets, the privileges, the pidfile, the
 * stop signals, the tracking, the watchdog): a line saying it waits for a restart. */
static void warn_restart_only(const struct cli_config *now, const struct cli_config *was)
{
        bool binds = now->n_binds != was->n_binds;

        for (size_t i = 0; !binds && i < now->n_binds; i++)
                binds = !same_str(now->binds[i], was->binds[i]);
        if (binds || now->reuseport != was->reuseport || !same_str(now->user, was->user) ||
            !same_str(now->group, was->group) || !same_str(now->pidfile, was->pidfile) ||
            now->n_stop_signals != was->n_stop_signals ||
            memcmp(now->stop_signals, was->stop_signals, now->n_stop_signals * sizeof(int)) != 0 ||
            now->no_pidfd != was->no_pidfd || now->worker_timeout != was->worker_timeout)
                aiot_log(AIOT_LOG_WARNING,
                         "reload: bind, reuseport, user, group, pidfile, stop-signals, no-pidfd and "
                         "worker-timeout take effect at the next restart, not at a reload");
}

static int online_cpus(void)
{
        long n = sysconf(_SC_NPROCESSORS_ONLN);

        return n < 1 ? 1 : n > CLI_MAX_WORKERS ? CLI_MAX_WORKERS : (int)n;
}

/* The new copy's module: the file loaded afresh, or (a module with a main
 * context) the start copy's code again.  0, or -1 with err. */
static int reload_module(struct load *l, char *err, size_t len)
{
        const struct aiot_module *first = &loads[0]->module;

        if (first->main_ctx) {
                aiot_log(AIOT_LOG_NOTICE, "reload: module '%s' has a main context, which runs for the server's "
                         "whole life: its code is not reloaded (restart to load new code)",
                         first->name ? first->name : "?");
                l->module = *first;
                return 0;
        }
        if (check_module_owner(l->cli.module, err, len) < 0 || load_module_copy(l->cli.module, l, err, len) < 0)
                return -1;
        if (l->module.main_ctx)
                return say(err, len, "module '%s' has a main context: a reload cannot start one (restart the server)",
                           l->cli.module);
        return 0;
}

/* Unloads a copy once every generation it ran is retired (never the newest,
 * nor the code of a module with a main context).  The start copy's settings
 * stay: the server holds strings of them (the pidfile, the user ...). */
static void load_maybe_free(size_t i)
{
        struct load *l = loads[i];

        if (l->last == UINT_MAX || l->n_retired < l->last - l->first + 1 || (i == 0 && l->module.main_ctx))
                return;
        aiot_log(AIOT_LOG_DEBUG, "generations %u to %u retired: unloading their copy of module '%s'", l->first,
                 l->last, l->cli.module);
        if (i == 0) {
                if (l->handle)
                        dlclose(l->handle);
                if (l->fd >= 0)
                        close(l->fd);
                l->handle = NULL;
                l->fd = -1;
                return;
        }
        load_free(l);
        memmove(loads + i, loads + i + 1, (n_loads - i - 1) * sizeof(*loads));
        n_loads--;
}

static void retired_cb(unsigned gen, void *arg)
{
        (void)arg;
        for (size_t i = 0; i < n_loads; i++)
                if (loads[i]->first <= gen && gen <= loads[i]->last) {
                        loads[i]->n_retired++;
                        load_maybe_free(i);
                        return;
                }
}

/* The server's reload hook: the config file again, the module afresh, then
 * what the new generation runs. */
static int reload_cb(struct aiot_server_reload *r, void *arg)
{
        struct load *l = calloc(1, sizeof(*l)), *prev = loads[n_loads - 1];
        const struct aiot_module *m;

        (void)arg;
        if (!l)
                return say(r->why, sizeof(r->why), "out of memory"), -ENOMEM;
        l->fd = -1;
        if (n_loads == MAX_LOADS) {
                say(r->why, sizeof(r->why), "%d copies of the module are still loaded (old generations draining)",
                    MAX_LOADS);
                goto fail;
        }
        if (load_settings(l, r->why, sizeof(r->why)) < 0 || reload_module(l, r->why, sizeof(r->why)) < 0 ||
            set_margv(l) < 0)
                goto fail;
        if (l->cli.log_level >= 0)
                aiot_log_set_level(l->cli.log_level);
        warn_restart_only(&l->cli, &loads[0]->cli);
        m = &l->module;
        set_serve_opts(l);
        r->workers = l->cli.workers ? l->cli.workers : online_cpus();
        r->worker = m->worker ? m->worker : conn_worker;
        r->extra = m->extra;
        r->n_extra = m->n_extra;
        r->argc = l->cli.module_argc + 1;
        r->argv = l->margv;
        r->stop_timeout = l->cli.stop_timeout > 0 ? l->cli.stop_timeout : 1e-9;
        r->restart_limit = l->cli.restart_limit;
        r->restart_window = l->cli.restart_window;
        r->max_lifetime = l->cli.max_worker_lifetime;
        r->lifetime_jitter = l->cli.max_worker_lifetime_jitter;
        r->max_rss = (size_t)l->cli.max_worker_memory;
        aiot_log(AIOT_LOG_NOTICE, "reload: generation %u runs module '%s' from %s (%d worker%s)", r->gen,
                 m->name ? m->name : "?", l->cli.module, r->workers, r->workers == 1 ? "" : "s");
        l->first = r->gen;
        l->last = UINT_MAX;
        prev->last = r->gen - 1;
        loads[n_loads++] = l;
        load_maybe_free(n_loads - 2);
        return 0;
fail:
        load_free(l);
        return -EINVAL;
}

/* ---------------------------------------------------------------- start */

/* Everything after the copy of argv; every string in the config points into
 * it or into the start copy's config file. */
static int serve(int argc, char **argv)
{
        struct aiot_server_config cfg = {.size = sizeof(cfg)};
        const struct cli_config *cli;
        const struct aiot_module *m;
        struct load *l;
        char err[512];

        cmd_argc = argc;
        cmd_argv = argv;
        if (cli_parse(argc, argv, &cmd_cli, err, sizeof(err)) < 0)
                return usage_error("%s", err);
        if (cmd_cli.help) {
                fputs(usage_text, stdout);
                return AIOT_EXIT_OK;
        }
        if (cmd_cli.version) {
                printf("aiotools-serve (%s) %s, module ABI %d\n", PACKAGE_NAME, PACKAGE_VERSION, AIOT_MODULE_ABI);
                return AIOT_EXIT_OK;
        }
        l = loads[n_loads++] = calloc(1, sizeof(*l));
        if (!l)
                return usage_error("out of memory");
        l->fd = -1;
        if (load_settings(l, err, sizeof(err)) < 0)
                return usage_error("%s", err);
        cli = &l->cli;
        if (cli->log_level >= 0)
                aiot_log_set_level(cli->log_level);
        /* Syntax errors in addresses are reported before the module is even loaded. */
        if (check_binds(cli) != 0)
                return AIOT_EXIT_USAGE;
        if (check_module_owner(cli->module, err, sizeof(err)) < 0 ||
            load_module_copy(cli->module, l, err, sizeof(err)) < 0)
                return usage_error("%s", err);
        m = &l->module;
        if (cli->check) {
                printf("module '%s' (%s): ABI %u, %s, %s main context, %zu extra process%s\n",
                               m->name ? m->name : "?", cli->module, m->abi,
                               m->conn ? "a connection handler" : "a worker function", m->main_ctx ? "with a" : "no",
                               m->n_extra, m->n_extra == 1 ? "" : "es");
                return AIOT_EXIT_OK;
        }
        if (set_margv(l) < 0)
                return usage_error("out of memory");
        l->first = 1;
        l->last = UINT_MAX;
        cfg.workers = cli->workers;
        set_serve_opts(l);
        cfg.worker = m->worker ? m->worker : conn_worker;
        cfg.main_ctx = m->main_ctx;
        cfg.extra = m->extra;
        cfg.n_extra = m->n_extra;
        cfg.binds = cli->binds;
        cfg.n_binds = cli->n_binds;
        cfg.reuseport = cli->reuseport;
        cfg.stop_signals = cli->stop_signals;
        cfg.n_stop_signals = cli->n_stop_signals;
        /* 0 means "the default" in the config; the option's 0 means "at once". */
        cfg.stop_timeout = cli->stop_timeout > 0 ? cli->stop_timeout : 1e-9;
        cfg.restart_limit = cli->restart_limit;
        cfg.restart_window = cli->restart_window;
        cfg.argc = cli->module_argc + 1;
        cfg.argv = l->margv;
        cfg.user = cli->user;
        cfg.group = cli->group;
        cfg.pidfile = cli->pidfile;
        cfg.no_pidfd = cli->no_pidfd;
        cfg.worker_timeout = cli->worker_timeout > 0 ? cli->worker_timeout : -1;
        cfg.blocking_threads = cli->blocking_threads;
        cfg.setup_timeout = cli->setup_timeout > 0 ? cli->setup_timeout : -1;
        cfg.control = cli->control;
        cfg.control_group = cli->control_group;
        cfg.metrics = cli->metrics;
        /* Every string in cfg points into the copy of argv or the loaded file. */
        cfg.proc_title = "aiotools-serve";
        cfg.reload = reload_cb;
        cfg.max_lifetime = cli->max_worker_lifetime;
        cfg.lifetime_jitter = cli->max_worker_lifetime_jitter;
        cfg.max_rss = (size_t)cli->max_worker_memory;
        cfg.retired = retired_cb;
        aiot_log(AIOT_LOG_DEBUG, "module '%s' loaded from %s", m->name ? m->name : "?", cli->module);
        /* The copies stay loaded at exit: their code may still be referenced by atexit handlers. */
        return aiot_server_run(&cfg);
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
