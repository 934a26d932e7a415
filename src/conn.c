/* SPDX-License-Identifier: MIT */
/* A connection's buffered stream: a read buffer that grows up to what the
 * caller asks for (read_until's maximum), and a write buffer sent with one
 * sendmsg (a writev with MSG_NOSIGNAL) per flush.
 *
 * Both buffers exist only while they hold bytes, or while a handler runs:
 * aiot__conn_shrink() frees them before a connection is kept, so that an idle
 * connection costs its struct and its state area only.
 *
 * Reads: after a read(2) that returned less than it asked for, the socket is
 * empty, so the next read waits for readability first instead of making a
 * read(2) that only returns EAGAIN (one read per request, not two).  Pending
 * output is flushed before any read: a peer that waits for our answer before
 * it sends more would otherwise wait forever. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "aiotools/io.h"
#include "conn-internal.h"
#include "macro.h"

#define IN_FIRST 4096      /* the read buffer's first size */
#define OUT_FIRST 4096     /* the write buffer's first size ... */
#define OUT_MAX 16384      /* ... and the largest: bigger writes go out at once */

int aiot__conn_new(struct aiot__serve *srv, int fd, size_t state_size, aiot_conn **ret)
{
        aiot_conn *c = calloc(1, sizeof(*c) + state_size);

        if (!c)
                return -ENOMEM;
        c->srv = srv;
        c->fd = fd;
        *ret = c;
        return 0;
}

void aiot__conn_free(aiot_conn *c)
{
        if (!c)
                return;
        (void)aiot_close(c->fd);
        free(c->in);
        free(c->out);
        free(c);
}

void aiot__conn_shrink(aiot_conn *c)
{
        if (c->in_off == c->in_len) {
                free(c->in);
                c->in = NULL;
                c->in_cap = c->in_off = c->in_len = 0;
        }
        if (c->out_len == 0) {
                free(c->out);
                c->out = NULL;
                c->out_cap = 0;
        }
}

size_t aiot__conn_buffered(const aiot_conn *c)
{
        return c->in_len - c->in_off;
}

void *aiot_conn_state(aiot_conn *c)
{
        return c ? c->state : NULL;
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

/* ---------------------------------------------------------------- writing */

/* Sends the n iovecs completely, parking while the socket is full. */
static int send_all(aiot_conn *c, struct iovec *iov, int n, size_t *sent)
{
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        int r = aiot_checkpoint();

        *sent = 0;
        while (r == 0 && mh.msg_iovlen > 0) {
                ssize_t k = sendmsg(c->fd, &mh, MSG_NOSIGNAL);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                return -errno;
                        r = aiot_wait_fd(c->fd, AIOT_WRITE);
                        if (r > 0)
                                r = 0;
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
        return r;
}

/* The buffered bytes and then buf[0..n), in one go; the buffer is empty after. */
static int send_with(aiot_conn *c, const void *buf, size_t n, size_t *sent)
{
        struct iovec iov[2];
        int k = 0, r;
        size_t dummy;

        if (c->out_len)
                iov[k++] = (struct iovec){.iov_base = c->out, .iov_len = c->out_len};
        if (n)
                iov[k++] = (struct iovec){.iov_base = (void *)buf, .iov_len = n};
        r = k ? send_all(c, iov, k, sent ? sent : &dummy) : 0;
        if (!k && sent)
                *sent = 0;
        c->out_len = 0;
        return r;
}

static int out_reserve(aiot_conn *c, size_t n)
{
        size_t cap = c->out_cap ? c->out_cap : OUT_FIRST;
        char *p;

        while (cap < c->out_len + n)
                cap *= 2;
        if (cap == c->out_cap)
                return 0;
        p = realloc(c->out, cap);
        if (!p)
                return -ENOMEM;
        c->out = p;
        c->out_cap = cap;
        return 0;
}

int aiot_conn_write(aiot_conn *c, const void *buf, size_t n)
{
        aiot__return_if(!c || (!buf && n), -EINVAL);
        if (c->out_len + n > OUT_MAX)
                return send_with(c, buf, n, NULL);
        if (out_reserve(c, n) < 0)
                return -ENOMEM;
        memcpy(c->out + c->out_len, buf, n);
        c->out_len += n;
        return 0;
}

int aiot_conn_flush(aiot_conn *c, size_t *sent)
{
        aiot__return_if(!c, -EINVAL);
        return send_with(c, NULL, 0, sent);
}

/* ---------------------------------------------------------------- reading */

/* Moves the unread bytes to the front (pointers handed out before become
 * invalid, as documented) and grows the buffer to hold want bytes. */
static int in_reserve(aiot_conn *c, size_t want)
{
        size_t unread = c->in_len - c->in_off, cap = c->in_cap ? c->in_cap : IN_FIRST;
        char *p;

        if (c->in_off) {
                memmove(c->in, c->in + c->in_off, unread);
                c->in_off = 0;
                c->in_len = unread;
        }
        while (cap < want)
                cap *= 2;
        if (cap == c->in_cap)
                return 0;
        p = realloc(c->in, cap);
        if (!p)
                return -ENOMEM;
        c->in = p;
        c->in_cap = cap;
        return 0;
}

/* One read(2) into free room, room for want bytes in all.  Returns the bytes
 * read, 0 at end of file, -errno. */
static ssize_t fill(aiot_conn *c, size_t want)
{
        size_t room;
        ssize_t n;
        int r;

        if (c->eof)
                return 0;
        if (c->out_len && (r = aiot_conn_flush(c, NULL)) < 0)
                return r;
        if ((r = in_reserve(c, want)) < 0)
                return r;
        room = c->in_cap - c->in_len;
        if (c->drained && (r = aiot_wait_fd(c->fd, AIOT_READ)) < 0)
                return r;
        n = aiot_read(c->fd, c->in + c->in_len, room);
        if (n < 0)
                return n;
        if (n == 0) {
                c->eof = true;
                return 0;
        }
        c->drained = (size_t)n < room;
        c->in_len += (size_t)n;
        return n;
}

/* The buffer size for the next read of read_until: the present one while it
 * has room, else twice the unread bytes, at most max (more than unread). */
static size_t in_want(const aiot_conn *c, size_t unread, size_t max)
{
        size_t want = c->in_cap ? c->in_cap : IN_FIRST;

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
                size_t unread = c->in_len - c->in_off, from = scanned >= dlen ? scanned - dlen + 1 : 0;
                char *hit = unread > from ? memmem(c->in + c->in_off + from, unread - from, delim, dlen) : NULL;
                ssize_t n;

                if (hit) {
                        size_t len = (size_t)(hit - (c->in + c->in_off)) + dlen;

                        if (len > max)
                                return -EMSGSIZE;
                        *data = c->in + c->in_off;
                        c->in_off += len;
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
        if (c->in_len == c->in_off && (n = fill(c, IN_FIRST)) <= 0)
                return n;
        *data = c->in + c->in_off;
        return (ssize_t)(c->in_len - c->in_off);
}

void aiot_conn_consume(aiot_conn *c, size_t n)
{
        size_t unread;

        if (!c)
                return;
        unread = c->in_len - c->in_off;
        c->in_off += n < unread ? n : unread;
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
