/* SPDX-License-Identifier: MIT */
/* The serving layer, through real sockets on 127.0.0.1: each test forks a
 * server (aiot_server_run() with one worker whose body is aiot_worker_serve())
 * running a line protocol handler, and drives it as a client would.
 *
 * The handler answers each line with the same line and keeps the connection
 * (AIOT_CONN_KEEP); a line longer than LINE_MAX gets "ERR\n" and a close.  In
 * the "slow" mode it sleeps SLOW_SECS before answering, so that connections
 * pile up in the accept queue.  The line "info" is answered with what the
 * connection calls report (conn_info()).  The last cases run aiotools-serve
 * itself, with modules. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <aiotools.h>

#include "testutil.h"

#define LINE_MAX_ 64
#define SLOW_SECS 0.3
#define T_WAIT 5000 /* ms: a bound for anything that must happen, on a loaded machine */

static int slow_mode;
static rlim_t fd_limit;      /* nonzero: the server runs at this RLIMIT_NOFILE */
static char log_path[64];    /* nonempty: the server's stderr goes there */

/* "info": the peer's address, whether the fd is the peer's socket, the lines
 * served on this connection (its state, kept across AIOT_CONN_KEEP) and
 * whether the worker is stopping. */
static int conn_info(aiot_conn *c)
{
        struct sockaddr_storage ss, mine;
        socklen_t len = sizeof(ss), mlen = sizeof(mine);
        char out[128], addr[64] = "?";
        int r, n;

        r = aiot_conn_peer(c, &ss, &len);
        if (r == 0 && ss.ss_family == AF_INET)
                inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, addr, sizeof(addr));
        if (getsockname(aiot_conn_fd(c), (struct sockaddr *)&mine, &mlen) < 0)
                return -errno;
        n = snprintf(out, sizeof(out), "peer %s lines %u stopping %d\n", addr,
                     aiot_conn_state(c) ? *(unsigned *)aiot_conn_state(c) : 0u,
                     aiot_worker_stopping(aiot_conn_worker(c)));
        r = aiot_conn_write(c, out, (size_t)n);
        return r < 0 ? r : AIOT_CONN_KEEP;
}

/* "flood": 64 MiB, more than any socket buffer holds, for a peer that does
 * not read.  Returns the write's error (the write timeout's -ETIMEDOUT). */
#define FLOOD_CHUNK 65536
#define FLOOD_CHUNKS 1024
static int flood(aiot_conn *c)
{
        static char chunk[FLOOD_CHUNK];
        int r = 0;

        memset(chunk, 'z', sizeof(chunk));
        for (int i = 0; i < FLOOD_CHUNKS && r == 0; i++)
                r = aiot_conn_write(c, chunk, sizeof(chunk));
        if (r == 0)
                r = aiot_conn_flush(c, NULL);
        return r < 0 ? r : AIOT_CONN_KEEP;
}

/* "file": "BEGIN\n" (buffered, so sendfile must flush it first), the test
 * file from byte FILE_SKIP with aiot_conn_sendfile() asked for its whole
 * size (so the file ends first), then "\nEND SENT OFFSET\n", and a close. */
#define FILE_SKIP 7
static char file_path[64];
static int send_file(aiot_conn *c)
{
        struct stat st;
        off_t off = FILE_SKIP;
        char tail[64];
        ssize_t n;
        int fd = open(file_path, O_RDONLY | O_CLOEXEC), r;

        if (fd < 0 || fstat(fd, &st) < 0)
                return -errno;
        r = aiot_conn_write(c, "BEGIN\n", 6);
        n = r < 0 ? r : aiot_conn_sendfile(c, fd, &off, (size_t)st.st_size);
        close(fd);
        if (n < 0)
                return (int)n;
        r = snprintf(tail, sizeof(tail), "\nEND %zd %lld\n", n, (long long)off);
        return aiot_conn_write(c, tail, (size_t)r);
}

/* "where": the address of the listener that accepted the connection. */
static int where(aiot_conn *c)
{
        const aiot_listener *l = aiot_conn_listener(c);
        int r = aiot_conn_write(c, l->address, strlen(l->address));

        if (r == 0)
                r = aiot_conn_write(c, "\n", 1);
        return r < 0 ? r : AIOT_CONN_KEEP;
}

/* "me": this handler's own line of the worker's task dump (the running task:
 * the library names it after the peer). */
static int my_task_line(aiot_conn *c)
{
        char *dump = NULL, *line, *end;
        size_t len = 0;
        FILE *f = open_memstream(&dump, &len);
        int r;

        if (!f)
                return -ENOMEM;
        r = aiot_loop_dump_tasks(aiot_worker_loop(aiot_conn_worker(c)), f, 0);
        fclose(f);
        line = r < 0 ? NULL : strstr(dump, "[running]");
        if (!line) {
                free(dump);
                return aiot_conn_write(c, "none\n", 5);
        }
        end = line - 1; /* the name ends before " [running]" */
        while (line > dump && line[-1] != '\n')
                line--;
        while (*line == ' ' || *line == '-')
                line++;
        r = aiot_conn_write(c, line, (size_t)(end - line));
        free(dump);
        if (r == 0)
                r = aiot_conn_write(c, "\n", 1);
        return r < 0 ? r : AIOT_CONN_KEEP;
}

static int line_conn(aiot_conn *c, void *arg)
{
        const char *line;
        ssize_t n = aiot_conn_read_until(c, "\n", LINE_MAX_, &line);
        int r;

        (void)arg;
        if (n == -EMSGSIZE)
                return aiot_conn_write(c, "ERR\n", 4);
        if (n <= 0)
                return (int)n;
        if (slow_mode && (r = aiot_sleep(SLOW_SECS)) < 0)
                return r;
        if (aiot_conn_state(c))
                ++*(unsigned *)aiot_conn_state(c);
        if (n == 5 && !memcmp(line, "info\n", 5))
                return conn_info(c);
        if (n == 6 && !memcmp(line, "flood\n", 6))
                return flood(c);
        if (n == 5 && !memcmp(line, "file\n", 5))
                return send_file(c);
        if (n == 6 && !memcmp(line, "where\n", 6))
                return where(c);
        if (n == 3 && !memcmp(line, "me\n", 3))
                return my_task_line(c);
        r = aiot_conn_write(c, line, (size_t)n);
        return r < 0 ? r : AIOT_CONN_KEEP;
}

/* A framed protocol: one ASCII digit L, then L bytes; answered "L:bytes\n",
 * flushed at once.  Exercises peek, consume, read_exact and flush. */
static int framed_conn(aiot_conn *c, void *arg)
{
        const char *head;
        char body[10], out[16];
        size_t len, sent = 0;
        ssize_t n = aiot_conn_peek(c, &head);
        int r;

        (void)arg;
        if (n <= 0)
                return (int)n;
        if (head[0] < '1' || head[0] > '9')
                return -EPROTO;
        len = (size_t)(head[0] - '0');
        aiot_conn_consume(c, 1);
        r = aiot_conn_read_exact(c, body, len);
        if (r < 0)
                return r == -ENODATA ? 0 : r;
        n = snprintf(out, sizeof(out), "%zu:%.*s\n", len, (int)len, body);
        if ((r = aiot_conn_write(c, out, (size_t)n)) < 0 || (r = aiot_conn_flush(c, &sent)) < 0)
                return r;
        return sent == (size_t)n ? AIOT_CONN_KEEP : -EIO;
}

static struct aiot_serve_opts opts;

static int serve_worker(aiot_worker *w)
{
        int r = aiot_worker_serve(w, &opts);

        return r < 0 ? r : 0;
}

struct server {
        pid_t pid;
        int port;
};

static double now(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A port that was free a moment ago. */
static int free_port(void)
{
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
        close(fd);
        return ntohs(sa.sin_port);
}

static int try_connect(int port)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ck_assert_int_ge(fd, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                close(fd);
                return -errno;
        }
        return fd;
}

static int tcp_connect(int port)
{
        int fd = try_connect(port);

        ck_assert_msg(fd >= 0, "connect to %d: %s", port, strerror(-fd));
        return fd;
}

/* Starts the server with the options in opts (handler set here). */
static void server_start(struct server *s)
{
        static char bind_addr[32];
        static const char *binds[1];
        double t0 = now();
        int fd;

        s->port = free_port();
        snprintf(bind_addr, sizeof(bind_addr), "127.0.0.1:%d", s->port);
        binds[0] = bind_addr;
        opts.size = sizeof(opts);
        if (!opts.handler)
                opts.handler = line_conn;
        s->pid = fork();
        ck_assert_int_ge(s->pid, 0);
        if (s->pid == 0) {
                struct aiot_server_config cfg = {
                        .size = sizeof(cfg), .workers = 1, .worker = serve_worker,
                        .binds = binds, .n_binds = 1, .stop_timeout = 20,
                };

                aiot_log_set_level(AIOT_LOG_WARNING);
                if (fd_limit) {
                        struct rlimit rl = {fd_limit, fd_limit};

                        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                                _exit(99);
                }
                if (log_path[0]) {
                        int lf = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

                        if (lf < 0 || dup2(lf, 2) < 0)
                                _exit(98);
                }
                _exit(aiot_server_run(&cfg));
        }
        /* Ready once it accepts (the probe connection is simply closed). */
        while ((fd = try_connect(s->port)) < 0) {
                ck_assert_msg(now() - t0 < T_WAIT / 1000.0, "the server did not start listening");
                usleep(10000);
        }
        close(fd);
}

static int server_stop(struct server *s)
{
        int status;

        kill(s->pid, SIGTERM);
        ck_assert_int_eq(waitpid(s->pid, &status, 0), s->pid);
        ck_assert(WIFEXITED(status));
        return WEXITSTATUS(status);
}

/* Whether fd becomes readable within ms. */
static int readable(int fd, int ms)
{
        struct pollfd p = {.fd = fd, .events = POLLIN};

        return poll(&p, 1, ms) == 1;
}

/* Reads exactly len bytes (or until EOF / error) with a bound per read. */
static ssize_t read_n(int fd, char *buf, size_t len)
{
        size_t got = 0;

        while (got < len) {
                ssize_t n;

                if (!readable(fd, T_WAIT))
                        break;
                n = read(fd, buf + got, len - got);
                if (n <= 0)
                        return got ? (ssize_t)got : n;
                got += (size_t)n;
        }
        return (ssize_t)got;
}

static void send_str(int fd, const char *s)
{
        ck_assert_int_eq(write(fd, s, strlen(s)), (ssize_t)strlen(s));
}

static void expect_line(int fd, const char *line)
{
        char buf[256] = {0};
        size_t len = strlen(line);

        ck_assert_int_eq(read_n(fd, buf, len), (ssize_t)len);
        ck_assert_str_eq(buf, line);
}

/* The peer closed: EOF (not a reset), within ms. */
static void expect_eof(int fd, int ms)
{
        char c;

        ck_assert_msg(readable(fd, ms), "not closed within %d ms", ms);
        ck_assert_int_eq(read(fd, &c, 1), 0);
}

static void reset_opts(void)
{
        memset(&opts, 0, sizeof(opts));
        slow_mode = 0;
        fd_limit = 0;
        log_path[0] = '\0';
}

START_TEST(test_echo_200_concurrent)
{
        struct server s;
        int fds[200];
        char line[32];

        reset_opts();
        server_start(&s);
        for (int i = 0; i < 200; i++)
                fds[i] = tcp_connect(s.port);
        for (int i = 0; i < 200; i++) {
                snprintf(line, sizeof(line), "hello %d\n", i);
                send_str(fds[i], line);
        }
        for (int i = 0; i < 200; i++) {
                snprintf(line, sizeof(line), "hello %d\n", i);
                expect_line(fds[i], line);
                close(fds[i]);
        }
        ck_assert_int_eq(server_stop(&s), 0);
}
END_TEST

START_TEST(test_pipelined_in_order)
{
        struct server s;
        int fd;

        reset_opts();
        server_start(&s);
        fd = tcp_connect(s.port);
        send_str(fd, "one\ntwo\nthree\nfour");
        expect_line(fd, "one\ntwo\nthree\n");
        send_str(fd, "\nfive\n");
        expect_line(fd, "four\nfive\n");
        close(fd);
        ck_assert_int_eq(server_stop(&s), 0);
}
END_TEST

START_TEST(test_keep_survives_idle_then_idle_timeout)
{
        struct server s;
        int fd, silent;
        double t0;

        reset_opts();
        opts.idle_timeout = 0.6;
        server_start(&s);
        fd = tcp_connect(s.port);
        silent = tcp_connect(s.port);
        send_str(fd, "a\n");
        expect_line(fd, "a\n");
        usleep(300000); /* idle, less than the timeout */
        send_str(fd, "b\n");
        expect_line(fd, "b\n");
        t0 = now();
        expect_eof(fd, T_WAIT);
        ck_assert_double_ge(now() - t0, 0.4);
        /* A connection that never sent a byte is closed too. */
        expect_eof(silent, T_WAIT);
        close(fd);
        close(silent);
        ck_assert_int_eq(server_stop(&s), 0);
}
END_TEST

/* A client trickling a byte every 0.2 s is cut off by the request timeout,
 * counted from its first byte; a normal client is answered meanwhile. */
START_TEST(test_request_timeout_stops_slowloris)
{
        struct server s;
        int slow, fd, closed = 0;
        double t0;

        reset_opts();
        opts.request_timeout = 0.8;
        server_start(&s);
        slow = tcp_connect(s.port);
        fd = tcp_connect(s.port);
        t0 = now();
        for (int i = 0; i < 25 && !closed; i++) {
                if (write(slow, "x", 1) != 1)
                        break;
                send_str(fd, "ping\n");
                expect_line(fd, "ping\n");
                closed = readable(slow, 200);
        }
        ck_assert_msg(closed, "the slow client was not cut off");
        ck_assert_double_ge(now() - t0, 0.6);
        ck_assert_double_lt(now() - t0, 3.0);
        {
                /* EOF, not a reset: the server closes with a lingering close,
                 * so a trickled byte that arrived after its last read is read
                 * and dropped (the ASan build, slower, once saw the reset a
                 * plain close() sends then). */
                char c;
                ssize_t r = read(slow, &c, 1);

                ck_assert_msg(r == 0, "read %zd (%s)", r, r < 0 ? strerror(errno) : "data");
        }
        send_str(fd, "still\n");
        expect_line(fd, "still\n");
        close(slow);
        close(fd);
        ck_assert_int_eq(server_stop(&s), 0);
}
END_TEST

START_TEST(test_max_connections_holds_and_recovers)
{
        struct server s;
        int a, b, c;

        reset_opts();
        opts.max_connections = 2;
        server_start(&s);
        usleep(100000); /* the probe connection is closed */
        a = tcp_connect(s.port);
        send_str(a, "a\n");
        expect_line(a, "a\n");
        b = tcp_connect(s.port);
        send_str(b, "b\n");
        expect_line(b, "b\n");
        c = tcp_connect(s.port); /* queued by the kernel, not accepted */
        send_str(c, "c\n");
        ck_assert_msg(!readable(c, 400), "a third connection was served at the limit of 2");
        close(a);
        expect_line(c, "c\n");
        send_str(b, "b2\n");
        expect_line(b, "b2\n");
        close(b);
        close(c);
        ck_assert_int_eq(server_stop(&s), 0);
}
END_TEST

/* Stop with connections open and queued past the limit: every request is
 * answered, none is reset, and the server exits cleanly. */
START_TEST(test_stop_answers_open_and_queued)
{
        struct server s;
        int fds[20];
        double t0;

        reset_opts();
        opts.max_connections = 5;
        slow_mode = 1; /* 5 served at a time, 15 wait in the accept queue */
        server_start(&s);
        usleep(100000);
        for (int i = 0; i < 20; i++) {
                fds[i] = tcp_connect(s.port);
                send_str(fds[i], "q\n");
        }
        kill(s.pid, SIGTERM);
        for (int i = 0; i < 20; i++) {
                expect_line(fds[i], "q\n");
                close(fds[i]);
        }
        t0 = now();
        {
                int status;

                ck_assert_int_eq(waitpid(s.pid, &status, 0), s.pid);
                ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
        ck_assert_double_lt(now() - t0, 5.0);
        ck_assert_int_eq(try_connect(s.port), -ECONNREFUSED);
}
END_TEST

START_TEST(test_overlong_line_and_garbage)
{
        struct server s;
        char big[200], bin[256];
        int fd;

        reset_opts();
        server_start(&s);
        memset(big, 'a', sizeof(big));
        fd = tcp_connect(s.port);
        ck_assert_int_eq(write(fd, big, sizeof(big)), (ssize_t)sizeof(big));
        expect_line(fd, "ERR\n");
        expect_eof(fd, T_WAIT);
        close(fd);
        for (int i = 0; i < 256; i++)
                bin[i] = (char)(255 - i); /* contains '\n' and NUL */
        fd = tcp_connect(s.port);
        ck_assert_int_eq(write(fd, bin, sizeof(bin)), (ssize_t)sizeof(bin));
        shutdown(fd, SHUT_WR);
        {
                char back[512];
                ssize_t n = read_n(fd, back, sizeof(back));

                ck_assert_int_gt(n, 0); /* the first "line", up to '\n', then ERR or EOF */
        }
        close(fd);
        /* The server still serves. */
        fd = tcp_connect(s.port);
        send_str(fd, "ok\n");
        expect_line(fd, "ok\n");
        close(fd);
        ck_assert_int_eq(server_stop(&s), 0);
}
END_TEST

/* A connection closed with unread input lingers: the client gets its answer
 * and then EOF, not a reset, even while it still sends (a plain close() with
 * 30 KiB unread would reset it, and the reset can drop the answer too). */
START_TEST(test_lingering_close_no_reset)
{
        static char junk[32768];
        struct server s;
        double t0;
        int fd;

        reset_opts();
        server_start(&s);
        memset(junk, 'j', sizeof(junk)); /* no newline: longer than any line */
        fd = tcp_connect(s.port);
        ck_assert_int_eq(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
        expect_line(fd, "ERR\n");
        usleep(100000); /* the server has closed its side by now */
        ck_assert_int_eq(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
        expect_eof(fd, T_WAIT);
        /* The client ends its side: the server closes at once, and the
         * server's next stop is not held up by it. */
        close(fd);
        t0 = now();
        ck_assert_int_eq(server_stop(&s), 0);
        ck_assert_double_lt(now() - t0, 1.5);
}
END_TEST

/* A file of 6 MiB (more than the socket buffers hold, so sendfile parks)
 * reaches a client that starts reading late, byte for byte, after what was
 * buffered before it; the count asked past the file's end returns what the
 * file had, and the offset advanced by it. */
START_TEST(test_sendfile_a_large_file)
{
        static char data[6 << 20], got[(6 << 20) + 128];
        size_t size = sizeof(data), total = 0;
        char expect_tail[64];
        struct server s;
        int fd, tl;

        reset_opts();
        snprintf(file_path, sizeof(file_path), "/tmp/check-serve-file-%d", (int)getpid());
        for (size_t i = 0; i < size; i++)
                data[i] = (char)((i * 2654435761u) >> 13);
        fd = open(file_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, data, size), (ssize_t)size);
        close(fd);
        server_start(&s);
        fd = tcp_connect(s.port);
        send_str(fd, "file\n");
        usleep(300000); /* the socket fills up meanwhile */
        for (;;) {
                ssize_t r;

                ck_assert_msg(readable(fd, T_WAIT), "stalled after %zu bytes", total);
                r = read(fd, got + total, sizeof(got) - total);
                ck_assert_int_ge(r, 0);
                if (r == 0)
                        break;
                total += (size_t)r;
        }
        unlink(file_path);
        tl = snprintf(expect_tail, sizeof(expect_tail), "\nEND %zu %zu\n", size - FILE_SKIP, size);
        ck_assert_uint_eq(total, 6 + size - FILE_SKIP + (size_t)tl);
        ck_assert(memcmp(got, "BEGIN\n", 6) == 0);
        ck_assert_msg(memcmp(got + 6, data + FILE_SKIP, size - FILE_SKIP) == 0, "the file's bytes differ");
        ck_assert(memcmp(got + 6 + size - FILE_SKIP, expect_tail, (size_t)tl) == 0);
        close(fd);
        /* The listener that accepted a connection is named. */
        fd = tcp_connect(s.port);
        send_str(fd, "where\n");
        snprintf(expect_tail, sizeof(expect_tail), "127.0.0.1:%d\n", s.port);
        expect_line(fd, expect_tail);
        close(fd);
        ck_assert_int_eq(server_stop(&s), 0);
}
END_TEST

/* The connection calls: the peer, the fd, the state kept across KEEP (the
 * handler runs in a fresh task each time), the worker and its stopping flag;
 * the handler's task is "conn PEER" in the worker's task dump. */
START_TEST(test_conn_state_peer_and_stopping)
{
        struct server s;
        int fd;

        reset_opts();
        opts.state_size = sizeof(unsigned);
        server_start(&s);
        fd = tcp_connect(s.port);
        send_str(fd, "a\n");
        expect_line(fd, "a\n");
        usleep(50000);
        send_str(fd, "b\nc\n");
        expect_line(fd, "b\nc\n");
        send_str(fd, "info\n");
        expect_line(fd, "peer 127.0.0.1 lines 4 stopping 0\n");
        {
                /* The handler's task is named after its peer in a task dump. */
                struct sockaddr_in me;
                socklen_t ml = sizeof(me);
                char want[64];

                ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&me, &ml), 0);
                snprintf(want, sizeof(want), "conn 127.0.0.1:%u\n", ntohs(me.sin_port));
                send_str(fd, "me\n");
                expect_line(fd, want);
        }
        kill(s.pid, SIGTERM);
        usleep(200000); /* the worker has its stop signal and drains */
        send_str(fd, "info\n");
        expect_line(fd, "peer 127.0.0.1 lines 6 stopping 15\n");
        close(fd);
        {
                int status;

                ck_assert_int_eq(waitpid(s.pid, &status, 0), s.pid);
                ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
}
END_TEST

/* At the stop, a kept connection idle for the grace already is closed at
 * once; one that had an answer just before is not raced: its next request is
 * served (the worker is stopping), and it is closed only once it has been
 * idle for the grace.  The server exits long before the drain time. */
START_TEST(test_stop_closes_idle_after_grace)
{
        struct server s;
        double t0, t_old, t_recent;
        int old, recent, status;

        reset_opts();
        opts.state_size = sizeof(unsigned);
        opts.stop_grace = 0.6;
        opts.drain_timeout = 20;
        server_start(&s);
        old = tcp_connect(s.port);
        send_str(old, "a\n");
        expect_line(old, "a\n");
        usleep(900000); /* idle longer than the grace */
        recent = tcp_connect(s.port);
        send_str(recent, "info\n");
        expect_line(recent, "peer 127.0.0.1 lines 1 stopping 0\n");
        t0 = now();
        kill(s.pid, SIGTERM);
        expect_eof(old, T_WAIT);
        t_old = now() - t0;
        usleep(200000); /* within the grace: the next request is served */
        send_str(recent, "info\n");
        expect_line(recent, "peer 127.0.0.1 lines 2 stopping 15\n");
        t0 = now();
        expect_eof(recent, T_WAIT);
        t_recent = now() - t0;
        ck_assert_msg(t_old < t_recent, "the long idle one closed after %.3f s, the recent one %.3f s after its answer",
                      t_old, t_recent);
        ck_assert_double_ge(t_recent, 0.4);
        ck_assert_int_eq(waitpid(s.pid, &status, 0), s.pid);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        ck_assert_double_lt(now() - t0, 10.0);
        close(old);
        close(recent);
}
END_TEST

/* A peer that stops reading is cut off by the write timeout: after it, the
 * connection ends with less than the 64 MiB sent. */
START_TEST(test_write_timeout_cuts_off_a_peer_that_does_not_read)
{
        static char buf[1 << 16];
        struct server s;
        size_t total = 0;
        double t0;
        int fd;

        reset_opts();
        opts.write_timeout = 0.3;
        opts.request_timeout = 30;
        server_start(&s);
        fd = tcp_connect(s.port);
        send_str(fd, "flood\n");
        usleep(1500000); /* not reading, five times the write timeout */
        t0 = now();
        for (;;) {
                ssize_t r;

                ck_assert_msg(readable(fd, 5000), "no EOF: the server still writes after %zu bytes", total);
                r = read(fd, buf, sizeof(buf));
                if (r == 0)
                        break;
                if (r < 0 && errno == ECONNRESET)
                        break;
                ck_assert_int_gt(r, 0);
                total += (size_t)r;
        }
        ck_assert_msg(total < (size_t)FLOOD_CHUNK * FLOOD_CHUNKS, "got all %zu bytes", total);
        ck_assert_double_lt(now() - t0, 10.0);
        close(fd);
        ck_assert_int_eq(server_stop(&s), 0);
}
END_TEST

/* Frames split and joined anyhow arrive whole and in order; a stream that
 * ends inside a frame closes the connection. */
START_TEST(test_framed_peek_exact_flush)
{
        struct server s;
        int fd;

        reset_opts();
        opts.handler = framed_conn;
        server_start(&s);
        fd = tcp_connect(s.port);
        send_str(fd, "3abc5hello");
        expect_line(fd, "3:abc\n5:hello\n");
        send_str(fd, "4ab");
        usleep(50000);
        send_str(fd, "cd");
        expect_line(fd, "4:abcd\n");
        send_str(fd, "9xy");
        ck_assert_int_eq(shutdown(fd, SHUT_WR), 0);
        expect_eof(fd, 5000);
        close(fd);
        ck_assert_int_eq(server_stop(&s), 0);
}
END_TEST

/* Without state_size a connection has no state: aiot_conn_state() is NULL
 * (it once pointed past the connection's allocation, and line_conn's count
 * went there). */
START_TEST(test_conn_without_state)
{
        struct server s;
        int fd;

        reset_opts();
        server_start(&s);
        fd = tcp_connect(s.port);
        send_str(fd, "a\n");
        expect_line(fd, "a\n");
        send_str(fd, "info\n");
        expect_line(fd, "peer 127.0.0.1 lines 0 stopping 0\n");
        close(fd);
        ck_assert_int_eq(server_stop(&s), 0);
}
END_TEST

/* The server's log so far, NUL-terminated. */
static void read_log(char *buf, size_t len)
{
        FILE *f = fopen(log_path, "r");
        size_t n = 0;

        if (f) {
                n = fread(buf, 1, len - 1, f);
                fclose(f);
        }
        buf[n] = '\0';
}

/* Out of fds (RLIMIT_NOFILE 64, soft = hard) with 80 connections open at once:
 * accepting pauses instead of spinning, the log names the limit once, and
 * every connection is answered as others close.  No connection is closed
 * before the limit was logged, so that the worker surely hits it. */
START_TEST(test_emfile_pauses_and_recovers)
{
        struct server s;
        int fds[80];
        char line[32], logbuf[4096];
        double t0;

        reset_opts();
        fd_limit = 64;
        snprintf(log_path, sizeof(log_path), "/tmp/check-serve-%d.log", (int)getpid());
        server_start(&s);
        for (int i = 0; i < 80; i++) {
                fds[i] = tcp_connect(s.port);
                snprintf(line, sizeof(line), "n %d\n", i);
                send_str(fds[i], line);
        }
        t0 = now();
        do {
                usleep(20000);
                read_log(logbuf, sizeof(logbuf));
        } while (!strstr(logbuf, "RLIMIT_NOFILE is 64") && now() - t0 < T_WAIT / 1000.0);
        ck_assert_msg(strstr(logbuf, "Too many open files (RLIMIT_NOFILE is 64"), "log: %s", logbuf);
        for (int i = 0; i < 80; i++) {
                snprintf(line, sizeof(line), "n %d\n", i);
                expect_line(fds[i], line);
                close(fds[i]);
        }
        ck_assert_int_eq(server_stop(&s), 0);
        read_log(logbuf, sizeof(logbuf));
        unlink(log_path);
        /* Once per interval, not once per attempt. */
        ck_assert_ptr_null(strstr(strstr(logbuf, "RLIMIT_NOFILE is 64") + 1, "RLIMIT_NOFILE is 64"));
}
END_TEST

/* ---------------------------------------------------------------- through aiotools-serve */

static const char *builddir(void)
{
        const char *b = getenv("top_builddir");

        return b ? b : ".";
}

/* aiotools-serve --check MODULE's output line. */
static void check_module(const char *module, char *out, size_t len)
{
        char cmd[1024];
        FILE *f;

        snprintf(cmd, sizeof(cmd), "%s/daemon/aiotools-serve --check %s/%s 2>&1", builddir(), builddir(), module);
        f = popen(cmd, "r");
        ck_assert_ptr_nonnull(f);
        if (!fgets(out, (int)len, f))
                out[0] = '\0';
        pclose(f);
}

/* A module built before the connection fields loads as a worker module (the
 * daemon does not read past its object); echo is a connection handler. */
START_TEST(test_module_kinds)
{
        char out[512];

        check_module("tests/.libs/oldabi.so", out, sizeof(out));
        ck_assert_msg(strstr(out, "module 'oldabi'") && strstr(out, "ABI 1, a worker function"), "%s", out);
        check_module("examples/.libs/echo.so", out, sizeof(out));
        ck_assert_msg(strstr(out, "module 'echo'") && strstr(out, "a connection handler"), "%s", out);
}
END_TEST

/* The command line's limits reach the layer: echo with --idle-timeout. */
START_TEST(test_cli_idle_timeout_reaches_echo)
{
        char serve[512], module[512], bind[64];
        int port = free_port(), fd = -1, status;
        double t0 = now();
        pid_t pid;

        snprintf(serve, sizeof(serve), "%s/daemon/aiotools-serve", builddir());
        snprintf(module, sizeof(module), "%s/examples/.libs/echo.so", builddir());
        snprintf(bind, sizeof(bind), "127.0.0.1:%d", port);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                execl(serve, serve, "-w", "1", "-b", bind, "--idle-timeout=0.5", "--log-level=warning", module,
                      (char *)NULL);
                _exit(127);
        }
        while ((fd = try_connect(port)) < 0) {
                ck_assert_msg(now() - t0 < T_WAIT / 1000.0, "aiotools-serve did not start listening");
                usleep(10000);
        }
        send_str(fd, "echo me\n");
        expect_line(fd, "echo me\n");
        t0 = now();
        expect_eof(fd, T_WAIT);
        ck_assert_double_ge(now() - t0, 0.3);
        close(fd);
        kill(pid, SIGTERM);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}
END_TEST

/* ------------------------------------------------------------ aiot_tls_new */

#ifdef HAVE_OPENSSL
/* Makes a self-signed P-256 certificate and its key in dir with openssl(1). */
static void make_cert(const char *dir, const char *name)
{
        char cmd[1024];

        snprintf(cmd, sizeof(cmd),
                 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
                 "-subj /CN=localhost -keyout %s/%s.key -out %s/%s.pem 2>/dev/null",
                 dir, name, dir, name);
        ck_assert_int_eq(system(cmd), 0);
}
#endif

/* The context's checks: bad options, a file that does not load and a key of
 * another certificate are refused with a line naming the file; a good pair
 * loads and is freed (as is NULL). */
START_TEST(test_tls_new_checks_its_files)
{
        char dir[] = "/tmp/check_serve_tls.XXXXXX", a_pem[64], a_key[64], b_key[64], none[64], err[256];
        struct aiot_tls_opts o = { .size = sizeof(o), .n_certs = 1 };
        const char *certs[1], *keys[1];
        aiot_tls *t = NULL;

        ck_assert_ptr_nonnull(mkdtemp(dir));
        snprintf(a_pem, sizeof(a_pem), "%s/a.pem", dir);
        snprintf(a_key, sizeof(a_key), "%s/a.key", dir);
        snprintf(b_key, sizeof(b_key), "%s/b.key", dir);
        snprintf(none, sizeof(none), "%s/none.pem", dir);
        o.certs = certs;
        o.keys = keys;
        ck_assert_int_eq(aiot_tls_new(NULL, &t, err, sizeof(err)), -EINVAL);
#ifdef HAVE_OPENSSL
        make_cert(dir, "a");
        make_cert(dir, "b");
        certs[0] = a_pem, keys[0] = a_key;
        ck_assert_int_eq(aiot_tls_new(&o, &t, err, sizeof(err)), 0);
        ck_assert_ptr_nonnull(t);
        aiot_tls_free(t);
        certs[0] = none;
        ck_assert_int_eq(aiot_tls_new(&o, &t, err, sizeof(err)), -EINVAL);
        ck_assert_msg(strstr(err, none), "%s", err);
        certs[0] = a_pem, keys[0] = b_key;
        ck_assert_int_eq(aiot_tls_new(&o, &t, err, sizeof(err)), -EINVAL);
        ck_assert_msg(strstr(err, "b.key"), "%s", err);
#else
        certs[0] = a_pem, keys[0] = a_key;
        ck_assert_int_eq(aiot_tls_new(&o, &t, err, sizeof(err)), -EOPNOTSUPP);
#endif
        aiot_tls_free(NULL);
        snprintf(err, sizeof(err), "rm -rf %s", dir);
        ck_assert_int_eq(system(err), 0);
}
END_TEST

static Suite *serve_suite(void)
{
        Suite *s = suite_create("serve");
        TCase *tc = tcase_create("serve");

        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_echo_200_concurrent);
        tcase_add_test(tc, test_pipelined_in_order);
        tcase_add_test(tc, test_keep_survives_idle_then_idle_timeout);
        tcase_add_test(tc, test_request_timeout_stops_slowloris);
        tcase_add_test(tc, test_max_connections_holds_and_recovers);
        tcase_add_test(tc, test_stop_answers_open_and_queued);
        tcase_add_test(tc, test_overlong_line_and_garbage);
        tcase_add_test(tc, test_emfile_pauses_and_recovers);
        tcase_add_test(tc, test_conn_state_peer_and_stopping);
        tcase_add_test(tc, test_conn_without_state);
        tcase_add_test(tc, test_framed_peek_exact_flush);
        tcase_add_test(tc, test_write_timeout_cuts_off_a_peer_that_does_not_read);
        tcase_add_test(tc, test_stop_closes_idle_after_grace);
        tcase_add_test(tc, test_lingering_close_no_reset);
        tcase_add_test(tc, test_sendfile_a_large_file);
        tcase_add_test(tc, test_tls_new_checks_its_files);
        suite_add_tcase(s, tc);

        tc = tcase_create("aiotools-serve");
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_module_kinds);
        tcase_add_test(tc, test_cli_idle_timeout_reaches_echo);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        signal(SIGPIPE, SIG_IGN);
        return testutil_run(serve_suite());
}
