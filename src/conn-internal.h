/* SPDX-License-Identifier: MIT */
/* The connection object, shared by src/conn.c (its buffered stream) and
 * src/server/serve.c (accepting, keeping and closing it).  Internal. */
#ifndef AIOT_CONN_INTERNAL_H
#define AIOT_CONN_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

#include "aiotools/conn.h"

struct aiot__serve;

/* The buffers, allocated on first use and freed once empty: a kept (idle)
 * connection never holds them. */
struct aiot__conn_buf {
        char *in;                   /* the read buffer: bytes [in_off, in_len) are unread */
        size_t in_cap, in_off, in_len;
        char *out;                  /* the write buffer */
        size_t out_len, out_cap;
};

/* Kept small: an idle kept connection holds only this and its state area. */
struct aiot_conn {
        ev_io io;                   /* watches the fd while the connection is kept */
        struct aiot__serve *srv;
        const aiot_listener *listener; /* the one that accepted it */
        aiot_conn *idle_prev, *idle_next; /* the server's idle list, oldest first */
        double idle_since;          /* libev time when it became idle */
        struct aiot__conn_buf *buf; /* NULL while both buffers are empty */
        int fd;
        bool drained;               /* the last read emptied the socket: wait before reading */
        bool eof;
        bool busy;                  /* a handler task runs for it */
        bool has_state;             /* state_size > 0: aiot_conn_state() is NULL otherwise */
        max_align_t state[];        /* state_size bytes */
};

/* conn.c */
int aiot__conn_new(struct aiot__serve *srv, const aiot_listener *l, int fd, size_t state_size, aiot_conn **ret);
void aiot__conn_free(aiot_conn *c);            /* closes the fd too */
void aiot__conn_shrink(aiot_conn *c);          /* frees empty buffers: before keeping it */
size_t aiot__conn_buffered(const aiot_conn *c);
aiot_worker *aiot__serve_worker(const struct aiot__serve *srv); /* serve.c */
double aiot__serve_write_timeout(const struct aiot__serve *srv); /* serve.c; INFINITY: none */

#endif
