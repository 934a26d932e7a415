/* SPDX-License-Identifier: MIT */
/* ticker: the rest of the lifecycle in one module, no sockets needed.
 *
 *   aiotools-serve -w 2 examples/.libs/ticker.so -- 0.5
 *
 * - The main context (in the supervisor) parses the interval from the module
 *   arguments and hands it to every process with aiot_worker_set_data():
 *   workers inherit the supervisor's memory, so a plain pointer works.
 * - Each worker runs a periodic timer (aiot_timer_start) in its scope and logs
 *   every tick; the timer is cancelled with the scope after the teardown.
 * - One extra process logs a heartbeat every four intervals, and stops with
 *   the workers. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <aiotools.h>

struct shared {
        double interval;
        char started_by[32];
};

static int tick(double interval, void *arg)
{
        aiot_worker *w = arg;
        const struct shared *sh = aiot_worker_data(w);

        aiot_log(AIOT_LOG_INFO, "tick (every %g s, configured by %s)", interval, sh->started_by);
        return 0;
}

static int ticker_worker(aiot_worker *w)
{
        const struct shared *sh = aiot_worker_data(w);
        int r = aiot_timer_start(aiot_worker_scope(w), tick, w, sh->interval, AIOT_TIMER_DEFAULT, NULL);
        int sig;

        if (r < 0)
                return r;
        sig = aiot_worker_wait_stop(w);
        aiot_log(AIOT_LOG_INFO, "worker %d stopping on signal %d", aiot_worker_index(w), sig);
        return 0;
}

static int heartbeat(void *arg)
{
        aiot_worker *w = arg;
        const struct shared *sh = aiot_worker_data(w);

        while (aiot_sleep(sh->interval * 4) == 0)
                aiot_log(AIOT_LOG_INFO, "heartbeat: the workers tick every %g s", sh->interval);
        return 0;
}

static int ticker_extra(aiot_worker *w)
{
        int r = aiot_spawn(aiot_worker_scope(w), heartbeat, w, NULL);

        if (r < 0)
                return r;
        aiot_worker_wait_stop(w);
        return 0;
}

static int ticker_main(aiot_worker *m)
{
        struct shared *sh = calloc(1, sizeof(*sh));
        char *end;
        int sig;

        if (!sh)
                return -ENOMEM;
        sh->interval = 1.0;
        if (aiot_worker_argc(m) > 1) {
                sh->interval = strtod(aiot_worker_argv(m)[1], &end);
                if (*end || !(sh->interval > 0) || !isfinite(sh->interval)) {
                        aiot_log(AIOT_LOG_ERR, "ticker: bad interval '%s'", aiot_worker_argv(m)[1]);
                        free(sh);
                        return -EINVAL;
                }
        }
        snprintf(sh->started_by, sizeof(sh->started_by), "the main context");
        aiot_worker_set_data(m, sh);
        sig = aiot_worker_wait_stop(m);
        aiot_log(AIOT_LOG_INFO, "main context: every process has exited (signal %d)", sig);
        free(sh);
        return 0;
}

static const aiot_worker_fn ticker_extras[] = {ticker_extra};

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI,
        .name = "ticker",
        .worker = ticker_worker,
        .main_ctx = ticker_main,
        .extra = ticker_extras,
        .n_extra = 1,
};
