/* SPDX-License-Identifier: MIT */
/* io: task-blocking reads, writes, accept and connect on non-blocking fds, cached
 * fd watchers, cancellation and deadlines while parked, and waiting for children. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "aiotools/io.h"
#include "aiotools/scope.h"
#include "aiotools/task.h"
#include "testutil.h"

static void make_pair(int sv[2])
{
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
}

/* Small socket buffers force partial writes and EAGAIN on every side. */
static void shrink_buffers(int fd)
{
        int sz = 4096;

        ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
        ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)), 0);
}

static uint8_t pattern(size_t i, size_t seed)
{
        return (uint8_t)((i * 131 + seed * 7 + (i >> 8)) & 0xff);
}

/* ------------------------------------------------------------ echo */

#define ECHO_PAIRS 200
#define ECHO_BYTES (64 * 1024)

struct echo_pair {
        int client, server;
        size_t seed;
        size_t received;
        int writer_rc, reader_rc, server_rc;
};

static int echo_server(void *arg)
{
        struct echo_pair *p = arg;
        char buf[1500];

        for (;;) {
                ssize_t n = aiot_read(p->server, buf, sizeof(buf));

                if (n < 0)
                        return p->server_rc = (int)n;
                if (n == 0)
                        break;
                ssize_t w = aiot_write_all(p->server, buf, (size_t)n);
                if (w != n)
                        return p->server_rc = w < 0 ? (int)w : -EIO;
        }
        p->server_rc = aiot_close(p->server);
        return p->server_rc;
}

static int echo_writer(void *arg)
{
        struct echo_pair *p = arg;
        uint8_t *data = malloc(ECHO_BYTES);
        ssize_t w;

        ck_assert_ptr_nonnull(data);
        for (size_t i = 0; i < ECHO_BYTES; i++)
                data[i] = pattern(i, p->seed);
        w = aiot_write_all(p->client, data, ECHO_BYTES);
        free(data);
        p->writer_rc = w == ECHO_BYTES ? 0 : (int)w;
        shutdown(p->client, SHUT_WR);
        return p->writer_rc;
}

static int echo_reader(void *arg)
{
        struct echo_pair *p = arg;
        uint8_t buf[3000];

        for (;;) {
                ssize_t n = aiot_read(p->client, buf, sizeof(buf));

                if (n < 0)
                        return p->reader_rc = (int)n;
                if (n == 0)
                        break;
                for (ssize_t i = 0; i < n; i++)
                        if (buf[i] != pattern(p->received + (size_t)i, p->seed))
                                return p->reader_rc = -EBADMSG;
                p->received += (size_t)n;
        }
        return p->reader_rc = aiot_close(p->client);
}

static int echo_main(void *arg)
{
        struct echo_pair *pairs = arg;
        aiot_scope *s;

        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        for (size_t i = 0; i < ECHO_PAIRS; i++) {
                int sv[2];

                make_pair(sv);
                shrink_buffers(sv[0]);
                shrink_buffers(sv[1]);
                pairs[i] = (struct echo_pair){ .client = sv[0], .server = sv[1], .seed = i, .writer_rc = 1,
                                               .reader_rc = 1, .server_rc = 1 };
                ck_assert_int_eq(aiot_spawn(s, echo_server, &pairs[i], NULL), 0);
                ck_assert_int_eq(aiot_spawn(s, echo_reader, &pairs[i], NULL), 0);
                ck_assert_int_eq(aiot_spawn(s, echo_writer, &pairs[i], NULL), 0);
        }
        return aiot_scope_close(s);
}

START_TEST(test_echo_many)
{
        static struct echo_pair pairs[ECHO_PAIRS];
        int fds = testutil_count_fds();

        ck_assert_int_eq(testutil_run_loop(echo_main, pairs, 0), 0);
        for (size_t i = 0; i < ECHO_PAIRS; i++) {
                ck_assert_int_eq(pairs[i].writer_rc, 0);
                ck_assert_int_eq(pairs[i].server_rc, 0);
                ck_assert_int_eq(pairs[i].reader_rc, 0);
                ck_assert_uint_eq(pairs[i].received, ECHO_BYTES);
        }
        ck_assert_int_eq(testutil_count_fds(), fds);
}
END_TEST

/* ------------------------------------------------------------ cancellation */

struct parked {
        int fd;
        int started;
        ssize_t rc;
        char buf[16];
};

static int parked_reader(void *arg)
{
        struct parked *p = arg;

        p->started = 1;
        p->rc = aiot_read(p->fd, p->buf, sizeof(p->buf));
        return p->rc < 0 ? (int)p->rc : 0;
}

/* Yields until t has run up to its first park. */
static void wait_started(const int *started)
{
        for (int i = 0; !*started; i++) {
                ck_assert_int_lt(i, 1000);
                ck_assert_int_eq(aiot_yield(), 0);
        }
}

static int cancel_main(void *arg)
{
        int sv[2];
        struct parked p = { .rc = 1 };
        aiot_scope *s;
        aiot_task *t;
        char buf[16];

        make_pair(sv);
        p.fd = sv[0];
        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, parked_reader, &p, &t), 0);
        wait_started(&p.started);

        /* A second reader of the same fd is refused while the first is parked. */
        ck_assert_int_eq(aiot_read(sv[0], buf, sizeof(buf)), -EBUSY);
        ck_assert_int_eq(aiot_wait_fd(sv[0], AIOT_READ | AIOT_WRITE), -EBUSY);
        /* The other direction is free: a socket is writable at once. */
        ck_assert_int_eq(aiot_wait_fd(sv[0], AIOT_WRITE), AIOT_WRITE);

        ck_assert_int_eq(aiot_cancel_and_wait(t), 0);
        ck_assert_int_eq(p.rc, -ECANCELED);

        /* The fd is still usable, and its cached watcher still works: data sent
         * only after this read parks must wake it. */
        struct parked q = { .fd = sv[0], .rc = 1 };
        ck_assert_int_eq(aiot_spawn(s, parked_reader, &q, &t), 0);
        wait_started(&q.started);
        ck_assert_int_eq(aiot_write_all(sv[1], "hello", 5), 5);
        ck_assert_int_eq(aiot_join(t, NULL), 0);
        ck_assert_int_eq(q.rc, 5);
        ck_assert_mem_eq(q.buf, "hello", 5);

        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert_int_eq(aiot_close(sv[0]), 0);
        ck_assert_int_eq(aiot_close(sv[1]), 0);
        return 0;
}

START_TEST(test_cancel_parked_read)
{
        ck_assert_int_eq(testutil_run_loop(cancel_main, NULL, 0), 0);
}
END_TEST

/* A read that would not block still reports cancellation: a cancelled task reading
 * a busy stream must not spin forever. */
static int cancelled_self_main(void *arg)
{
        int sv[2];
        char buf[4];

        make_pair(sv);
        ck_assert_int_eq(write(sv[1], "abcd", 4), 4);
        ck_assert_int_eq(aiot_cancel(aiot_current()), 0);
        ck_assert_int_eq(aiot_read(sv[0], buf, sizeof(buf)), -ECANCELED);
        ck_assert_int_eq(aiot_write_all(sv[0], "x", 1), -ECANCELED);
        ck_assert_int_eq(aiot_wait_fd(sv[0], AIOT_WRITE), -ECANCELED);
        /* Inside a shield the same calls work. */
        aiot_shield_begin();
        ck_assert_int_eq(aiot_read(sv[0], buf, sizeof(buf)), 4);
        ck_assert_mem_eq(buf, "abcd", 4);
        aiot_shield_end();
        ck_assert_int_eq(aiot_close(sv[0]), 0);
        ck_assert_int_eq(aiot_close(sv[1]), 0);
        return -ECANCELED;
}

START_TEST(test_cancelled_task_does_not_read)
{
        ck_assert_int_eq(testutil_run_loop(cancelled_self_main, NULL, 0), -ECANCELED);
}
END_TEST

/* ------------------------------------------------------------ deadlines */

static int deadline_main(void *arg)
{
        int virtual_clock = *(int *)arg;
        int sv[2];
        char buf[8];
        aiot_deadline d;
        double t0 = aiot_now();

        make_pair(sv);
        ck_assert_int_eq(aiot_deadline_begin(&d, 0.05), 0);
        ck_assert_int_eq(aiot_read(sv[0], buf, sizeof(buf)), -ETIMEDOUT);
        ck_assert_int_eq(aiot_read(sv[0], buf, sizeof(buf)), -ETIMEDOUT);
        ck_assert_int_eq(aiot_deadline_end(&d), 1);
        ck_assert_double_ge(aiot_now() - t0, 0.05 - 1e-9);
        if (virtual_clock)
                ck_assert_double_le(aiot_now() - t0, 0.05 + 1e-6);
        else
                ck_assert_double_lt(aiot_now() - t0, 5.0);

        /* The fd is usable after the deadline scope ended. */
        ck_assert_int_eq(write(sv[1], "late", 4), 4);
        ck_assert_int_eq(aiot_read(sv[0], buf, sizeof(buf)), 4);
        ck_assert_mem_eq(buf, "late", 4);

        /* A writer blocked on a full socket times out the same way. */
        static char big[1 << 20];
        ck_assert_int_eq(aiot_deadline_begin(&d, 0.05), 0);
        ck_assert_int_eq(aiot_write_all(sv[0], big, sizeof(big)), -ETIMEDOUT);
        ck_assert_int_eq(aiot_deadline_end(&d), 1);

        /* A deadline that does not expire leaves the read alone. */
        ck_assert_int_eq(aiot_deadline_begin(&d, 10.0), 0);
        ck_assert_int_eq(write(sv[1], "ok", 2), 2);
        ck_assert_int_eq(aiot_read(sv[0], buf, sizeof(buf)), 2);
        ck_assert_int_eq(aiot_deadline_end(&d), 0);

        ck_assert_int_eq(aiot_close(sv[0]), 0);
        ck_assert_int_eq(aiot_close(sv[1]), 0);
        return 0;
}

START_TEST(test_read_deadline)
{
        int virtual_clock = _i;

        ck_assert_int_eq(testutil_run_loop(deadline_main, &virtual_clock, virtual_clock), 0);
}
END_TEST

/* ------------------------------------------------------------ accept / connect */

#define ACCEPT_CONNS 500
#define ACCEPT_WAVE 100

struct acceptor {
        int lfd;
        struct sockaddr_in addr;
        int served;
        int handled;
        int bad_flags;
        int client_ok;
};

static int handle_conn(void *arg)
{
        int fd = (int)(intptr_t)arg;
        uint32_t v;
        ssize_t n = aiot_read(fd, &v, sizeof(v));

        if (n == sizeof(v)) {
                v = ~v;
                n = aiot_write_all(fd, &v, sizeof(v));
        }
        aiot_close(fd);
        return n == sizeof(v) ? 0 : -EIO;
}

static int accept_loop(void *arg)
{
        struct acceptor *a = arg;
        aiot_scope *s;
        int rc = 0;

        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        while (a->served < ACCEPT_CONNS) {
                struct sockaddr_in peer;
                socklen_t len = sizeof(peer);
                int fd = aiot_accept(a->lfd, (struct sockaddr *)&peer, &len);

                if (fd < 0) {
                        rc = fd;
                        break;
                }
                ck_assert_int_eq(peer.sin_family, AF_INET);
                if (!(fcntl(fd, F_GETFL) & O_NONBLOCK) || !(fcntl(fd, F_GETFD) & FD_CLOEXEC))
                        a->bad_flags++;
                a->served++;
                ck_assert_int_eq(aiot_spawn(s, handle_conn, (void *)(intptr_t)fd, NULL), 0);
        }
        ck_assert_int_eq(aiot_scope_close(s), 0);
        return rc;
}

static int client(void *arg)
{
        struct acceptor *a = arg;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        uint32_t v = (uint32_t)fd * 2654435761u, r = 0;
        int rc;

        ck_assert_int_ge(fd, 0);
        rc = aiot_connect(fd, (struct sockaddr *)&a->addr, sizeof(a->addr));
        if (rc == 0 && aiot_write_all(fd, &v, sizeof(v)) == sizeof(v) &&
            aiot_read(fd, &r, sizeof(r)) == sizeof(r) && r == ~v)
                a->client_ok++;
        ck_assert_int_eq(aiot_close(fd), 0);
        return rc;
}

static int accept_main(void *arg)
{
        struct acceptor *a = arg;
        aiot_scope *server_scope;
        aiot_task *server;
        socklen_t len = sizeof(a->addr);

        a->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(a->lfd, 0);
        a->addr = (struct sockaddr_in){ .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        ck_assert_int_eq(bind(a->lfd, (struct sockaddr *)&a->addr, sizeof(a->addr)), 0);
        ck_assert_int_eq(getsockname(a->lfd, (struct sockaddr *)&a->addr, &len), 0);
        ck_assert_int_eq(listen(a->lfd, 64), 0);

        ck_assert_int_eq(aiot_scope_open(&server_scope, NULL), 0);
        ck_assert_int_eq(aiot_spawn(server_scope, accept_loop, a, &server), 0);
        /* Clients come in waves, so the test stays within a modest fd limit. */
        for (int wave = 0; wave < ACCEPT_CONNS / ACCEPT_WAVE; wave++) {
                aiot_scope *s;

                ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
                for (int i = 0; i < ACCEPT_WAVE; i++)
                        ck_assert_int_eq(aiot_spawn(s, client, a, NULL), 0);
                ck_assert_int_eq(aiot_scope_close(s), 0);
        }
        int result = 1;
        ck_assert_int_eq(aiot_join(server, &result), 0);
        ck_assert_int_eq(result, 0);
        ck_assert_int_eq(aiot_scope_close(server_scope), 0);
        ck_assert_int_eq(aiot_close(a->lfd), 0);
        return 0;
}

START_TEST(test_accept_many)
{
        struct acceptor a = { 0 };
        int fds = testutil_count_fds();

        ck_assert_int_eq(testutil_run_loop(accept_main, &a, 0), 0);
        ck_assert_int_eq(a.served, ACCEPT_CONNS);
        ck_assert_int_eq(a.client_ok, ACCEPT_CONNS);
        ck_assert_int_eq(a.bad_flags, 0);
        ck_assert_int_eq(testutil_count_fds(), fds);
}
END_TEST

static int refused_main(void *arg)
{
        struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(addr);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        /* A port that was just bound and released has no listener. */
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
        close(fd);

        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(aiot_connect(fd, (struct sockaddr *)&addr, sizeof(addr)), -ECONNREFUSED);
        ck_assert_int_eq(aiot_close(fd), 0);
        return 0;
}

START_TEST(test_connect_refused)
{
        ck_assert_int_eq(testutil_run_loop(refused_main, NULL, 0), 0);
}
END_TEST

/* ------------------------------------------------------------ aiot_close and reuse */

static int closed_waiter(void *arg)
{
        struct parked *p = arg;

        p->started = 1;
        p->rc = aiot_wait_fd(p->fd, AIOT_READ);
        return 0;
}

static int close_main(void *arg)
{
        int sv[2], again[2];
        struct parked p = { .rc = 1 };
        aiot_scope *s;
        aiot_task *t;
        char buf[4];

        make_pair(sv);
        p.fd = sv[0];
        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, closed_waiter, &p, &t), 0);
        wait_started(&p.started);
        /* Closing an fd a task is parked on wakes that task with -EBADF. */
        ck_assert_int_eq(aiot_close(sv[0]), 0);
        ck_assert_int_eq(aiot_join(t, NULL), 0);
        ck_assert_int_eq(p.rc, -EBADF);
        ck_assert_int_eq(aiot_close(sv[1]), 0);

        /* The numbers are reused by the next socketpair; the watcher must be fresh. */
        make_pair(again);
        ck_assert_int_eq(again[0], sv[0]);
        struct parked q = { .fd = again[0], .rc = 1 };
        ck_assert_int_eq(aiot_spawn(s, parked_reader, &q, &t), 0);
        wait_started(&q.started);
        ck_assert_int_eq(write(again[1], "new", 3), 3);
        ck_assert_int_eq(aiot_join(t, NULL), 0);
        ck_assert_int_eq(q.rc, 3);

        /* aiot_fd_forget() then close(2) is the same as aiot_close(). */
        ck_assert_int_eq(aiot_fd_forget(again[0]), 0);
        ck_assert_int_eq(aiot_fd_forget(again[0]), 0);
        close(again[0]);
        close(again[1]);
        make_pair(again);
        ck_assert_int_eq(write(again[1], "x", 1), 1);
        ck_assert_int_eq(aiot_read(again[0], buf, sizeof(buf)), 1);
        ck_assert_int_eq(aiot_close(again[0]), 0);
        ck_assert_int_eq(aiot_close(again[1]), 0);

        ck_assert_int_eq(aiot_close(-1), -EBADF);
        ck_assert_int_eq(aiot_fd_forget(-1), -EINVAL);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        return 0;
}

START_TEST(test_close_and_reuse)
{
        ck_assert_int_eq(testutil_run_loop(close_main, NULL, 0), 0);
}
END_TEST

/* A direction left registered after its wait, and ready with nobody waiting, is
 * dropped after a few reports: the loop must not spin while the task sleeps. */
static double cpu_seconds(void)
{
        struct rusage ru;

        ck_assert_int_eq(getrusage(RUSAGE_SELF, &ru), 0);
        return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int nospin_main(void *arg)
{
        int sv[2];
        double cpu;

        make_pair(sv);
        ck_assert_int_eq(write(sv[1], "x", 1), 1);
        /* Both directions are now registered and stay ready: nothing is read. */
        ck_assert_int_eq(aiot_wait_fd(sv[0], AIOT_READ), AIOT_READ);
        ck_assert_int_eq(aiot_wait_fd(sv[0], AIOT_WRITE), AIOT_WRITE);
        cpu = cpu_seconds();
        ck_assert_int_eq(aiot_sleep(0.3), 0);
        ck_assert_double_lt(cpu_seconds() - cpu, 0.1);
        /* The watcher still serves the next wait. */
        ck_assert_int_eq(aiot_wait_fd(sv[0], AIOT_READ | AIOT_WRITE), AIOT_READ | AIOT_WRITE);
        ck_assert_int_eq(aiot_close(sv[0]), 0);
        ck_assert_int_eq(aiot_close(sv[1]), 0);
        return 0;
}

START_TEST(test_idle_direction_no_spin)
{
        ck_assert_int_eq(testutil_run_loop(nospin_main, NULL, 0), 0);
}
END_TEST

static int errors_main(void *arg)
{
        int sv[2];
        char buf[4];

        make_pair(sv);
        ck_assert_int_eq(aiot_wait_fd(-1, AIOT_READ), -EINVAL);
        ck_assert_int_eq(aiot_wait_fd(sv[0], 0), -EINVAL);
        ck_assert_int_eq(aiot_wait_fd(sv[0], 0x10), -EINVAL);
        ck_assert_int_eq(aiot_read(-1, buf, 1), -EINVAL);
        ck_assert_int_eq(aiot_read(sv[0], NULL, 1), -EINVAL);
        ck_assert_int_eq(aiot_write_all(sv[0], NULL, 1), -EINVAL);
        ck_assert_int_eq(aiot_write_all(sv[0], buf, 0), 0);
        ck_assert_int_eq(aiot_accept(-1, NULL, NULL), -EINVAL);
        ck_assert_int_eq(aiot_connect(sv[0], NULL, 0), -EINVAL);
        ck_assert_int_eq(aiot_child_wait(NULL, NULL), -EINVAL);
        ck_assert_int_eq(aiot_task_fork(NULL, NULL, &(aiot_child *){ NULL }), -EINVAL);
        /* A closed peer gives -EPIPE, not SIGPIPE. */
        ck_assert_int_eq(aiot_close(sv[1]), 0);
        ck_assert_int_eq(aiot_write_all(sv[0], "x", 1), -EPIPE);
        ck_assert_int_eq(aiot_read(sv[0], buf, sizeof(buf)), 0);
        /* A listening socket that is not one. */
        ck_assert_int_eq(aiot_accept(sv[0], NULL, NULL), -EINVAL);
        ck_assert_int_eq(aiot_close(sv[0]), 0);
        return 0;
}

static int exit_zero(void *arg)
{
        return 0;
}

START_TEST(test_errors)
{
        aiot_child *c = NULL;

        ck_assert_int_eq(testutil_run_loop(errors_main, NULL, 0), 0);
        /* Outside a task nothing can park. */
        ck_assert_int_eq(aiot_wait_fd(0, AIOT_READ), -EPERM);
        ck_assert_int_eq(aiot_task_fork(exit_zero, NULL, &c), -EPERM);
        ck_assert_ptr_null(c);
}
END_TEST

/* ------------------------------------------------------------ children */

static int exit_three(void *arg)
{
        return 3;
}

static int wait_forever(void *arg)
{
        for (;;)
                pause();
        return 0;
}

struct child_waiter {
        aiot_child *c;
        int started;
        int rc;
        int status;
};

static int child_waiter(void *arg)
{
        struct child_waiter *w = arg;

        w->started = 1;
        w->rc = aiot_child_wait(w->c, &w->status);
        return 0;
}

static int child_main(void *arg)
{
        aiot_child *c = NULL, *k = NULL;
        int status = 0;
        aiot_scope *s;
        aiot_task *t1, *t2, *t3;

        /* An exit code. */
        ck_assert_int_eq(aiot_task_fork(exit_three, NULL, &c), 0);
        ck_assert_int_eq(aiot_child_wait(c, &status), 0);
        ck_assert_int_eq(status, 3);
        /* Waiting again returns at once. */
        status = 0;
        ck_assert_int_eq(aiot_child_wait(c, &status), 0);
        ck_assert_int_eq(status, 3);
        aiot_child_free(c);

        /* A killed child, waited for by several tasks; one of them is cancelled
         * first and must not disturb the others. */
        ck_assert_int_eq(aiot_task_fork(wait_forever, NULL, &k), 0);
        struct child_waiter w1 = { .c = k, .rc = 1 }, w2 = { .c = k, .rc = 1 }, w3 = { .c = k, .rc = 1 };
        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, child_waiter, &w1, &t1), 0);
        ck_assert_int_eq(aiot_spawn(s, child_waiter, &w2, &t2), 0);
        ck_assert_int_eq(aiot_spawn(s, child_waiter, &w3, &t3), 0);
        wait_started(&w1.started);
        wait_started(&w2.started);
        wait_started(&w3.started);
        ck_assert_int_eq(aiot_cancel_and_wait(t2), 0);
        ck_assert_int_eq(w2.rc, -ECANCELED);
        ck_assert_int_eq(aiot_child_signal(k, SIGKILL), 0);
        ck_assert_int_eq(aiot_child_wait(k, &status), 0);
        ck_assert_int_eq(status, -SIGKILL);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        ck_assert_int_eq(w1.rc, 0);
        ck_assert_int_eq(w1.status, -SIGKILL);
        ck_assert_int_eq(w3.rc, 0);
        ck_assert_int_eq(w3.status, -SIGKILL);
        aiot_child_free(k);
        return 0;
}

START_TEST(test_child_wait)
{
        const char *mode = getenv("AIOTOOLS_EXPECT_FORK_MODE");

        /* Under tests/nopidfd the SIGCHLD fallback must be what is tested. */
        if (mode && strcmp(mode, "sigchld") == 0)
                ck_assert_int_eq(aiot_fork_mode(), AIOT_FORK_SIGCHLD);
        ck_assert_int_eq(testutil_run_loop(child_main, NULL, 0), 0);
        ck_assert_int_eq(testutil_count_zombies(), 0);
}
END_TEST

/* A deadline bounds a wait for a child that never exits; the child is then killed. */
static int child_deadline_main(void *arg)
{
        aiot_child *k = NULL;
        aiot_deadline d;
        int status = 0;

        ck_assert_int_eq(aiot_task_fork(wait_forever, NULL, &k), 0);
        ck_assert_int_eq(aiot_deadline_begin(&d, 0.05), 0);
        ck_assert_int_eq(aiot_child_wait(k, &status), -ETIMEDOUT);
        ck_assert_int_eq(aiot_deadline_end(&d), 1);
        ck_assert_int_eq(aiot_child_signal(k, SIGTERM), 0);
        ck_assert_int_eq(aiot_child_wait(k, &status), 0);
        ck_assert_int_eq(status, -SIGTERM);
        aiot_child_free(k);
        return 0;
}

START_TEST(test_child_wait_deadline)
{
        ck_assert_int_eq(testutil_run_loop(child_deadline_main, NULL, 0), 0);
        ck_assert_int_eq(testutil_count_zombies(), 0);
}
END_TEST

/* A child forked by a task starts outside any loop: the parent's loop, with the
 * parent's tasks in it, is not its to run.  It may run a fresh loop of its own. */
static int forked_ticks;

static int parent_ticker(void *arg)
{
        for (;;) {
                forked_ticks++;
                if (aiot_sleep(0.001) < 0)
                        return 0;
        }
}

static int fresh_root(void *arg)
{
        return aiot_sleep(0.001) == 0 ? 40 : 1;
}

static int forked_in_task(void *arg)
{
        aiot_loop *l = NULL;
        int before = forked_ticks, r;

        if (aiot_current() != NULL || aiot_now() != 0.0)
                return 10;
        if (aiot_sleep(0.01) != -EPERM || aiot_yield() != -EPERM)
                return 11;
        if (forked_ticks != before)
                return 12; /* a parent's task ran here */
        if (aiot_loop_new(&l, NULL) < 0)
                return 13;
        r = aiot_loop_run(l, fresh_root, NULL);
        aiot_loop_free(l);
        return r == 40 && forked_ticks == before ? 0 : 14;
}

static int task_fork_main(void *arg)
{
        aiot_child *c = NULL;
        aiot_scope *s;
        aiot_task *ticker;
        int status = -1;

        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, parent_ticker, NULL, &ticker), 0);
        ck_assert_int_eq(aiot_yield(), 0);
        ck_assert_int_eq(aiot_task_fork(forked_in_task, NULL, &c), 0);
        ck_assert_int_eq(aiot_child_wait(c, &status), 0);
        ck_assert_int_eq(status, 0);
        aiot_child_free(c);
        /* The exit callback is the one aiot_child_wait() relies on. */
        ck_assert_int_eq(aiot_task_fork(wait_forever, NULL, &c), 0);
        ck_assert_int_eq(aiot_child_set_exit_cb(c, NULL, NULL), -EBUSY);
        ck_assert_int_eq(aiot_child_signal(c, SIGKILL), 0);
        ck_assert_int_eq(aiot_child_wait(c, &status), 0);
        ck_assert_int_eq(status, -SIGKILL);
        aiot_child_free(c);
        ck_assert_int_eq(aiot_cancel_and_wait(ticker), 0);
        ck_assert_int_eq(aiot_scope_close(s), 0);
        return 0;
}

START_TEST(test_task_fork_child_has_no_loop)
{
        ck_assert_int_eq(testutil_run_loop(task_fork_main, NULL, 0), 0);
        ck_assert_int_eq(testutil_count_zombies(), 0);
}
END_TEST

/* A loop freed while a task-forked child still runs: the child is detached from
 * the loop (no signal handler may reach the freed loop), and reaped later. */
static int gated_child(void *arg)
{
        char b;

        return read(*(int *)arg, &b, 1) == 1 ? 6 : 1;
}

struct detach {
        int gate;
        aiot_child *c;
};

static int detach_main(void *arg)
{
        struct detach *d = arg;

        ck_assert_int_eq(aiot_task_fork(gated_child, &d->gate, &d->c), 0);
        return 0;
}

static int fork_again_main(void *arg)
{
        aiot_child *c = NULL;
        int status = -1;

        ck_assert_int_eq(aiot_task_fork(exit_three, NULL, &c), 0);
        ck_assert_int_eq(aiot_child_wait(c, &status), 0);
        ck_assert_int_eq(status, 3);
        aiot_child_free(c);
        return 0;
}

START_TEST(test_loop_freed_with_running_child)
{
        struct detach d = { .c = NULL };
        int p[2], status = -1;
        siginfo_t si;

        if (_i)
                setenv("AIOTOOLS_NO_PIDFD", "1", 1);
        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        d.gate = p[0];
        ck_assert_int_eq(testutil_run_loop(detach_main, &d, 0), 0);
        ck_assert_ptr_nonnull(d.c);
        ck_assert_int_eq(aiot_child_status(d.c, &status), -EAGAIN);
        /* The loop goes while the child runs; then the child exits (SIGCHLD). */
        ck_assert_int_eq(close(p[0]), 0);
        ck_assert_int_eq(write(p[1], "x", 1), 1);
        ck_assert_int_eq(waitid(P_PID, (id_t)aiot_child_pid(d.c), &si, WEXITED | WNOWAIT), 0);
        /* The next fork reaps it; its status is kept in the handle. */
        ck_assert_int_eq(testutil_run_loop(fork_again_main, NULL, 0), 0);
        ck_assert_int_eq(aiot_child_status(d.c, &status), 0);
        ck_assert_int_eq(status, 6);
        ck_assert_int_eq(testutil_count_zombies(), 0);
        aiot_child_free(d.c);
        close(p[1]);
}
END_TEST

/* An fd no process can have open is refused, without growing the watcher table
 * to its size. */
static int huge_fd_main(void *arg)
{
        struct rlimit rl;

        ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
        if (rl.rlim_cur != RLIM_INFINITY)
                ck_assert_int_eq(aiot_wait_fd((int)rl.rlim_cur, AIOT_READ), -EBADF);
        ck_assert_int_eq(aiot_wait_fd(INT32_MAX, AIOT_READ), -EBADF);
        ck_assert_int_eq(aiot_wait_fd(-1, AIOT_READ), -EINVAL);
        return 0;
}

START_TEST(test_wait_fd_impossible_fd)
{
        /* (A table for INT32_MAX fds would take 16 GiB: -ENOMEM at best.  The
         * kernel caps RLIMIT_NOFILE at 2^30, so INT32_MAX is always beyond.) */
        ck_assert_int_eq(testutil_run_loop(huge_fd_main, NULL, 0), 0);
}
END_TEST

static TCase *tcase(Suite *s, const char *name)
{
        TCase *tc = tcase_create(name);

        tcase_set_timeout(tc, 60);
        suite_add_tcase(s, tc);
        return tc;
}

/* One case per area, so that CK_RUN_CASE=echo runs the echo test alone (for strace). */
static Suite *io_suite(void)
{
        Suite *s = suite_create("io");
        TCase *tc;

        tc = tcase(s, "echo");
        tcase_add_test(tc, test_echo_many);
        tc = tcase(s, "cancel");
        tcase_add_test(tc, test_cancel_parked_read);
        tcase_add_test(tc, test_cancelled_task_does_not_read);
        tcase_add_loop_test(tc, test_read_deadline, 0, 2);
        tc = tcase(s, "net");
        tcase_add_test(tc, test_accept_many);
        tcase_add_test(tc, test_connect_refused);
        tc = tcase(s, "fd");
        tcase_add_test(tc, test_close_and_reuse);
        tcase_add_test(tc, test_idle_direction_no_spin);
        tcase_add_test(tc, test_errors);
        tc = tcase(s, "child");
        tcase_add_test(tc, test_child_wait);
        tcase_add_test(tc, test_child_wait_deadline);
        tcase_add_test(tc, test_task_fork_child_has_no_loop);
        tcase_add_loop_test(tc, test_loop_freed_with_running_child, 0, 2);
        tcase_add_test(tc, test_wait_fd_impossible_fd);
        return s;
}

int main(void)
{
        /* The library never relies on SIGPIPE being ignored; neither does this suite. */
        return testutil_run(io_suite());
}
