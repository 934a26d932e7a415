/* SPDX-License-Identifier: MIT */
/* http-hello: a minimal HTTP/1.1 server module for benchmarks.  Every request
 * gets "200 OK" with the body "hello\n".
 *
 *   aiotools-serve -w 2 -b 127.0.0.1:8080 examples/.libs/http-hello.so
 *   curl -i http://127.0.0.1:8080/
 *
 * Keep-alive by default (HTTP/1.1), "Connection: close" and HTTP/1.0 honoured.
 * Pipelining-safe: every complete request in the buffer is answered, in order,
 * and the answers go out in one write.  A request head larger than the 8 KiB
 * buffer gets 431, a malformed one 400, a chunked body 501; each then closes.
 * Bodies with Content-Length are read and dropped.
 *
 * On the stop signal (also the old generation's during a reload) the
 * acceptors are cancelled at once, and the open connections drain: each
 * keep-alive connection gets its next request answered with "Connection:
 * close" and is then closed.  An idle keep-alive connection is not closed
 * straight away, because that races with the client's next request (which
 * would then fail); it waits up to the drain time for it (module argument
 * drain=SECONDS, default 2), and only then is cancelled.
 *
 *   aiotools-serve -w 2 -b 127.0.0.1:8080 examples/.libs/http-hello.so -- drain=2
 *
 * After a read that left the socket empty the next one waits for readability
 * first, so that a keep-alive connection costs one read per request rather
 * than one more that only returns EAGAIN. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <aiotools.h>

#define HEAD_MAX 8192
#define OUT_MAX 16384

static const char ok_keep[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\n";
static const char ok_close[] =
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\n";
static const char err_400[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
static const char err_431[] =
        "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
static const char err_501[] = "HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/* Set once the worker got its stop signal: answers then say "Connection: close". */
static bool draining;
static size_t n_conns;
static aiot_event *conns_gone;

struct conn {
        int fd;
        char in[HEAD_MAX];
        size_t in_len;
        char out[OUT_MAX];
        size_t out_len;
        unsigned long long skip; /* body bytes still to drop */
        bool close_after;
};

struct request {
        bool head_only;
        bool keep_alive;
        bool chunked;
        unsigned long long content_length;
};

static bool is_tchar(char c)
{
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c);
}

/* The value of a header line "Name: value" if its name is name, else NULL. */
static const char *header_value(const char *line, const char *end, const char *name)
{
        size_t n = strlen(name);

        if ((size_t)(end - line) <= n || strncasecmp(line, name, n) != 0 || line[n] != ':')
                return NULL;
        line += n + 1;
        while (line < end && (*line == ' ' || *line == '\t'))
                line++;
        return line;
}

static bool value_has(const char *v, const char *end, const char *token)
{
        size_t n = strlen(token);

        for (; v + n <= end; v++)
                if (strncasecmp(v, token, n) == 0)
                        return true;
        return false;
}

/* Parses the head in [p, p+len) (ending with CRLF CRLF).  Returns false if malformed. */
static bool parse_head(const char *p, size_t len, struct request *rq)
{
        const char *end = p + len, *eol = memchr(p, '\r', len), *sp1, *sp2, *line;
        bool http11, saw_cl = false;

        if (!eol || eol[1] != '\n')
                return false;
        for (sp1 = p; sp1 < eol && is_tchar(*sp1); sp1++)
                ;
        if (sp1 == p || sp1 >= eol || *sp1 != ' ')
                return false;
        sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1));
        if (!sp2 || sp2 == sp1 + 1 || eol - sp2 - 1 != 8 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
            (sp2[8] != '0' && sp2[8] != '1'))
                return false;
        http11 = sp2[8] == '1';
        rq->head_only = sp1 - p == 4 && strncmp(p, "HEAD", 4) == 0;
        rq->keep_alive = http11;
        rq->chunked = false;
        rq->content_length = 0;
        for (line = eol + 2; line < end - 2; line = eol + 2) {
                const char *v;

                eol = memchr(line, '\r', (size_t)(end - line));
                if (!eol || eol[1] != '\n' || eol == line || *line == ' ' || *line == '\t' ||
                    !memchr(line, ':', (size_t)(eol - line)))
                        return false;
                if ((v = header_value(line, eol, "Connection"))) {
                        if (value_has(v, eol, "close"))
                                rq->keep_alive = false;
                        else if (value_has(v, eol, "keep-alive"))
                                rq->keep_alive = true;
                } else if ((v = header_value(line, eol, "Transfer-Encoding"))) {
                        rq->chunked = true;
                } else if ((v = header_value(line, eol, "Content-Length"))) {
                        char *e;
                        unsigned long long n;

                        if (saw_cl || v == eol || *v < '0' || *v > '9')
                                return false;
                        errno = 0;
                        n = strtoull(v, &e, 10);
                        while (e < eol && (*e == ' ' || *e == '\t'))
                                e++;
                        if (errno || e != eol)
                                return false;
                        rq->content_length = n;
                        saw_cl = true;
                }
        }
        return true;
}

static void out_add(struct conn *c, const char *s, size_t n)
{
        memcpy(c->out + c->out_len, s, n);
        c->out_len += n;
}

/* Sends what is queued; shielded, so that a stop never cuts an answer in half. */
static int flush(struct conn *c)
{
        ssize_t r = 0;

        if (c->out_len == 0)
                return 0;
        aiot_shield_begin();
        r = aiot_write_all(c->fd, c->out, c->out_len);
        aiot_shield_end();
        c->out_len = 0;
        return r < 0 ? (int)r : 0;
}

/* Answers every complete request in the buffer.  Returns false to close. */
static bool process(struct conn *c)
{
        size_t off = 0;
        bool go_on = true;

        while (go_on) {
                char *start = c->in + off, *head_end;
                size_t avail = c->in_len - off;
                struct request rq;

                if (c->skip) {
                        size_t n = avail < c->skip ? avail : (size_t)c->skip;
                        off += n;
                        c->skip -= n;
                        if (c->skip)
                                break;
                        continue;
                }
                head_end = memmem(start, avail, "\r\n\r\n", 4);
                if (!head_end) {
                        if (avail == sizeof(c->in)) {
                                out_add(c, err_431, sizeof(err_431) - 1);
                                go_on = false;
                        }
                        break;
                }
                if (c->out_len + sizeof(ok_close) > sizeof(c->out) && flush(c) < 0)
                        return false;
                if (!parse_head(start, (size_t)(head_end + 4 - start), &rq)) {
                        out_add(c, err_400, sizeof(err_400) - 1);
                        go_on = false;
                        break;
                }
                if (rq.chunked) {
                        out_add(c, err_501, sizeof(err_501) - 1);
                        go_on = false;
                        break;
                }
                off += (size_t)(head_end + 4 - start);
                c->skip = rq.content_length;
                if (rq.keep_alive && !draining) {
                        out_add(c, ok_keep, sizeof(ok_keep) - 1);
                } else {
                        out_add(c, ok_close, sizeof(ok_close) - 1);
                        go_on = false;
                }
                if (!rq.head_only)
                        out_add(c, "hello\n", 6);
        }
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
        return flush(c) == 0 && go_on;
}

static int serve_conn(void *arg)
{
        struct conn *c = calloc(1, sizeof(*c));
        int one = 1;

        if (!c) {
                aiot_close((int)(intptr_t)arg);
                return -ENOMEM;
        }
        c->fd = (int)(intptr_t)arg;
        n_conns++;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        for (bool empty = false;;) {
                size_t room = sizeof(c->in) - c->in_len;
                ssize_t n;

                /* The last read drained the socket: reading again now would
                 * only return EAGAIN, so wait for the next request first. */
                if (empty && aiot_wait_fd(c->fd, AIOT_READ) < 0)
                        break;
                n = aiot_read(c->fd, c->in + c->in_len, room);
                if (n <= 0)
                        break;
                empty = (size_t)n < room;
                c->in_len += (size_t)n;
                if (!process(c))
                        break;
        }
        aiot_close(c->fd);
        free(c);
        if (--n_conns == 0 && conns_gone)
                aiot_event_set(conns_gone);
        return 0;
}

struct acceptor {
        int lfd;
        aiot_scope *conns;
        aiot_task *task;
};

/* At the stop: the connections already in the accept queue are served too,
 * rather than reset when the listening socket closes. */
static int take_queued(struct acceptor *a)
{
        int fd;

        while ((fd = accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
                if (aiot_spawn(a->conns, serve_conn, (void *)(intptr_t)fd, NULL) < 0)
                        close(fd);
        return 0;
}

static int accept_loop(void *arg)
{
        struct acceptor *a = arg;

        for (;;) {
                int fd = aiot_accept(a->lfd, NULL, NULL);

                if (fd == -ECANCELED || fd == -ETIMEDOUT)
                        return take_queued(a);
                if (fd < 0) {
                        if (aiot_sleep(0.05) < 0)
                                return 0;
                        continue;
                }
                if (aiot_spawn(a->conns, serve_conn, (void *)(intptr_t)fd, NULL) < 0)
                        aiot_close(fd);
        }
}

static double drain_time(aiot_worker *w)
{
        char *const *argv = aiot_worker_argv(w);

        for (int i = 1; i < aiot_worker_argc(w); i++)
                if (!strncmp(argv[i], "drain=", 6))
                        return atof(argv[i] + 6);
        return 2.0;
}

/* Lets the open connections finish their next request, up to the drain time. */
static void drain(aiot_worker *w)
{
        aiot_deadline d;

        draining = true;
        if (aiot_event_new(&conns_gone) < 0)
                return;
        aiot_deadline_begin(&d, drain_time(w));
        while (n_conns > 0 && aiot_event_wait(conns_gone) == 0)
                aiot_event_clear(conns_gone);
        aiot_deadline_end(&d);
        aiot_event_free(conns_gone);
        conns_gone = NULL;
}

static int hello_worker(aiot_worker *w)
{
        const aiot_listener *ls;
        size_t n = aiot_worker_listeners(w, &ls);
        struct acceptor *acc;
        aiot_scope *conns;
        int r = 0;

        if (n == 0) {
                aiot_log(AIOT_LOG_ERR, "http-hello needs at least one --bind address");
                return -EINVAL;
        }
        acc = calloc(n, sizeof(*acc));
        if (!acc)
                return -ENOMEM;
        r = aiot_scope_open(&conns, NULL);
        if (r < 0) {
                free(acc);
                return r;
        }
        for (size_t i = 0; i < n && r == 0; i++) {
                acc[i] = (struct acceptor){.lfd = ls[i].fd, .conns = conns};
                r = aiot_spawn(aiot_worker_scope(w), accept_loop, &acc[i], &acc[i].task);
        }
        if (r == 0)
                aiot_worker_wait_stop(w);
        /* Teardown: no new connections, then the open ones drain, then what
         * is left (idle past the drain time) is cancelled at its next read. */
        for (size_t i = 0; i < n; i++)
                if (acc[i].task)
                        aiot_cancel_and_wait(acc[i].task);
        aiot_worker_close_listeners(w);
        if (r == 0)
                drain(w);
        aiot_scope_cancel(conns);
        aiot_scope_close(conns);
        free(acc);
        return r;
}

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI,
        .name = "http-hello",
        .worker = hello_worker,
};
