/* SPDX-License-Identifier: MIT */
/* What the server module may call in listen.c besides the public API.
 * Internal: never installed.
 *
 *  aiot__listener_from_fd(fd, name, &l)  a listener over a socket this
 *                               process already has bound (handed over across
 *                               exec by an in-place upgrade). */
#ifndef AIOT_LISTEN_INTERNAL_H
#define AIOT_LISTEN_INTERNAL_H

#include <aiotools/listen.h>

int aiot__listener_from_fd(int fd, const char *name, aiot_listener **ret);

#endif
