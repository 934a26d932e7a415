/* SPDX-License-Identifier: MIT */
/* echo: an aiotools-serve module that echoes every byte back.
 *
 *   aiotools-serve -w 2 -b 127.0.0.1:8080 examples/.libs/echo.so
 *   nc 127.0.0.1 8080
 *
 * Only a connection handler: the library accepts, runs echo_conn whenever
 * bytes arrive, and drains at the stop (see aiot_worker_serve(3)).  Each run
 * echoes what has arrived and hands the connection back (AIOT_CONN_KEEP), so
 * that a connection waiting for its client holds no task stack. */
#include <aiotools.h>

static int echo_conn(aiot_conn *c, void *arg)
{
        const char *data;
        ssize_t n = aiot_conn_peek(c, &data);
        int r;

        (void)arg;
        if (n <= 0)
                return (int)n; /* 0: the client closed */
        r = aiot_conn_write(c, data, (size_t)n);
        aiot_conn_consume(c, (size_t)n);
        return r < 0 ? r : AIOT_CONN_KEEP;
}

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI,
        .name = "echo",
        .conn = echo_conn,
};
