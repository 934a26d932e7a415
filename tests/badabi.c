/* SPDX-License-Identifier: MIT */
/* A module built for a future ABI: aiotools-serve must refuse it. */
#include <aiotools.h>

static int worker(aiot_worker *w)
{
        return aiot_worker_wait_stop(w) < 0 ? -1 : 0;
}

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI + 41,
        .name = "badabi",
        .worker = worker,
};
