/* SPDX-License-Identifier: MIT */
/* The control socket's line protocol, as pure functions (no I/O, no state),
 * so that the fuzz target drives exactly what the supervisor runs.
 *
 * A client sends one line, at most AIOT__CTL_LINE_MAX bytes with its newline:
 * a command and its argument, words separated by spaces, and "--json" for
 * the machine form.  The answer is one line, "OK", "ERR reason" or
 * "USAGE reason", then the body until the supervisor closes. */
#ifndef AIOT_CTLPROTO_H
#define AIOT_CTLPROTO_H

#include <stdbool.h>
#include <stddef.h>

#define AIOT__CTL_LINE_MAX 256
#define AIOT__CTL_MAX_WORDS 4

enum aiot__ctl_cmd {
        AIOT__CTL_STATUS = 1,
        AIOT__CTL_RELOAD,
        AIOT__CTL_SCALE,
        AIOT__CTL_RECYCLE,
        AIOT__CTL_STOP,
        AIOT__CTL_TASKS,
        AIOT__CTL_METRICS,
        AIOT__CTL_LOG_LEVEL,
};

struct aiot__ctl_req {
        enum aiot__ctl_cmd cmd;
        bool json;
        long num;  /* scale, recycle, tasks */
        int level; /* log-level */
};

/* The length of the first whole line in buf[0..len) with its newline; 0
 * while none is complete; -1 when max bytes hold no newline (too long). */
long aiot__ctl_line(const char *buf, size_t len, size_t max);

/* Parses one line (its newline, and a carriage return before it, optional).
 * Returns 0, or -EINVAL with one line in err naming the bad word. */
int aiot__ctl_parse(const char *line, size_t len, struct aiot__ctl_req *req, char *err, size_t errlen);

#endif
