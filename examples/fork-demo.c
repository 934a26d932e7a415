/* SPDX-License-Identifier: MIT */
/* fork-demo: four children on a libev loop, reaped as they exit.
 *
 * Children 0..2 sleep a little and exit with a code; child 3 would sleep for
 * a minute, but the parent sends it SIGTERM after 300 ms, so it is reported as
 * killed (status -15).  The whole run takes about half a second. */
#include <errno.h>
#include <ev.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <aiotools.h>

#define N_CHILDREN 4

struct demo {
        aiot_child *child[N_CHILDREN];
        int left;
};

static int child_main(void *arg)
{
        int i = (int)(intptr_t)arg;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (i + 1) * 100 * 1000 * 1000L};

        if (i == 3)
                ts = (struct timespec){.tv_sec = 60};

        /* The child has its own pid: give its log lines a prefix of their own. */
        aiot_log_set_prefix(i == 3 ? "sleeper" : "child");
        aiot_log(AIOT_LOG_INFO, "child %d running, sleeping %ld ms", i,
                 (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
        return 10 + i;
}

static void on_exit_cb(aiot_child *c, int status, void *userdata)
{
        struct demo *d = userdata;

        if (status >= 0)
                aiot_log(AIOT_LOG_INFO, "child pid %d exited with code %d", (int)aiot_child_pid(c), status);
        else
                aiot_log(AIOT_LOG_INFO, "child pid %d was killed by signal %d (%s)", (int)aiot_child_pid(c),
                         -status, strsignal(-status));
        for (int i = 0; i < N_CHILDREN; i++)
                if (d->child[i] == c)
                        d->child[i] = NULL;
        /* Freeing the handle inside its own callback is allowed. */
        aiot_child_free(c);
        d->left--;
}

static void terminate_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct demo *d = w->data;
        int r;

        if (!d->child[3])
                return;
        r = aiot_child_signal(d->child[3], SIGTERM);
        aiot_log(AIOT_LOG_INFO, "sent SIGTERM to pid %d: %s", (int)aiot_child_pid(d->child[3]),
                 r < 0 ? strerror(-r) : "ok");
}

int main(void)
{
        struct demo d = {.left = 0};
        struct ev_loop *loop;
        ev_timer terminate;
        int r;

        aiot_log_set_prefix("fork-demo");
        /* Not the default loop: libev's default loop reaps every child itself. */
        loop = ev_loop_new(EVFLAG_AUTO);
        if (!loop) {
                aiot_log(AIOT_LOG_ERR, "cannot create an event loop");
                return 1;
        }
        aiot_log(AIOT_LOG_INFO, "tracking children by %s",
                 aiot_fork_mode() == AIOT_FORK_PIDFD ? "pidfd" : "SIGCHLD (no pidfd support)");
        for (int i = 0; i < N_CHILDREN; i++) {
                r = aiot_fork(loop, child_main, (void *)(intptr_t)i, on_exit_cb, &d, &d.child[i]);
                if (r < 0) {
                        aiot_log(AIOT_LOG_ERR, "aiot_fork: %s", strerror(-r));
                        return 1;
                }
                d.left++;
                aiot_log(AIOT_LOG_INFO, "started child %d as pid %d", i, (int)aiot_child_pid(d.child[i]));
        }
        ev_timer_init(&terminate, terminate_cb, 0.3, 0.0);
        terminate.data = &d;
        ev_timer_start(loop, &terminate);
        /* ev_run returns once no watcher is left: every child has been reaped. */
        ev_run(loop, 0);
        ev_loop_destroy(loop);
        aiot_log(AIOT_LOG_INFO, "all children reaped");
        return d.left == 0 ? 0 : 1;
}
