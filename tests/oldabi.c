/* SPDX-License-Identifier: MIT */
/* A module as built before struct aiot_module had its connection fields: its
 * object is the six first fields only, and junk follows it in memory, so that
 * aiotools-serve reading past the object would find a "connection handler"
 * (and refuse the module for having both).  It must load as a worker module. */
#include <aiotools/server.h>

struct old_module {
        unsigned abi;
        const char *name;
        aiot_worker_fn worker;
        aiot_main_fn main_ctx;
        const aiot_worker_fn *extra;
        size_t n_extra;
};

static int worker(aiot_worker *w)
{
        return aiot_worker_wait_stop(w) < 0 ? -1 : 0;
}

/* The module object and, right behind it (one section, built with
 * -fno-toplevel-reorder), a block of non-NULL pointers. */
#define BEHIND __attribute__((section(".data.rel.ro.oldabi"), used))

__attribute__((visibility("default"))) BEHIND const struct old_module aiot_module = {
        1, "oldabi", worker, NULL, NULL, 0,
};
BEHIND __attribute__((aligned(8))) static const void *const junk[4] = {
        &aiot_module, &aiot_module, &aiot_module, &aiot_module,
};
