/* SPDX-License-Identifier: MIT */
/* What src/conn.c and src/server/serve.c use of src/tls.c: one TLS session
 * per connection and single non-blocking steps over it.  A step never waits:
 * it says which readiness it needs (AIOT_READ or AIOT_WRITE in *want with
 * -EAGAIN), and the caller parks its task on that, under its own timeouts,
 * so that the plaintext path stays free of any TLS code.  Internal. */
#ifndef AIOT_TLS_INTERNAL_H
#define AIOT_TLS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "aiotools/tls.h"

struct aiot__tls_conn;

/* Whether a listener's name marks it for TLS ("tls:ADDR", "tls", "tls-..."). */
bool aiot__tls_listener(const char *name);

/* A session on fd for t; NULL when out of memory (or without OpenSSL). */
struct aiot__tls_conn *aiot__tls_conn_new(const aiot_tls *t, int fd);
/* Sends a close_notify if it can without waiting, then frees s (NULL is fine). */
void aiot__tls_conn_free(struct aiot__tls_conn *s);

/* Each: bytes (> 0) or 0 (done / end of stream), -EAGAIN with *want, or
 * -errno (-EPROTO for a TLS error, -ECONNRESET ...). */
int aiot__tls_handshake(struct aiot__tls_conn *s, int *want);
ssize_t aiot__tls_read(struct aiot__tls_conn *s, void *buf, size_t n, int *want);
ssize_t aiot__tls_write(struct aiot__tls_conn *s, const void *buf, size_t n, int *want);
/* Decrypted or received bytes that wait inside the session. */
bool aiot__tls_pending(const struct aiot__tls_conn *s);
/* The protocol ALPN chose (NUL-terminated), or NULL. */
const char *aiot__tls_alpn(const struct aiot__tls_conn *s);
/* Why the last step failed, for a debug line ("wrong version number" ...). */
const char *aiot__tls_last_error(void);

#endif
