/* SPDX-License-Identifier: MIT */
/* listen: address parsing, binding real sockets, unix socket files, socket activation. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "aiotools/listen.h"
#include "testutil.h"

static char tmpdir[64];

static void make_tmpdir(void)
{
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/aiot-listen-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
        char cmd[128];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        ck_assert_int_eq(system(cmd), 0);
}

/* Connects a blocking client to a listener's printable address. */
static int connect_to(const char *address)
{
        struct aiot_bind_addr a;
        int fd;

        ck_assert_int_eq(aiot_listen_parse(address, AIOT_LISTEN_NUMERIC, &a, NULL, 0), 0);
        fd = socket(a.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_msg(connect(fd, &a.u.sa, a.len) == 0, "connect %s: %s", address, strerror(errno));
        return fd;
}

/* Waits (bounded, to catch hangs) for a connection and accepts it. */
static int accept_one(int lfd)
{
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        int fd;

        ck_assert_int_eq(poll(&p, 1, 10000), 1);
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        return fd;
}

/* A client and the accepted end can talk: proves the listener is real. */
static void roundtrip(const aiot_listener *l)
{
        int c = connect_to(l->address), s = accept_one(l->fd);
        char buf[4] = "";

        ck_assert_int_eq(write(c, "ping", 4), 4);
        ck_assert_int_eq(read(s, buf, 4), 4);
        ck_assert_int_eq(memcmp(buf, "ping", 4), 0);
        close(c);
        close(s);
}

static const char *const good_specs[][2] = {
        {"127.0.0.1:8080", "127.0.0.1:8080"},
        {"0.0.0.0:1", "0.0.0.0:1"},
        {"*:80", "0.0.0.0:80"},
        {":443", "0.0.0.0:443"},
        {"127.0.0.1:0", "127.0.0.1:0"},
        {"127.0.0.1:65535", "127.0.0.1:65535"},
        {"127.0.0.1:00080", "127.0.0.1:80"},
        {"[::1]:8080", "[::1]:8080"},
        {"[::]:80", "[::]:80"},
        {"[2001:db8:0:0::1]:1", "[2001:db8::1]:1"},
        {"[::ffff:10.0.0.1]:9", "[::ffff:10.0.0.1]:9"},
        {"unix:/run/aiot.sock", "unix:/run/aiot.sock"},
        {"unix:rel/x.sock", "unix:rel/x.sock"},
        {"unix:@abstract", "unix:@abstract"},
        {"unix:with:colon", "unix:with:colon"},
};

START_TEST(test_parse_good)
{
        for (size_t i = 0; i < sizeof(good_specs) / sizeof(good_specs[0]); i++) {
                struct aiot_bind_addr a, b;
                char buf[256], err[256] = "";
                int r = aiot_listen_parse(good_specs[i][0], AIOT_LISTEN_NUMERIC, &a, err, sizeof(err));

                ck_assert_msg(r == 0, "%s: %d %s", good_specs[i][0], r, err);
                ck_assert_int_eq(aiot_listen_format(&a, buf, sizeof(buf)), (int)strlen(good_specs[i][1]));
                ck_assert_str_eq(buf, good_specs[i][1]);
                /* The printed form parses back to the same address. */
                ck_assert_int_eq(aiot_listen_parse(buf, AIOT_LISTEN_NUMERIC, &b, NULL, 0), 0);
                ck_assert_int_eq(a.len, b.len);
                ck_assert_int_eq(memcmp(&a.u, &b.u, a.len), 0);
        }
}
END_TEST

static const struct {
        const char *spec;
        int error;
        const char *message; /* must appear in err */
} bad_specs[] = {
        {"foo", -EINVAL, "bad address 'foo': missing port"},
        {"", -EINVAL, "bad address '': missing port"},
        {"127.0.0.1", -EINVAL, "missing port"},
        {"127.0.0.1:", -EINVAL, "missing port"},
        {"127.0.0.1:abc", -EINVAL, "bad port 'abc' in '127.0.0.1:abc'"},
        {"127.0.0.1:-1", -EINVAL, "bad port '-1'"},
        {"127.0.0.1:+80", -EINVAL, "bad port '+80'"},
        {"127.0.0.1: 80", -EINVAL, "bad port ' 80'"},
        {"127.0.0.1:http", -EINVAL, "bad port 'http'"},
        {"127.0.0.1:70000", -ERANGE, "port 70000 out of range (0-65535) in '127.0.0.1:70000'"},
        {"127.0.0.1:65536", -ERANGE, "port 65536 out of range"},
        {"127.0.0.1:99999999999999999999999", -ERANGE, "out of range"},
        {"1.2.3:80", -EINVAL, "'1.2.3' is not an IPv4 address or host name"},
        {"256.1.1.1:80", -EINVAL, "'256.1.1.1' is not an IPv4 address"},
        {"a b:80", -EINVAL, "'a b' is not an IPv4 address or host name"},
        {"::1:80", -EINVAL, "IPv6 addresses go in brackets"},
        {"[::1:80", -EINVAL, "missing ']'"},
        {"[::1]", -EINVAL, "missing port after ']'"},
        {"[::1]80", -EINVAL, "missing port after ']'"},
        {"[::1]:", -EINVAL, "missing port"},
        {"[127.0.0.1]:80", -EINVAL, "'127.0.0.1' is not an IPv6 address"},
        {"[::1]:65536", -ERANGE, "port 65536 out of range (0-65535) in '[::1]:65536'"},
        {"[fe80::1%lo]:80", -EINVAL, "is not an IPv6 address"},
        {"localhost:80", -EINVAL, "'localhost' is not a numeric address"},
        {"unix:", -EINVAL, "bad address 'unix:': empty unix socket path"},
        {"unix:@", -EINVAL, "empty unix socket path"},
};

START_TEST(test_parse_bad)
{
        for (size_t i = 0; i < sizeof(bad_specs) / sizeof(bad_specs[0]); i++) {
                struct aiot_bind_addr a, untouched;
                char err[256] = "";
                int r;

                memset(&a, 0x5a, sizeof(a));
                untouched = a;
                r = aiot_listen_parse(bad_specs[i].spec, AIOT_LISTEN_NUMERIC, &a, err, sizeof(err));
                ck_assert_msg(r == bad_specs[i].error, "'%s': %d, expected %d", bad_specs[i].spec, r,
                              bad_specs[i].error);
                ck_assert_msg(strstr(err, bad_specs[i].message), "'%s': message '%s' lacks '%s'",
                              bad_specs[i].spec, err, bad_specs[i].message);
                ck_assert_int_eq(memcmp(&a, &untouched, sizeof(a)), 0);
        }
}
END_TEST

START_TEST(test_parse_unix_length)
{
        char spec[200], err[256] = "";
        struct aiot_bind_addr a;
        size_t max = sizeof(a.u.un.sun_path) - 1;

        /* The longest path that fits, and one byte more. */
        strcpy(spec, "unix:/");
        memset(spec + 6, 'x', max - 1);
        spec[5 + max] = '\0';
        ck_assert_int_eq(aiot_listen_parse(spec, 0, &a, err, sizeof(err)), 0);
        strcat(spec, "y");
        ck_assert_int_eq(aiot_listen_parse(spec, 0, &a, err, sizeof(err)), -ENAMETOOLONG);
        ck_assert_ptr_nonnull(strstr(err, "unix socket path too long"));
        ck_assert_ptr_nonnull(strstr(err, "/xxxx"));
        /* An abstract name has no terminating NUL, so one byte more fits. */
        spec[5] = '@';
        ck_assert_int_eq(aiot_listen_parse(spec, 0, &a, err, sizeof(err)), 0);
        strcat(spec, "z");
        ck_assert_int_eq(aiot_listen_parse(spec, 0, &a, err, sizeof(err)), -ENAMETOOLONG);
}
END_TEST

START_TEST(test_parse_resolve)
{
        struct aiot_bind_addr a;
        char err[256] = "", buf[64];

        /* localhost comes from /etc/hosts: no network needed. */
        ck_assert_msg(aiot_listen_parse("localhost:8080", 0, &a, err, sizeof(err)) == 0, "%s", err);
        ck_assert(a.family == AF_INET || a.family == AF_INET6);
        aiot_listen_format(&a, buf, sizeof(buf));
        ck_assert_msg(strcmp(buf, "127.0.0.1:8080") == 0 || strcmp(buf, "[::1]:8080") == 0, "%s", buf);
        /* RFC 6761: .invalid never resolves. */
        ck_assert_int_eq(aiot_listen_parse("nonexistent.invalid:80", 0, &a, err, sizeof(err)),
                         -EADDRNOTAVAIL);
        ck_assert_ptr_nonnull(
                strstr(err, "cannot resolve 'nonexistent.invalid' in 'nonexistent.invalid:80'"));
}
END_TEST

START_TEST(test_args)
{
        struct aiot_bind_addr a = {.family = AF_PACKET};
        aiot_listener *l = NULL, **ls = NULL;
        char buf[8];
        size_t n = 0;

        ck_assert_int_eq(aiot_listen_parse(NULL, 0, &a, NULL, 0), -EINVAL);
        ck_assert_int_eq(aiot_listen_parse("127.0.0.1:1", 0, NULL, NULL, 0), -EINVAL);
        ck_assert_int_eq(aiot_listen_format(NULL, buf, sizeof(buf)), -EINVAL);
        ck_assert_int_eq(aiot_listen_format(&a, buf, sizeof(buf)), -EINVAL);
        ck_assert_int_eq(aiot_listen_open(NULL, NULL, &l, NULL, 0), -EINVAL);
        ck_assert_int_eq(aiot_listen_open("127.0.0.1:0", NULL, NULL, NULL, 0), -EINVAL);
        ck_assert_int_eq(aiot_listen_reopen(NULL, NULL, &l, NULL, 0), -EINVAL);
        ck_assert_int_eq(aiot_listen_from_env(NULL, &n, 0, NULL, 0), -EINVAL);
        ck_assert_int_eq(aiot_listen_from_env(&ls, NULL, 0, NULL, 0), -EINVAL);
        ck_assert_ptr_null(l);
        aiot_listener_close(NULL);
        aiot_listeners_free(NULL, 3);
}
END_TEST

START_TEST(test_open_port0)
{
        int fds = testutil_count_fds();
        struct aiot_listen_opts o = {.size = sizeof(o), .name = "web", .backlog = 7};
        aiot_listener *l = NULL, *m = NULL;
        char err[256] = "";
        int acc = 0;
        socklen_t len = sizeof(acc);

        ck_assert_msg(aiot_listen_open("127.0.0.1:0", NULL, &l, err, sizeof(err)) == 0, "%s", err);
        ck_assert_str_eq(l->name, "127.0.0.1:0");
        ck_assert_int_eq(strncmp(l->address, "127.0.0.1:", 10), 0);
        ck_assert_int_gt(atoi(l->address + 10), 0);
        ck_assert(fcntl(l->fd, F_GETFD) & FD_CLOEXEC);
        ck_assert(fcntl(l->fd, F_GETFL) & O_NONBLOCK);
        ck_assert_int_eq(getsockopt(l->fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len), 0);
        ck_assert_int_eq(acc, 1);
        roundtrip(l);

        ck_assert_msg(aiot_listen_open("*:0", &o, &m, err, sizeof(err)) == 0, "%s", err);
        ck_assert_str_eq(m->name, "web");
        ck_assert_int_eq(strncmp(m->address, "0.0.0.0:", 8), 0);
        aiot_listener_close(l);
        aiot_listener_close(m);
        ck_assert_int_eq(testutil_count_fds(), fds);
}
END_TEST

START_TEST(test_open_in_use)
{
        aiot_listener *l = NULL, *m = NULL;
        char err[256] = "", expect[128];

        ck_assert_int_eq(aiot_listen_open("127.0.0.1:0", NULL, &l, NULL, 0), 0);
        ck_assert_int_eq(aiot_listen_open(l->address, NULL, &m, err, sizeof(err)), -EADDRINUSE);
        ck_assert_ptr_null(m);
        snprintf(expect, sizeof(expect), "bind %s: Address already in use", l->address);
        ck_assert_str_eq(err, expect);
        /* A listener without SO_REUSEPORT keeps the port to itself. */
        ck_assert_int_eq(aiot_listen_reopen(l, NULL, &m, err, sizeof(err)), -EADDRINUSE);
        aiot_listener_close(l);
}
END_TEST

/* The lowest port an unprivileged user may bind, or -1 if unknown. */
static int unprivileged_port_start(void)
{
        FILE *f = fopen("/proc/sys/net/ipv4/ip_unprivileged_port_start", "re");
        int v = -1;

        if (f) {
                if (fscanf(f, "%d", &v) != 1)
                        v = -1;
                fclose(f);
        }
        return v;
}

START_TEST(test_open_privileged_port)
{
        int start = unprivileged_port_start();
        pid_t pid;
        int status;

        if (start <= 1) {
                fprintf(stderr, "check_listen: every port is unprivileged here; EACCES test skipped\n");
                return;
        }
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                aiot_listener *l = NULL;
                char spec[64], err[256] = "", expect[128];

                /* As root, become nobody (and lose every capability). */
                if (geteuid() == 0 &&
                    (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0))
                        _exit(2);
                snprintf(spec, sizeof(spec), "127.0.0.1:%d", start - 1);
                snprintf(expect, sizeof(expect), "bind %s: Permission denied", spec);
                if (aiot_listen_open(spec, NULL, &l, err, sizeof(err)) != -EACCES ||
                    strcmp(err, expect) != 0) {
                        fprintf(stderr, "got '%s'\n", err);
                        _exit(3);
                }
                _exit(0);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
}
END_TEST

START_TEST(test_open_ipv6)
{
        int probe = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0), v6only = 0;
        socklen_t len = sizeof(v6only);
        aiot_listener *l = NULL;
        char err[256] = "";

        if (probe < 0) {
                fprintf(stderr, "check_listen: no IPv6 in this kernel; test skipped\n");
                return;
        }
        close(probe);
        ck_assert_msg(aiot_listen_open("[::1]:0", NULL, &l, err, sizeof(err)) == 0, "%s", err);
        ck_assert_int_eq(strncmp(l->address, "[::1]:", 6), 0);
        ck_assert_int_gt(atoi(l->address + 6), 0);
        ck_assert_int_eq(getsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &len), 0);
        ck_assert_int_eq(v6only, 1);
        roundtrip(l);
        aiot_listener_close(l);
}
END_TEST

START_TEST(test_reuseport)
{
        struct aiot_listen_opts o = {.size = sizeof(o), .reuseport = 1};
        aiot_listener *a = NULL, *b = NULL, *c = NULL;
        char spec[64], err[256] = "";

        ck_assert_msg(aiot_listen_open("127.0.0.1:0", &o, &a, err, sizeof(err)) == 0, "%s", err);
        /* Same port, by spec and by reopen. */
        ck_assert_msg(aiot_listen_open(a->address, &o, &b, err, sizeof(err)) == 0, "%s", err);
        ck_assert_str_eq(a->address, b->address);
        aiot_listener_close(b);
        b = NULL;
        ck_assert_msg(aiot_listen_reopen(a, NULL, &b, err, sizeof(err)) == 0, "%s", err);
        ck_assert_str_eq(a->address, b->address);
        ck_assert_str_eq(a->name, b->name);
        /* Without the option the port is taken. */
        snprintf(spec, sizeof(spec), "%s", a->address);
        ck_assert_int_eq(aiot_listen_open(spec, NULL, &c, err, sizeof(err)), -EADDRINUSE);
        ck_assert_ptr_nonnull(strstr(err, spec));
        /* With a alone gone, b alone gets the connections. */
        aiot_listener_close(a);
        roundtrip(b);
        aiot_listener_close(b);
}
END_TEST

/* The --reuseport layout: the supervisor reserves the port without an accept
 * queue, each worker gets its own; every connection lands in a worker's. */
START_TEST(test_reuseport_reservation)
{
        struct aiot_listen_opts o = {.size = sizeof(o), .reuseport = 1, .bind_only = 1};
        aiot_listener *res = NULL, *w[2] = {NULL, NULL}, *other = NULL;
        int acc = 1, clients[40], got[2] = {0, 0};
        socklen_t len = sizeof(acc);
        const int n = 40;

        ck_assert_int_eq(aiot_listen_open("127.0.0.1:0", &o, &res, NULL, 0), 0);
        ck_assert_int_gt(atoi(strchr(res->address, ':') + 1), 0);
        ck_assert_int_eq(getsockopt(res->fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len), 0);
        ck_assert_int_eq(acc, 0);
        ck_assert_int_eq(aiot_listen_open(res->address, NULL, &other, NULL, 0), -EADDRINUSE);
        for (int i = 0; i < 2; i++)
                ck_assert_int_eq(aiot_listen_reopen(res, NULL, &w[i], NULL, 0), 0);
        for (int i = 0; i < n; i++)
                clients[i] = connect_to(res->address);
        for (int total = 0; total < n;) {
                struct pollfd p[2] = {{.fd = w[0]->fd, .events = POLLIN},
                                      {.fd = w[1]->fd, .events = POLLIN}};

                ck_assert_int_gt(poll(p, 2, 10000), 0);
                for (int i = 0; i < 2; i++) {
                        int fd = accept4(w[i]->fd, NULL, NULL, SOCK_CLOEXEC);

                        if (fd >= 0) {
                                close(fd);
                                got[i]++;
                                total++;
                        }
                }
        }
        ck_assert_int_eq(got[0] + got[1], n);
        /* 40 connections from distinct source ports all hashed to one socket: 2^-39. */
        ck_assert_int_gt(got[0], 0);
        ck_assert_int_gt(got[1], 0);
        for (int i = 0; i < n; i++)
                close(clients[i]);
        aiot_listener_close(w[0]);
        aiot_listener_close(w[1]);
        aiot_listener_close(res);
}
END_TEST

static void path_in_tmpdir(char *buf, size_t len, const char *name)
{
        snprintf(buf, len, "unix:%s/%s", tmpdir, name);
}

START_TEST(test_unix_basic)
{
        struct aiot_listen_opts o = {.size = sizeof(o), .mode = 0600};
        aiot_listener *l = NULL, *m = NULL;
        char spec[128], err[256] = "";
        struct stat st;

        make_tmpdir();
        path_in_tmpdir(spec, sizeof(spec), "a.sock");
        ck_assert_msg(aiot_listen_open(spec, &o, &l, err, sizeof(err)) == 0, "%s", err);
        ck_assert_str_eq(l->address, spec);
        ck_assert_int_eq(stat(spec + 5, &st), 0);
        ck_assert(S_ISSOCK(st.st_mode));
        ck_assert_int_eq(st.st_mode & 07777, 0600);
        roundtrip(l);
        /* A unix socket cannot be shared by SO_REUSEPORT. */
        ck_assert_int_eq(aiot_listen_reopen(l, NULL, &m, err, sizeof(err)), -EOPNOTSUPP);
        o.reuseport = 1;
        ck_assert_int_eq(aiot_listen_open(spec, &o, &m, err, sizeof(err)), -EINVAL);
        ck_assert_ptr_nonnull(strstr(err, "reuseport does not apply to unix sockets"));
        aiot_listener_close(l);
        ck_assert_int_eq(access(spec + 5, F_OK), -1);
        remove_tmpdir();
}
END_TEST

START_TEST(test_unix_stale_and_live)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        aiot_listener *l = NULL, *m = NULL;
        char spec[128], err[256] = "", expect[256];
        int fd;

        make_tmpdir();
        path_in_tmpdir(spec, sizeof(spec), "b.sock");
        /* A socket file whose server is gone. */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_uint_lt(strlen(spec + 5), sizeof(sa.sun_path));
        memcpy(sa.sun_path, spec + 5, strlen(spec + 5) + 1);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        close(fd);
        ck_assert_int_eq(access(spec + 5, F_OK), 0);
        ck_assert_msg(aiot_listen_open(spec, NULL, &l, err, sizeof(err)) == 0, "%s", err);
        roundtrip(l);
        /* A live one is left alone. */
        ck_assert_int_eq(aiot_listen_open(spec, NULL, &m, err, sizeof(err)), -EADDRINUSE);
        snprintf(expect, sizeof(expect), "bind %s: Address already in use", spec);
        ck_assert_str_eq(err, expect);
        /* The probe that found it live was a connection, closed at once. */
        fd = accept_one(l->fd);
        ck_assert_int_eq(read(fd, err, sizeof(err)), 0);
        close(fd);
        roundtrip(l);
        aiot_listener_close(l);
        remove_tmpdir();
}
END_TEST

START_TEST(test_unix_regular_file)
{
        aiot_listener *l = NULL;
        char spec[128], err[256] = "", buf[8] = "";
        int fd;

        make_tmpdir();
        path_in_tmpdir(spec, sizeof(spec), "precious");
        fd = open(spec + 5, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        ck_assert_int_eq(write(fd, "data", 4), 4);
        close(fd);
        ck_assert_int_eq(aiot_listen_open(spec, NULL, &l, err, sizeof(err)), -EEXIST);
        ck_assert_ptr_nonnull(strstr(err, spec));
        ck_assert_ptr_nonnull(strstr(err, "not a socket"));
        fd = open(spec + 5, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(read(fd, buf, sizeof(buf)), 4);
        ck_assert_str_eq(buf, "data");
        close(fd);
        remove_tmpdir();
}
END_TEST

START_TEST(test_unix_relative_and_fork)
{
        aiot_listener *l = NULL;
        char err[256] = "", path[128];
        pid_t pid;
        int status;

        make_tmpdir();
        ck_assert_int_eq(chdir(tmpdir), 0);
        ck_assert_msg(aiot_listen_open("unix:rel.sock", NULL, &l, err, sizeof(err)) == 0, "%s", err);
        ck_assert_str_eq(l->address, "unix:rel.sock");
        ck_assert_int_eq(chdir("/"), 0);
        snprintf(path, sizeof(path), "%s/rel.sock", tmpdir);
        /* A forked worker closing its copy leaves the file to the supervisor. */
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                aiot_listener_close(l);
                _exit(0);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_int_eq(access(path, F_OK), 0);
        /* The creator removes it, even after a chdir. */
        aiot_listener_close(l);
        ck_assert_int_eq(access(path, F_OK), -1);
        remove_tmpdir();
}
END_TEST

START_TEST(test_unix_replaced_file_kept)
{
        aiot_listener *l = NULL;
        char spec[128];
        int fd;

        make_tmpdir();
        path_in_tmpdir(spec, sizeof(spec), "c.sock");
        ck_assert_int_eq(aiot_listen_open(spec, NULL, &l, NULL, 0), 0);
        /* Someone else's socket now lives at the path: close must not remove it. */
        ck_assert_int_eq(unlink(spec + 5), 0);
        fd = open(spec + 5, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        close(fd);
        aiot_listener_close(l);
        ck_assert_int_eq(access(spec + 5, F_OK), 0);
        remove_tmpdir();
}
END_TEST

START_TEST(test_unix_abstract)
{
        aiot_listener *l = NULL, *m = NULL;
        char spec[64], err[256] = "";

        snprintf(spec, sizeof(spec), "unix:@aiot-check-listen-%d", (int)getpid());
        ck_assert_msg(aiot_listen_open(spec, NULL, &l, err, sizeof(err)) == 0, "%s", err);
        ck_assert_str_eq(l->address, spec);
        roundtrip(l);
        ck_assert_int_eq(aiot_listen_open(spec, NULL, &m, err, sizeof(err)), -EADDRINUSE);
        aiot_listener_close(l);
}
END_TEST

/* ---- socket activation: each case runs in a forked child that owns fds 3..
 * Check's own channel is fd 3 in a test, so these children report through
 * CHILD_CHECK and must not call ck_assert. */

static int report_fd = -1;

#define CHILD_CHECK(cond, ...)                                                                              \
        do {                                                                                                \
                if (!(cond)) {                                                                              \
                        char _m[512];                                                                       \
                        int _n = snprintf(_m, sizeof(_m), "line %d: %s: ", __LINE__, #cond);                \
                        snprintf(_m + _n, sizeof(_m) - (size_t)_n, __VA_ARGS__);                            \
                        /* One write: the parent reads once. */                                             \
                        if (write(report_fd, _m, strlen(_m)) < 0)                                           \
                                _exit(2);                                                                   \
                        _exit(1);                                                                           \
                }                                                                                           \
        } while (0)

/* Runs fn in a child whose stdio is kept and whose fds >= 3 are free. */
static void run_in_child(void (*fn)(void))
{
        int p[2], status;
        char msg[1024] = "";
        pid_t pid;
        ssize_t n;

        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                /* Keep the report pipe far above the activation range. */
                report_fd = fcntl(p[1], F_DUPFD_CLOEXEC, 100);
                for (int fd = 3; fd < 100; fd++)
                        close(fd);
                fn();
                _exit(0);
        }
        close(p[1]);
        n = read(p[0], msg, sizeof(msg) - 1);
        close(p[0]);
        msg[n > 0 ? n : 0] = '\0';
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: %s (status %d)", msg, status);
}

/* Puts listening sockets on fds 3 and 4; returns their addresses. */
static void activation_fds(char addr[2][128])
{
        aiot_listener *l[2] = {NULL, NULL};
        char spec[128];
        int tmp[2];

        snprintf(spec, sizeof(spec), "unix:/tmp/aiot-check-listen-%d.sock", (int)getpid());
        CHILD_CHECK(aiot_listen_open("127.0.0.1:0", NULL, &l[0], NULL, 0) == 0, "open tcp");
        CHILD_CHECK(aiot_listen_open(spec, NULL, &l[1], NULL, 0) == 0, "open unix");
        /* The listeners may sit on 3 and 4 themselves: move them up first. */
        for (int i = 0; i < 2; i++) {
                tmp[i] = fcntl(l[i]->fd, F_DUPFD, 50);
                CHILD_CHECK(tmp[i] >= 50, "F_DUPFD");
                snprintf(addr[i], 128, "%s", l[i]->address);
        }
        /* The unix path's file goes; the sockets stay open. */
        aiot_listener_close(l[0]);
        aiot_listener_close(l[1]);
        for (int i = 0; i < 2; i++) {
                /* As a service manager passes them: inheritable, and blocking. */
                CHILD_CHECK(dup2(tmp[i], 3 + i) == 3 + i, "dup2");
                CHILD_CHECK(fcntl(3 + i, F_SETFL, 0) == 0, "F_SETFL");
                close(tmp[i]);
        }
}

/* Frees listeners taken from fds 3 and 4 and puts the sockets back there,
 * from copies kept at 60 and 61, for the next case. */
static void put_back(aiot_listener **ls, size_t n)
{
        if (fcntl(60, F_GETFD) < 0) {
                CHILD_CHECK(fcntl(3, F_DUPFD_CLOEXEC, 60) == 60, "F_DUPFD");
                CHILD_CHECK(fcntl(4, F_DUPFD_CLOEXEC, 61) == 61, "F_DUPFD");
        }
        aiot_listeners_free(ls, n);
        CHILD_CHECK(dup2(60, 3) == 3 && dup2(61, 4) == 4, "dup2");
}

static void set_env(const char *pid, const char *fds, const char *names)
{
        char buf[32];

        if (pid && strcmp(pid, "self") == 0) {
                snprintf(buf, sizeof(buf), "%d", (int)getpid());
                pid = buf;
        }
        pid ? setenv("LISTEN_PID", pid, 1) : unsetenv("LISTEN_PID");
        fds ? setenv("LISTEN_FDS", fds, 1) : unsetenv("LISTEN_FDS");
        names ? setenv("LISTEN_FDNAMES", names, 1) : unsetenv("LISTEN_FDNAMES");
}

static void child_activation_named(void)
{
        aiot_listener **ls = NULL;
        char addr[2][128], err[256] = "";
        size_t n = 0;
        int r;

        activation_fds(addr);
        set_env("self", "2", "http:ctl");
        r = aiot_listen_from_env(&ls, &n, 1, err, sizeof(err));
        CHILD_CHECK(r == 2 && n == 2, "r=%d n=%zu %s", r, n, err);
        CHILD_CHECK(!getenv("LISTEN_PID") && !getenv("LISTEN_FDS") && !getenv("LISTEN_FDNAMES"), "env left");
        CHILD_CHECK(ls[0]->fd == 3 && ls[1]->fd == 4, "fds %d %d", ls[0]->fd, ls[1]->fd);
        CHILD_CHECK(strcmp(ls[0]->name, "http") == 0 && strcmp(ls[1]->name, "ctl") == 0, "names %s %s",
                    ls[0]->name, ls[1]->name);
        /* The unix socket keeps its name though its file is gone. */
        CHILD_CHECK(strcmp(ls[0]->address, addr[0]) == 0, "%s vs %s", ls[0]->address, addr[0]);
        CHILD_CHECK(strcmp(ls[1]->address, addr[1]) == 0, "%s vs %s", ls[1]->address, addr[1]);
        for (int fd = 3; fd <= 4; fd++) {
                CHILD_CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC, "fd %d not CLOEXEC", fd);
                CHILD_CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK, "fd %d blocking", fd);
        }
        /* The passed socket serves.  (No ck_assert here: Check talks on fd 3.) */
        {
                struct sockaddr_in sa;
                socklen_t len = sizeof(sa);
                struct pollfd p = {.fd = 3, .events = POLLIN};
                int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), s;

                CHILD_CHECK(getsockname(3, (struct sockaddr *)&sa, &len) == 0, "getsockname");
                CHILD_CHECK(connect(c, (struct sockaddr *)&sa, len) == 0, "connect");
                CHILD_CHECK(poll(&p, 1, 10000) == 1, "poll");
                s = accept4(3, NULL, NULL, SOCK_CLOEXEC);
                CHILD_CHECK(s >= 0, "accept");
                close(s);
                close(c);
        }
        aiot_listeners_free(ls, n);
        CHILD_CHECK(fcntl(3, F_GETFD) < 0 && fcntl(4, F_GETFD) < 0, "fds not closed");
}

START_TEST(test_activation_named)
{
        run_in_child(child_activation_named);
}
END_TEST

static void child_activation_cases(void)
{
        aiot_listener **ls = (aiot_listener **)0x1;
        char addr[2][128], err[256] = "", ppid[32];
        size_t n = 77;
        int r;

        activation_fds(addr);
        put_back(NULL, 0);
        /* Passed to our parent, not to us: nothing, and the variables stay. */
        snprintf(ppid, sizeof(ppid), "%d", (int)getppid());
        set_env(ppid, "2", "http:ctl");
        CHILD_CHECK(aiot_listen_from_env(&ls, &n, 0, err, sizeof(err)) == 0, "wrong pid");
        CHILD_CHECK(ls == (aiot_listener **)0x1 && n == 77, "out-params touched");
        CHILD_CHECK(getenv("LISTEN_FDS"), "env removed without unset_env");
        set_env(NULL, NULL, NULL);
        CHILD_CHECK(aiot_listen_from_env(&ls, &n, 1, err, sizeof(err)) == 0, "no env");

        static const struct {
                const char *pid, *fds, *names;
                int r;
                const char *msg;
        } bad[] = {
                {"abc", "2", NULL, -EINVAL, "bad LISTEN_PID 'abc'"},
                {"0", "2", NULL, -ERANGE, "LISTEN_PID '0' is not a valid pid"},
                {"self", "x", NULL, -EINVAL, "bad LISTEN_FDS 'x'"},
                {"self", "0", NULL, -EINVAL, "bad LISTEN_FDS '0'"},
                {"self", "-1", NULL, -EINVAL, "bad LISTEN_FDS '-1'"},
                {"self", "2", "one", -EINVAL, "1 names in LISTEN_FDNAMES for 2 fds"},
                {"self", "2", "a:b:c", -EINVAL, "3 names"},
                {"self", "3", NULL, -EBADF, "fd 5: Bad file descriptor"},
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                set_env(bad[i].pid, bad[i].fds, bad[i].names);
                err[0] = '\0';
                r = aiot_listen_from_env(&ls, &n, 1, err, sizeof(err));
                CHILD_CHECK(r == bad[i].r, "case %zu: %d", i, r);
                CHILD_CHECK(strstr(err, bad[i].msg), "case %zu: '%s'", i, err);
                /* Removed whatever the outcome. */
                CHILD_CHECK(!getenv("LISTEN_PID") && !getenv("LISTEN_FDS"), "case %zu: env left", i);
        }

        /* No names: "unknown"; empty names stay empty, as libsystemd has them. */
        set_env("self", "2", NULL);
        r = aiot_listen_from_env(&ls, &n, 1, err, sizeof(err));
        CHILD_CHECK(r == 2 && strcmp(ls[0]->name, "unknown") == 0 && strcmp(ls[1]->name, "unknown") == 0,
                    "%d", r);
        put_back(ls, n);
        set_env("self", "2", ":x");
        r = aiot_listen_from_env(&ls, &n, 1, err, sizeof(err));
        CHILD_CHECK(r == 2 && strcmp(ls[0]->name, "") == 0 && strcmp(ls[1]->name, "x") == 0, "%d", r);
        put_back(ls, n);

        /* Not listening, not a socket. */
        {
                int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

                CHILD_CHECK(dup2(s, 5) == 5, "dup2");
                set_env("self", "3", "a:b:idle");
                r = aiot_listen_from_env(&ls, &n, 1, err, sizeof(err));
                CHILD_CHECK(r == -EINVAL && strstr(err, "fd 5 ('idle') is not a listening stream socket"),
                            "'%s'", err);
                CHILD_CHECK(dup2(STDIN_FILENO, 5) == 5, "dup2");
                set_env("self", "3", "a:b:file");
                r = aiot_listen_from_env(&ls, &n, 1, err, sizeof(err));
                CHILD_CHECK(r == -ENOTSOCK && strstr(err, "fd 5 ('file')"), "%d '%s'", r, err);
                close(s);
        }
}

START_TEST(test_activation_cases)
{
        run_in_child(child_activation_cases);
}
END_TEST

#ifdef HAVE_SYSTEMD
/* The same variables give the same answer as libsystemd's. */
static void child_activation_vs_libsystemd(void)
{
        static const char *const cases[][3] = {
                {"self", "2", "http:ctl"}, {"self", "2", NULL},  {"self", "2", ":"},  {"self", "1", ""},
                {"self", "2", "a"},        {"self", "2", "a::"}, {"self", "0", NULL}, {"self", "-3", NULL},
                {"self", "x", NULL},       {"self", NULL, "a"},  {"1", "2", NULL},    {"abc", "2", NULL},
                {"0", "2", NULL},          {NULL, "2", NULL},    {"self", "3", NULL},
        };
        char addr[2][128];

        activation_fds(addr);
        put_back(NULL, 0);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                aiot_listener **ls = NULL;
                char **names = NULL;
                size_t n = 0;
                int ours, theirs;

                set_env(cases[i][0], cases[i][1], cases[i][2]);
                theirs = sd_listen_fds_with_names(0, &names);
                ours = aiot_listen_from_env(&ls, &n, 0, NULL, 0);
                CHILD_CHECK(ours == theirs, "case %zu: ours %d, libsystemd %d", i, ours, theirs);
                for (int j = 0; j < ours; j++) {
                        CHILD_CHECK(strcmp(ls[j]->name, names[j]) == 0, "case %zu: name %d", i, j);
                        free(names[j]);
                }
                free(names);
                put_back(ls, ours > 0 ? (size_t)ours : 0);
        }
}

START_TEST(test_activation_vs_libsystemd)
{
        run_in_child(child_activation_vs_libsystemd);
}
END_TEST
#endif

/* The real thing: systemd-socket-activate passes a socket to the helper. */
START_TEST(test_activation_systemd_socket_activate)
{
        const char *tool = "/usr/bin/systemd-socket-activate";
        const char *bdir = getenv("top_builddir");
        aiot_listener *probe = NULL;
        char helper[512], listen_arg[64], line[256], buf[512] = "", expect[128];
        int errp[2], c, status;
        size_t got = 0;
        ssize_t n;
        pid_t pid;
        FILE *f;

        if (access(tool, X_OK) != 0) {
                fprintf(stderr, "check_listen: %s not installed; test skipped\n", tool);
                return;
        }
        snprintf(helper, sizeof(helper), "%s/tests/listen-activate-helper", bdir ? bdir : ".");
        ck_assert_msg(access(helper, X_OK) == 0, "%s missing", helper);
        /* A free port: ask the kernel for one and give it back. */
        ck_assert_int_eq(aiot_listen_open("127.0.0.1:0", NULL, &probe, NULL, 0), 0);
        snprintf(listen_arg, sizeof(listen_arg), "%s", probe->address);
        aiot_listener_close(probe);

        ck_assert_int_eq(pipe2(errp, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                dup2(errp[1], STDERR_FILENO);
                execl(tool, tool, "-l", listen_arg, "--fdname=http", helper, (char *)NULL);
                _exit(127);
        }
        close(errp[1]);
        /* It logs "Listening on ADDR as 3." once the socket listens: wait for that. */
        f = fdopen(errp[0], "r");
        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof(line), f) && !strstr(line, "Listening on")) {
        }
        ck_assert_msg(strstr(line, "Listening on"), "systemd-socket-activate said: %s", line);
        c = connect_to(listen_arg);
        while ((n = read(c, buf + got, sizeof(buf) - 1 - got)) > 0)
                got += (size_t)n;
        buf[got] = '\0';
        close(c);
        /* The helper's errors, if any, follow on the same pipe. */
        got = fread(line, 1, sizeof(line) - 1, f);
        line[got] = '\0';
        fclose(f);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d: %s", status, line);
        snprintf(expect, sizeof(expect), "1 http %s\n", listen_arg);
        ck_assert_str_eq(buf, expect);
}
END_TEST

static Suite *listen_suite(void)
{
        Suite *s = suite_create("listen");
        TCase *tc = tcase_create("parse");

        tcase_add_test(tc, test_parse_good);
        tcase_add_test(tc, test_parse_bad);
        tcase_add_test(tc, test_parse_unix_length);
        tcase_add_test(tc, test_parse_resolve);
        tcase_add_test(tc, test_args);
        suite_add_tcase(s, tc);

        tc = tcase_create("inet");
        tcase_add_test(tc, test_open_port0);
        tcase_add_test(tc, test_open_in_use);
        tcase_add_test(tc, test_open_privileged_port);
        tcase_add_test(tc, test_open_ipv6);
        tcase_add_test(tc, test_reuseport);
        tcase_add_test(tc, test_reuseport_reservation);
        suite_add_tcase(s, tc);

        tc = tcase_create("unix");
        tcase_add_test(tc, test_unix_basic);
        tcase_add_test(tc, test_unix_stale_and_live);
        tcase_add_test(tc, test_unix_regular_file);
        tcase_add_test(tc, test_unix_relative_and_fork);
        tcase_add_test(tc, test_unix_replaced_file_kept);
        tcase_add_test(tc, test_unix_abstract);
        suite_add_tcase(s, tc);

        tc = tcase_create("activation");
        tcase_add_test(tc, test_activation_named);
        tcase_add_test(tc, test_activation_cases);
#ifdef HAVE_SYSTEMD
        tcase_add_test(tc, test_activation_vs_libsystemd);
#endif
        tcase_add_test(tc, test_activation_systemd_socket_activate);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        return testutil_run(listen_suite());
}
