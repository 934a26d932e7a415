/* SPDX-License-Identifier: MIT */
/* versionmod: the module tests/proof-reload.sh rebuilds between reloads.
 * Each connection sends lines; every line gets "VERSION pid=P gen=G\n" back
 * and the connection is kept, except once the worker is stopping: then the
 * answer is "VERSION bye\n" and the connection is closed, so that a client
 * can tell a graceful close from a failure.  "m N" makes the worker allocate
 * and touch N MiB more (for --max-worker-memory) and answers "VERSION grew N
 * pid=P".  VERSION is a string given with
 * -DVERSION='"v2"'; with -DFAIL_SETUP every worker's setup fails (a reload
 * whose new code cannot start). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <aiotools.h>

#ifndef VERSION
#define VERSION "v0"
#endif

static char *volatile grown;

static int answer(aiot_conn *c, void *arg)
{
        aiot_worker *w = aiot_conn_worker(c);
        const char *line;
        char out[96];
        ssize_t n = aiot_conn_read_until(c, "\n", 256, &line);
        int len, bye = aiot_worker_stopping(w) > 0;

        (void)arg;
        if (n <= 0)
                return (int)n;
        if (n > 2 && line[0] == 'm' && line[1] == ' ') {
                int mib = atoi(line + 2);
                char *p = mib > 0 && mib <= 1024 ? malloc((size_t)mib << 20) : NULL;

                /* Kept for the worker's life (where the compiler cannot drop
                 * it): its resident memory grows. */
                if (p) {
                        memset(p, 1, (size_t)mib << 20);
                        grown = p;
                }
                len = snprintf(out, sizeof(out), "%s grew %d pid=%d\n", VERSION, p ? mib : 0, (int)getpid());
        } else if (bye)
                len = snprintf(out, sizeof(out), "%s bye\n", VERSION);
        else
                len = snprintf(out, sizeof(out), "%s pid=%d gen=%d\n", VERSION, (int)getpid(),
                               aiot_worker_generation(w));
        if (aiot_conn_write(c, out, (size_t)len) < 0)
                return -EIO;
        return bye ? 0 : AIOT_CONN_KEEP;
}

static int setup(aiot_worker *w, struct aiot_serve_opts *o)
{
        (void)w;
        (void)o;
#ifdef FAIL_SETUP
        return -EADDRNOTAVAIL;
#else
        return 0;
#endif
}

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI,
        .name = "versionmod-" VERSION,
        .conn = answer,
        .conn_setup = setup,
};
