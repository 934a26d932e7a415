/* SPDX-License-Identifier: MIT */
/* systemd service notification (sd_notify) and the watchdog setting, on
 * libsystemd.  In a build without libsystemd (configure --without-systemd) every
 * call is a no-op that returns 0, as if NOTIFY_SOCKET were unset.
 *
 * Socket activation (LISTEN_FDS) is not here: aiot_listen_from_env() in
 * listen.h reads it without libsystemd, so it works in every build. */
#ifndef AIOTOOLS_SD_H
#define AIOTOOLS_SD_H

#include <stdint.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

/* Sends state (newline-separated "KEY=VALUE" assignments, e.g. "STATUS=up") to
 * the service manager as one datagram, like sd_notify(0, state): the
 * environment is never unset, so forked children and later calls still see
 * NOTIFY_SOCKET.  Returns >0 when sent, 0 when NOTIFY_SOCKET is unset (or the
 * build has no libsystemd), -EINVAL when state is NULL, or another -errno
 * when sending failed. */
int aiot_sd_notify(const char *state);

/* As aiot_sd_notify() with a printf-style format.  -ENOMEM when formatting
 * fails. */
int aiot_sd_notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The lifecycle messages, each one datagram.  status (may be NULL) adds a
 * "STATUS=<status>" line, so the manager never sees the state change without
 * the text that explains it.  Returns as aiot_sd_notify().
 *
 * aiot_sd_notify_ready:     "READY=1\nMAINPID=<getpid()>[\nSTATUS=...]"
 * aiot_sd_notify_reloading: "RELOADING=1\nMONOTONIC_USEC=<CLOCK_MONOTONIC now, µs>[\nSTATUS=...]"
 *                           (systemd 253+ requires MONOTONIC_USEC; older versions ignore it);
 *                           a reload ends with aiot_sd_notify_ready().
 * aiot_sd_notify_stopping:  "STOPPING=1[\nSTATUS=...]"
 * aiot_sd_notify_status:    "STATUS=<status>"  (-EINVAL when status is NULL)
 * aiot_sd_notify_watchdog:  "WATCHDOG=1" */
int aiot_sd_notify_ready(const char *status);
int aiot_sd_notify_reloading(const char *status);
int aiot_sd_notify_stopping(const char *status);
int aiot_sd_notify_status(const char *status);
int aiot_sd_notify_watchdog(void);

/* Whether the service manager expects WATCHDOG=1 pings from this process, as
 * sd_watchdog_enabled(0, usec): WATCHDOG_USEC is set and WATCHDOG_PID is unset
 * or names this process.  Returns >0 and stores the timeout in *usec (when usec
 * is not NULL) when enabled; 0 when not (usec untouched); -EINVAL when
 * WATCHDOG_USEC or WATCHDOG_PID is malformed.  Ping at half the timeout. */
int aiot_sd_watchdog_usec(uint64_t *usec);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
