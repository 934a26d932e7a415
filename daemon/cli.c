/* SPDX-License-Identifier: MIT */
/* aiotools-serve's option parser.  Hand-written rather than getopt_long(),
 * because getopt keeps global state and prints its own errors: this parser is
 * a pure function of argv, which the fuzzer and the tests call many times. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "aiotools/log.h"
#include "cli.h"

enum opt_id {
        OPT_WORKERS, OPT_BIND, OPT_REUSEPORT, OPT_STOP_TIMEOUT, OPT_STOP_SIGNALS, OPT_USER, OPT_GROUP,
        OPT_PIDFILE, OPT_RESTART_LIMIT, OPT_NO_PIDFD, OPT_WORKER_TIMEOUT, OPT_LOG_LEVEL,
        OPT_MAX_CONNECTIONS, OPT_IDLE_TIMEOUT, OPT_REQUEST_TIMEOUT, OPT_DRAIN_TIMEOUT, OPT_WRITE_TIMEOUT, OPT_BLOCKING_THREADS, OPT_CHECK, OPT_HELP, OPT_VERSION,
        OPT_CONTROL, OPT_CONTROL_GROUP, OPT_METRICS, OPT_SETUP_TIMEOUT,
        OPT_CONFIG, OPT_MAX_WORKER_LIFETIME, OPT_MAX_WORKER_LIFETIME_JITTER, OPT_MAX_WORKER_MEMORY,
};

struct opt {
        const char *name;
        char short_name;
        int has_arg;
        enum opt_id id;
};

static const struct opt opts[] = {
        { "workers", 'w', 1, OPT_WORKERS },
        { "bind", 'b', 1, OPT_BIND },
        { "reuseport", 0, 0, OPT_REUSEPORT },
        { "stop-timeout", 't', 1, OPT_STOP_TIMEOUT },
        { "stop-signals", 0, 1, OPT_STOP_SIGNALS },
        { "user", 'u', 1, OPT_USER },
        { "group", 'g', 1, OPT_GROUP },
        { "pidfile", 'p', 1, OPT_PIDFILE },
        { "restart-limit", 0, 1, OPT_RESTART_LIMIT },
        { "no-pidfd", 0, 0, OPT_NO_PIDFD },
        { "worker-timeout", 0, 1, OPT_WORKER_TIMEOUT },
        { "log-level", 0, 1, OPT_LOG_LEVEL },
        { "max-connections", 0, 1, OPT_MAX_CONNECTIONS },
        { "blocking-threads", 0, 1, OPT_BLOCKING_THREADS },
        { "idle-timeout", 0, 1, OPT_IDLE_TIMEOUT },
        { "request-timeout", 0, 1, OPT_REQUEST_TIMEOUT },
        { "drain-timeout", 0, 1, OPT_DRAIN_TIMEOUT },
        { "write-timeout", 0, 1, OPT_WRITE_TIMEOUT },
        { "check", 0, 0, OPT_CHECK },
        { "help", 'h', 0, OPT_HELP },
        { "version", 'V', 0, OPT_VERSION },
        { "control", 0, 1, OPT_CONTROL },
        { "control-group", 0, 1, OPT_CONTROL_GROUP },
        { "metrics", 0, 1, OPT_METRICS },
        { "setup-timeout", 0, 1, OPT_SETUP_TIMEOUT },
        { "config", 'c', 1, OPT_CONFIG },
        { "max-worker-lifetime", 0, 1, OPT_MAX_WORKER_LIFETIME },
        { "max-worker-lifetime-jitter", 0, 1, OPT_MAX_WORKER_LIFETIME_JITTER },
        { "max-worker-memory", 0, 1, OPT_MAX_WORKER_MEMORY },
};

static const struct {
        const char *name;
        int signo;
} signals[] = {
        { "HUP", SIGHUP },   { "INT", SIGINT },   { "QUIT", SIGQUIT }, { "TERM", SIGTERM },
        { "USR1", SIGUSR1 }, { "USR2", SIGUSR2 }, { "ALRM", SIGALRM }, { "WINCH", SIGWINCH },
        { "PWR", SIGPWR },   { "KILL", SIGKILL }, { "STOP", SIGSTOP }, { "CHLD", SIGCHLD },
        { "PIPE", SIGPIPE }, { "TTIN", SIGTTIN }, { "TTOU", SIGTTOU }, { "CONT", SIGCONT },
};

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
        va_list ap;

        if (err && errlen > 0) {
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return -EINVAL;
}

/* A whole-string decimal integer in [min, max]. */
static int parse_int(const char *s, long min, long max, long *out)
{
        char *end;
        long v;

        if (!*s || *s == ' ' || *s == '+')
                return -EINVAL;
        errno = 0;
        v = strtol(s, &end, 10);
        if (errno || *end || v < min || v > max)
                return -EINVAL;
        *out = v;
        return 0;
}

/* A whole-string finite number of seconds in [0, max] (no "inf", no "nan", no hex). */
static int parse_seconds(const char *s, double max, double *out)
{
        char *end;
        double v;

        if (!*s || strpbrk(s, "xXnNiI ") || *s == '+')
                return -EINVAL;
        errno = 0;
        v = strtod(s, &end);
        if (errno || *end || !isfinite(v) || v < 0 || v > max)
                return -EINVAL;
        *out = v;
        return 0;
}

int cli_parse_signal(const char *name)
{
        long n;

        if (!name)
                return -EINVAL;
        if (parse_int(name, 1, SIGRTMAX, &n) == 0)
                return (int)n;
        if (strncasecmp(name, "SIG", 3) == 0)
                name += 3;
        for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
                if (strcasecmp(name, signals[i].name) == 0)
                        return signals[i].signo;
        return -EINVAL;
}

const char *cli_signal_name(int signo)
{
        for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
                if (signals[i].signo == signo)
                        return signals[i].name;
        return NULL;
}

static int parse_signal_list(const char *list, struct cli_config *cfg, char *err, size_t errlen)
{
        const char *p = list;

        cfg->n_stop_signals = 0;
        for (;;) {
                const char *comma = strchr(p, ',');
                size_t len = comma ? (size_t)(comma - p) : strlen(p);
                char name[16];
                int signo;

                if (len == 0 || len >= sizeof(name))
                        return fail(err, errlen, "invalid --stop-signals '%s': expected a list like INT,TERM", list);
                memcpy(name, p, len);
                name[len] = '\0';
                signo = cli_parse_signal(name);
                if (signo < 0)
                        return fail(err, errlen, "invalid --stop-signals '%s': unknown signal '%s'", list, name);
                /* KILL and STOP cannot be caught; CHLD tracks the workers. */
                if (signo == SIGKILL || signo == SIGSTOP || signo == SIGCHLD)
                        return fail(err, errlen, "invalid --stop-signals '%s': %s cannot be a stop signal", list,
                                    name);
                for (size_t i = 0; i < cfg->n_stop_signals; i++)
                        if (cfg->stop_signals[i] == signo)
                                return fail(err, errlen, "invalid --stop-signals '%s': '%s' given twice", list,
                                            name);
                if (cfg->n_stop_signals == CLI_MAX_SIGNALS)
                        return fail(err, errlen, "invalid --stop-signals '%s': at most %d signals", list,
                                    CLI_MAX_SIGNALS);
                cfg->stop_signals[cfg->n_stop_signals++] = signo;
                if (!comma)
                        return 0;
                p = comma + 1;
        }
}

/* A size in bytes: digits with an optional K, M, G or T (powers of 1024), in
 * [1, CLI_MAX_MEMORY]. */
static int parse_size(const char *s, unsigned long long *out)
{
        static const char units[] = "KMGT";
        unsigned long long v, mul = 1;
        const char *u;
        char *end;

        if (!*s || *s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno)
                return -EINVAL;
        if (*end) {
                u = strchr(units, end[0] & ~0x20);
                if (!u || !*u || (end[1] && strcasecmp(end + 1, "iB") != 0 && strcasecmp(end + 1, "B") != 0))
                        return -EINVAL;
                mul = 1ULL << (10 * (u - units + 1));
        }
        if (v == 0 || v > CLI_MAX_MEMORY / mul)
                return -EINVAL;
        *out = v * mul;
        return 0;
}

static int parse_restart_limit(const char *s, struct cli_config *cfg, char *err, size_t errlen)
{
        const char *slash = strchr(s, '/');
        char num[24];
        long n;
        size_t len = slash ? (size_t)(slash - s) : strlen(s);

        if (len == 0 || len >= sizeof(num))
                goto bad;
        memcpy(num, s, len);
        num[len] = '\0';
        if (parse_int(num, 1, 1000000, &n) < 0)
                goto bad;
        cfg->restart_limit = (int)n;
        if (slash) {
                double w;

                if (parse_seconds(slash + 1, 86400.0 * 365, &w) < 0 || w <= 0)
                        goto bad;
                cfg->restart_window = w;
        }
        return 0;
bad:
        return fail(err, errlen, "invalid --restart-limit '%s': expected N/SECONDS, e.g. 5/10", s);
}

/* The serving layer's timeout an option sets, and its name for messages. */
static double *timeout_field(struct cli_config *cfg, int id, const char **what)
{
        switch (id) {
        case OPT_IDLE_TIMEOUT:
                *what = "idle";
                return &cfg->idle_timeout;
        case OPT_REQUEST_TIMEOUT:
                *what = "request";
                return &cfg->request_timeout;
        case OPT_DRAIN_TIMEOUT:
                *what = "drain";
                return &cfg->drain_timeout;
        default:
                *what = "write";
                return &cfg->write_timeout;
        }
}

static int apply(const struct opt *o, const char *display, const char *val, struct cli_config *cfg, char *err,
                 size_t errlen)
{
        long n;
        double d;
        int level;

        switch (o->id) {
        case OPT_WORKERS:
                if (parse_int(val, 1, CLI_MAX_WORKERS, &n) < 0)
                        return fail(err, errlen, "invalid worker count '%s' for %s: expected 1 to %d", val, display,
                                    CLI_MAX_WORKERS);
                cfg->workers = (int)n;
                return 0;
        case OPT_BIND:
                if (!*val)
                        return fail(err, errlen, "empty address for %s", display);
                if (cfg->n_binds == CLI_MAX_BINDS)
                        return fail(err, errlen, "too many %s addresses (at most %d)", display, CLI_MAX_BINDS);
                cfg->binds[cfg->n_binds++] = val;
                return 0;
        case OPT_REUSEPORT:
                cfg->reuseport = 1;
                return 0;
        case OPT_STOP_TIMEOUT:
                if (parse_seconds(val, 86400.0, &d) < 0)
                        return fail(err, errlen, "invalid stop timeout '%s' for %s: expected seconds, 0 to 86400",
                                    val, display);
                cfg->stop_timeout = d;
                return 0;
        case OPT_STOP_SIGNALS:
                return parse_signal_list(val, cfg, err, errlen);
        case OPT_USER:
        case OPT_GROUP:
        case OPT_PIDFILE:
                if (!*val)
                        return fail(err, errlen, "empty value for %s", display);
                *(o->id == OPT_USER ? &cfg->user : o->id == OPT_GROUP ? &cfg->group : &cfg->pidfile) = val;
                return 0;
        case OPT_RESTART_LIMIT:
                return parse_restart_limit(val, cfg, err, errlen);
        case OPT_NO_PIDFD:
                cfg->no_pidfd = 1;
                return 0;
        case OPT_WORKER_TIMEOUT:
                if (parse_seconds(val, 86400.0, &d) < 0)
                        return fail(err, errlen, "invalid worker timeout '%s' for %s: expected seconds, 0 to 86400",
                                    val, display);
                cfg->worker_timeout = d;
                return 0;
        case OPT_MAX_CONNECTIONS:
                if (parse_int(val, 1, CLI_MAX_CONNECTIONS, &n) < 0)
                        return fail(err, errlen, "invalid connection limit '%s' for %s: expected 1 to %d", val,
                                    display, CLI_MAX_CONNECTIONS);
                cfg->max_connections = n;
                return 0;
        case OPT_BLOCKING_THREADS:
                if (parse_int(val, 1, CLI_MAX_BLOCKING_THREADS, &n) < 0)
                        return fail(err, errlen, "invalid thread count '%s' for %s: expected 1 to %d", val,
                                    display, CLI_MAX_BLOCKING_THREADS);
                cfg->blocking_threads = (int)n;
                return 0;
        case OPT_IDLE_TIMEOUT:
        case OPT_REQUEST_TIMEOUT:
        case OPT_DRAIN_TIMEOUT:
        case OPT_WRITE_TIMEOUT: {
                const char *what;
                double *field = timeout_field(cfg, o->id, &what);

                if (parse_seconds(val, 86400.0, &d) < 0)
                        return fail(err, errlen, "invalid %s timeout '%s' for %s: expected seconds, 0 to 86400",
                                    what, val, display);
                *field = d;
                return 0;
        }
        case OPT_LOG_LEVEL:
                if (aiot_log_parse_level(val, &level) < 0)
                        return fail(err, errlen,
                                    "invalid log level '%s' for %s: expected err, warning, notice, info or debug",
                                    val, display);
                cfg->log_level = level;
                return 0;
        case OPT_CONTROL:
        case OPT_CONTROL_GROUP:
        case OPT_METRICS:
                if (!*val)
                        return fail(err, errlen, "empty value for %s", display);
                *(o->id == OPT_CONTROL ? &cfg->control : o->id == OPT_CONTROL_GROUP ? &cfg->control_group : &cfg->metrics) = val;
                return 0;
        case OPT_SETUP_TIMEOUT:
                if (parse_seconds(val, 86400.0, &d) < 0)
                        return fail(err, errlen, "invalid setup timeout '%s' for %s: expected seconds, 0 to 86400",
                                    val, display);
                cfg->setup_timeout = d;
                return 0;
        case OPT_CHECK:
                cfg->check = 1;
                return 0;
        case OPT_HELP:
                cfg->help = 1;
                return 0;
        case OPT_VERSION:
                cfg->version = 1;
                return 0;
        case OPT_MAX_WORKER_LIFETIME:
        case OPT_MAX_WORKER_LIFETIME_JITTER:
                if (parse_seconds(val, 86400.0 * 365, &d) < 0)
                        return fail(err, errlen, "invalid %s '%s' for %s: expected seconds, 0 to 31536000",
                                    o->id == OPT_MAX_WORKER_LIFETIME ? "lifetime" : "lifetime jitter", val,
                                    display);
                *(o->id == OPT_MAX_WORKER_LIFETIME ? &cfg->max_worker_lifetime : &cfg->max_worker_lifetime_jitter) =
                        d;
                return 0;
        case OPT_MAX_WORKER_MEMORY:
                if (parse_size(val, &cfg->max_worker_memory) < 0)
                        return fail(err, errlen, "invalid memory size '%s' for %s: expected bytes with K, M, G or T, "
                                    "e.g. 512M", val, display);
                return 0;
        case OPT_CONFIG:
                if (!*val)
                        return fail(err, errlen, "empty path for %s", display);
                cfg->config = val;
                return 0;
        }
        return fail(err, errlen, "internal error");
}

static const struct opt *find_long(const char *name, size_t len)
{
        for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++)
                if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
                        return &opts[i];
        return NULL;
}

static const struct opt *find_short(char c)
{
        for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++)
                if (opts[i].short_name && opts[i].short_name == c)
                        return &opts[i];
        return NULL;
}

/* "--name", "--name=value" or "--name value"; *i is advanced past what was used. */
static int parse_long(int argc, char **argv, int *i, struct cli_config *cfg, char *err, size_t errlen)
{
        const char *arg = argv[*i] + 2, *eq = strchr(arg, '=');
        size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
        const struct opt *o = find_long(arg, len);
        char display[40];

        if (!o)
                return fail(err, errlen, "unknown option '--%.*s'", (int)(len > 64 ? 64 : len), arg);
        snprintf(display, sizeof(display), "--%s", o->name);
        if (!o->has_arg) {
                if (eq)
                        return fail(err, errlen, "option %s takes no value", display);
                return apply(o, display, NULL, cfg, err, errlen);
        }
        if (eq)
                return apply(o, display, eq + 1, cfg, err, errlen);
        if (*i + 1 >= argc)
                return fail(err, errlen, "option %s needs a value", display);
        *i += 1;
        return apply(o, display, argv[*i], cfg, err, errlen);
}

/* "-x", "-xVALUE", "-x VALUE", and bundled flags "-hV". */
static int parse_short(int argc, char **argv, int *i, struct cli_config *cfg, char *err, size_t errlen)
{
        const char *p = argv[*i] + 1;

        while (*p) {
                const struct opt *o = find_short(*p);
                char display[3] = { '-', *p, '\0' };
                int r;

                if (!o) {
                        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
                                return fail(err, errlen, "unknown option in '%.64s'", argv[*i]);
                        return fail(err, errlen, "unknown option '-%c'", *p);
                }
                if (o->has_arg) {
                        if (p[1])
                                return apply(o, display, p + 1, cfg, err, errlen);
                        if (*i + 1 >= argc)
                                return fail(err, errlen, "option %s needs a value", display);
                        *i += 1;
                        return apply(o, display, argv[*i], cfg, err, errlen);
                }
                r = apply(o, display, NULL, cfg, err, errlen);
                if (r < 0)
                        return r;
                p++;
        }
        return 0;
}

int cli_parse(int argc, char **argv, struct cli_config *cfg, char *err, size_t errlen)
{
        int r, i;

        if (err && errlen > 0)
                err[0] = '\0';
        if (!cfg || argc < 0 || (argc > 0 && !argv))
                return fail(err, errlen, "internal error: bad arguments");
        memset(cfg, 0, sizeof(*cfg));
        cfg->stop_timeout = 30.0;
        cfg->worker_timeout = 30.0;
        cfg->setup_timeout = 60.0;
        cfg->restart_limit = 5;
        cfg->restart_window = 10.0;
        cfg->log_level = -1;
        cfg->idle_timeout = cfg->request_timeout = cfg->drain_timeout = cfg->write_timeout = -1;

        /* Options may come before or after MODULE, as GNU getopt allows; "--" ends them. */
        for (i = 1; i < argc; i++) {
                const char *a = argv[i];

                if (!a)
                        return fail(err, errlen, "internal error: NULL argument");
                if (strcmp(a, "--") == 0) {
                        cfg->dashdash = i;
                        i++;
                        break;
                }
                if (a[0] == '-' && a[1] == '-')
                        r = parse_long(argc, argv, &i, cfg, err, errlen);
                else if (a[0] == '-' && a[1])
                        r = parse_short(argc, argv, &i, cfg, err, errlen);
                else if (!cfg->module) {
                        if (!*a)
                                return fail(err, errlen, "empty module path");
                        cfg->module = a;
                        r = 0;
                } else
                        r = fail(err, errlen, "unexpected argument '%.128s' (module arguments go after --)", a);
                if (r < 0)
                        return r;
        }
        cfg->module_argc = argc - i;
        cfg->module_argv = argv + i;
        if (cfg->help || cfg->version || cfg->config)
                return 0;
        return cli_validate(cfg, err, errlen);
}

int cli_validate(const struct cli_config *cfg, char *err, size_t errlen)
{
        if (!cfg->module)
                return fail(err, errlen, "no MODULE given (see --help)");
        if (cfg->reuseport && cfg->n_binds == 0)
                return fail(err, errlen, "--reuseport needs at least one --bind address");
        if (cfg->max_worker_lifetime_jitter > 0 && cfg->max_worker_lifetime == 0)
                return fail(err, errlen, "--max-worker-lifetime-jitter needs --max-worker-lifetime");
        return 0;
}

int cli_option_takes_value(const char *name)
{
        const struct opt *o = name ? find_long(name, strlen(name)) : NULL;

        return o ? o->has_arg : -1;
}
