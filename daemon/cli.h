/* SPDX-License-Identifier: MIT */
/* aiotools-serve's command line: a pure parser (no I/O, no globals, no exit),
 * so that it can be unit-tested and fuzzed. */
#ifndef AIOT_SERVE_CLI_H
#define AIOT_SERVE_CLI_H

#include <stddef.h>

#define CLI_MAX_WORKERS 1024
#define CLI_MAX_BINDS 64
#define CLI_MAX_SIGNALS 8
#define CLI_MAX_CONNECTIONS 10000000
#define CLI_MAX_BLOCKING_THREADS 1024 /* aiot_loop_new()'s limit */
#define CLI_MAX_MEMORY (1ULL << 50)

struct cli_config {
        int workers;                    /* 0: online CPUs */
        const char *binds[CLI_MAX_BINDS];
        size_t n_binds;
        int reuseport;
        double stop_timeout;            /* seconds; default 30 */
        int stop_signals[CLI_MAX_SIGNALS];
        size_t n_stop_signals;          /* 0: the default, INT and TERM */
        const char *user, *group, *pidfile;
        int restart_limit;              /* crashes ... */
        double restart_window;          /* ... within this many seconds stop the server */
        int no_pidfd;
        double worker_timeout;          /* seconds; default 30; 0: never */
        int log_level;                  /* -1: not given */
        /* The serving layer's limits, for modules with a connection handler: */
        long max_connections;           /* 0: not given */
        int blocking_threads;           /* per worker; 0: not given */
        double idle_timeout;            /* seconds; -1: not given; 0: none */
        double request_timeout;         /* seconds; -1: not given; 0: none */
        double drain_timeout;           /* seconds; -1: not given; 0: cancel at once */
        double write_timeout;           /* seconds; -1: not given; 0: none */
        const char *control;            /* --control=PATH, or NULL */
        const char *control_group;      /* --control-group=GROUP, or NULL */
        const char *metrics;            /* --metrics=ADDR, or NULL */
        double setup_timeout;           /* seconds; default 60; 0: never */
        int check, help, version;
        const char *module;             /* NULL only with help or version */
        int module_argc;                /* the module's own arguments, after "--" */
        char **module_argv;             /* points into argv; not NULL-terminated by us */
        int dashdash;                   /* the index of "--" in argv, or 0 */
        const char *config;             /* -c/--config FILE, or NULL */
        double max_worker_lifetime;     /* seconds; 0: forever */
        double max_worker_lifetime_jitter;
        unsigned long long max_worker_memory; /* bytes of RSS; 0: no limit */
};

/* Parses argv (argv[0] is the program name) into *cfg.  Strings in *cfg point
 * into argv.  Returns 0, or -EINVAL with one line in err (no newline) naming
 * the bad option or value; *cfg is then partially filled and must not be used.
 * Never prints, allocates or exits. */
int cli_parse(int argc, char **argv, struct cli_config *cfg, char *err, size_t errlen);

/* With --config the checks that need the whole configuration (a MODULE,
 * --reuseport's --bind) are left to this, once the file's settings are
 * merged in (conffile.h).  0 or -EINVAL with one line in err. */
int cli_validate(const struct cli_config *cfg, char *err, size_t errlen);

/* Whether the long option NAME (without "--") takes a value: 1, 0, or -1 for
 * no such option. */
int cli_option_takes_value(const char *name);

/* Parses a signal name ("TERM", "SIGTERM", "term") or number for --stop-signals.
 * Returns the signal number, or -EINVAL. */
int cli_parse_signal(const char *name);

/* The name of a signal without "SIG" ("TERM"), or NULL. */
const char *cli_signal_name(int signo);

#endif
