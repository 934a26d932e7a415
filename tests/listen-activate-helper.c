/* SPDX-License-Identifier: MIT */
/* Run under systemd-socket-activate by check_listen: takes the passed sockets
 * with aiot_listen_from_env(), accepts one connection on the first and writes
 * "COUNT NAME ADDRESS\n" to it.  Errors go to stderr with exit status 1. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "aiotools/listen.h"

int main(void)
{
        aiot_listener **ls = NULL;
        struct pollfd p;
        char err[256] = "", line[512];
        size_t n = 0;
        int r, fd, len;

        r = aiot_listen_from_env(&ls, &n, 1, err, sizeof(err));
        if (r <= 0) {
                fprintf(stderr, "listen-activate-helper: %d %s\n", r, err);
                return 1;
        }
        if (getenv("LISTEN_FDS")) {
                fprintf(stderr, "listen-activate-helper: LISTEN_FDS still set\n");
                return 1;
        }
        p = (struct pollfd){.fd = ls[0]->fd, .events = POLLIN};
        if (poll(&p, 1, 30000) != 1) {
                fprintf(stderr, "listen-activate-helper: no connection\n");
                return 1;
        }
        fd = accept4(ls[0]->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
                fprintf(stderr, "listen-activate-helper: accept: %s\n", strerror(errno));
                return 1;
        }
        len = snprintf(line, sizeof(line), "%zu %s %s\n", n, ls[0]->name, ls[0]->address);
        if (write(fd, line, (size_t)len) != len)
                return 1;
        close(fd);
        aiot_listeners_free(ls, n);
        return 0;
}
