/* SPDX-License-Identifier: MIT */
/* The fork module with real processes.  Every test of the "both-paths" case is a
 * loop test: iteration 0 uses the default mode (pidfd on a modern kernel),
 * iteration 1 forces the SIGCHLD fallback with AIOTOOLS_NO_PIDFD=1.  make check
 * runs this program a second time under tests/nopidfd, where both iterations
 * take the fallback because the kernel "lacks" pidfd. */

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>

#include "aiotools/fork.h"
#include "testutil.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif

/* ---------------------------------------------------------------- helpers */

/* The mode aiot_fork_mode() must report without AIOTOOLS_NO_PIDFD:
 * run-nopidfd.sh says "sigchld"; otherwise ask the kernel ourselves. */
static int expected_default_mode(void)
{
        const char *e = getenv("AIOTOOLS_EXPECT_FORK_MODE");
        int fd;

        if (e && strcmp(e, "sigchld") == 0)
                return AIOT_FORK_SIGCHLD;
        if (e && strcmp(e, "pidfd") == 0)
                return AIOT_FORK_PIDFD;
        fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
        if (fd < 0)
                return AIOT_FORK_SIGCHLD;
        close(fd);
        return AIOT_FORK_PIDFD;
}

/* Selects the path for loop iteration i and checks that the library agrees. */
static void use_mode(int i)
{
        if (i)
                setenv("AIOTOOLS_NO_PIDFD", "1", 1);
        else
                unsetenv("AIOTOOLS_NO_PIDFD");
        ck_assert_int_eq(aiot_fork_mode(), i ? AIOT_FORK_SIGCHLD : expected_default_mode());
}

/* Runs after every test: no child of ours may be left, running or zombie. */
static void assert_no_children(void)
{
        siginfo_t si = {0};
        int r = waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT);

        ck_assert_msg(r < 0 && errno == ECHILD, "a child is left behind (waitid %d, pid %d)", r,
                      (int)si.si_pid);
        ck_assert_int_eq(testutil_count_zombies(), 0);
        unsetenv("AIOTOOLS_NO_PIDFD");
}

static struct ev_loop *new_loop(void)
{
        struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);

        ck_assert_ptr_nonnull(loop);
        return loop;
}

static void watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        ck_abort_msg("the loop still has children after 10 s");
}

/* ev_run until no watcher is left, which is when every child has been reaped.
 * The watchdog is unreferenced so that it does not keep the loop alive itself. */
static void run_loop(struct ev_loop *loop)
{
        ev_timer wd;

        ev_timer_init(&wd, watchdog_cb, 10.0, 0.0);
        ev_timer_start(loop, &wd);
        ev_unref(loop);
        ev_run(loop, 0);
        ev_ref(loop);
        ev_timer_stop(loop, &wd);
}

struct rec {
        aiot_child *c;
        int status;
        int calls;
};

static void rec_cb(aiot_child *c, int status, void *userdata)
{
        struct rec *r = userdata;

        ck_assert_ptr_eq(c, r->c);
        r->status = status;
        r->calls++;
}

static int child_return(void *arg)
{
        return (int)(intptr_t)arg;
}

static int child_pause(void *arg)
{
        for (;;)
                pause();
        return 0; /* not reached */
}

/* A real fault, not raise(): a write to a PROT_NONE page.  (A NULL write would
 * be caught by UBSan in the sanitizer build and end as exit(1).) */
static int child_segv(void *arg)
{
        struct rlimit none = {0, 0};
        volatile int *p;

        setrlimit(RLIMIT_CORE, &none);
        p = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
                return 99;
        *p = 1;
        return 98;
}

struct gated {
        int fd;   /* read end of a pipe: one byte releases one child */
        int code; /* its exit code */
};

static int child_gated(void *arg)
{
        const struct gated *g = arg;
        char b;

        while (read(g->fd, &b, 1) < 0 && errno == EINTR)
                ;
        return g->code;
}

static void release(int fd, int n)
{
        char buf[256];

        memset(buf, 'x', sizeof(buf));
        while (n > 0) {
                ssize_t w = write(fd, buf, n < (int)sizeof(buf) ? (size_t)n : sizeof(buf));
                ck_assert_int_gt(w, 0);
                n -= (int)w;
        }
}

static bool is_our_child(pid_t pid)
{
        char path[64], buf[4096];
        ssize_t n;
        int fd;
        char *p;

        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return false;
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return false;
        buf[n] = '\0';
        p = strstr(buf, "\nPPid:");
        return p && atoi(p + 6) == getpid();
}

/* ---------------------------------------------------------------- exit statuses */

START_TEST(test_exit_codes)
{
        struct ev_loop *loop;
        struct rec r0 = {0}, r3 = {0};
        int st = 12345;

        use_mode(_i);
        loop = new_loop();
        ck_assert_int_eq(aiot_fork(loop, child_return, (void *)0, rec_cb, &r0, &r0.c), 0);
        ck_assert_int_eq(aiot_fork(loop, child_return, (void *)3, rec_cb, &r3, &r3.c), 0);
        ck_assert_int_gt(aiot_child_pid(r0.c), 0);
        ck_assert_int_ne(aiot_child_pid(r0.c), aiot_child_pid(r3.c));
        ck_assert(is_our_child(aiot_child_pid(r0.c)));
        ck_assert(is_our_child(aiot_child_pid(r3.c)));
        /* Only the loop reaps, and it has not run yet. */
        ck_assert_int_eq(aiot_child_status(r0.c, &st), -EAGAIN);
        ck_assert_int_eq(st, 12345);

        run_loop(loop);
        ck_assert_int_eq(r0.calls, 1);
        ck_assert_int_eq(r0.status, 0);
        ck_assert_int_eq(r3.calls, 1);
        ck_assert_int_eq(r3.status, 3);
        ck_assert_int_eq(aiot_child_status(r0.c, &st), 0);
        ck_assert_int_eq(st, 0);
        ck_assert_int_eq(aiot_child_status(r3.c, &st), 0);
        ck_assert_int_eq(st, 3);
        aiot_child_free(r0.c);
        aiot_child_free(r3.c);
        ev_loop_destroy(loop);
}
END_TEST

START_TEST(test_sigkill)
{
        struct ev_loop *loop;
        struct rec r = {0};
        int st;

        use_mode(_i);
        loop = new_loop();
        ck_assert_int_eq(aiot_fork(loop, child_pause, NULL, rec_cb, &r, &r.c), 0);
        ck_assert_int_eq(aiot_child_signal(r.c, 0), 0);
        ck_assert_int_eq(aiot_child_signal(r.c, -1), -EINVAL);
        ck_assert_int_eq(aiot_child_signal(r.c, NSIG), -EINVAL);
        ck_assert_int_eq(aiot_child_signal(r.c, SIGKILL), 0);
        run_loop(loop);
        ck_assert_int_eq(r.calls, 1);
        ck_assert_int_eq(r.status, -SIGKILL);
        ck_assert_int_eq(aiot_child_status(r.c, &st), 0);
        ck_assert_int_eq(st, -9);
        aiot_child_free(r.c);
        ev_loop_destroy(loop);
}
END_TEST

START_TEST(test_segfault)
{
        struct ev_loop *loop;
        struct rec r = {0};

        use_mode(_i);
        loop = new_loop();
        ck_assert_int_eq(aiot_fork(loop, child_segv, NULL, rec_cb, &r, &r.c), 0);
        run_loop(loop);
        ck_assert_int_eq(r.calls, 1);
        ck_assert_int_eq(r.status, -SIGSEGV);
        aiot_child_free(r.c);
        ev_loop_destroy(loop);
}
END_TEST

/* ---------------------------------------------------------------- signals */

static void noop_handler(int sig)
{
}

/* The parent handles SIGTERM and even blocks it.  A child that inherited either
 * would survive the signal and pause forever: the watchdog would fire. */
START_TEST(test_signal_right_after_fork)
{
        struct sigaction sa = {.sa_handler = noop_handler}, old_sa;
        sigset_t term, old_mask;
        struct ev_loop *loop;

        use_mode(_i);
        sigemptyset(&sa.sa_mask);
        ck_assert_int_eq(sigaction(SIGTERM, &sa, &old_sa), 0);
        sigemptyset(&term);
        sigaddset(&term, SIGTERM);
        ck_assert_int_eq(sigprocmask(SIG_BLOCK, &term, &old_mask), 0);
        loop = new_loop();
        for (int n = 0; n < 50; n++) {
                struct rec r = {0};

                ck_assert_int_eq(aiot_fork(loop, child_pause, NULL, rec_cb, &r, &r.c), 0);
                ck_assert_int_eq(aiot_child_signal(r.c, SIGTERM), 0);
                run_loop(loop);
                ck_assert_int_eq(r.calls, 1);
                ck_assert_msg(r.status == -SIGTERM, "round %d: status %d", n, r.status);
                aiot_child_free(r.c);
        }
        ev_loop_destroy(loop);
        sigprocmask(SIG_SETMASK, &old_mask, NULL);
        sigaction(SIGTERM, &old_sa, NULL);
}
END_TEST

/* Tries to make the next fork() get PID target (root only, via ns_last_pid). */
static void steer_next_pid(pid_t target)
{
        char buf[32];
        int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);

        if (fd < 0)
                return;
        snprintf(buf, sizeof(buf), "%d", (int)target - 1);
        if (write(fd, buf, strlen(buf)) < 0) {
                /* not allowed here: the canary gets some other PID */
        }
        close(fd);
}

START_TEST(test_signal_reaped)
{
        struct ev_loop *loop;
        struct rec r = {0};
        pid_t pid, canary = -1;
        int st, tries;

        use_mode(_i);
        loop = new_loop();
        ck_assert_int_eq(aiot_fork(loop, child_return, (void *)0, rec_cb, &r, &r.c), 0);
        pid = aiot_child_pid(r.c);
        run_loop(loop);
        ck_assert_int_eq(r.calls, 1);
        ck_assert_int_eq(aiot_child_signal(r.c, SIGKILL), -ESRCH);
        ck_assert_int_eq(aiot_child_signal(r.c, 0), -ESRCH);

        /* A canary, where possible under the very PID the reaped child had. */
        for (tries = 0; tries < 20; tries++) {
                steer_next_pid(pid);
                canary = fork();
                ck_assert_int_ge(canary, 0);
                if (canary == 0)
                        for (;;)
                                pause();
                if (canary == pid)
                        break;
                kill(canary, SIGKILL);
                ck_assert_int_eq(waitpid(canary, NULL, 0), canary);
        }
        if (canary != pid) {
                fprintf(stderr, "test_signal_reaped: could not reuse PID %d; using a canary elsewhere\n",
                        (int)pid);
                canary = fork();
                ck_assert_int_ge(canary, 0);
                if (canary == 0)
                        for (;;)
                                pause();
        }
        for (int n = 0; n < 100; n++) {
                ck_assert_int_eq(aiot_child_signal(r.c, SIGKILL), -ESRCH);
                ck_assert_int_eq(aiot_child_signal(r.c, SIGTERM), -ESRCH);
        }
        /* The canary is still running: nothing reached it. */
        ck_assert_int_eq(waitpid(canary, &st, WNOHANG), 0);
        ck_assert_int_eq(kill(canary, SIGKILL), 0);
        ck_assert_int_eq(waitpid(canary, &st, 0), canary);
        ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
        aiot_child_free(r.c);
        ev_loop_destroy(loop);
}
END_TEST

/* ---------------------------------------------------------------- many children */

#define MANY 200

START_TEST(test_many_children)
{
        static struct rec recs[MANY];
        static struct gated gates[MANY];
        struct ev_loop *loop;
        int go[2], st;

        use_mode(_i);
        memset(recs, 0, sizeof(recs));
        loop = new_loop();
        ck_assert_int_eq(pipe2(go, O_CLOEXEC), 0);
        for (int i = 0; i < MANY; i++) {
                gates[i] = (struct gated){.fd = go[0], .code = i % 256};
                ck_assert_int_eq(aiot_fork(loop, child_gated, &gates[i], rec_cb, &recs[i], &recs[i].c), 0);
        }
        /* All of them are alive at once before any is released. */
        for (int i = 0; i < MANY; i++)
                ck_assert_int_eq(aiot_child_status(recs[i].c, &st), -EAGAIN);
        release(go[1], MANY);
        run_loop(loop);
        for (int i = 0; i < MANY; i++) {
                ck_assert_int_eq(recs[i].calls, 1);
                ck_assert_int_eq(recs[i].status, i % 256);
                aiot_child_free(recs[i].c);
        }
        close(go[0]);
        close(go[1]);
        ev_loop_destroy(loop);
}
END_TEST

/* ---------------------------------------------------------------- ownership */

/* A handle freed while its child runs: the loop keeps watching and reaps it. */
START_TEST(test_free_running_child)
{
        struct ev_loop *loop;
        aiot_child *c;
        pid_t pid;

        use_mode(_i);
        loop = new_loop();
        ck_assert_int_eq(aiot_fork(loop, child_pause, NULL, NULL, NULL, &c), 0);
        pid = aiot_child_pid(c);
        aiot_child_free(c);
        /* Still unreaped, so the PID is still this child's. */
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        run_loop(loop);
        ck_assert_int_eq(waitpid(pid, NULL, WNOHANG), -1);
        ck_assert_int_eq(errno, ECHILD);
        ev_loop_destroy(loop);
}
END_TEST

struct chain {
        struct ev_loop *loop;
        aiot_child *b;
        int go_wr;
        int a_calls, next_calls, next_status;
};

static void next_cb(aiot_child *c, int status, void *userdata)
{
        struct chain *ch = userdata;

        ch->next_calls++;
        ch->next_status = status;
        aiot_child_free(c);
}

/* Frees itself, frees a sibling that still runs, and forks a successor. */
static void a_cb(aiot_child *c, int status, void *userdata)
{
        struct chain *ch = userdata;
        aiot_child *next;

        ch->a_calls++;
        ck_assert_int_eq(status, 5);
        aiot_child_free(c);
        aiot_child_free(ch->b);
        release(ch->go_wr, 1);
        ck_assert_int_eq(aiot_fork(ch->loop, child_return, (void *)9, next_cb, ch, &next), 0);
}

static void never_cb(aiot_child *c, int status, void *userdata)
{
        ck_abort_msg("the callback of a freed handle ran");
}

START_TEST(test_free_in_callback)
{
        struct chain ch = {0};
        struct gated gb;
        aiot_child *a;
        int go[2];

        use_mode(_i);
        ch.loop = new_loop();
        ck_assert_int_eq(pipe2(go, O_CLOEXEC), 0);
        ch.go_wr = go[1];
        gb = (struct gated){.fd = go[0], .code = 7};
        ck_assert_int_eq(aiot_fork(ch.loop, child_gated, &gb, never_cb, NULL, &ch.b), 0);
        ck_assert_int_eq(aiot_fork(ch.loop, child_return, (void *)5, a_cb, &ch, &a), 0);
        run_loop(ch.loop);
        ck_assert_int_eq(ch.a_calls, 1);
        ck_assert_int_eq(ch.next_calls, 1);
        ck_assert_int_eq(ch.next_status, 9);
        close(go[0]);
        close(go[1]);
        ev_loop_destroy(ch.loop);
}
END_TEST

/* The supervisor pattern: each exit callback starts the successor.  With one
 * child at a time, the SIGCHLD path's per-loop reaper goes idle inside its own
 * callback and is taken up again by the fork made there. */
struct respawn {
        struct ev_loop *loop;
        int generation;
        int statuses[5];
};

static void respawn_cb(aiot_child *c, int status, void *userdata)
{
        struct respawn *rs = userdata;
        aiot_child *next;

        rs->statuses[rs->generation++] = status;
        aiot_child_free(c);
        if (rs->generation < 5)
                ck_assert_int_eq(aiot_fork(rs->loop, child_return, (void *)(intptr_t)(20 + rs->generation),
                                           respawn_cb, rs, &next),
                                 0);
}

START_TEST(test_respawn_from_callback)
{
        struct respawn rs = {0};
        aiot_child *first;

        use_mode(_i);
        rs.loop = new_loop();
        ck_assert_int_eq(aiot_fork(rs.loop, child_return, (void *)20, respawn_cb, &rs, &first), 0);
        run_loop(rs.loop);
        ck_assert_int_eq(rs.generation, 5);
        for (int g = 0; g < 5; g++)
                ck_assert_int_eq(rs.statuses[g], 20 + g);
        ev_loop_destroy(rs.loop);
}
END_TEST

/* Ten children exit together; each callback frees its own handle and the next
 * one's, which may be exited-but-not-yet-dispatched or still running. */
#define PAIRS 10
struct pairs {
        aiot_child *h[PAIRS];
        bool freed[PAIRS];
        int calls;
};

static struct pairs pairs;

static void pair_cb(aiot_child *c, int status, void *userdata)
{
        int k = (int)(intptr_t)userdata;

        ck_assert_msg(!pairs.freed[k], "callback %d after its handle was freed", k);
        ck_assert_int_eq(status, k);
        pairs.calls++;
        pairs.freed[k] = true;
        aiot_child_free(c);
        if (k + 1 < PAIRS && !pairs.freed[k + 1]) {
                pairs.freed[k + 1] = true;
                aiot_child_free(pairs.h[k + 1]);
        }
}

START_TEST(test_free_other_in_callback)
{
        struct gated gates[PAIRS];
        struct ev_loop *loop;
        int go[2];

        use_mode(_i);
        memset(&pairs, 0, sizeof(pairs));
        loop = new_loop();
        ck_assert_int_eq(pipe2(go, O_CLOEXEC), 0);
        for (int k = 0; k < PAIRS; k++) {
                gates[k] = (struct gated){.fd = go[0], .code = k};
                ck_assert_int_eq(
                        aiot_fork(loop, child_gated, &gates[k], pair_cb, (void *)(intptr_t)k, &pairs.h[k]),
                        0);
        }
        release(go[1], PAIRS);
        run_loop(loop);
        for (int k = 0; k < PAIRS; k++)
                ck_assert(pairs.freed[k]);
        ck_assert_int_ge(pairs.calls, PAIRS / 2);
        close(go[0]);
        close(go[1]);
        ev_loop_destroy(loop);
}
END_TEST

START_TEST(test_set_exit_cb)
{
        struct ev_loop *loop;
        struct rec r = {0};

        use_mode(_i);
        loop = new_loop();
        ck_assert_int_eq(aiot_fork(loop, child_pause, NULL, NULL, NULL, &r.c), 0);
        ck_assert_int_eq(aiot_child_set_exit_cb(NULL, rec_cb, &r), -EINVAL);
        ck_assert_int_eq(aiot_child_set_exit_cb(r.c, rec_cb, &r), 0);
        ck_assert_int_eq(aiot_child_signal(r.c, SIGTERM), 0);
        run_loop(loop);
        ck_assert_int_eq(r.calls, 1);
        ck_assert_int_eq(r.status, -SIGTERM);
        ck_assert_int_eq(aiot_child_set_exit_cb(r.c, rec_cb, &r), -ESRCH);
        aiot_child_free(r.c);
        ev_loop_destroy(loop);
}
END_TEST

/* Someone else reaps our child first: the handle reports AIOT_CHILD_LOST. */
START_TEST(test_stolen_child)
{
        struct ev_loop *loop;
        struct rec r = {0};
        int st;

        use_mode(_i);
        loop = new_loop();
        ck_assert_int_eq(aiot_fork(loop, child_return, (void *)4, rec_cb, &r, &r.c), 0);
        ck_assert_int_eq(waitpid(aiot_child_pid(r.c), &st, 0), aiot_child_pid(r.c));
        ck_assert_int_eq(WEXITSTATUS(st), 4);
        run_loop(loop);
        ck_assert_int_eq(r.calls, 1);
        ck_assert_int_eq(r.status, AIOT_CHILD_LOST);
        ck_assert_int_eq(aiot_child_signal(r.c, SIGKILL), -ESRCH);
        aiot_child_free(r.c);
        ev_loop_destroy(loop);
}
END_TEST

/* ---------------------------------------------------------------- the child's side */

struct fdcheck {
        int allowed[256];
        int n;
        int deliberate;
};

static bool fd_allowed(const struct fdcheck *fc, int fd)
{
        for (int i = 0; i < fc->n; i++)
                if (fc->allowed[i] == fd)
                        return true;
        return false;
}

static bool fd_is_pidfd(int fd)
{
        char path[64], target[128];
        ssize_t n;

        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        n = readlink(path, target, sizeof(target) - 1);
        if (n < 0)
                return false;
        target[n] = '\0';
        return strstr(target, "pidfd") != NULL;
}

/* Exit code: 0 clean; 1 the deliberately inherited fd is missing (the scan is
 * broken); otherwise the number (capped at 255) of an fd it should not have. */
static int child_check_fds(void *arg)
{
        const struct fdcheck *fc = arg;
        bool saw_deliberate = false;
        int bad = 0;
        struct dirent *de;
        DIR *d = opendir("/proc/self/fd");

        if (!d)
                return 2;
        while ((de = readdir(d))) {
                int fd = atoi(de->d_name);

                if (de->d_name[0] == '.' || fd == dirfd(d) || fd <= 2)
                        continue;
                if (fd == fc->deliberate)
                        saw_deliberate = true;
                else if (!fd_allowed(fc, fd) || fd_is_pidfd(fd))
                        bad = fd > 255 ? 255 : fd;
        }
        closedir(d);
        if (bad)
                return bad;
        return saw_deliberate ? 0 : 1;
}

static void snapshot_fds(struct fdcheck *fc)
{
        struct dirent *de;
        DIR *d = opendir("/proc/self/fd");

        ck_assert_ptr_nonnull(d);
        fc->n = 0;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.' && atoi(de->d_name) != dirfd(d)) {
                        ck_assert_int_lt(fc->n, 256);
                        fc->allowed[fc->n++] = atoi(de->d_name);
                }
        closedir(d);
}

static int count_pidfds(void)
{
        int n = 0;

        for (int fd = 3; fd < 1024; fd++)
                if (fcntl(fd, F_GETFD) >= 0 && fd_is_pidfd(fd))
                        n++;
        return n;
}

static void async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
}

START_TEST(test_no_inherited_fds)
{
        static struct fdcheck fc;
        struct ev_loop *loop;
        struct rec ra = {0}, rb = {0};
        ev_async as;
        int deliberate[2];

        use_mode(_i);
        loop = new_loop();
        /* The loop's own fds (epoll, its wakeup eventfd that ev_async creates on
         * first use) belong to the loop, not to the library: allow them. */
        ev_async_init(&as, async_cb);
        ev_async_start(loop, &as);
        ev_async_stop(loop, &as);
        snapshot_fds(&fc);

        /* A sibling, so that the parent holds a pidfd on the pidfd path. */
        ck_assert_int_eq(aiot_fork(loop, child_pause, NULL, rec_cb, &ra, &ra.c), 0);
        if (aiot_fork_mode() == AIOT_FORK_PIDFD)
                ck_assert_int_ge(count_pidfds(), 1);
        ck_assert_int_eq(pipe(deliberate), 0);
        fc.deliberate = deliberate[0];
        fc.allowed[fc.n++] = deliberate[1];

        ck_assert_int_eq(aiot_fork(loop, child_check_fds, &fc, rec_cb, &rb, &rb.c), 0);
        while (rb.calls == 0)
                ev_run(loop, EVRUN_ONCE);
        ck_assert_msg(rb.status == 0, "child status %d (1: scan broken, >2: stray fd)", rb.status);
        ck_assert_int_eq(aiot_child_signal(ra.c, SIGKILL), 0);
        run_loop(loop);
        ck_assert_int_eq(ra.status, -SIGKILL);
        aiot_child_free(ra.c);
        aiot_child_free(rb.c);
        close(deliberate[0]);
        close(deliberate[1]);
        ev_loop_destroy(loop);
}
END_TEST

/* In a forked child the parent's handles answer -ECHILD, and the child can start
 * its own loop and children (the module's globals were reset for it).  Exit
 * code: 0 when all of that holds, else which step failed. */
static int child_nested(void *arg)
{
        aiot_child *sibling = arg, *grandchild;
        struct ev_loop *loop;
        int st = -1;

        if (aiot_child_signal(sibling, 0) != -ECHILD)
                return 10;
        if (aiot_child_set_exit_cb(sibling, NULL, NULL) != -ECHILD)
                return 11;
        aiot_child_free(sibling); /* only this process's copy of the memory */
        loop = ev_loop_new(EVFLAG_AUTO);
        if (!loop)
                return 12;
        if (aiot_fork(loop, child_return, (void *)6, NULL, NULL, &grandchild) < 0)
                return 13;
        ev_run(loop, 0);
        if (aiot_child_status(grandchild, &st) < 0)
                return 14;
        aiot_child_free(grandchild);
        ev_loop_destroy(loop);
        return st == 6 ? 0 : 15;
}

START_TEST(test_nested_fork)
{
        struct ev_loop *loop;
        struct rec rs = {0}, rn = {0};

        use_mode(_i);
        loop = new_loop();
        ck_assert_int_eq(aiot_fork(loop, child_pause, NULL, rec_cb, &rs, &rs.c), 0);
        ck_assert_int_eq(aiot_fork(loop, child_nested, rs.c, rec_cb, &rn, &rn.c), 0);
        while (rn.calls == 0)
                ev_run(loop, EVRUN_ONCE);
        ck_assert_int_eq(rn.status, 0);
        ck_assert_int_eq(aiot_child_signal(rs.c, SIGKILL), 0);
        run_loop(loop);
        ck_assert_int_eq(rs.status, -SIGKILL);
        aiot_child_free(rs.c);
        aiot_child_free(rn.c);
        ev_loop_destroy(loop);
}
END_TEST

/* ---------------------------------------------------------------- refusals */

START_TEST(test_bad_arguments)
{
        aiot_child *sentinel = (aiot_child *)&sentinel, *c = sentinel;
        struct ev_loop *loop;
        int st;

        use_mode(_i);
        loop = new_loop();
        ck_assert_int_eq(aiot_fork(NULL, child_return, NULL, NULL, NULL, &c), -EINVAL);
        ck_assert_int_eq(aiot_fork(loop, NULL, NULL, NULL, NULL, &c), -EINVAL);
        ck_assert_int_eq(aiot_fork(loop, child_return, NULL, NULL, NULL, NULL), -EINVAL);
        ck_assert_ptr_eq(c, sentinel);
        ck_assert_int_eq(aiot_child_pid(NULL), -EINVAL);
        ck_assert_int_eq(aiot_child_signal(NULL, 0), -EINVAL);
        ck_assert_int_eq(aiot_child_status(NULL, &st), -EINVAL);
        aiot_child_free(NULL);

        ck_assert_int_eq(aiot_fork(loop, child_return, NULL, NULL, NULL, &c), 0);
        ck_assert_int_eq(aiot_child_status(c, NULL), -EINVAL);
        run_loop(loop);
        aiot_child_free(c);
        ev_loop_destroy(loop);
}
END_TEST

/* With SIGCHLD ignored the kernel discards exit statuses: refused up front. */
START_TEST(test_sigchld_ignored)
{
        struct sigaction ign = {.sa_handler = SIG_IGN},
                         nocldwait = {.sa_handler = SIG_DFL, .sa_flags = SA_NOCLDWAIT};
        struct sigaction old;
        aiot_child *sentinel = (aiot_child *)&sentinel, *c = sentinel;
        struct ev_loop *loop;

        use_mode(_i);
        loop = new_loop();
        sigemptyset(&ign.sa_mask);
        sigemptyset(&nocldwait.sa_mask);
        ck_assert_int_eq(sigaction(SIGCHLD, &ign, &old), 0);
        ck_assert_int_eq(aiot_fork(loop, child_return, NULL, NULL, NULL, &c), -ECHILD);
        ck_assert_int_eq(sigaction(SIGCHLD, &nocldwait, NULL), 0);
        ck_assert_int_eq(aiot_fork(loop, child_return, NULL, NULL, NULL, &c), -ECHILD);
        ck_assert_int_eq(sigaction(SIGCHLD, &old, NULL), 0);
        ck_assert_ptr_eq(c, sentinel);
        ev_loop_destroy(loop);
}
END_TEST

/* libev's default loop reaps every child: refused when passed (-EINVAL) and,
 * once it exists, for every other loop too (-EBUSY).  Checked in a plain
 * subprocess so that the default loop never exists in the test process. */
START_TEST(test_default_loop_refused)
{
        pid_t pid;
        int st;

        use_mode(_i);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                aiot_child *sentinel = (aiot_child *)&sentinel, *c = sentinel;
                struct ev_loop *mine = ev_loop_new(EVFLAG_AUTO), *def = ev_default_loop(0);
                int code = 0;

                if (aiot_fork(def, child_return, NULL, NULL, NULL, &c) != -EINVAL)
                        code |= 1;
                if (aiot_fork(mine, child_return, NULL, NULL, NULL, &c) != -EBUSY)
                        code |= 2;
                if (c != sentinel)
                        code |= 4;
                _exit(code);
        }
        ck_assert_int_eq(waitpid(pid, &st, 0), pid);
        ck_assert(WIFEXITED(st));
        ck_assert_msg(WEXITSTATUS(st) == 0, "refusal bits %d (1: default loop, 2: other loop, 4: *ret)",
                      WEXITSTATUS(st));
}
END_TEST

/* ---------------------------------------------------------------- the mode itself */

START_TEST(test_mode)
{
        const char *e = getenv("AIOTOOLS_EXPECT_FORK_MODE");

        unsetenv("AIOTOOLS_NO_PIDFD");
        ck_assert_int_eq(aiot_fork_mode(), expected_default_mode());
        setenv("AIOTOOLS_NO_PIDFD", "1", 1);
        ck_assert_int_eq(aiot_fork_mode(), AIOT_FORK_SIGCHLD);
        setenv("AIOTOOLS_NO_PIDFD", "0", 1);
        ck_assert_int_eq(aiot_fork_mode(), expected_default_mode());
        unsetenv("AIOTOOLS_NO_PIDFD");
        if (!e || strcmp(e, "sigchld") != 0)
                return;

        /* Under tests/nopidfd: the filter answers as a pre-5.3 kernel would. */
        errno = 0;
        ck_assert_int_eq(syscall(SYS_pidfd_open, getpid(), 0), -1);
        ck_assert_int_eq(errno, ENOSYS);
        errno = 0;
        ck_assert_int_eq(syscall(SYS_pidfd_send_signal, 0, 0, NULL, 0), -1);
        ck_assert_int_eq(errno, ENOSYS);
        errno = 0;
        ck_assert_int_eq(syscall(SYS_pidfd_getfd, 0, 0, 0), -1);
        ck_assert_int_eq(errno, ENOSYS);
        errno = 0;
        ck_assert_int_eq(syscall(SYS_clone3, NULL, 0), -1);
        ck_assert_int_eq(errno, ENOSYS);
        {
                siginfo_t si;

                errno = 0;
                ck_assert_int_eq(waitid((idtype_t)3 /* P_PIDFD */, 0, &si, WEXITED | WNOHANG), -1);
                ck_assert_int_eq(errno, EINVAL);
                /* Only P_PIDFD is filtered: other waitid calls work as usual. */
                errno = 0;
                ck_assert_int_eq(waitid(P_ALL, 0, &si, WEXITED | WNOHANG), -1);
                ck_assert_int_eq(errno, ECHILD);
        }
}
END_TEST

/* pidfd_open() answering ESRCH means something else in the process reaped the
 * child already (its PID may be reused by now): the child is reported lost,
 * from the loop, and never signalled.  A seccomp filter fakes that answer. */
static void pidfd_open_esrch(void)
{
        struct sock_filter f[] = {
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_pidfd_open, 0, 1),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ESRCH),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };

        ck_assert_int_eq(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        ck_assert_int_eq(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog), 0);
}

START_TEST(test_pidfd_open_esrch_is_lost)
{
        struct ev_loop *loop;
        struct rec r = { .status = 1 };
        int status = 0;
        pid_t pid;

        if (aiot_fork_mode() != AIOT_FORK_PIDFD)
                return; /* the SIGCHLD path never calls pidfd_open */
        pidfd_open_esrch();
        loop = new_loop();
        ck_assert_int_eq(aiot_fork(loop, child_pause, NULL, rec_cb, &r, &r.c), 0);
        pid = aiot_child_pid(r.c);
        ck_assert_int_eq(aiot_child_signal(r.c, SIGKILL), -ESRCH);
        ck_assert_int_eq(aiot_child_status(r.c, &status), -EAGAIN);
        run_loop(loop);
        ck_assert_int_eq(r.calls, 1);
        ck_assert_int_eq(r.status, AIOT_CHILD_LOST);
        ck_assert_int_eq(aiot_child_status(r.c, &status), 0);
        ck_assert_int_eq(status, AIOT_CHILD_LOST);
        aiot_child_free(r.c);
        ev_loop_destroy(loop);
        /* The fake: the child really is ours and alive, so clean it up. */
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
}
END_TEST

int main(void)
{
        Suite *s = suite_create("fork");
        TCase *both = tcase_create("both-paths");
        TCase *mode = tcase_create("mode");

        tcase_set_timeout(both, 30);
        tcase_add_checked_fixture(both, NULL, assert_no_children);
        tcase_add_loop_test(both, test_exit_codes, 0, 2);
        tcase_add_loop_test(both, test_sigkill, 0, 2);
        tcase_add_loop_test(both, test_segfault, 0, 2);
        tcase_add_loop_test(both, test_signal_right_after_fork, 0, 2);
        tcase_add_loop_test(both, test_signal_reaped, 0, 2);
        tcase_add_loop_test(both, test_many_children, 0, 2);
        tcase_add_loop_test(both, test_free_running_child, 0, 2);
        tcase_add_loop_test(both, test_free_in_callback, 0, 2);
        tcase_add_loop_test(both, test_free_other_in_callback, 0, 2);
        tcase_add_loop_test(both, test_respawn_from_callback, 0, 2);
        tcase_add_loop_test(both, test_set_exit_cb, 0, 2);
        tcase_add_loop_test(both, test_stolen_child, 0, 2);
        tcase_add_loop_test(both, test_no_inherited_fds, 0, 2);
        tcase_add_loop_test(both, test_nested_fork, 0, 2);
        tcase_add_loop_test(both, test_bad_arguments, 0, 2);
        tcase_add_loop_test(both, test_sigchld_ignored, 0, 2);
        tcase_add_loop_test(both, test_default_loop_refused, 0, 2);
        suite_add_tcase(s, both);

        tcase_set_timeout(mode, 30);
        tcase_add_test(mode, test_mode);
        tcase_add_test(mode, test_pidfd_open_esrch_is_lost);
        suite_add_tcase(s, mode);
        return testutil_run(s);
}
