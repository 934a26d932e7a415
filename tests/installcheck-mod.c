/* SPDX-License-Identifier: MIT */
/* hello: the README's first module, built out of the tree against the
 * installed headers and .pc by tests/installcheck.sh.  It answers every line
 * with "hello, " and the line. */
#include <aiotools.h>

static int hello(aiot_conn *c, void *arg)
{
        const char *line;
        ssize_t n = aiot_conn_read_until(c, "\n", 4096, &line);

        (void)arg;
        if (n <= 0)
                return (int)n; /* 0: the client closed */
        aiot_conn_write(c, "hello, ", 7);
        return aiot_conn_write(c, line, (size_t)n) < 0 ? 0 : AIOT_CONN_KEEP;
}

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI,
        .name = "hello",
        .conn = hello,
};
