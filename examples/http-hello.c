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
 * A connection handler for aiot_worker_serve(3): it answers one request and
 * hands a keep-alive connection back to the library (AIOT_CONN_KEEP), so that
 * between requests the connection holds no task stack and no buffer.
 *
 * On the stop signal (also the old generation's during a reload) the library
 * stops accepting and drains: a keep-alive connection gets its next request
 * answered with "Connection: close" (aiot_worker_stopping()) and is then
 * closed.  An idle keep-alive connection is closed once it has been idle
 * for the library's stop grace (1 s), not straight away, because that would
 * race with the client's next request; the drain time (module argument
 * drain=SECONDS, default 2, or aiotools-serve --drain-timeout) bounds the
 * requests still running.
 *
 *   aiotools-serve -w 2 -b 127.0.0.1:8080 examples/.libs/http-hello.so -- drain=2
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <aiotools.h>

#define HEAD_MAX 8192

static const char ok_keep[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\n";
static const char ok_close[] =
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\n";
static const char err_400[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
static const char err_431[] =
        "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
static const char err_501[] = "HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/* The per-connection state the library keeps between requests. */
struct hello_state {
        bool nodelay; /* TCP_NODELAY is set */
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

/* Drops n body bytes.  Returns 0, -ENODATA at end of file, -errno. */
static int skip_body(aiot_conn *c, unsigned long long n)
{
        while (n > 0) {
                const char *data;
                ssize_t k = aiot_conn_peek(c, &data);

                if (k <= 0)
                        return k < 0 ? (int)k : -ENODATA;
                if ((unsigned long long)k > n)
                        k = (ssize_t)n;
                aiot_conn_consume(c, (size_t)k);
                n -= (unsigned long long)k;
        }
        return 0;
}

/* Writes a fixed answer that closes the connection. */
static int answer_close(aiot_conn *c, const char *s, size_t n)
{
        int r = aiot_conn_write(c, s, n);

        return r < 0 ? r : 0;
}

/* Answers one request; the library runs it again for the next one. */
static int hello_conn(aiot_conn *c, void *arg)
{
        struct hello_state *st = aiot_conn_state(c);
        const char *head;
        struct request rq;
        bool keep;
        ssize_t n;
        int r;

        (void)arg;
        if (!st->nodelay) {
                int one = 1;

                setsockopt(aiot_conn_fd(c), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                st->nodelay = true;
        }
        n = aiot_conn_read_until(c, "\r\n\r\n", HEAD_MAX, &head);
        if (n == -EMSGSIZE)
                return answer_close(c, err_431, sizeof(err_431) - 1);
        if (n <= 0)
                return (int)n;
        if (!parse_head(head, (size_t)n, &rq))
                return answer_close(c, err_400, sizeof(err_400) - 1);
        if (rq.chunked)
                return answer_close(c, err_501, sizeof(err_501) - 1);
        if ((r = skip_body(c, rq.content_length)) < 0)
                return r;
        keep = rq.keep_alive && !aiot_worker_stopping(aiot_conn_worker(c));
        r = keep ? aiot_conn_write(c, ok_keep, sizeof(ok_keep) - 1) : aiot_conn_write(c, ok_close, sizeof(ok_close) - 1);
        if (r == 0 && !rq.head_only)
                r = aiot_conn_write(c, "hello\n", 6);
        if (r < 0)
                return r;
        return keep ? AIOT_CONN_KEEP : 0;
}

/* drain=SECONDS among the module's arguments sets the drain time. */
static int hello_setup(aiot_worker *w, struct aiot_serve_opts *o)
{
        char *const *argv = aiot_worker_argv(w);

        if (o->drain_timeout == 0)
                o->drain_timeout = 2.0;
        for (int i = 1; i < aiot_worker_argc(w); i++)
                if (!strncmp(argv[i], "drain=", 6)) {
                        double d = atof(argv[i] + 6);

                        o->drain_timeout = d > 0 ? d : 1e-9; /* 0: at once, not the default */
                }
        return 0;
}

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI,
        .name = "http-hello",
        .conn = hello_conn,
        .conn_state_size = sizeof(struct hello_state),
        .conn_setup = hello_setup,
};
