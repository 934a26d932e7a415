/* SPDX-License-Identifier: MIT */
/* TLS on the serving layer: certificates loaded once (in the supervisor,
 * before the workers are forked, so that every worker shares the same
 * context and session-ticket key), and the connections of the listeners
 * marked for TLS served through it; see aiot_tls_new(3).
 *
 * A listener is marked for TLS by its name: a bind address given as
 * "tls:ADDRESS" (aiot_listen_parse(3) reads the address after the prefix and
 * the listener keeps the whole spec as its name), or a socket-activated
 * socket named "tls" or "tls-SOMETHING".  aiot_worker_serve(3) with
 * aiot_serve_opts.tls set runs the handshake on those connections before the
 * handler's first run (under the request timeout) and then encrypts and
 * decrypts every read and write of aiot_conn_*: a handler does not change to
 * be served over TLS. */
#ifndef AIOTOOLS_TLS_H
#define AIOTOOLS_TLS_H

#include <stddef.h>

#include <aiotools/conn.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

/* The certificates, keys and settings of a generation.  Read-only once made:
 * forked workers use it concurrently. */
typedef struct aiot_tls aiot_tls;

struct aiot_tls_opts {
        size_t size;                 /* sizeof(struct aiot_tls_opts), so the struct can grow */
        const char *const *certs;    /* PEM files: the certificate, then its chain ... */
        const char *const *keys;     /* ... and the PEM private key of each */
        size_t n_certs;              /* 1 or more: the first is served when SNI names none of them */
        const char *alpn;            /* comma-separated ALPN protocols ("h2,http/1.1"), in the
                                        server's order of preference, or NULL: none offered */
};

/* Loads every certificate and key, checks that they belong together, and
 * makes the server context: TLS 1.2 and 1.3 only, the system's cipher policy,
 * session tickets under a fresh random key (one per aiot_tls: a new one at
 * every reload), SNI choosing among the certificates by their names, and
 * buffers released while a connection is idle.  An expired (or not yet
 * valid) certificate is logged as a warning and served all the same.
 * Returns 0 and *ret, -EINVAL (bad options; a file that does not load, a key
 * that does not match its certificate, a bad ALPN list), -ENOMEM, or
 * -EOPNOTSUPP when the library was built without OpenSSL; err (may be
 * NULL/0) gets one line naming the file and the reason. */
int aiot_tls_new(const struct aiot_tls_opts *opts, aiot_tls **ret, char *err, size_t errlen);

/* Frees t (NULL is fine).  Connections that use it must be gone. */
void aiot_tls_free(aiot_tls *t);

/* 1 when c is served over TLS (its handshake is done when its handler
 * runs), 0 when in plaintext, -EINVAL for NULL.  *alpn (may be NULL) gets the
 * protocol ALPN chose, NUL-terminated, or NULL when none was. */
int aiot_conn_tls(const aiot_conn *c, const char **alpn);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
