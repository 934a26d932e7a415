/* SPDX-License-Identifier: MIT */
/* The ABI of a module loaded by aiotools-serve; see aiot_module(3). */
#ifndef AIOTOOLS_MODULE_H
#define AIOTOOLS_MODULE_H

#include <stddef.h>

#include <aiotools/server.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever struct aiot_module or the server API changes incompatibly. */
#define AIOT_MODULE_ABI 1

/* The name of the symbol aiotools-serve looks up. */
#define AIOT_MODULE_SYMBOL "aiot_module"

/* A module defines exactly one object of this type, named aiot_module:
 *
 *   const struct aiot_module aiot_module = {
 *           .abi = AIOT_MODULE_ABI, .name = "echo", .worker = echo_worker,
 *   };
 *
 * (A struct tag rather than a typedef, since the object has the same name.) */
struct aiot_module {
        unsigned abi;                   /* AIOT_MODULE_ABI */
        const char *name;               /* for log lines; required */
        aiot_worker_fn worker;          /* required */
        aiot_main_fn main_ctx;          /* optional */
        const aiot_worker_fn *extra;    /* optional extra processes ... */
        size_t n_extra;                 /* ... and how many */
};

/* Declared here, inside the default-visibility block, so that the module's
 * definition is exported even when it is compiled with -fvisibility=hidden. */
extern const struct aiot_module aiot_module;

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
