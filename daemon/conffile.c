/* SPDX-License-Identifier: MIT */
/* The config file parser.  A line is blank, a comment ("#" first), or
 * "name = value" with spaces around either part optional; a value in double
 * quotes keeps its spaces.  "module" and "arg" are the file's own names; any
 * other name is a long option of the command line, checked by handing
 * "--name=value" to cli_parse() alone, so that an error names FILE:LINE and
 * says what cli_parse() says about the value. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conffile.h"

static int fail(char *err, size_t errlen, const char *name, unsigned line, const char *what, const char *val)
{
        if (err && errlen > 0)
                snprintf(err, errlen, "%s:%u: %s '%.128s'", name, line, what, val);
        return -EINVAL;
}

static bool is_space(char c)
{
        return c == ' ' || c == '\t' || c == '\r';
}

/* Trims [*b, *e) of spaces on both sides. */
static void trim(const char **b, const char **e)
{
        while (*b < *e && is_space(**b))
                (*b)++;
        while (*e > *b && is_space((*e)[-1]))
                (*e)--;
}

static int push(char ***v, int *n, char *s)
{
        char **nv;

        if (!s)
                return -ENOMEM;
        nv = realloc(*v, ((size_t)*n + 1) * sizeof(*nv));
        if (!nv) {
                free(s);
                return -ENOMEM;
        }
        nv[(*n)++] = s;
        *v = nv;
        return 0;
}

static char *cat(const char *a, const char *b, const char *c)
{
        size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
        char *s = malloc(la + lb + lc + 1);

        if (s) {
                memcpy(s, a, la);
                memcpy(s + la, b, lb);
                memcpy(s + la + lb, c, lc + 1);
        }
        return s;
}

/* A flag's value: 1 (yes, true, on, 1), 0 (no, false, off, 0), -1 neither. */
static int flag_value(const char *v)
{
        static const char *const yes[] = {"yes", "true", "on", "1"}, *const no[] = {"no", "false", "off", "0"};

        for (size_t i = 0; i < 4; i++) {
                if (strcasecmp(v, yes[i]) == 0)
                        return 1;
                if (strcasecmp(v, no[i]) == 0)
                        return 0;
        }
        return -1;
}

/* Checks one option alone, as the command line would; the message of
 * cli_parse() gets the file's place in front. */
static int check_option(const char *opt, const char *name, unsigned line, char *err, size_t errlen)
{
        char *argv[] = {(char *)"aiotools-serve", (char *)"-c", (char *)"/", (char *)opt, NULL};
        struct cli_config cfg;
        char msg[384];

        if (cli_parse(4, argv, &cfg, msg, sizeof(msg)) == 0)
                return 0;
        if (err && errlen > 0)
                snprintf(err, errlen, "%s:%u: %s", name, line, msg);
        return -EINVAL;
}

/* One "name = value" line (without its newline). */
static int parse_line(const char *name, unsigned line, const char *b, const char *e, struct conf_file *f,
                      char *err, size_t errlen)
{
        const char *eq, *vb, *ve;
        char key[64], *val;
        int takes, r;

        trim(&b, &e);
        if (b == e || *b == '#')
                return 0;
        eq = memchr(b, '=', (size_t)(e - b));
        if (!eq) {
                char bad[160];

                snprintf(bad, sizeof(bad), "%.*s", (int)(e - b), b);
                return fail(err, errlen, name, line, "expected 'name = value', got", bad);
        }
        vb = eq + 1;
        ve = e;
        trim(&vb, &ve);
        e = eq;
        trim(&b, &e);
        if (e == b || (size_t)(e - b) >= sizeof(key) || memchr(b, '\0', (size_t)(e - b))) {
                snprintf(key, sizeof(key), "%.*s", (int)(e - b > 60 ? 60 : e - b), b);
                return fail(err, errlen, name, line, "bad setting name", key);
        }
        memcpy(key, b, (size_t)(e - b));
        key[e - b] = '\0';
        if (ve - vb >= 2 && *vb == '"' && ve[-1] == '"') {
                vb++;
                ve--;
        }
        if (memchr(vb, '\0', (size_t)(ve - vb)))
                return fail(err, errlen, name, line, "a NUL byte in the value of", key);
        val = strndup(vb, (size_t)(ve - vb));
        if (!val)
                return -ENOMEM;
        if (strcmp(key, "module") == 0) {
                if (!*val || f->module) {
                        free(val);
                        return fail(err, errlen, name, line, f->module ? "a second" : "an empty", "module");
                }
                if (*val == '-') {
                        fail(err, errlen, name, line, "a module path may not start with '-':", val);
                        free(val);
                        return -EINVAL;
                }
                f->module = val;
                return 0;
        }
        if (strcmp(key, "arg") == 0)
                return push(&f->args, &f->n_args, val);
        takes = cli_option_takes_value(key);
        if (takes < 0 || strcmp(key, "config") == 0 || strcmp(key, "check") == 0 || strcmp(key, "help") == 0 ||
            strcmp(key, "version") == 0) {
                free(val);
                return fail(err, errlen, name, line, "unknown setting", key);
        }
        if (!takes) {
                int on = flag_value(val);

                free(val);
                if (on < 0)
                        return fail(err, errlen, name, line, "expected yes or no for", key);
                return on ? push(&f->opts, &f->n_opts, cat("--", key, "")) : 0;
        }
        if (strcmp(key, "bind") == 0 && ++f->n_binds > CLI_MAX_BINDS) {
                free(val);
                return fail(err, errlen, name, line, "too many addresses, at most 64, for", key);
        }
        r = push(&f->opts, &f->n_opts, cat("--", key, "="));
        if (r == 0) {
                char *opt = cat(f->opts[f->n_opts - 1], val, "");

                r = opt ? 0 : -ENOMEM;
                if (opt) {
                        free(f->opts[f->n_opts - 1]);
                        f->opts[f->n_opts - 1] = opt;
                        r = check_option(opt, name, line, err, errlen);
                }
        }
        free(val);
        return r;
}

int conffile_parse(const char *name, const char *text, size_t len, struct conf_file *f, char *err,
                   size_t errlen)
{
        const char *p = text, *end = text + len;
        unsigned line = 0;
        int r = 0;

        memset(f, 0, sizeof(*f));
        if (err && errlen > 0)
                err[0] = '\0';
        while (p < end && r == 0) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                const char *le = nl ? nl : end;

                if (++line > CONF_MAX_LINES)
                        return conffile_free(f), fail(err, errlen, name, line, "too many lines, at most", "10000");
                r = parse_line(name, line, p, le, f, err, errlen);
                p = le + 1;
        }
        if (r < 0) {
                if (r == -ENOMEM && err && errlen > 0)
                        snprintf(err, errlen, "%s: out of memory", name);
                conffile_free(f);
        }
        return r;
}

static void free_strv(char **v, int n)
{
        for (int i = 0; i < n; i++)
                free(v[i]);
        free(v);
}

void conffile_free(struct conf_file *f)
{
        free_strv(f->opts, f->n_opts);
        free_strv(f->args, f->n_args);
        free(f->module);
        memset(f, 0, sizeof(*f));
}

/* Whether a file option is the --bind one the command line replaces. */
static bool dropped(const char *opt, const struct cli_config *cmd)
{
        return cmd->n_binds > 0 && strncmp(opt, "--bind=", 7) == 0;
}

int conffile_merge(const struct conf_file *f, int argc, char **argv, const struct cli_config *cmd, char ***out)
{
        int opts_end = cmd->dashdash > 0 ? cmd->dashdash : argc, n = 0;
        size_t cap = (size_t)argc + (size_t)f->n_opts + (size_t)f->n_args + 4;
        char **v = calloc(cap, sizeof(*v));

        if (!v)
                return -ENOMEM;
        v[n++] = argc > 0 ? argv[0] : (char *)"aiotools-serve";
        for (int i = 0; i < f->n_opts; i++)
                if (!dropped(f->opts[i], cmd))
                        v[n++] = f->opts[i];
        for (int i = 1; i < opts_end; i++)
                v[n++] = argv[i];
        if (!cmd->module && f->module)
                v[n++] = f->module;
        v[n++] = (char *)"--";
        if (cmd->module || cmd->dashdash > 0)
                for (int i = opts_end + 1; i < argc; i++)
                        v[n++] = argv[i];
        else
                for (int i = 0; i < f->n_args; i++)
                        v[n++] = f->args[i];
        v[n] = NULL;
        *out = v;
        return n;
}
