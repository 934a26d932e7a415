/* SPDX-License-Identifier: MIT */
/* libFuzzer target for the control socket's line protocol (src/server/
 * ctlproto.c), the way control.c drives it: the input arrives in chunks (its
 * first byte picks the chunk size), is gathered into a buffer of the size
 * the supervisor uses, and each time aiot__ctl_line() finds a whole line it
 * goes to aiot__ctl_parse().  Beyond "no crash" it checks the contract: a line
 * length within what was gathered, -1 only for a buffer full without a
 * newline; a parse that fails says so in exactly one non-empty line, and one
 * that succeeds gives a known command with its argument in range. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/ctlproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_parse(const char *line, size_t len)
{
        struct aiot__ctl_req req;
        char err[160];
        int r;

        memset(err, 0, sizeof(err));
        r = aiot__ctl_parse(line, len, &req, err, sizeof(err));
        if (r < 0) {
                size_t n = strnlen(err, sizeof(err));

                if (r != -EINVAL || n == 0 || n == sizeof(err) || strchr(err, '\n'))
                        abort();
                return;
        }
        if (r != 0 || req.cmd < AIOT__CTL_STATUS || req.cmd > AIOT__CTL_LOG_LEVEL)
                abort();
        if (req.cmd == AIOT__CTL_SCALE && (req.num < 1 || req.num > 1024))
                abort();
        if ((req.cmd == AIOT__CTL_RECYCLE || req.cmd == AIOT__CTL_TASKS) && (req.num < 0 || req.num > 1023))
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char buf[AIOT__CTL_LINE_MAX + 1];
        size_t len = 0, chunk, off = 1;

        if (size == 0)
                return 0;
        chunk = (size_t)data[0] % 17 + 1;
        while (off < size) {
                size_t n = size - off < chunk ? size - off : chunk;
                long line;

                if (n > AIOT__CTL_LINE_MAX - len)
                        n = AIOT__CTL_LINE_MAX - len;
                memcpy(buf + len, data + off, n);
                len += n;
                off += n;
                line = aiot__ctl_line(buf, len, AIOT__CTL_LINE_MAX);
                if (line < -1 || line > (long)len || (line == -1 && len < AIOT__CTL_LINE_MAX))
                        abort();
                if (line == 0)
                        continue;
                /* As the supervisor does: one line per connection, then a new one. */
                if (line > 0)
                        check_parse(buf, (size_t)line);
                len = 0;
        }
        return 0;
}
