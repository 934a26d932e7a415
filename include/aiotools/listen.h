/* SPDX-License-Identifier: MIT */
#ifndef AIOTOOLS_LISTEN_H
#define AIOTOOLS_LISTEN_H

#include <stddef.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

/* Bind addresses, listening sockets, and sockets inherited by socket activation.
 *
 * Address syntax (the --bind argument of aiotools-serve):
 *   HOST:PORT      HOST is an IPv4 literal or a host name (the first address
 *                  getaddrinfo() returns is used); "*" or an empty HOST means
 *                  every IPv4 address (0.0.0.0).
 *   [V6]:PORT      an IPv6 literal without zone id; "[::]:PORT" means every
 *                  IPv6 address.  IPv6 sockets are IPV6_V6ONLY, so binding all
 *                  of IPv4 and IPv6 takes two addresses ("*:80" and "[::]:80").
 *   unix:PATH      a unix stream socket; PATH is absolute or relative and at
 *                  most 107 bytes.  "unix:@NAME" is a Linux abstract socket.
 *   tls:ADDRESS    any of the above, marked for TLS: the listener's name keeps
 *                  the prefix, and aiot_worker_serve(3) serves it with
 *                  aiot_serve_opts.tls (see aiot_tls_new(3)).
 * PORT is decimal, 0 to 65535; 0 lets the kernel choose a free port (the
 * listener's address shows which).  Service names ("http") are refused.
 *
 * Error messages: every call that can fail on user input takes a buffer
 * (err, errlen; may be NULL/0) and fills it with one line naming the address,
 * e.g. "bad address 'foo': missing port" or "bind 127.0.0.1:80: Permission
 * denied".  The library never prints. */

/* A parsed address.  Plain data: copy it freely. */
struct aiot_bind_addr {
        int family;    /* AF_INET, AF_INET6 or AF_UNIX */
        socklen_t len; /* the length to pass to bind() */
        union {
                struct sockaddr sa;
                struct sockaddr_in in;
                struct sockaddr_in6 in6;
                struct sockaddr_un un;
        } u;
};

/* A listening socket.  fd, name and address are owned by the listener and
 * valid until aiot_listener_close().  name is what the user calls it (the
 * spec, the activation name, or opts.name); address is the bound address in
 * the syntax above ("127.0.0.1:41234", "[::1]:80", "unix:/run/x.sock"),
 * with the port the kernel chose for port 0. */
typedef struct aiot_listener {
        int fd;
        const char *name;
        const char *address;
} aiot_listener;

/* aiot_listen_parse() flags. */
enum {
        /* Refuse host names that would need a resolver (DNS, /etc/hosts):
         * only literals, "*" and unix paths parse.  Never blocks. */
        AIOT_LISTEN_NUMERIC = 1 << 0,
};

/* Parses spec into *out.  Returns 0, or -EINVAL (bad syntax, or a host name
 * with AIOT_LISTEN_NUMERIC), -ERANGE (port above 65535), -ENAMETOOLONG (unix
 * path too long), -EADDRNOTAVAIL (host name does not resolve), -EAGAIN
 * (resolver temporarily failed), -ENOMEM.  *out is untouched on failure. */
int aiot_listen_parse(const char *spec, unsigned flags, struct aiot_bind_addr *out, char *err,
                      size_t errlen);

/* Writes addr in the syntax above into buf (NUL-terminated, truncated to
 * len).  Returns the length of the full string, or -EINVAL.  Parsing the
 * result gives back the same address. */
int aiot_listen_format(const struct aiot_bind_addr *addr, char *buf, size_t len);

struct aiot_listen_opts {
        size_t size;      /* sizeof(struct aiot_listen_opts), so the struct can grow */
        int backlog;      /* listen() backlog; 0: 1024 (the kernel caps it at somaxconn) */
        int reuseport;    /* set SO_REUSEPORT (TCP only; -EINVAL for unix: paths) */
        int bind_only;    /* bind but do not listen() (see aiot_listen_reopen) */
        unsigned mode;    /* unix: chmod the socket file to this mode; 0: leave the umask's */
        const char *name; /* the listener's name; NULL: the spec */
        unsigned flags;   /* aiot_listen_parse() flags */
};

/* Parses spec and binds a listening stream socket to it.  opts may be NULL.
 *
 * The socket is SOCK_NONBLOCK and SOCK_CLOEXEC: workers are forked, not
 * exec'd, so they inherit it anyway, and CLOEXEC keeps it out of helper
 * programs a worker or the supervisor executes.  TCP sockets get
 * SO_REUSEADDR, IPv6 sockets IPV6_V6ONLY.
 *
 * unix: paths: a socket file left behind by a dead server (nothing accepts
 * on it: connect() is refused) is replaced; a live one gives -EADDRINUSE;
 * anything that is not a socket gives -EEXIST and is never removed.  The
 * listener removes the file it created when it is closed by the process
 * that opened it (a forked worker closing its copy leaves it alone).
 *
 * Returns 0 and *ret, or a parse error above, or the error of socket(),
 * bind() or listen() (-EADDRINUSE, -EACCES, -EADDRNOTAVAIL ...), with err
 * naming the address.  *ret is untouched on failure. */
int aiot_listen_open(const char *spec, const struct aiot_listen_opts *opts, aiot_listener **ret, char *err,
                     size_t errlen);

/* Binds and listens on a new socket at l's bound address (its actual port,
 * also when it was opened with port 0), with SO_REUSEPORT, its name, and
 * opts' backlog (opts may be NULL).  This is how each worker gets its own
 * accept queue in --reuseport mode: the supervisor opens the address with
 * reuseport and bind_only (reserving the port and reporting errors before
 * any fork, without an accept queue of its own that nobody would serve),
 * and every worker calls this on it before it drops privileges.
 * Returns 0, -EOPNOTSUPP for unix sockets, or an error as aiot_listen_open(). */
int aiot_listen_reopen(const aiot_listener *l, const struct aiot_listen_opts *opts, aiot_listener **ret,
                       char *err, size_t errlen);

/* Takes the sockets passed by socket activation (systemd's LISTEN_PID,
 * LISTEN_FDS, LISTEN_FDNAMES), as sd_listen_fds_with_names() does but
 * without libsystemd, so it works in builds --without-systemd:
 * nothing is passed (0) unless LISTEN_PID is this process; the sockets are
 * fds 3 .. 3+LISTEN_FDS-1 and are made CLOEXEC; LISTEN_FDNAMES holds one
 * ':'-separated name per fd (names may be empty); without it every name is
 * "unknown".  Beyond libsystemd, each fd must be a listening stream socket,
 * and each listener's address is filled from getsockname().  With unset_env
 * the three variables are removed whatever the outcome, so that children do
 * not see them.
 *
 * Returns the number of listeners (0: none passed, *ret and *n untouched)
 * with *ret an array of *n listeners to free with aiot_listeners_free(); or
 * -EINVAL (malformed variables, name count mismatch, a socket that is not
 * listening or not a stream socket), -ERANGE (LISTEN_PID not a valid pid),
 * -EBADF (an fd is not open), -ENOTSOCK, -ENOMEM, with err saying which. */
int aiot_listen_from_env(aiot_listener ***ret, size_t *n, int unset_env, char *err, size_t errlen);

/* Closes the socket, removes the unix socket file as described above, and
 * frees the listener.  NULL-safe. */
void aiot_listener_close(aiot_listener *l);

/* Closes n listeners (NULL entries are skipped) and frees the array.  NULL-safe. */
void aiot_listeners_free(aiot_listener **ls, size_t n);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
