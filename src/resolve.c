/* SPDX-License-Identifier: MIT */
/* Name resolution on the blocking pool, and connecting by name with Happy
 * Eyeballs (RFC 8305).
 *
 * aiot_getaddrinfo() copies its arguments into a job the pool owns, so that a
 * cancelled caller can leave at once: the resolver's answer is freed by the
 * abandon callback when it finally comes.
 *
 * aiot_connect_host() resolves, orders the addresses with the families
 * alternating (RFC 8305 section 4), then starts one attempt task per address
 * in a scope of its own: the next starts when every attempt so far has failed
 * or attempt_delay has passed since the last start (section 5).  The first
 * attempt that connects stores its socket; closing the scope cancels the rest,
 * which close their sockets. */
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "aiotools/blocking.h"
#include "aiotools/io.h"
#include "aiotools/scope.h"
#include "macro.h"

#define DEFAULT_CONNECT_TIMEOUT 30.0
#define DEFAULT_ATTEMPT_DELAY 0.25 /* RFC 8305's recommended Connection Attempt Delay */

/* ------------------------------------------------------------ errors */

int aiot_eai_code(int rc)
{
        int e = -rc - AIOT_EAI_BASE;

        if (rc >= 0 || e <= 0 || e > 1000)
                return 0;
        /* glibc's EAI_* are negative; others' positive: give the libc's own. */
        return EAI_NONAME < 0 ? -e : e;
}

const char *aiot_strerror(int rc)
{
        int eai = aiot_eai_code(rc);

        if (eai)
                return gai_strerror(eai);
        return strerror(rc < 0 ? -rc : rc);
}

static int map_eai(int eai, int saved_errno)
{
        if (eai == 0)
                return 0;
        if (eai == EAI_SYSTEM)
                return saved_errno ? -saved_errno : -EIO;
        if (eai == EAI_MEMORY)
                return -ENOMEM;
        return AIOT_EAI(eai);
}

/* ------------------------------------------------------------ getaddrinfo */

struct gai_job {
        char *host, *service;
        struct addrinfo hints;
        bool has_hints;
        struct addrinfo *res;
};

static int gai_run(void *arg)
{
        struct gai_job *g = arg;
        int eai;

        errno = 0;
        eai = getaddrinfo(g->host, g->service, g->has_hints ? &g->hints : NULL, &g->res);
        return map_eai(eai, errno);
}

static void gai_job_free(void *arg, int result)
{
        struct gai_job *g = arg;

        if (result == 0 && g->res)
                freeaddrinfo(g->res);
        free(g->host);
        free(g->service);
        free(g);
}

static struct gai_job *gai_job_new(const char *host, const char *service, const struct addrinfo *hints)
{
        struct gai_job *g = calloc(1, sizeof(*g));

        if (!g)
                return NULL;
        if ((host && !(g->host = strdup(host))) || (service && !(g->service = strdup(service)))) {
                gai_job_free(g, -1);
                return NULL;
        }
        if (hints) {
                /* Only the fields getaddrinfo reads from hints. */
                g->hints.ai_flags = hints->ai_flags;
                g->hints.ai_family = hints->ai_family;
                g->hints.ai_socktype = hints->ai_socktype;
                g->hints.ai_protocol = hints->ai_protocol;
                g->has_hints = true;
        }
        return g;
}

int aiot_getaddrinfo(const char *host, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
        const struct aiot_blocking_opts o = { .size = sizeof(o), .abandon = gai_job_free };
        struct gai_job *g;
        int r, rc;

        aiot__return_if((!host && !service) || !res, -EINVAL);
        /* Checked before allocating, so that an interrupted call below always
         * means the pool owns g (the same check, no switch in between). */
        r = aiot_checkpoint();
        if (r < 0)
                return r;
        if (!aiot_current())
                return -EPERM;
        g = gai_job_new(host, service, hints);
        if (!g)
                return -ENOMEM;
        r = aiot_run_blocking_opts(gai_run, g, &o, &rc);
        if (r == -ECANCELED || r == -ETIMEDOUT)
                return r; /* gai_job_free() runs when the resolver returns */
        if (r < 0) {
                gai_job_free(g, -1);
                return r;
        }
        *res = g->res;
        g->res = NULL;
        gai_job_free(g, rc);
        return rc;
}

/* ------------------------------------------------------------ connecting by name */

struct race {
        const struct addrinfo **addrs; /* in the order of the attempts */
        size_t n;
        size_t started, ended;
        int fd;        /* the winner's socket, or -1 */
        int last_err;  /* the error of the attempt that failed last */
        aiot_event *changed;
};

struct attempt {
        struct race *race;
        const struct addrinfo *ai;
};

static int attempt_task(void *arg)
{
        struct attempt *a = arg;
        struct race *rc = a->race;
        int fd = socket(a->ai->ai_family, a->ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai->ai_protocol);
        int r = fd < 0 ? -errno : aiot_connect(fd, a->ai->ai_addr, a->ai->ai_addrlen);

        if (r == 0 && rc->fd < 0) {
                rc->fd = fd;
        } else {
                if (fd >= 0)
                        aiot_close(fd);
                if (r < 0 && r != -ECANCELED)
                        rc->last_err = r;
        }
        rc->ended++;
        aiot_event_set(rc->changed);
        /* The error is in the race, not the result: the scope would log it. */
        return 0;
}

/* Waits until an attempt connects or every attempt started so far has ended. */
static int race_wait(struct race *rc)
{
        while (rc->fd < 0 && rc->ended < rc->started) {
                int r;

                aiot_event_clear(rc->changed);
                r = aiot_event_wait(rc->changed);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Like race_wait, for at most delay seconds; 0 also when the delay passed. */
static int race_wait_for(struct race *rc, double delay)
{
        aiot_deadline d;
        int r;

        r = aiot_deadline_begin(&d, delay);
        if (r < 0)
                return r;
        r = race_wait(rc);
        if (aiot_deadline_end(&d) == 1 && r == -ETIMEDOUT)
                r = aiot_checkpoint(); /* -ETIMEDOUT only if an outer deadline passed too */
        return r;
}

static int race_run(struct race *rc, struct attempt *at, double delay)
{
        aiot_scope *s;
        int r, rc2;

        r = aiot_scope_open(&s, NULL);
        if (r < 0)
                return r;
        for (size_t i = 0; i < rc->n && rc->fd < 0 && r == 0; i++) {
                at[i] = (struct attempt){ .race = rc, .ai = rc->addrs[i] };
                r = aiot_spawn(s, attempt_task, &at[i], NULL);
                if (r < 0)
                        break;
                rc->started++;
                /* The next attempt starts at once when all so far failed. */
                if (i + 1 < rc->n)
                        r = race_wait_for(rc, delay);
        }
        if (r == 0)
                r = race_wait(rc);
        aiot_scope_cancel(s);
        rc2 = aiot_scope_close(s);
        return r < 0 ? r : rc2;
}

/* RFC 8305 section 4: the resolver's order, with the families alternating
 * from the family of the first address. */
static size_t order_addresses(const struct addrinfo *res, const struct addrinfo **out)
{
        const struct addrinfo *a, *b;
        int first = res->ai_family;
        size_t n = 0;

        a = res;
        b = res;
        for (;;) {
                while (a && a->ai_family != first)
                        a = a->ai_next;
                while (b && b->ai_family == first)
                        b = b->ai_next;
                if (!a && !b)
                        break;
                if (a) {
                        out[n++] = a;
                        a = a->ai_next;
                }
                if (b) {
                        out[n++] = b;
                        b = b->ai_next;
                }
        }
        return n;
}

static void set_err(const struct aiot_connect_opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(const struct aiot_connect_opts *o, const char *fmt, ...)
{
        va_list ap;

        if (!o || !o->err || !o->errlen)
                return;
        va_start(ap, fmt);
        vsnprintf(o->err, o->errlen, fmt, ap);
        va_end(ap);
}

/* "[::1]:80, 127.0.0.1:80" for the error line. */
static void format_addrs(const struct addrinfo **addrs, size_t n, char *buf, size_t len)
{
        size_t used = 0;

        buf[0] = '\0';
        for (size_t i = 0; i < n && used + 1 < len; i++) {
                char host[INET6_ADDRSTRLEN] = "?";
                const void *src;
                unsigned port;
                int k;

                if (addrs[i]->ai_family == AF_INET6) {
                        const struct sockaddr_in6 *s6 = (const void *)addrs[i]->ai_addr;

                        src = &s6->sin6_addr;
                        port = ntohs(s6->sin6_port);
                } else {
                        const struct sockaddr_in *s4 = (const void *)addrs[i]->ai_addr;

                        src = &s4->sin_addr;
                        port = ntohs(s4->sin_port);
                }
                inet_ntop(addrs[i]->ai_family, src, host, sizeof(host));
                k = snprintf(buf + used, len - used, addrs[i]->ai_family == AF_INET6 ? "%s[%s]:%u" : "%s%s:%u",
                             i ? ", " : "", host, port);
                if (k < 0)
                        break;
                used += (size_t)k;
        }
}

/* host and service name the target in the error line; NULL: the addresses do. */
static int connect_resolved(const char *host, const char *service, const struct addrinfo *res,
                            const struct aiot_connect_opts *o, double delay)
{
        struct race rc = { .fd = -1, .last_err = -ECONNREFUSED };
        const struct addrinfo **addrs;
        struct attempt *at;
        size_t n = 0;
        char tried[512];
        int r;

        for (const struct addrinfo *a = res; a; a = a->ai_next)
                n++;
        addrs = calloc(n, sizeof(*addrs));
        at = calloc(n, sizeof(*at));
        r = addrs && at ? aiot_event_new(&rc.changed) : -ENOMEM;
        if (r == 0) {
                rc.addrs = addrs;
                rc.n = order_addresses(res, addrs);
                r = race_run(&rc, at, delay);
                aiot_event_free(rc.changed);
        }
        if (r == 0 && rc.fd < 0)
                r = rc.last_err;
        if (r < 0 && rc.fd >= 0)
                rc.fd = aiot__close(rc.fd); /* connected, but the caller was interrupted */
        if (r < 0) {
                format_addrs(addrs, addrs ? rc.started : 0, tried, sizeof(tried));
                if (host)
                        set_err(o, "cannot connect to %s port %s: %s%s%s%s", host, service, aiot_strerror(r),
                                rc.started ? " (tried " : "", tried, rc.started ? ")" : "");
                else
                        set_err(o, "cannot connect to %s: %s", rc.started ? tried : "no address", aiot_strerror(r));
        }
        free(addrs);
        free(at);
        return r < 0 ? r : rc.fd;
}

/* Copies and checks the options; clears the error line. */
static int connect_opts(const struct aiot_connect_opts *opts, struct aiot_connect_opts *o, double *timeout)
{
        *o = (struct aiot_connect_opts){ .size = sizeof(*o) };
        if (opts) {
                aiot__return_if(opts->size < offsetof(struct aiot_connect_opts, errlen) + sizeof(size_t), -EINVAL);
                memcpy(o, opts, opts->size < sizeof(*o) ? opts->size : sizeof(*o));
        }
        aiot__return_if(o->family != AF_UNSPEC && o->family != AF_INET && o->family != AF_INET6, -EINVAL);
        aiot__return_if(o->timeout != o->timeout || !(o->attempt_delay >= 0), -EINVAL);
        if (o->err && o->errlen)
                o->err[0] = '\0';
        if (!o->attempt_delay)
                o->attempt_delay = DEFAULT_ATTEMPT_DELAY;
        *timeout = o->timeout == 0 ? DEFAULT_CONNECT_TIMEOUT : o->timeout < 0 ? 1.0 / 0.0 : o->timeout;
        return aiot_current() ? 0 : -EPERM;
}

int aiot_connect_addrinfo(const struct addrinfo *res, const struct aiot_connect_opts *opts)
{
        struct aiot_connect_opts o;
        aiot_deadline d;
        double timeout;
        int r;

        aiot__return_if(!res, -EINVAL);
        r = connect_opts(opts, &o, &timeout);
        if (r < 0)
                return r;
        r = aiot_deadline_begin(&d, timeout);
        if (r < 0)
                return r;
        r = connect_resolved(NULL, NULL, res, &o, o.attempt_delay);
        if (aiot_deadline_end(&d) == 1 && r == -ETIMEDOUT)
                set_err(&o, "cannot connect: timed out after %g s", timeout);
        return r;
}

int aiot_connect_host(const char *host, const char *service, const struct aiot_connect_opts *opts)
{
        struct aiot_connect_opts o;
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG };
        struct addrinfo *res = NULL;
        aiot_deadline d;
        double timeout;
        int r, expired;

        aiot__return_if(!host || !*host || !service || !*service, -EINVAL);
        r = connect_opts(opts, &o, &timeout);
        if (r < 0)
                return r;
        hints.ai_family = o.family;
        r = aiot_deadline_begin(&d, timeout);
        if (r < 0)
                return r;
        r = aiot_getaddrinfo(host, service, &hints, &res);
        if (r < 0) {
                set_err(&o, "cannot resolve %s port %s: %s", host, service, aiot_strerror(r));
        } else {
                r = connect_resolved(host, service, res, &o, o.attempt_delay);
                freeaddrinfo(res);
        }
        expired = aiot_deadline_end(&d) == 1;
        if (r == -ETIMEDOUT && expired)
                set_err(&o, "cannot connect to %s port %s: timed out after %g s", host, service, timeout);
        return r;
}
