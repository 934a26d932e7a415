/* SPDX-License-Identifier: MIT */
/* TLS with OpenSSL: the server context made from certificate/key pairs
 * (aiot_tls_new(3)) and the per-connection steps that src/conn.c drives.
 *
 * One SSL_CTX per certificate.  The first is the default and the session
 * context: its servername callback moves a connection to the context whose
 * certificate matches the SNI name, and its ticket key (random, made here:
 * the supervisor makes a new aiot_tls at each reload) encrypts every session
 * ticket, so that a session resumes on any worker forked with it.  There is
 * no per-process session cache: tickets carry the sessions, and a cache per
 * worker would miss on every other worker anyway.
 *
 * Memory: SSL_MODE_RELEASE_BUFFERS frees a session's read and write buffers
 * whenever they are empty, so a kept (idle) connection holds the SSL object
 * and no record buffers.
 *
 * The steps never wait: OpenSSL's socket BIO is non-blocking, and a step that
 * would block reports which readiness it needs; the caller parks on it.
 * Without OpenSSL (configure --with-openssl=no) aiot_tls_new() says so and
 * nothing else can be reached. */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aiotools/io.h"
#include "aiotools/log.h"
#include "macro.h"
#include "tls-internal.h"

bool aiot__tls_listener(const char *name)
{
        return name && (strncmp(name, "tls:", 4) == 0 || strcmp(name, "tls") == 0 || strncmp(name, "tls-", 4) == 0);
}

#ifdef HAVE_OPENSSL

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define MAX_ALPN 16

struct aiot_tls {
        SSL_CTX **ctx;       /* one per certificate; ctx[0] is the default */
        X509 **leaf;         /* each one's certificate, for SNI (owned by its ctx) */
        size_t n;
        unsigned char alpn_wire[256]; /* the ALPN list in wire format */
        size_t alpn_len;
        char *alpn_names[MAX_ALPN];   /* the same, NUL-terminated */
        size_t n_alpn;
};

/* The reason of the last failed step (per process: workers are single-threaded). */
static char last_error[256];

/* The reason of the oldest queued OpenSSL error, and the queue cleared. */
static const char *ssl_reason(void)
{
        static char buf[256];
        unsigned long e = ERR_get_error();

        if (!e)
                snprintf(buf, sizeof(buf), "unknown error");
        else
                ERR_error_string_n(e, buf, sizeof(buf));
        ERR_clear_error();
        return buf;
}

const char *aiot__tls_last_error(void)
{
        return last_error;
}

static int fail(char *err, size_t len, int r, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t len, int r, const char *fmt, ...)
{
        va_list ap;

        if (err && len) {
                va_start(ap, fmt);
                vsnprintf(err, len, fmt, ap);
                va_end(ap);
        }
        ERR_clear_error();
        return r;
}

/* ---------------------------------------------------------------- the context */

/* SNI: the context whose certificate names the host the client asked for. */
static int servername_cb(SSL *ssl, int *alert, void *arg)
{
        const aiot_tls *t = arg;
        const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

        (void)alert;
        if (!host)
                return SSL_TLSEXT_ERR_NOACK;
        for (size_t i = 0; i < t->n; i++)
                if (X509_check_host(t->leaf[i], host, 0, 0, NULL) == 1) {
                        if (i > 0 && !SSL_set_SSL_CTX(ssl, t->ctx[i]))
                                return SSL_TLSEXT_ERR_ALERT_FATAL;
                        return SSL_TLSEXT_ERR_OK;
                }
        return SSL_TLSEXT_ERR_NOACK; /* the default certificate, as nginx does */
}

/* ALPN: the server's first protocol that the client offers too; none in
 * common goes on without ALPN rather than failing the handshake. */
static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned inlen, void *arg)
{
        const aiot_tls *t = arg;
        unsigned char *sel;

        (void)ssl;
        if (SSL_select_next_proto(&sel, outlen, t->alpn_wire, (unsigned)t->alpn_len, in, inlen) !=
            OPENSSL_NPN_NEGOTIATED)
                return SSL_TLSEXT_ERR_NOACK;
        *out = sel;
        return SSL_TLSEXT_ERR_OK;
}

/* "h2,http/1.1" into the wire format and the names.  0 or -EINVAL. */
static int parse_alpn(aiot_tls *t, const char *list, char *err, size_t len)
{
        const char *p = list;

        while (*p) {
                size_t n = strcspn(p, ",");

                if (n == 0 || n > 255 || t->n_alpn == MAX_ALPN || t->alpn_len + 1 + n > sizeof(t->alpn_wire))
                        return fail(err, len, -EINVAL, "bad ALPN list '%s': %s", list,
                                    n == 0 ? "an empty name" : "too long");
                t->alpn_wire[t->alpn_len++] = (unsigned char)n;
                memcpy(t->alpn_wire + t->alpn_len, p, n);
                t->alpn_len += n;
                if (!(t->alpn_names[t->n_alpn++] = strndup(p, n)))
                        return fail(err, len, -ENOMEM, "out of memory");
                p += n;
                if (*p == ',')
                        p++;
        }
        return 0;
}

/* A warning for a certificate outside its validity: it is served (an
 * operator may be renewing it), but should not go unnoticed. */
static void warn_validity(const char *path, X509 *x)
{
        const ASN1_TIME *after = X509_get0_notAfter(x), *before = X509_get0_notBefore(x);
        BIO *b;
        char when[64] = "?";
        bool expired = X509_cmp_current_time(after) < 0;

        if (!expired && X509_cmp_current_time(before) <= 0)
                return;
        if ((b = BIO_new(BIO_s_mem()))) {
                int n;

                ASN1_TIME_print(b, expired ? after : before);
                n = BIO_read(b, when, sizeof(when) - 1);
                when[n > 0 ? n : 0] = '\0';
                BIO_free(b);
        }
        aiot_log(AIOT_LOG_WARNING, "TLS certificate '%s' %s %s: served all the same", path,
                 expired ? "expired on" : "is not valid before", when);
}

/* ctx with the defaults of the file comment, holding cert and key. */
static int ctx_make(aiot_tls *t, size_t i, const char *cert, const char *key, const unsigned char *ticket_keys,
                    char *err, size_t len)
{
        SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

        if (!ctx)
                return fail(err, len, -ENOMEM, "TLS: cannot make a context: %s", ssl_reason());
        t->ctx[i] = ctx;
        SSL_CTX_set_app_data(ctx, t);
        /* Whole records (and what follows) in one read, not a header first. */
        SSL_CTX_set_read_ahead(ctx, 1);
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
                return fail(err, len, -EINVAL, "TLS certificate '%s': %s", cert, ssl_reason());
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
                if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
                        return fail(err, len, -EINVAL, "TLS key '%s' does not match certificate '%s'", key, cert);
                return fail(err, len, -EINVAL, "TLS key '%s': %s", key, ssl_reason());
        }
        if (SSL_CTX_check_private_key(ctx) != 1)
                return fail(err, len, -EINVAL, "TLS key '%s' does not match certificate '%s'", key, cert);
        t->leaf[i] = SSL_CTX_get0_certificate(ctx);
        warn_validity(cert, t->leaf[i]);
        if (SSL_CTX_set_tlsext_ticket_keys(ctx, (void *)ticket_keys, 80) != 1)
                return fail(err, len, -EINVAL, "TLS: cannot set the session ticket key: %s", ssl_reason());
        SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
        SSL_CTX_set_tlsext_servername_arg(ctx, t);
        if (t->alpn_len)
                SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, t);
        return 0;
}

int aiot_tls_new(const struct aiot_tls_opts *o, aiot_tls **ret, char *err, size_t len)
{
        unsigned char ticket_keys[80];
        aiot_tls *t;
        int r = 0;

        aiot__return_if(!o || !ret || o->size < sizeof(*o) || o->n_certs == 0 || !o->certs || !o->keys, -EINVAL);
        for (size_t i = 0; i < o->n_certs; i++)
                if (!o->certs[i] || !o->keys[i])
                        return fail(err, len, -EINVAL, "TLS: certificate %zu has no %s", i,
                                    o->certs[i] ? "key" : "file");
        if (RAND_bytes(ticket_keys, sizeof(ticket_keys)) != 1)
                return fail(err, len, -EIO, "TLS: no random bytes for the ticket key: %s", ssl_reason());
        if (!(t = calloc(1, sizeof(*t))) || !(t->ctx = calloc(o->n_certs, sizeof(*t->ctx))) ||
            !(t->leaf = calloc(o->n_certs, sizeof(*t->leaf)))) {
                aiot_tls_free(t);
                return fail(err, len, -ENOMEM, "out of memory");
        }
        t->n = o->n_certs;
        if (o->alpn)
                r = parse_alpn(t, o->alpn, err, len);
        for (size_t i = 0; r == 0 && i < o->n_certs; i++)
                r = ctx_make(t, i, o->certs[i], o->keys[i], ticket_keys, err, len);
        OPENSSL_cleanse(ticket_keys, sizeof(ticket_keys));
        if (r < 0) {
                aiot_tls_free(t);
                return r;
        }
        *ret = t;
        return 0;
}

void aiot_tls_free(aiot_tls *t)
{
        if (!t)
                return;
        for (size_t i = 0; t->ctx && i < t->n; i++)
                SSL_CTX_free(t->ctx[i]);
        for (size_t i = 0; i < t->n_alpn; i++)
                free(t->alpn_names[i]);
        free(t->ctx);
        free(t->leaf);
        free(t);
}

/* ---------------------------------------------------------------- a connection */

/* The session is the SSL object itself: nothing else to keep per connection. */
#define SSL_OF(s) ((SSL *)(s))

struct aiot__tls_conn *aiot__tls_conn_new(const aiot_tls *t, int fd)
{
        SSL *ssl = SSL_new(t->ctx[0]);

        if (!ssl)
                return ERR_clear_error(), NULL;
        if (SSL_set_fd(ssl, fd) != 1) {
                SSL_free(ssl);
                ERR_clear_error();
                return NULL;
        }
        SSL_set_accept_state(ssl);
        return (struct aiot__tls_conn *)ssl;
}

void aiot__tls_conn_free(struct aiot__tls_conn *s)
{
        SSL *ssl = SSL_OF(s);

        if (!ssl)
                return;
        /* One try, never waiting: the close_notify if the socket takes it. */
        if (SSL_is_init_finished(ssl) && !(SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN))
                (void)SSL_shutdown(ssl);
        ERR_clear_error();
        SSL_free(ssl);
}

/* What a failed step of ssl (its result ret) means. */
static int step_error(SSL *ssl, int ret, int *want)
{
        int e = SSL_get_error(ssl, ret);

        switch (e) {
        case SSL_ERROR_WANT_READ:
                *want = AIOT_READ;
                return -EAGAIN;
        case SSL_ERROR_WANT_WRITE:
                *want = AIOT_WRITE;
                return -EAGAIN;
        case SSL_ERROR_ZERO_RETURN:
                return 0;
        case SSL_ERROR_SYSCALL:
                ERR_clear_error();
                return errno == 0 || errno == EAGAIN ? -ECONNRESET : -errno;
        default:
                snprintf(last_error, sizeof(last_error), "%s", ssl_reason());
                return -EPROTO;
        }
}

int aiot__tls_handshake(struct aiot__tls_conn *s, int *want)
{
        int ret;

        errno = 0;
        ret = SSL_do_handshake(SSL_OF(s));

        if (ret == 1)
                return 0;
        ret = step_error(SSL_OF(s), ret, want);
        return ret == 0 ? -ECONNRESET : ret;
}

ssize_t aiot__tls_read(struct aiot__tls_conn *s, void *buf, size_t n, int *want)
{
        size_t got;

        errno = 0;
        if (SSL_read_ex(SSL_OF(s), buf, n, &got) == 1)
                return (ssize_t)got;
        return step_error(SSL_OF(s), 0, want);
}

ssize_t aiot__tls_write(struct aiot__tls_conn *s, const void *buf, size_t n, int *want)
{
        size_t put;
        int r;

        errno = 0;
        if (SSL_write_ex(SSL_OF(s), buf, n, &put) == 1)
                return (ssize_t)put;
        r = step_error(SSL_OF(s), 0, want);
        return r == 0 ? -EPIPE : r;
}

bool aiot__tls_pending(const struct aiot__tls_conn *s)
{
        return SSL_has_pending(SSL_OF(s)) == 1;
}

const char *aiot__tls_alpn(const struct aiot__tls_conn *s)
{
        const unsigned char *p;
        unsigned n;
        const aiot_tls *t;

        SSL_get0_alpn_selected(SSL_OF(s), &p, &n);
        if (!n)
                return NULL;
        t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(SSL_OF(s)));
        for (size_t i = 0; t && i < t->n_alpn; i++)
                if (strlen(t->alpn_names[i]) == n && memcmp(t->alpn_names[i], p, n) == 0)
                        return t->alpn_names[i];
        return NULL;
}

#else /* !HAVE_OPENSSL */

int aiot_tls_new(const struct aiot_tls_opts *o, aiot_tls **ret, char *err, size_t len)
{
        (void)o;
        (void)ret;
        if (err && len)
                snprintf(err, len, "TLS is not available: libaiotools-server was built without OpenSSL "
                         "(configure --with-openssl)");
        return -EOPNOTSUPP;
}

void aiot_tls_free(aiot_tls *t)
{
        (void)t;
}

struct aiot__tls_conn *aiot__tls_conn_new(const aiot_tls *t, int fd)
{
        (void)t;
        (void)fd;
        return NULL;
}

void aiot__tls_conn_free(struct aiot__tls_conn *s)
{
        (void)s;
}

int aiot__tls_handshake(struct aiot__tls_conn *s, int *want)
{
        (void)s;
        (void)want;
        return -EOPNOTSUPP;
}

ssize_t aiot__tls_read(struct aiot__tls_conn *s, void *buf, size_t n, int *want)
{
        (void)s, (void)buf, (void)n, (void)want;
        return -EOPNOTSUPP;
}

ssize_t aiot__tls_write(struct aiot__tls_conn *s, const void *buf, size_t n, int *want)
{
        (void)s, (void)buf, (void)n, (void)want;
        return -EOPNOTSUPP;
}

bool aiot__tls_pending(const struct aiot__tls_conn *s)
{
        (void)s;
        return false;
}

const char *aiot__tls_alpn(const struct aiot__tls_conn *s)
{
        (void)s;
        return NULL;
}

const char *aiot__tls_last_error(void)
{
        return "no TLS";
}

#endif
