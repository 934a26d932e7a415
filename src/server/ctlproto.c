/* SPDX-License-Identifier: MIT */
/* The control socket's line protocol: see ctlproto.h.  Every length is
 * bounded before anything is copied; a word is at most 63 bytes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aiotools/log.h"
#include "ctlproto.h"

#define WORD_MAX 64
#define MAX_INDEX 1024

static const struct {
        const char *name;
        enum aiot__ctl_cmd cmd;
        int n_args; /* words after the command */
} commands[] = {
        {"status", AIOT__CTL_STATUS, 0},   {"reload", AIOT__CTL_RELOAD, 0},   {"scale", AIOT__CTL_SCALE, 1},
        {"recycle", AIOT__CTL_RECYCLE, 1}, {"stop", AIOT__CTL_STOP, 0},       {"tasks", AIOT__CTL_TASKS, 1},
        {"metrics", AIOT__CTL_METRICS, 0}, {"log-level", AIOT__CTL_LOG_LEVEL, 1},
};

long aiot__ctl_line(const char *buf, size_t len, size_t max)
{
        const char *nl = memchr(buf, '\n', len < max ? len : max);

        if (nl)
                return (long)(nl - buf) + 1;
        return len >= max ? -1 : 0;
}

static int bad(char *err, size_t errlen, const char *what, const char *word)
{
        if (err && errlen && *word)
                snprintf(err, errlen, "%s '%.63s'", what, word);
        else if (err && errlen)
                snprintf(err, errlen, "%s", what);
        return -EINVAL;
}

/* Printable ASCII only (a NUL byte must not cut a word short). */
static bool word_ok(const char *w, size_t len)
{
        for (size_t i = 0; i < len; i++)
                if ((unsigned char)w[i] < 0x21 || (unsigned char)w[i] > 0x7e)
                        return false;
        return true;
}

static int split(const char *line, size_t len, char words[][WORD_MAX], size_t *n, char *err, size_t errlen)
{
        size_t i = 0;

        *n = 0;
        if (len && line[len - 1] == '\n')
                len--;
        if (len && line[len - 1] == '\r')
                len--;
        if (len >= AIOT__CTL_LINE_MAX)
                return bad(err, errlen, "line too long", "");
        while (i < len) {
                size_t start, wl;

                while (i < len && line[i] == ' ')
                        i++;
                if (i == len)
                        break;
                start = i;
                while (i < len && line[i] != ' ')
                        i++;
                wl = i - start;
                if (*n == AIOT__CTL_MAX_WORDS)
                        return bad(err, errlen, "too many words", "");
                if (wl >= WORD_MAX)
                        return bad(err, errlen, "word too long", "");
                if (!word_ok(line + start, wl))
                        return bad(err, errlen, "unprintable byte in the command", "");
                memcpy(words[*n], line + start, wl);
                words[*n][wl] = '\0';
                (*n)++;
        }
        return 0;
}

static int parse_index(const char *w, long max, long *out)
{
        char *end;
        long v;

        if (!*w || *w == '-' || *w == '+')
                return -EINVAL;
        errno = 0;
        v = strtol(w, &end, 10);
        if (errno || *end || v < 0 || v > max)
                return -EINVAL;
        *out = v;
        return 0;
}

int aiot__ctl_parse(const char *line, size_t len, struct aiot__ctl_req *req, char *err, size_t errlen)
{
        char words[AIOT__CTL_MAX_WORDS][WORD_MAX], *args[AIOT__CTL_MAX_WORDS];
        size_t n, n_args = 0, c;
        int r = split(line, len, words, &n, err, errlen);

        if (r < 0)
                return r;
        *req = (struct aiot__ctl_req){0};
        for (size_t i = 0; i < n; i++)
                if (strcmp(words[i], "--json") == 0)
                        req->json = true;
                else
                        args[n_args++] = words[i];
        if (n_args == 0)
                return bad(err, errlen, "empty command", "");
        for (c = 0; c < sizeof(commands) / sizeof(commands[0]); c++)
                if (strcmp(commands[c].name, args[0]) == 0)
                        break;
        if (c == sizeof(commands) / sizeof(commands[0]))
                return bad(err, errlen, "unknown command", args[0]);
        if ((int)n_args - 1 != commands[c].n_args)
                return bad(err, errlen, commands[c].n_args ? "missing or extra argument for" : "no argument expected for",
                           args[0]);
        req->cmd = commands[c].cmd;
        switch (req->cmd) {
        case AIOT__CTL_SCALE:
                if (parse_index(args[1], MAX_INDEX, &req->num) < 0 || req->num < 1)
                        return bad(err, errlen, "invalid worker count (expected 1 to 1024):", args[1]);
                break;
        case AIOT__CTL_RECYCLE:
        case AIOT__CTL_TASKS:
                if (parse_index(args[1], MAX_INDEX - 1, &req->num) < 0)
                        return bad(err, errlen, "invalid worker index:", args[1]);
                break;
        case AIOT__CTL_LOG_LEVEL:
                if (aiot_log_parse_level(args[1], &req->level) < 0)
                        return bad(err, errlen, "invalid log level (expected err, warning, notice, info or debug):",
                                   args[1]);
                break;
        default:
                break;
        }
        return 0;
}
