/* SPDX-License-Identifier: MIT */
/* ctlmod: the module tests/proof-ctl.sh loads into the real aiotools-serve,
 * so that `ctl tasks` has something to show.  Every worker spawns named
 * tasks that park for good, each on something else:
 *
 *   "sleeper"         aiot_sleep(3600)
 *   "event waiter"    an event nobody sets
 *   "sem waiter"      a semaphore at 0
 *   "socket reader"   aiot_read() on a socketpair nobody writes to
 *   "joiner"          aiot_join() of the sleeper
 *   "shielded waiter" inside aiot_shield_begin(), an event set at the stop
 *
 * and accepts on every listener: a task named "answer" reads a line and
 * answers "ok\n", except for "hang", which blocks the whole process (its
 * loop too) for 60 s inside that task (the watchdog's abort names it).
 * Module arguments (after "--"): slow=SEC makes the setup take SEC seconds
 * (sleeping: the loop and its heartbeat go on; --setup-timeout tests);
 * block=SEC blocks the whole process (its loop too) for SEC seconds in the
 * setup, so that its heartbeat stalls (--setup-timeout against --worker-timeout);
 * failif=PATH fails every setup with -EADDRNOTAVAIL while PATH exists (a
 * reload whose new generation cannot start). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <aiotools.h>

static aiot_worker *worker;

struct parked {
        aiot_event *ev, *stop;
        aiot_sem *sem;
        int pair[2];
        aiot_task *sleeper;
};

static int sleeper(void *arg)
{
        return aiot_sleep(3600);
}

static int event_waiter(void *arg)
{
        return aiot_event_wait(((struct parked *)arg)->ev);
}

static int sem_waiter(void *arg)
{
        return aiot_sem_acquire(((struct parked *)arg)->sem);
}

static int socket_reader(void *arg)
{
        char c;

        return (int)aiot_read(((struct parked *)arg)->pair[0], &c, 1);
}

static int joiner(void *arg)
{
        return aiot_join(((struct parked *)arg)->sleeper, NULL);
}

static int shielded_waiter(void *arg)
{
        int r;

        aiot_shield_begin();
        r = aiot_event_wait(((struct parked *)arg)->stop);
        aiot_shield_end();
        return r;
}

static int answer(void *arg)
{
        int fd = (int)(intptr_t)arg;
        char line[16] = "";
        struct timespec ts = {.tv_sec = 60};

        (void)aiot_read(fd, line, sizeof(line) - 1);
        if (strncmp(line, "hang", 4) == 0) {
                (void)aiot_write_all(fd, "hanging\n", 8);
                while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                        ;
        }
        (void)aiot_write_all(fd, "ok\n", 3);
        return aiot_close(fd);
}

static const struct aiot_spawn_opts answer_opts = {.size = sizeof(answer_opts), .name = "answer"};

static int acceptor(void *arg)
{
        const aiot_listener *l = arg;

        for (;;) {
                int fd = aiot_accept(l->fd, NULL, NULL);

                if (fd == -ECANCELED || fd == -EBADF || fd == -EINVAL)
                        return 0;
                if (fd >= 0 && aiot_spawn_opts(aiot_worker_scope(worker), answer, (void *)(intptr_t)fd, &answer_opts, NULL) < 0)
                        (void)aiot_close(fd);
        }
}

static int spawn_named(aiot_scope *s, aiot_task_fn fn, void *arg, const char *name, aiot_task **ret)
{
        struct aiot_spawn_opts o = {.size = sizeof(o), .name = name};

        return aiot_spawn_opts(s, fn, arg, &o, ret);
}

static int arg_setup(aiot_worker *w)
{
        for (int i = 1; i < aiot_worker_argc(w); i++) {
                const char *a = aiot_worker_argv(w)[i];

                if (strncmp(a, "slow=", 5) == 0)
                        (void)aiot_sleep(atof(a + 5));
                else if (strncmp(a, "block=", 6) == 0) {
                        double sec = atof(a + 6);
                        struct timespec ts = {.tv_sec = (time_t)sec, .tv_nsec = (long)((sec - (double)(time_t)sec) * 1e9)};

                        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                                ;
                }
                else if (strncmp(a, "failif=", 7) == 0 && access(a + 7, F_OK) == 0)
                        return -EADDRNOTAVAIL;
        }
        return 0;
}

static int ctl_worker(aiot_worker *w)
{
        aiot_scope *s = aiot_worker_scope(w);
        struct parked p = {.pair = {-1, -1}};
        const aiot_listener *ls;
        size_t n = aiot_worker_listeners(w, &ls);
        int r = arg_setup(w);

        worker = w;
        if (r == 0 && (aiot_event_new(&p.ev) < 0 || aiot_event_new(&p.stop) < 0 || aiot_sem_new(&p.sem, 0) < 0 ||
                       socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, p.pair) < 0))
                r = -ENOMEM;
        if (r == 0)
                r = spawn_named(s, sleeper, &p, "sleeper", &p.sleeper);
        if (r == 0)
                r = spawn_named(s, event_waiter, &p, "event waiter", NULL);
        if (r == 0)
                r = spawn_named(s, sem_waiter, &p, "sem waiter", NULL);
        if (r == 0)
                r = spawn_named(s, socket_reader, &p, "socket reader", NULL);
        if (r == 0)
                r = spawn_named(s, joiner, &p, "joiner", NULL);
        if (r == 0)
                r = spawn_named(s, shielded_waiter, &p, "shielded waiter", NULL);
        for (size_t i = 0; r == 0 && i < n; i++)
                r = spawn_named(s, acceptor, (void *)&ls[i], "ctlmod acceptor", NULL);
        if (r == 0)
                r = aiot_worker_wait_stop(w);
        if (p.stop)
                aiot_event_set(p.stop);
        aiot_scope_cancel(s);
        if (p.sleeper)
                (void)aiot_cancel_and_wait(p.sleeper);
        return r < 0 ? r : 0;
}

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI,
        .name = "ctlmod",
        .worker = ctl_worker,
};
