/* SPDX-License-Identifier: MIT */
/* echo: an aiotools-serve module that echoes every byte back.
 *
 *   aiotools-serve -w 2 -b 127.0.0.1:8080 examples/.libs/echo.so
 *   nc 127.0.0.1 8080
 *
 * One acceptor task per listening socket in the worker's scope, one task per
 * connection in a scope of its own.  On the stop signal the acceptors are
 * cancelled (no new connections), and the open connections are waited for:
 * they finish when their clients close, or the supervisor kills the worker
 * after the stop timeout. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <aiotools.h>

struct acceptor {
        int lfd;
        aiot_scope *conns;
        aiot_task *task;
};

static int serve_conn(void *arg)
{
        int fd = (int)(intptr_t)arg;
        char buf[16384];
        ssize_t n;

        while ((n = aiot_read(fd, buf, sizeof(buf))) > 0)
                if (aiot_write_all(fd, buf, (size_t)n) < 0)
                        break;
        aiot_close(fd);
        return 0;
}

/* At the stop: the connections already in the accept queue are served too,
 * rather than reset when the listening socket closes. */
static int take_queued(struct acceptor *a)
{
        int fd;

        while ((fd = accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
                if (aiot_spawn(a->conns, serve_conn, (void *)(intptr_t)fd, NULL) < 0)
                        close(fd);
        return 0;
}

static int accept_loop(void *arg)
{
        struct acceptor *a = arg;

        for (;;) {
                int fd = aiot_accept(a->lfd, NULL, NULL);

                if (fd == -ECANCELED || fd == -ETIMEDOUT)
                        return take_queued(a);
                if (fd < 0) {
                        /* Out of fds or memory: back off instead of spinning. */
                        if (aiot_sleep(0.1) < 0)
                                return 0;
                        continue;
                }
                if (aiot_spawn(a->conns, serve_conn, (void *)(intptr_t)fd, NULL) < 0)
                        aiot_close(fd);
        }
}

static int echo_worker(aiot_worker *w)
{
        const aiot_listener *ls;
        size_t n = aiot_worker_listeners(w, &ls);
        struct acceptor *acc = calloc(n ? n : 1, sizeof(*acc));
        aiot_scope *conns;
        int r;

        if (!acc)
                return -ENOMEM;
        if (n == 0) {
                aiot_log(AIOT_LOG_ERR, "echo needs at least one --bind address");
                free(acc);
                return -EINVAL;
        }
        r = aiot_scope_open(&conns, NULL);
        if (r < 0) {
                free(acc);
                return r;
        }
        for (size_t i = 0; i < n; i++) {
                acc[i].lfd = ls[i].fd;
                acc[i].conns = conns;
                r = aiot_spawn(aiot_worker_scope(w), accept_loop, &acc[i], &acc[i].task);
                if (r < 0)
                        break;
        }
        if (r == 0)
                aiot_worker_wait_stop(w);
        /* Teardown: stop accepting, then let open connections finish. */
        for (size_t i = 0; i < n; i++)
                if (acc[i].task)
                        aiot_cancel_and_wait(acc[i].task);
        aiot_worker_close_listeners(w);
        aiot_scope_close(conns);
        free(acc);
        return r;
}

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI,
        .name = "echo",
        .worker = echo_worker,
};
