/* SPDX-License-Identifier: MIT */
/* systemd notification on libsystemd; no-ops in a build without it. */
#include <aiotools/sd.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "macro.h"

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
