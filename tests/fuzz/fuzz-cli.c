/* SPDX-License-Identifier: MIT */
/* libFuzzer target for aiotools-serve's option parser (daemon/cli.c).  The
 * input is split on NUL and newline bytes into an argv (argv[0] is the program
 * name), so that the fuzzer can build multi-word command lines.  Beyond "no
 * crash", it checks the parser's contract from cli.h: -EINVAL with exactly one
 * non-empty line that names something (an option, a value or MODULE), and on
 * success a configuration whose every field is within its documented range and
 * whose strings point into argv (with --config, MODULE and --reuseport's
 * --bind are left to cli_validate()).  cli_parse() never allocates, so there is
 * nothing to free; LeakSanitizer checks that claim. */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Enough for any useful command line; more words only slow the fuzzer down. */
#define MAX_ARGS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool points_into(const char *s, char *buf, size_t size)
{
        return s >= buf && s <= buf + size;
}

/* A message names something when it quotes a value or mentions an option or MODULE. */
static bool names_something(const char *err)
{
        return strchr(err, '\'') || strchr(err, '-') || strcasestr(err, "module");
}

static void check_error(const char *err, size_t errlen)
{
        size_t len = strnlen(err, errlen);

        if (len == 0 || len == errlen || strchr(err, '\n') || !names_something(err))
                abort();
}

static void check_config(const struct cli_config *c, int argc, char **argv, char *buf, size_t size)
{
        if (c->workers < 0 || c->workers > CLI_MAX_WORKERS || c->n_binds > CLI_MAX_BINDS ||
            c->n_stop_signals > CLI_MAX_SIGNALS)
                abort();
        if (!(c->stop_timeout >= 0 && c->stop_timeout <= 86400.0) || c->restart_limit < 1 ||
            !(c->restart_window > 0))
                abort();
        for (size_t i = 0; i < c->n_binds; i++)
                if (!c->binds[i] || !*c->binds[i] || !points_into(c->binds[i], buf, size))
                        abort();
        for (size_t i = 0; i < c->n_stop_signals; i++) {
                int s = c->stop_signals[i];

                if (s < 1 || s > SIGRTMAX || s == SIGKILL || s == SIGSTOP || s == SIGCHLD)
                        abort();
                for (size_t j = 0; j < i; j++)
                        if (c->stop_signals[j] == s)
                                abort();
        }
        if (!c->help && !c->version && !c->config && (!c->module || !*c->module))
                abort();
        if (c->module && !points_into(c->module, buf, size))
                abort();
        if (c->reuseport && c->n_binds == 0 && !c->help && !c->version && !c->config)
                abort();
        if (c->module_argc < 0 || c->module_argc > argc - 1 || c->module_argv + c->module_argc != argv + argc)
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char *argv[MAX_ARGS + 2], *buf, err[256];
        struct cli_config cfg, again;
        int argc = 0, r;
        size_t start = 0;

        /* One extra byte so that the last word is terminated too. */
        buf = malloc(size + 1);
        if (!buf)
                return 0;
        memcpy(buf, data, size);
        buf[size] = '\0';
        argv[argc++] = "aiotools-serve";
        for (size_t i = 0; i <= size && argc <= MAX_ARGS; i++) {
                if (i == size || buf[i] == '\0' || buf[i] == '\n') {
                        buf[i] = '\0';
                        argv[argc++] = buf + start;
                        start = i + 1;
                }
        }
        argv[argc] = NULL;

        memset(err, 0x5a, sizeof(err));
        r = cli_parse(argc, argv, &cfg, err, sizeof(err));
        if (r < 0) {
                if (r != -EINVAL)
                        abort();
                check_error(err, sizeof(err));
        } else {
                if (r != 0)
                        abort();
                check_config(&cfg, argc, argv, buf, size);
                /* The pure parser gives the same answer twice (no hidden state). */
                if (cli_parse(argc, argv, &again, NULL, 0) != 0 || memcmp(&cfg, &again, sizeof(cfg)) != 0)
                        abort();
        }
        /* A too-small error buffer is truncated, never overrun. */
        if (r < 0 && cli_parse(argc, argv, &cfg, err, 1) != -EINVAL)
                abort();
        free(buf);
        return 0;
}
