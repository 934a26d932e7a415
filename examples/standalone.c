/* SPDX-License-Identifier: MIT */
/* standalone: a daemon that links libaiotools-server and calls
 * aiot_server_run() itself, without a module or aiotools-serve.
 *
 *   examples/standalone [ADDRESS [WORKERS]]     (default 127.0.0.1:8081, 2)
 *
 * Each worker answers every connection with one line naming itself, then
 * closes it; SIGINT or SIGTERM stops the server. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <aiotools.h>

static int greet(void *arg)
{
        int fd = (int)(intptr_t)arg;
        char line[64];
        int n = snprintf(line, sizeof(line), "hello from pid %d\n", (int)getpid());

        aiot_write_all(fd, line, (size_t)n);
        aiot_close(fd);
        return 0;
}

static int accept_loop(void *arg)
{
        aiot_worker *w = arg;
        const aiot_listener *ls;

        if (aiot_worker_listeners(w, &ls) == 0)
                return -EINVAL;
        for (;;) {
                int fd = aiot_accept(ls[0].fd, NULL, NULL);

                if (fd == -ECANCELED || fd == -ETIMEDOUT)
                        return 0;
                if (fd < 0 || aiot_spawn(aiot_worker_scope(w), greet, (void *)(intptr_t)fd, NULL) < 0) {
                        if (fd >= 0)
                                aiot_close(fd);
                        if (aiot_sleep(0.05) < 0)
                                return 0;
                }
        }
}

static int worker(aiot_worker *w)
{
        int r = aiot_spawn(aiot_worker_scope(w), accept_loop, w, NULL);
        int sig;

        if (r < 0)
                return r;
        sig = aiot_worker_wait_stop(w);
        aiot_log(AIOT_LOG_INFO, "worker %d stopping on signal %d", aiot_worker_index(w), sig);
        /* The accept loop is cancelled with the worker's scope. */
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
