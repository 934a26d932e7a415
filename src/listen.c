/* SPDX-License-Identifier: MIT */
/* listen: bind addresses, listening sockets, socket activation. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "aiotools/listen.h"
#include "listen-internal.h"
#include "macro.h"

#define DEFAULT_BACKLOG 1024
#define ACTIVATION_FD_START 3
/* Longest formatted address: "unix:" + 107 path bytes, or "[v6]:65535". */
#define ADDR_MAX (5 + sizeof(((struct sockaddr_un *)0)->sun_path) + 1)

/* The public struct first, so that a listener pointer is both. */
struct listener {
        aiot_listener pub;
        char *name;
        char *address;
        struct aiot_bind_addr addr;
        /* A unix socket file this process created, removed on close. */
        char *unlink_path;
        dev_t dev;
        ino_t ino;
        pid_t owner;
};

static void errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
        va_list ap;

        if (!err || errlen == 0)
                return;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        /* The message quotes user input: keep it one printable line. */
        for (char *p = err; *p; p++)
                if ((unsigned char)*p < 0x20 || *p == 0x7f)
                        *p = '?';
}

/* strerror() is not thread-safe; the GNU strerror_r returns the message. */
static const char *errstr(int e, char *buf, size_t len)
{
        return strerror_r(e, buf, len);
}

/* PORT: 1 to 5 decimal digits (leading zeros allowed), no sign or spaces. */
static int parse_port(const char *s, const char *spec, uint16_t *port, char *err, size_t errlen)
{
        unsigned long v = 0;
        const char *p;

        if (!*s) {
                errf(err, errlen, "bad address '%s': missing port", spec);
                return -EINVAL;
        }
        for (p = s; *p; p++) {
                if (*p < '0' || *p > '9') {
                        errf(err, errlen, "bad port '%s' in '%s'", s, spec);
                        return -EINVAL;
                }
                if (v <= 65535)
                        v = v * 10 + (unsigned long)(*p - '0');
        }
        if (v > 65535) {
                errf(err, errlen, "port %s out of range (0-65535) in '%s'", s, spec);
                return -ERANGE;
        }
        *port = (uint16_t)v;
        return 0;
}

static int parse_unix(const char *path, const char *spec, struct aiot_bind_addr *out, char *err,
                      size_t errlen)
{
        size_t n = strlen(path), max = sizeof(out->u.un.sun_path);
        bool abstract = path[0] == '@';

        if (n == 0 || (abstract && n == 1)) {
                errf(err, errlen, "bad address '%s': empty unix socket path", spec);
                return -EINVAL;
        }
        /* A path needs its terminating NUL; an abstract name has a leading NUL instead. */
        if (abstract ? n > max : n >= max) {
                errf(err, errlen, "unix socket path too long in '%s' (%zu bytes, at most %zu)", spec, n,
                     max - 1);
                return -ENAMETOOLONG;
        }
        memset(out, 0, sizeof(*out));
        out->family = AF_UNIX;
        out->u.un.sun_family = AF_UNIX;
        memcpy(out->u.un.sun_path, path, n);
        if (abstract)
                out->u.un.sun_path[0] = '\0';
        out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (abstract ? 0 : 1));
        return 0;
}

/* A host name as the resolver would take it: letters, digits, '-', '.', '_'. */
static bool hostname_valid(const char *h)
{
        bool has_alpha = false;

        for (; *h; h++) {
                if ((*h >= 'a' && *h <= 'z') || (*h >= 'A' && *h <= 'Z') || *h == '-' || *h == '_')
                        has_alpha = true;
                else if (!((*h >= '0' && *h <= '9') || *h == '.'))
                        return false;
        }
        /* All digits and dots is a (bad) IPv4 literal, which getaddrinfo() would
         * read the inet_aton() way ("1.2.3" as 1.2.0.3): refuse it instead. */
        return has_alpha;
}

static int resolve(const char *host, uint16_t port, const char *spec, struct aiot_bind_addr *out, char *err,
                   size_t errlen)
{
        struct addrinfo hints = {
                .ai_flags = AI_PASSIVE | AI_NUMERICSERV,
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
        };
        struct addrinfo *res = NULL;
        char portstr[8], ebuf[128];
        int r;

        snprintf(portstr, sizeof(portstr), "%u", port);
        r = getaddrinfo(host, portstr, &hints, &res);
        if (r != 0) {
                int e = r == EAI_SYSTEM ? errno : 0;

                errf(err, errlen, "cannot resolve '%s' in '%s': %s", host, spec,
                     e ? errstr(e, ebuf, sizeof(ebuf)) : gai_strerror(r));
                if (r == EAI_AGAIN)
                        return -EAGAIN;
                if (r == EAI_MEMORY)
                        return -ENOMEM;
                if (r == EAI_SYSTEM && e > 0)
                        return -e;
                return -EADDRNOTAVAIL;
        }
        /* Only families we can print and bind. */
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) &&
                    ai->ai_addrlen <= sizeof(out->u)) {
                        memset(out, 0, sizeof(*out));
                        out->family = ai->ai_family;
                        out->len = ai->ai_addrlen;
                        memcpy(&out->u, ai->ai_addr, ai->ai_addrlen);
                        freeaddrinfo(res);
                        return 0;
                }
        }
        freeaddrinfo(res);
        errf(err, errlen, "cannot resolve '%s' in '%s': no IPv4 or IPv6 address", host, spec);
        return -EADDRNOTAVAIL;
}

static int parse_inet(const char *spec, unsigned flags, struct aiot_bind_addr *out, char *err, size_t errlen)
{
        _cleanup_free_ char *host = NULL;
        struct aiot_bind_addr a = {0};
        const char *colon, *hstart, *hend;
        uint16_t port;
        int r;

        if (spec[0] == '[') {
                hstart = spec + 1;
                hend = strchr(hstart, ']');
                if (!hend) {
                        errf(err, errlen, "bad address '%s': missing ']'", spec);
                        return -EINVAL;
                }
                if (hend[1] != ':') {
                        errf(err, errlen, "bad address '%s': missing port after ']'", spec);
                        return -EINVAL;
                }
                colon = hend + 1;
        } else {
                colon = strrchr(spec, ':');
                if (!colon) {
                        errf(err, errlen, "bad address '%s': missing port", spec);
                        return -EINVAL;
                }
                hstart = spec;
                hend = colon;
                if (memchr(hstart, ':', (size_t)(hend - hstart))) {
                        errf(err, errlen,
                             "bad address '%s': IPv6 addresses go in brackets, as in '[::1]:80'", spec);
                        return -EINVAL;
                }
        }
        r = parse_port(colon + 1, spec, &port, err, errlen);
        if (r < 0)
                return r;
        host = strndup(hstart, (size_t)(hend - hstart));
        if (!host)
                return -ENOMEM;

        if (spec[0] == '[') {
                a.family = AF_INET6;
                a.len = sizeof(a.u.in6);
                a.u.in6.sin6_family = AF_INET6;
                a.u.in6.sin6_port = htons(port);
                if (inet_pton(AF_INET6, host, &a.u.in6.sin6_addr) != 1) {
                        errf(err, errlen, "bad address '%s': '%s' is not an IPv6 address", spec, host);
                        return -EINVAL;
                }
        } else if (!host[0] || strcmp(host, "*") == 0 || inet_pton(AF_INET, host, &a.u.in.sin_addr) == 1) {
                a.family = AF_INET;
                a.len = sizeof(a.u.in);
                a.u.in.sin_family = AF_INET;
                a.u.in.sin_port = htons(port);
                /* The "all addresses" forms leave sin_addr zero: INADDR_ANY. */
        } else if (!hostname_valid(host)) {
                errf(err, errlen, "bad address '%s': '%s' is not an IPv4 address or host name", spec, host);
                return -EINVAL;
        } else if (flags & AIOT_LISTEN_NUMERIC) {
                errf(err, errlen, "bad address '%s': '%s' is not a numeric address", spec, host);
                return -EINVAL;
        } else {
                r = resolve(host, port, spec, &a, err, errlen);
                if (r < 0)
                        return r;
        }
        *out = a;
        return 0;
}

int aiot_listen_parse(const char *spec, unsigned flags, struct aiot_bind_addr *out, char *err, size_t errlen)
{
        aiot__return_if(!spec || !out, -EINVAL);

        /* "tls:ADDRESS" marks a listener for TLS (aiotools/tls.h): the
         * address is what follows, the mark stays in the listener's name. */
        if (strncmp(spec, "tls:", 4) == 0)
                spec += 4;
        if (strncmp(spec, "unix:", 5) == 0)
                return parse_unix(spec + 5, spec, out, err, errlen);
        return parse_inet(spec, flags, out, err, errlen);
}

int aiot_listen_format(const struct aiot_bind_addr *addr, char *buf, size_t len)
{
        char host[INET6_ADDRSTRLEN];
        const struct sockaddr_un *un;
        size_t off;

        aiot__return_if(!addr || (!buf && len > 0), -EINVAL);

        switch (addr->family) {
        case AF_INET:
                if (!inet_ntop(AF_INET, &addr->u.in.sin_addr, host, sizeof(host)))
                        return -EINVAL;
                return snprintf(buf, len, "%s:%u", host, ntohs(addr->u.in.sin_port));
        case AF_INET6:
                if (!inet_ntop(AF_INET6, &addr->u.in6.sin6_addr, host, sizeof(host)))
                        return -EINVAL;
                return snprintf(buf, len, "[%s]:%u", host, ntohs(addr->u.in6.sin6_port));
        case AF_UNIX:
                un = &addr->u.un;
                off = offsetof(struct sockaddr_un, sun_path);
                if (addr->len <= off)
                        return snprintf(buf, len, "unix:"); /* unnamed */
                if (addr->len > sizeof(*un))
                        return -EINVAL;
                if (un->sun_path[0] == '\0')
                        return snprintf(buf, len, "unix:@%.*s", (int)(addr->len - off - 1),
                                        un->sun_path + 1);
                return snprintf(buf, len, "unix:%.*s", (int)strnlen(un->sun_path, addr->len - off),
                                un->sun_path);
        default:
                return -EINVAL;
        }
}

/* Fills l->addr and l->address from the socket itself (port 0 made real). */
static int listener_set_address(struct listener *l, int fd)
{
        char buf[ADDR_MAX];
        socklen_t len = sizeof(l->addr.u);
        int r;

        if (getsockname(fd, &l->addr.u.sa, &len) < 0)
                return -errno;
        l->addr.len = len;
        l->addr.family = l->addr.u.sa.sa_family;
        r = aiot_listen_format(&l->addr, buf, sizeof(buf));
        if (r < 0)
                return r;
        free(l->address);
        l->address = strdup(buf);
        if (!l->address)
                return -ENOMEM;
        l->pub.address = l->address;
        return 0;
}

static struct listener *listener_alloc(int fd, const char *name)
{
        struct listener *l = calloc(1, sizeof(*l));

        if (!l)
                return NULL;
        l->name = strdup(name);
        if (!l->name) {
                free(l);
                return NULL;
        }
        l->pub.fd = fd;
        l->pub.name = l->name;
        l->pub.address = "";
        return l;
}

/* Frees without touching the fd (the caller still owns it). */
static void listener_free_struct(struct listener *l)
{
        free(l->name);
        free(l->address);
        free(l->unlink_path);
        free(l);
}

void aiot_listener_close(aiot_listener *pub)
{
        struct listener *l = (struct listener *)pub;
        struct stat st;

        if (!l)
                return;
        /* Remove the socket file only in the process that created it and only
         * while it is still ours: a server started in its place keeps its own. */
        if (l->unlink_path && l->owner == getpid() && lstat(l->unlink_path, &st) == 0 &&
            S_ISSOCK(st.st_mode) && st.st_dev == l->dev && st.st_ino == l->ino)
                unlink(l->unlink_path);
        aiot__close(l->pub.fd);
        listener_free_struct(l);
}

void aiot_listeners_free(aiot_listener **ls, size_t n)
{
        if (!ls)
                return;
        for (size_t i = 0; i < n; i++)
                aiot_listener_close(ls[i]);
        free(ls);
}

/* A unix socket file nobody accepts on refuses connections: that is stale.
 * Returns 1 for stale, 0 for live, or -errno (-EEXIST: not a socket). */
static int unix_path_stale(const struct aiot_bind_addr *a)
{
        _cleanup_close_ int fd = -1;
        struct stat st;

        if (lstat(a->u.un.sun_path, &st) < 0)
                return errno == ENOENT ? 1 : -errno;
        if (!S_ISSOCK(st.st_mode))
                return -EEXIST;
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, &a->u.sa, a->len) == 0)
                return 0;
        /* EAGAIN: a full backlog, so somebody listens; EPROTOTYPE: a datagram socket is bound there. */
        if (errno == ECONNREFUSED)
                return 1;
        if (errno == ENOENT)
                return 1;
        return errno == EAGAIN || errno == EPROTOTYPE ? 0 : -errno;
}

static int bind_unix(int fd, const struct aiot_bind_addr *a)
{
        int r;

        if (bind(fd, &a->u.sa, a->len) == 0)
                return 0;
        if (errno != EADDRINUSE || a->u.un.sun_path[0] == '\0')
                return -errno;
        r = unix_path_stale(a);
        if (r < 0)
                return r;
        if (r == 0)
                return -EADDRINUSE;
        if (unlink(a->u.un.sun_path) < 0 && errno != ENOENT)
                return -errno;
        return bind(fd, &a->u.sa, a->len) == 0 ? 0 : -errno;
}

/* Records the socket file so that close removes exactly this one. */
static int listener_own_path(struct listener *l, mode_t mode)
{
        const char *path = l->addr.u.un.sun_path;
        char cwd[PATH_MAX];
        struct stat st;

        if (mode && chmod(path, mode) < 0)
                return -errno;
        if (lstat(path, &st) < 0)
                return -errno;
        l->dev = st.st_dev;
        l->ino = st.st_ino;
        l->owner = getpid();
        /* Relative paths are kept absolute: the daemon may chdir before it closes. */
        if (path[0] == '/')
                l->unlink_path = strdup(path);
        else if (!getcwd(cwd, sizeof(cwd)))
                return -errno;
        else if (asprintf(&l->unlink_path, "%s/%s", cwd, path) < 0)
                l->unlink_path = NULL;
        return l->unlink_path ? 0 : -ENOMEM;
}

static int setopt_one(int fd, int level, int opt)
{
        int one = 1;

        return setsockopt(fd, level, opt, &one, sizeof(one)) < 0 ? -errno : 0;
}

/* Creates, configures, binds and (unless bind_only) listens.  On failure
 * *what names the step that failed, for the message. */
static int open_socket(const struct aiot_bind_addr *a, const struct aiot_listen_opts *o, struct listener *l,
                       const char **what)
{
        _cleanup_close_ int fd = -1;
        int r;

        *what = "socket";
        fd = socket(a->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        *what = "setsockopt";
        /* Not on a bind_only reservation: SO_REUSEADDR would let anyone bind
         * the port while it does not listen. */
        if (a->family != AF_UNIX && !o->bind_only && (r = setopt_one(fd, SOL_SOCKET, SO_REUSEADDR)) < 0)
                return r;
        if (a->family == AF_INET6 && (r = setopt_one(fd, IPPROTO_IPV6, IPV6_V6ONLY)) < 0)
                return r;
        if (o->reuseport && (r = setopt_one(fd, SOL_SOCKET, SO_REUSEPORT)) < 0)
                return r;
        *what = "bind";
        r = a->family == AF_UNIX ? bind_unix(fd, a) : (bind(fd, &a->u.sa, a->len) < 0 ? -errno : 0);
        if (r < 0)
                return r;
        l->addr = *a;
        /* chmod before listen(): until then nobody can connect with the umask's mode. */
        if (a->family == AF_UNIX && a->u.un.sun_path[0] != '\0') {
                *what = "chmod";
                r = listener_own_path(l, (mode_t)o->mode);
                if (r < 0) {
                        /* We created the file: do not leave it behind. */
                        unlink(a->u.un.sun_path);
                        return r;
                }
        }
        *what = "listen";
        if (!o->bind_only && listen(fd, o->backlog > 0 ? o->backlog : DEFAULT_BACKLOG) < 0)
                return -errno;
        r = listener_set_address(l, fd);
        if (r < 0)
                return r;
        l->pub.fd = AIOT_TAKE_FD(fd);
        return 0;
}

static void opts_copy(struct aiot_listen_opts *dst, const struct aiot_listen_opts *src)
{
        memset(dst, 0, sizeof(*dst));
        if (src)
                memcpy(dst, src, src->size && src->size < sizeof(*dst) ? src->size : sizeof(*dst));
        dst->size = sizeof(*dst);
}

static int open_addr(const char *spec, const struct aiot_bind_addr *a, const struct aiot_listen_opts *o,
                     const char *name, aiot_listener **ret, char *err, size_t errlen)
{
        struct listener *l;
        const char *what = "";
        char ebuf[128];
        int r;

        l = listener_alloc(-1, name);
        if (!l)
                return -ENOMEM;
        r = open_socket(a, o, l, &what);
        if (r < 0) {
                if (r == -EEXIST)
                        errf(err, errlen, "bind %s: a file that is not a socket is in the way (left alone)",
                             spec);
                else
                        errf(err, errlen, "%s %s: %s", what, spec, errstr(-r, ebuf, sizeof(ebuf)));
                if (l->unlink_path)
                        unlink(l->unlink_path);
                listener_free_struct(l);
                return r;
        }
        *ret = &l->pub;
        return 0;
}

int aiot_listen_open(const char *spec, const struct aiot_listen_opts *opts, aiot_listener **ret, char *err,
                     size_t errlen)
{
        struct aiot_listen_opts o;
        struct aiot_bind_addr a;
        int r;

        aiot__return_if(!spec || !ret, -EINVAL);
        opts_copy(&o, opts);

        r = aiot_listen_parse(spec, o.flags, &a, err, errlen);
        if (r < 0)
                return r;
        if (a.family == AF_UNIX && o.reuseport) {
                errf(err, errlen, "bad address '%s': reuseport does not apply to unix sockets", spec);
                return -EINVAL;
        }
        return open_addr(spec, &a, &o, o.name ? o.name : spec, ret, err, errlen);
}

int aiot_listen_reopen(const aiot_listener *pub, const struct aiot_listen_opts *opts, aiot_listener **ret,
                       char *err, size_t errlen)
{
        const struct listener *l = (const struct listener *)pub;
        struct aiot_listen_opts o;

        aiot__return_if(!l || !ret, -EINVAL);
        if (l->addr.family == AF_UNIX) {
                errf(err, errlen, "%s: a unix socket cannot be bound twice; share it", l->pub.address);
                return -EOPNOTSUPP;
        }
        opts_copy(&o, opts);
        o.reuseport = 1;
        o.bind_only = 0;
        o.mode = 0;
        return open_addr(l->pub.address, &l->addr, &o, l->name, ret, err, errlen);
}

/* A listener over a bound socket this process already has (an in-place
 * upgrade hands its sockets over across exec): its address read from the
 * socket.  The fd is the listener's from here; on failure it stays the
 * caller's.  0 or -errno. */
int aiot__listener_from_fd(int fd, const char *name, aiot_listener **ret)
{
        struct listener *l = listener_alloc(-1, name);
        int r = l ? listener_set_address(l, fd) : -ENOMEM;

        if (r < 0) {
                if (l)
                        listener_free_struct(l);
                return r;
        }
        l->pub.fd = fd;
        *ret = &l->pub;
        return 0;
}

/* ---- socket activation ---- */

static void activation_unsetenv(void)
{
        unsetenv("LISTEN_PID");
        unsetenv("LISTEN_FDS");
        unsetenv("LISTEN_FDNAMES");
}

/* A decimal integer filling the whole string, as libsystemd reads these. */
static int parse_long(const char *s, long *ret)
{
        char *end;
        long v;

        errno = 0;
        v = strtol(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0')
                return -EINVAL;
        *ret = v;
        return 0;
}

/* Returns the number of fds passed to this process, 0 for none, or -errno. */
static int activation_count(char *err, size_t errlen)
{
        const char *e = getenv("LISTEN_PID");
        long pid, n;

        if (!e)
                return 0;
        if (parse_long(e, &pid) < 0) {
                errf(err, errlen, "socket activation: bad LISTEN_PID '%s'", e);
                return -EINVAL;
        }
        if (pid <= 0 || pid > INT_MAX) {
                errf(err, errlen, "socket activation: LISTEN_PID '%s' is not a valid pid", e);
                return -ERANGE;
        }
        /* Passed to another process (we are its child, or it exec'd us unchanged). */
        if ((pid_t)pid != getpid())
                return 0;
        e = getenv("LISTEN_FDS");
        if (!e)
                return 0;
        if (parse_long(e, &n) < 0 || n <= 0 || n > INT_MAX - ACTIVATION_FD_START) {
                errf(err, errlen, "socket activation: bad LISTEN_FDS '%s'", e);
                return -EINVAL;
        }
        return (int)n;
}

/* Checks that fd is a listening stream socket and makes it non-blocking:
 * workers share it and must never sleep in accept(). */
static int activation_take_fd(int fd, const char *name, char *err, size_t errlen)
{
        int type = 0, acc = 0, fl, r;
        socklen_t len = sizeof(int);
        char ebuf[128];
        struct stat st;

        /* errno is fstat's only when fstat failed: a stale EBADF from
         * earlier code must not turn "not a socket" into "not open". */
        r = fstat(fd, &st) < 0 ? -errno : !S_ISSOCK(st.st_mode) ? -ENOTSOCK : 0;
        if (r < 0) {
                errf(err, errlen, "socket activation: fd %d ('%s'): %s", fd, name,
                     errstr(-r, ebuf, sizeof(ebuf)));
                return r;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM ||
            getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) < 0 || !acc) {
                errf(err, errlen, "socket activation: fd %d ('%s') is not a listening stream socket", fd,
                     name);
                return -EINVAL;
        }
        fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
                return -errno;
        return 0;
}

/* Splits LISTEN_FDNAMES (or n times "unknown") into n names in one allocation. */
static int activation_names(int n, char ***ret, char *err, size_t errlen)
{
        const char *e = getenv("LISTEN_FDNAMES");
        size_t count = 1, size;
        char **names, *p;

        if (!e) {
                names = calloc((size_t)n, sizeof(char *));
                if (!names)
                        return -ENOMEM;
                for (int i = 0; i < n; i++)
                        names[i] = (char *)"unknown";
                *ret = names;
                return 0;
        }
        for (p = (char *)e; *p; p++)
                count += *p == ':';
        if (count != (size_t)n) {
                errf(err, errlen, "socket activation: %zu names in LISTEN_FDNAMES for %d fds", count, n);
                return -EINVAL;
        }
        size = (size_t)n * sizeof(char *) + strlen(e) + 1;
        names = malloc(size);
        if (!names)
                return -ENOMEM;
        p = memcpy((char *)(names + n), e, strlen(e) + 1);
        for (int i = 0; i < n; i++) {
                names[i] = p;
                p = strchrnul(p, ':');
                if (*p)
                        *p++ = '\0';
        }
        *ret = names;
        return 0;
}

static int activation_collect(int n, aiot_listener ***ret, char *err, size_t errlen)
{
        _cleanup_free_ char **names = NULL;
        aiot_listener **ls;
        int r;

        /* libsystemd's order: every fd CLOEXEC first, then the names. */
        for (int i = 0; i < n; i++) {
                int fd = ACTIVATION_FD_START + i, fl = fcntl(fd, F_GETFD);
                char ebuf[128];

                if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0) {
                        r = -errno;
                        errf(err, errlen, "socket activation: fd %d: %s", fd,
                             errstr(-r, ebuf, sizeof(ebuf)));
                        return r;
                }
        }
        r = activation_names(n, &names, err, errlen);
        if (r < 0)
                return r;
        for (int i = 0; i < n; i++) {
                r = activation_take_fd(ACTIVATION_FD_START + i, names[i], err, errlen);
                if (r < 0)
                        return r;
        }
        ls = calloc((size_t)n, sizeof(*ls));
        if (!ls)
                return -ENOMEM;
        for (int i = 0; i < n; i++) {
                struct listener *l = listener_alloc(-1, names[i]);

                r = l ? listener_set_address(l, ACTIVATION_FD_START + i) : -ENOMEM;
                if (r < 0) {
                        if (l)
                                listener_free_struct(l);
                        /* Free what was built without closing the fds: they stay the caller's. */
                        for (int j = 0; j < i; j++)
                                listener_free_struct((struct listener *)ls[j]);
                        free(ls);
                        return r;
                }
                l->pub.fd = ACTIVATION_FD_START + i;
                ls[i] = &l->pub;
        }
        *ret = ls;
        return 0;
}

int aiot_listen_from_env(aiot_listener ***ret, size_t *n, int unset_env, char *err, size_t errlen)
{
        aiot_listener **ls = NULL;
        int count, r;

        aiot__return_if(!ret || !n, -EINVAL);

        count = activation_count(err, errlen);
        r = count > 0 ? activation_collect(count, &ls, err, errlen) : count;
        if (unset_env)
                activation_unsetenv();
        if (r < 0 || count == 0)
                return r;
        *ret = ls;
        *n = (size_t)count;
        return count;
}
