/* SPDX-License-Identifier: MIT */
/* A connection's buffered stream: a read buffer that grows up to what the
 * caller asks for (read_until's maximum), and a write buffer sent with one
 * sendmsg (a writev with MSG_NOSIGNAL) per flush.
 *
 * The buffers (struct aiot__conn_buf) exist only while they hold bytes, or
 * while a handler runs: aiot__conn_shrink() frees them before a connection is
 * kept, so that an idle connection costs its struct and its state area only.
 *
 * Reads: after a read(2) that returned less than it asked for, the socket is
 * empty, so the next read waits for readability first instead of making a
 * read(2) that only returns EAGAIN (one read per request, not two).  Pending
 * output is flushed before any read: a peer that waits for our answer before
 * it sends more would otherwise wait forever.
 *
 * Files go out with sendfile(2) after the buffer was flushed, under the same
 * write timeout as writes (armed only once the socket is full). */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "aiotools/io.h"
#include "conn-internal.h"
#include "macro.h"

#define IN_FIRST 4096      /* the read buffer's first size */
#define OUT_FIRST 4096     /* the write buffer's first size ... */
#define OUT_MAX 16384      /* ... and the largest: bigger writes go out at once */

int aiot__conn_new(struct aiot__serve *srv, unsigned short listener, int fd, size_t state_size, aiot_conn **ret)
{
        aiot_conn *c = calloc(1, sizeof(*c) + state_size);

        if (!c)
                return -ENOMEM;
        c->srv = srv;
        c->listener = listener;
        c->fd = fd;
        c->has_state = state_size > 0;
        *ret = c;
        return 0;
}

static void buf_free(aiot_conn *c)
{
        if (c->buf) {
                free(c->buf->in);
                free(c->buf->out);
                free(c->buf);
                c->buf = NULL;
        }
}

/* The buffers, allocated on first use; NULL when out of memory. */
static struct aiot__conn_buf *buf_get(aiot_conn *c)
{
        if (!c->buf)
                c->buf = calloc(1, sizeof(*c->buf));
        return c->buf;
}

void aiot__conn_free(aiot_conn *c)
{
        if (!c)
                return;
        (void)aiot_close(c->fd);
        buf_free(c);
        free(c);
}

void aiot__conn_shrink(aiot_conn *c)
{
        struct aiot__conn_buf *b = c->buf;

        if (b && b->in_off == b->in_len && b->out_len == 0)
                buf_free(c);
}

void aiot__conn_drop(aiot_conn *c)
{
        buf_free(c);
}

size_t aiot__conn_buffered(const aiot_conn *c)
{
        return c->buf ? c->buf->in_len - c->buf->in_off : 0;
}

void *aiot_conn_state(aiot_conn *c)
{
        return c && c->has_state ? c->state : NULL;
}

int aiot_conn_fd(const aiot_conn *c)
{
        return c ? c->fd : -EINVAL;
}

int aiot_conn_peer(const aiot_conn *c, struct sockaddr_storage *ss, socklen_t *len)
{
        aiot__return_if(!c || !ss || !len, -EINVAL);
        return getpeername(c->fd, (struct sockaddr *)ss, len) < 0 ? -errno : 0;
}

aiot_worker *aiot_conn_worker(const aiot_conn *c)
{
        return c ? aiot__serve_worker(c->srv) : NULL;
}

const aiot_listener *aiot_conn_listener(const aiot_conn *c)
{
        return c ? aiot__serve_listener(c->srv, c->listener) : NULL;
}

/* ---------------------------------------------------------------- writing */

/* Parks until the socket takes bytes again.  The write timeout starts the
 * first time the socket is full (*armed, d), so a peer that reads costs no
 * timer at all. */
static int wait_writable(aiot_conn *c, bool *armed, aiot_deadline *d)
{
        double limit = aiot__serve_write_timeout(c->srv);
        int r;

        if (!*armed && isfinite(limit))
                *armed = aiot_deadline_begin(d, limit) == 0;
        r = aiot_wait_fd(c->fd, AIOT_WRITE);
        return r > 0 ? 0 : r;
}

/* Sends the n iovecs completely, parking while the socket is full. */
static int send_all(aiot_conn *c, struct iovec *iov, int n, size_t *sent)
{
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        aiot_deadline d;
        bool armed = false;
        int r = aiot_checkpoint();

        *sent = 0;
        while (r == 0 && mh.msg_iovlen > 0) {
                ssize_t k = sendmsg(c->fd, &mh, MSG_NOSIGNAL);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        r = errno == EAGAIN ? wait_writable(c, &armed, &d) : -errno;
                        continue;
                }
                *sent += (size_t)k;
                while (mh.msg_iovlen > 0 && (size_t)k >= mh.msg_iov->iov_len) {
                        k -= (ssize_t)mh.msg_iov->iov_len;
                        mh.msg_iov++;
                        mh.msg_iovlen--;
                }
                if (mh.msg_iovlen > 0) {
                        mh.msg_iov->iov_base = (char *)mh.msg_iov->iov_base + k;
                        mh.msg_iov->iov_len -= (size_t)k;
                }
        }
        if (armed)
                (void)aiot_deadline_end(&d);
        return r;
}

/* The buffered bytes and then buf[0..n), in one go; the buffer is empty after. */
static int send_with(aiot_conn *c, const void *buf, size_t n, size_t *sent)
{
        struct aiot__conn_buf *b = c->buf;
        struct iovec iov[2];
        int k = 0, r;
        size_t dummy;

        if (b && b->out_len)
                iov[k++] = (struct iovec){.iov_base = b->out, .iov_len = b->out_len};
        if (n)
                iov[k++] = (struct iovec){.iov_base = (void *)buf, .iov_len = n};
        r = k ? send_all(c, iov, k, sent ? sent : &dummy) : 0;
        if (!k && sent)
                *sent = 0;
        if (b)
                b->out_len = 0;
        return r;
}

static int out_reserve(struct aiot__conn_buf *b, size_t n)
{
        size_t cap = b->out_cap ? b->out_cap : OUT_FIRST;
        char *p;

        while (cap < b->out_len + n)
                cap *= 2;
        if (cap == b->out_cap)
                return 0;
        p = realloc(b->out, cap);
        if (!p)
                return -ENOMEM;
        b->out = p;
        b->out_cap = cap;
        return 0;
}

int aiot_conn_write(aiot_conn *c, const void *buf, size_t n)
{
        struct aiot__conn_buf *b;

        aiot__return_if(!c || (!buf && n), -EINVAL);
        if ((c->buf ? c->buf->out_len : 0) + n > OUT_MAX)
                return send_with(c, buf, n, NULL);
        b = buf_get(c);
        if (!b || out_reserve(b, n) < 0)
                return -ENOMEM;
        memcpy(b->out + b->out_len, buf, n);
        b->out_len += n;
        return 0;
}

int aiot_conn_flush(aiot_conn *c, size_t *sent)
{
        aiot__return_if(!c, -EINVAL);
        return send_with(c, NULL, 0, sent);
}

ssize_t aiot_conn_sendfile(aiot_conn *c, int fd, off_t *offset, size_t count)
{
        aiot_deadline d;
        bool armed = false;
        size_t sent = 0;
        int r;

        aiot__return_if(!c || fd < 0, -EINVAL);
        r = aiot_conn_flush(c, NULL);
        while (r == 0 && sent < count) {
                ssize_t k = sendfile(c->fd, fd, offset, count - sent);

                if (k > 0)
                        sent += (size_t)k;
                else if (k == 0)
                        break; /* the file ended first */
                else if (errno == EAGAIN)
                        r = wait_writable(c, &armed, &d);
                else if (errno != EINTR)
                        r = -errno;
        }
        if (armed)
                (void)aiot_deadline_end(&d);
        return r < 0 ? r : (ssize_t)sent;
}

/* ---------------------------------------------------------------- reading */

/* Moves the unread bytes to the front (pointers handed out before become
 * invalid, as documented) and grows the buffer to hold want bytes. */
static int in_reserve(struct aiot__conn_buf *b, size_t want)
{
        size_t unread = b->in_len - b->in_off, cap = b->in_cap ? b->in_cap : IN_FIRST;
        char *p;

        if (b->in_off) {
                memmove(b->in, b->in + b->in_off, unread);
                b->in_off = 0;
                b->in_len = unread;
        }
        while (cap < want)
                cap *= 2;
        if (cap == b->in_cap)
                return 0;
        p = realloc(b->in, cap);
        if (!p)
                return -ENOMEM;
        b->in = p;
        b->in_cap = cap;
        return 0;
}

/* One read(2) into free room, room for want bytes in all.  Returns the bytes
 * read, 0 at end of file, -errno. */
static ssize_t fill(aiot_conn *c, size_t want)
{
        struct aiot__conn_buf *b;
        size_t room;
        ssize_t n;
        int r;

        if (c->eof)
                return 0;
        if (!(b = buf_get(c)))
                return -ENOMEM;
        if (b->out_len && (r = aiot_conn_flush(c, NULL)) < 0)
                return r;
        if ((r = in_reserve(b, want)) < 0)
                return r;
        room = b->in_cap - b->in_len;
        if (c->drained && (r = aiot_wait_fd(c->fd, AIOT_READ)) < 0)
                return r;
        n = aiot_read(c->fd, b->in + b->in_len, room);
        if (n < 0)
                return n;
        if (n == 0) {
                c->eof = true;
                return 0;
        }
        c->drained = (size_t)n < room;
        b->in_len += (size_t)n;
        return n;
}

/* The buffer size for the next read of read_until: the present one while it
 * has room, else twice the unread bytes, at most max (more than unread). */
static size_t in_want(const aiot_conn *c, size_t unread, size_t max)
{
        size_t want = c->buf && c->buf->in_cap ? c->buf->in_cap : IN_FIRST;

        if (unread >= want)
                want = unread * 2 > max ? max : unread * 2;
        return want;
}

ssize_t aiot_conn_read_until(aiot_conn *c, const char *delim, size_t max, const char **data)
{
        size_t dlen;

        aiot__return_if(!c || !delim || !*delim || !data || max == 0, -EINVAL);
        dlen = strlen(delim);
        for (size_t scanned = 0;;) {
                struct aiot__conn_buf *b = c->buf;
                size_t unread = aiot__conn_buffered(c), from = scanned >= dlen ? scanned - dlen + 1 : 0;
                char *hit = unread > from ? memmem(b->in + b->in_off + from, unread - from, delim, dlen) : NULL;
                ssize_t n;

                if (hit) {
                        size_t len = (size_t)(hit - (b->in + b->in_off)) + dlen;

                        if (len > max)
                                return -EMSGSIZE;
                        *data = b->in + b->in_off;
                        b->in_off += len;
                        return (ssize_t)len;
                }
                if (unread >= max)
                        return -EMSGSIZE;
                scanned = unread;
                n = fill(c, in_want(c, unread, max));
                if (n <= 0)
                        return n;
        }
}

ssize_t aiot_conn_peek(aiot_conn *c, const char **data)
{
        ssize_t n;

        aiot__return_if(!c || !data, -EINVAL);
        if (aiot__conn_buffered(c) == 0 && (n = fill(c, IN_FIRST)) <= 0)
                return n;
        *data = c->buf->in + c->buf->in_off;
        return (ssize_t)aiot__conn_buffered(c);
}

void aiot_conn_consume(aiot_conn *c, size_t n)
{
        size_t unread = c ? aiot__conn_buffered(c) : 0;

        if (unread)
                c->buf->in_off += n < unread ? n : unread;
}

int aiot_conn_read_exact(aiot_conn *c, void *buf, size_t n)
{
        char *p = buf;

        aiot__return_if(!c || (!buf && n), -EINVAL);
        while (n > 0) {
                const char *data;
                ssize_t k = aiot_conn_peek(c, &data);

                if (k < 0)
                        return (int)k;
                if (k == 0)
                        return -ENODATA;
                if ((size_t)k > n)
                        k = (ssize_t)n;
                memcpy(p, data, (size_t)k);
                aiot_conn_consume(c, (size_t)k);
                p += k;
                n -= (size_t)k;
        }
        return 0;
}
