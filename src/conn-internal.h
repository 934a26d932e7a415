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
        aiot_conn *idle_prev, *idle_next; /* the server's idle or linger list, oldest first */
        double idle_since;          /* libev time when it joined that list */
        struct aiot__conn_buf *buf; /* NULL while both buffers are empty */
        int fd;
        /* Bits and a short index, so that the struct stays 96 bytes on 64-bit. */
        bool drained : 1;           /* the last read emptied the socket: wait before reading */
        bool eof : 1;
        bool busy : 1;              /* a handler task runs for it */
        bool has_state : 1;         /* state_size > 0: aiot_conn_state() is NULL otherwise */
        bool lingering : 1;         /* shut down for writing, discarding input until EOF */
        unsigned short listener;    /* the index of the listener that accepted it */
        max_align_t state[];        /* state_size bytes */
};

/* conn.c */
int aiot__conn_new(struct aiot__serve *srv, unsigned short listener, int fd, size_t state_size, aiot_conn **ret);
void aiot__conn_free(aiot_conn *c);            /* closes the fd too */
void aiot__conn_shrink(aiot_conn *c);          /* frees empty buffers: before keeping it */
void aiot__conn_drop(aiot_conn *c);            /* frees the buffers, full or not: before lingering */
size_t aiot__conn_buffered(const aiot_conn *c);
aiot_worker *aiot__serve_worker(const struct aiot__serve *srv); /* serve.c */
const aiot_listener *aiot__serve_listener(const struct aiot__serve *srv, unsigned short i); /* serve.c */
double aiot__serve_write_timeout(const struct aiot__serve *srv); /* serve.c; INFINITY: none */

#endif
