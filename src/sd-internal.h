/* SPDX-License-Identifier: MIT */
/* What the supervisor needs beyond aiotools/sd.h.  Internal: never installed.
 *
 *  aiot__sd_format(kind, status, buf, len)  the datagram aiot_sd_notify_<kind>()
 *                                           would send; its length or -errno.
 *  aiot__sd_send_nowait(msg)                sends msg without ever blocking:
 *                                           1 sent, 0 nowhere to send (no
 *                                           NOTIFY_SOCKET, or no libsystemd in
 *                                           the build), -EAGAIN when the
 *                                           socket is full, other -errno. */
#ifndef AIOT_SD_INTERNAL_H
#define AIOT_SD_INTERNAL_H

#include <stddef.h>

enum aiot__sd_kind {
        AIOT__SD_READY,
        AIOT__SD_RELOADING,
        AIOT__SD_STOPPING,
        AIOT__SD_STATUS,
        AIOT__SD_WATCHDOG,
        AIOT__SD_KINDS,
};

int aiot__sd_format(int kind, const char *status, char *buf, size_t len);
int aiot__sd_send_nowait(const char *msg);

#endif
