/* SPDX-License-Identifier: MIT */
/* standalone: a daemon that links libaiotools-server and calls
 * aiot_server_run() itself, without a module or aiotools-serve.
 *
 *   examples/standalone [ADDRESS [WORKERS]]     (default 127.0.0.1:8081, 2)
 *
 * Each worker answers every connection with one line naming itself, then
 * closes it (aiot_worker_serve(3) accepts and drains); SIGINT or SIGTERM
 * stops the server. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <aiotools.h>

/* Runs at accept (server_first): the client need not send anything. */
static int greet(aiot_conn *c, void *arg)
{
        char line[64];
        int n = snprintf(line, sizeof(line), "hello from pid %d\n", (int)getpid());

        (void)arg;
        return aiot_conn_write(c, line, (size_t)n); /* 0: flushed, then closed */
}

static int worker(aiot_worker *w)
{
        struct aiot_serve_opts o = {.size = sizeof(o), .handler = greet, .server_first = 1};
        int sig = aiot_worker_serve(w, &o);

        if (sig < 0)
                return sig;
        aiot_log(AIOT_LOG_INFO, "worker %d stopping on signal %d", aiot_worker_index(w), sig);
        return 0;
}

int main(int argc, char **argv)
{
        const char *bind = argc > 1 ? argv[1] : "127.0.0.1:8081";
        struct aiot_server_config cfg = {
                .size = sizeof(cfg),
                .workers = argc > 2 ? atoi(argv[2]) : 2,
                .worker = worker,
                .binds = &bind,
                .n_binds = 1,
                .stop_timeout = 5,
                .argc = argc,
                .argv = argv,
        };

        return aiot_server_run(&cfg);
}
