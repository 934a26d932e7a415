/* SPDX-License-Identifier: MIT */
/* systemd notification on libsystemd; no-ops in a build without it. */
#include <aiotools/sd.h>

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "macro.h"
#include "sd-internal.h"

int aiot_sd_notify(const char *state)
{
        aiot__return_if(!state, -EINVAL);
#ifdef HAVE_SYSTEMD
        /* Never unset the environment: workers are forked from the supervisor,
         * and the supervisor keeps notifying for its whole life. */
        return sd_notify(0, state);
#else
        return 0;
#endif
}

int aiot_sd_notifyf(const char *fmt, ...)
{
        aiot__return_if(!fmt, -EINVAL);
#ifdef HAVE_SYSTEMD
        char *state _cleanup_free_ = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&state, fmt, ap);
        va_end(ap);
        if (r < 0) {
                /* vasprintf() leaves the pointer undefined on failure. */
                state = NULL;
                return -ENOMEM;
        }
        return aiot_sd_notify(state);
#else
        /* Nothing to send: skip the formatting as well. */
        return 0;
#endif
}

/* Sends head, then "\nSTATUS=<status>" when status is given, in one datagram. */
static int notify_with_status(const char *head, const char *status)
{
        if (!status)
                return aiot_sd_notify(head);
        return aiot_sd_notifyf("%s\nSTATUS=%s", head, status);
}

int aiot_sd_notify_ready(const char *status)
{
        char head[64];

        /* MAINPID tells the manager which process is the service even when it
         * was started through a wrapper (systemd-socket-activate, a shell). */
        snprintf(head, sizeof(head), "READY=1\nMAINPID=%ld", (long)getpid());
        return notify_with_status(head, status);
}

int aiot_sd_notify_reloading(const char *status)
{
        struct timespec ts;
        char head[64];

        /* systemd 253+ matches the reload to the ExecReload= it started by this
         * timestamp and ignores RELOADING=1 without it; 252 ignores the field. */
        if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
                return -errno;
        snprintf(head, sizeof(head), "RELOADING=1\nMONOTONIC_USEC=%llu",
                 (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL);
        return notify_with_status(head, status);
}

int aiot_sd_notify_stopping(const char *status)
{
        return notify_with_status("STOPPING=1", status);
}

int aiot_sd_notify_status(const char *status)
{
        aiot__return_if(!status, -EINVAL);
        return aiot_sd_notifyf("STATUS=%s", status);
}

int aiot_sd_notify_watchdog(void)
{
        return aiot_sd_notify("WATCHDOG=1");
}

int aiot_sd_watchdog_usec(uint64_t *usec)
{
#ifdef HAVE_SYSTEMD
        uint64_t u = 0;
        int r = sd_watchdog_enabled(0, &u);

        if (r > 0 && usec)
                *usec = u;
        return r;
#else
        (void)usec;
        return 0;
#endif
}

/* ---------------------------------------------------------------- for the supervisor */

int aiot__sd_format(int kind, const char *status, char *buf, size_t len)
{
        char head[64];
        struct timespec ts;
        int n;

        switch (kind) {
        case AIOT__SD_READY:
                snprintf(head, sizeof(head), "READY=1\nMAINPID=%ld", (long)getpid());
                break;
        case AIOT__SD_RELOADING:
                if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
                        return -errno;
                snprintf(head, sizeof(head), "RELOADING=1\nMONOTONIC_USEC=%llu",
                         (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL);
                break;
        case AIOT__SD_STOPPING:
                snprintf(head, sizeof(head), "STOPPING=1");
                break;
        case AIOT__SD_STATUS:
                aiot__return_if(!status, -EINVAL);
                n = snprintf(buf, len, "STATUS=%s", status);
                return n < 0 || (size_t)n >= len ? -ENOBUFS : n;
        case AIOT__SD_WATCHDOG:
                snprintf(head, sizeof(head), "WATCHDOG=1");
                status = NULL;
                break;
        default:
                return -EINVAL;
        }
        n = status ? snprintf(buf, len, "%s\nSTATUS=%s", head, status) : snprintf(buf, len, "%s", head);
        return n < 0 || (size_t)n >= len ? -ENOBUFS : n;
}

/* libsystemd's sd_notify() sends with a blocking sendmsg(): a manager that
 * does not drain its socket would stall the caller's loop.  Here the socket
 * is non-blocking, so a full one answers -EAGAIN.  Addresses other than a
 * path or an abstract name ("@...") go through libsystemd. */
int aiot__sd_send_nowait(const char *msg)
{
        aiot__return_if(!msg, -EINVAL);
#ifdef HAVE_SYSTEMD
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        const char *e = getenv("NOTIFY_SOCKET");
        size_t len;
        socklen_t salen;
        ssize_t n;
        int fd, r;

        if (!e || !*e)
                return 0;
        if (e[0] != '/' && e[0] != '@')
                return sd_notify(0, msg);
        len = strlen(e);
        aiot__return_if(len >= sizeof(sa.sun_path), -EINVAL);
        memcpy(sa.sun_path, e, len);
        if (e[0] == '@')
                sa.sun_path[0] = '\0';
        salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (e[0] == '/'));
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        n = sendto(fd, msg, strlen(msg), MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
        r = n < 0 ? (errno == EWOULDBLOCK ? -EAGAIN : -errno) : 1;
        close(fd);
        return r;
#else
        return 0;
#endif
}
