/* SPDX-License-Identifier: MIT */
/* The ABI of a module loaded by aiotools-serve; see aiot_module(3). */
#ifndef AIOTOOLS_MODULE_H
#define AIOTOOLS_MODULE_H

#include <stddef.h>

#include <aiotools/conn.h>
#include <aiotools/server.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever struct aiot_module or the server API changes incompatibly. */
#define AIOT_MODULE_ABI 1

/* The name of the symbol aiotools-serve looks up. */
#define AIOT_MODULE_SYMBOL "aiot_module"

/* A module defines exactly one object of this type, named aiot_module, with
 * either a worker context or a connection handler:
 *
 *   const struct aiot_module aiot_module = {
 *           .abi = AIOT_MODULE_ABI, .name = "echo", .conn = echo_conn,
 *   };
 *
 * The fields after n_extra came later within ABI 1: aiotools-serve reads them
 * only when the object is large enough to hold them (its ELF symbol size), so
 * modules built before them load unchanged.  (A struct tag rather than a
 * typedef, since the object has the same name.) */
struct aiot_module {
        unsigned abi;                   /* AIOT_MODULE_ABI */
        const char *name;               /* for log lines; required */
        aiot_worker_fn worker;          /* a worker context, or NULL with conn */
        aiot_main_fn main_ctx;          /* optional */
        const aiot_worker_fn *extra;    /* optional extra processes ... */
        size_t n_extra;                 /* ... and how many */
        /* A module that gives only a connection handler: every worker runs
         * aiot_worker_serve(3) with it and aiotools-serve's limits. */
        aiot_conn_fn conn;              /* NULL with worker */
        size_t conn_state_size;         /* aiot_serve_opts.state_size */
        /* Optional, in every worker before it serves: may change *opts (arg,
         * timeouts ...; they hold the command line's values).  Returns 0 or a
         * negative errno (the worker's setup failed). */
        int (*conn_setup)(aiot_worker *w, struct aiot_serve_opts *opts);
        /* Optional, in every worker after it served (also after a failed
         * serve, not after a failed setup); arg is opts->arg. */
        void (*conn_teardown)(aiot_worker *w, void *arg);
        /* Optional: the ALPN protocols the handler speaks, comma-separated
         * in order of preference ("http/1.1"), offered on the TLS listeners
         * unless --tls-alpn says otherwise. */
        const char *tls_alpn;
};

/* Declared here, inside the default-visibility block, so that the module's
 * definition is exported even when it is compiled with -fvisibility=hidden. */
extern const struct aiot_module aiot_module;

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
