/* SPDX-License-Identifier: MIT */
/* sd: the exact notify datagrams on a real AF_UNIX socket bound by the test (as
 * systemd binds its notify socket, with SO_PASSCRED to see the sender pid), and
 * the watchdog setting.  In a build without libsystemd the same calls must
 * return 0 and send nothing. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "aiotools/sd.h"
#include "testutil.h"

/* Some helpers serve only the tests of the libsystemd build. */
#define AIOT_TEST_UNUSED __attribute__((unused))

/* The test's notify socket: a path in a fresh directory, or an abstract name. */
static int nfd = -1;
static char ndir[64];
static char npath[108];

static void bind_notify(int abstract)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        socklen_t len;
        int one = 1;

        nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(nfd, 0);
        if (abstract) {
                snprintf(npath, sizeof(npath), "@aiot-check-sd-%ld-%ld", (long)getpid(), (long)time(NULL));
                /* An abstract name starts with a NUL instead of the '@'. */
                memcpy(sa.sun_path + 1, npath + 1, strlen(npath) - 1);
                len = offsetof(struct sockaddr_un, sun_path) + strlen(npath);
        } else {
                snprintf(ndir, sizeof(ndir), "/tmp/aiot-sd-XXXXXX");
                ck_assert_ptr_nonnull(mkdtemp(ndir));
                snprintf(npath, sizeof(npath), "%s/notify", ndir);
                strcpy(sa.sun_path, npath);
                len = sizeof(sa);
        }
        ck_assert_msg(bind(nfd, (struct sockaddr *)&sa, len) == 0, "bind %s: %s", npath, strerror(errno));
        ck_assert_int_eq(setsockopt(nfd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)), 0);
        ck_assert_int_eq(setenv("NOTIFY_SOCKET", npath, 1), 0);
}

static void setup(void)
{
        unsetenv("NOTIFY_SOCKET");
        unsetenv("WATCHDOG_USEC");
        unsetenv("WATCHDOG_PID");
        bind_notify(0);
}

static void teardown(void)
{
        if (nfd >= 0)
                close(nfd);
        nfd = -1;
        if (ndir[0]) {
                unlink(npath);
                rmdir(ndir);
        }
}

/* Receives one datagram (waiting at most 10 s, to catch a hang) into buf as a
 * string; returns the sender pid from SCM_CREDENTIALS. */
static pid_t recv_msg(char *buf, size_t size)
{
        union {
                struct cmsghdr h;
                char space[CMSG_SPACE(sizeof(struct ucred))];
        } control;
        struct iovec iov = {.iov_base = buf, .iov_len = size - 1};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                            .msg_controllen = sizeof(control)};
        struct pollfd p = {.fd = nfd, .events = POLLIN};
        struct cmsghdr *c;
        pid_t pid = -1;
        ssize_t n;

        ck_assert_msg(poll(&p, 1, 10000) == 1, "no notify datagram within 10 s");
        n = recvmsg(nfd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        ck_assert_msg(n >= 0, "recvmsg: %s", strerror(errno));
        ck_assert_msg(!(mh.msg_flags & MSG_TRUNC), "datagram truncated");
        buf[n] = '\0';
        for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
                        struct ucred uc;

                        memcpy(&uc, CMSG_DATA(c), sizeof(uc));
                        pid = uc.pid;
                }
        ck_assert_msg(pid > 0, "no SCM_CREDENTIALS with the datagram");
        return pid;
}

/* Sending on a unix datagram socket queues the datagram before sendmsg()
 * returns, so "nothing was sent" is a non-blocking receive that finds nothing. */
static void assert_nothing_queued(void)
{
        char buf[64];
        ssize_t n = recv(nfd, buf, sizeof(buf), MSG_DONTWAIT);

        ck_assert_msg(n < 0 && errno == EAGAIN, "unexpected datagram (%zd bytes)", n);
}

/* Asserts that the next datagram is exactly want, sent by this process. */
AIOT_TEST_UNUSED static void expect_msg(const char *want)
{
        char buf[4096];

        ck_assert_int_eq(recv_msg(buf, sizeof(buf)), getpid());
        ck_assert_str_eq(buf, want);
}

AIOT_TEST_UNUSED static uint64_t now_usec(void)
{
        struct timespec ts;

        ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Arguments are checked in every build. */
START_TEST(test_bad_args)
{
        ck_assert_int_eq(aiot_sd_notify(NULL), -EINVAL);
        ck_assert_int_eq(aiot_sd_notify_status(NULL), -EINVAL);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
#pragma GCC diagnostic ignored "-Wformat"
#pragma GCC diagnostic ignored "-Wformat-security"
        {
                const char *fmt = NULL;
                ck_assert_int_eq(aiot_sd_notifyf(fmt), -EINVAL);
        }
#pragma GCC diagnostic pop
        assert_nothing_queued();
}
END_TEST

#ifdef HAVE_SYSTEMD

START_TEST(test_ready)
{
        char want[128];

        ck_assert_int_gt(aiot_sd_notify_ready(NULL), 0);
        snprintf(want, sizeof(want), "READY=1\nMAINPID=%ld", (long)getpid());
        expect_msg(want);

        ck_assert_int_gt(aiot_sd_notify_ready("2 workers, generation 1"), 0);
        snprintf(want, sizeof(want), "READY=1\nMAINPID=%ld\nSTATUS=2 workers, generation 1", (long)getpid());
        expect_msg(want);
        assert_nothing_queued();
}
END_TEST

/* RELOADING=1 carries the CLOCK_MONOTONIC time of the call. */
START_TEST(test_reloading)
{
        static const char head[] = "RELOADING=1\nMONOTONIC_USEC=";
        char buf[256], *tail;
        unsigned long long usec;
        uint64_t before, after;

        for (int with_status = 0; with_status <= 1; with_status++) {
                before = now_usec();
                ck_assert_int_gt(aiot_sd_notify_reloading(with_status ? "reloading, generation 2" : NULL), 0);
                after = now_usec();
                ck_assert_int_eq(recv_msg(buf, sizeof(buf)), getpid());
                ck_assert_msg(strncmp(buf, head, strlen(head)) == 0, "bad datagram '%s'", buf);
                errno = 0;
                usec = strtoull(buf + strlen(head), &tail, 10);
                ck_assert_msg(errno == 0 && tail != buf + strlen(head), "bad MONOTONIC_USEC in '%s'", buf);
                ck_assert_msg(usec >= before && usec <= after, "MONOTONIC_USEC=%llu not in [%" PRIu64 ", %" PRIu64 "]",
                              usec, before, after);
                ck_assert_str_eq(tail, with_status ? "\nSTATUS=reloading, generation 2" : "");
        }
        assert_nothing_queued();
}
END_TEST

START_TEST(test_stopping_status_watchdog)
{
        ck_assert_int_gt(aiot_sd_notify_stopping(NULL), 0);
        expect_msg("STOPPING=1");
        ck_assert_int_gt(aiot_sd_notify_stopping("stopping 4 workers"), 0);
        expect_msg("STOPPING=1\nSTATUS=stopping 4 workers");
        ck_assert_int_gt(aiot_sd_notify_status("4 workers, generation 3"), 0);
        expect_msg("STATUS=4 workers, generation 3");
        ck_assert_int_gt(aiot_sd_notify_watchdog(), 0);
        expect_msg("WATCHDOG=1");
        assert_nothing_queued();
}
END_TEST

START_TEST(test_generic)
{
        ck_assert_int_gt(aiot_sd_notify("STATUS=x\nERRNO=5"), 0);
        expect_msg("STATUS=x\nERRNO=5");
        ck_assert_int_gt(aiot_sd_notifyf("STATUS=%d workers, %s", 3, "gen 7"), 0);
        expect_msg("STATUS=3 workers, gen 7");
        assert_nothing_queued();
}
END_TEST

/* The abstract namespace ("@name"), as notify-listener --abstract and some
 * container managers use it. */
START_TEST(test_abstract)
{
        teardown();
        ndir[0] = '\0';
        bind_notify(1);
        ck_assert_int_gt(aiot_sd_notify_watchdog(), 0);
        expect_msg("WATCHDOG=1");
}
END_TEST

/* The environment stays: the supervisor sends again and again, and a forked
 * worker still finds NOTIFY_SOCKET (the datagram carries the worker's pid). */
START_TEST(test_env_kept_and_fork)
{
        char buf[64];
        pid_t pid;
        int status;

        ck_assert_int_gt(aiot_sd_notify_status("one"), 0);
        ck_assert_str_eq(getenv("NOTIFY_SOCKET"), npath);
        ck_assert_int_gt(aiot_sd_notify_status("two"), 0);
        expect_msg("STATUS=one");
        expect_msg("STATUS=two");

        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0)
                _exit(aiot_sd_notify_status("child") > 0 ? 0 : 1);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child could not notify");
        ck_assert_int_eq(recv_msg(buf, sizeof(buf)), pid);
        ck_assert_str_eq(buf, "STATUS=child");
}
END_TEST

START_TEST(test_unset_sends_nothing)
{
        unsetenv("NOTIFY_SOCKET");
        ck_assert_int_eq(aiot_sd_notify_ready("x"), 0);
        ck_assert_int_eq(aiot_sd_notify_reloading(NULL), 0);
        ck_assert_int_eq(aiot_sd_notify_stopping(NULL), 0);
        ck_assert_int_eq(aiot_sd_notify_status("x"), 0);
        ck_assert_int_eq(aiot_sd_notify_watchdog(), 0);
        ck_assert_int_eq(aiot_sd_notify("READY=1"), 0);
        ck_assert_int_eq(aiot_sd_notifyf("STATUS=%d", 1), 0);
        assert_nothing_queued();
}
END_TEST

/* A socket nobody listens on is an error the caller can see. */
START_TEST(test_send_error)
{
        char gone[128];
        int r;

        snprintf(gone, sizeof(gone), "%s/nobody", ndir);
        ck_assert_int_eq(setenv("NOTIFY_SOCKET", gone, 1), 0);
        r = aiot_sd_notify_watchdog();
        ck_assert_msg(r == -ENOENT, "notify to a missing socket: %d (%s)", r, strerror(-r));
        ck_assert_int_eq(setenv("NOTIFY_SOCKET", "relative/path", 1), 0);
        ck_assert_int_lt(aiot_sd_notify_watchdog(), 0);
        assert_nothing_queued();
}
END_TEST

START_TEST(test_watchdog_usec)
{
        char pid[32];
        uint64_t usec = 7;

        /* Not set at all. */
        ck_assert_int_eq(aiot_sd_watchdog_usec(&usec), 0);
        ck_assert_uint_eq(usec, 7);

        /* Set for this process. */
        snprintf(pid, sizeof(pid), "%ld", (long)getpid());
        ck_assert_int_eq(setenv("WATCHDOG_USEC", "400000", 1), 0);
        ck_assert_int_eq(setenv("WATCHDOG_PID", pid, 1), 0);
        ck_assert_int_gt(aiot_sd_watchdog_usec(&usec), 0);
        ck_assert_uint_eq(usec, 400000);
        ck_assert_int_gt(aiot_sd_watchdog_usec(NULL), 0);
        /* The environment stays for the next ping period. */
        ck_assert_ptr_nonnull(getenv("WATCHDOG_USEC"));

        /* Without WATCHDOG_PID, for whoever reads it. */
        unsetenv("WATCHDOG_PID");
        usec = 7;
        ck_assert_int_gt(aiot_sd_watchdog_usec(&usec), 0);
        ck_assert_uint_eq(usec, 400000);

        /* Meant for another process (the parent): not ours to ping. */
        snprintf(pid, sizeof(pid), "%ld", (long)getppid());
        ck_assert_int_eq(setenv("WATCHDOG_PID", pid, 1), 0);
        usec = 7;
        ck_assert_int_eq(aiot_sd_watchdog_usec(&usec), 0);
        ck_assert_uint_eq(usec, 7);

        /* Malformed. */
        unsetenv("WATCHDOG_PID");
        ck_assert_int_eq(setenv("WATCHDOG_USEC", "soon", 1), 0);
        ck_assert_int_eq(aiot_sd_watchdog_usec(&usec), -EINVAL);
        ck_assert_uint_eq(usec, 7);
}
END_TEST

#else /* !HAVE_SYSTEMD */

/* Without libsystemd every call is a no-op returning 0, even with a listening
 * NOTIFY_SOCKET and a watchdog configured. */
START_TEST(test_nosystemd_noop)
{
        char pid[32];
        uint64_t usec = 7;

        ck_assert_int_eq(aiot_sd_notify_ready("x"), 0);
        ck_assert_int_eq(aiot_sd_notify_reloading("x"), 0);
        ck_assert_int_eq(aiot_sd_notify_stopping("x"), 0);
        ck_assert_int_eq(aiot_sd_notify_status("x"), 0);
        ck_assert_int_eq(aiot_sd_notify_watchdog(), 0);
        ck_assert_int_eq(aiot_sd_notify("READY=1"), 0);
        ck_assert_int_eq(aiot_sd_notifyf("STATUS=%d", 1), 0);
        assert_nothing_queued();

        snprintf(pid, sizeof(pid), "%ld", (long)getpid());
        ck_assert_int_eq(setenv("WATCHDOG_USEC", "400000", 1), 0);
        ck_assert_int_eq(setenv("WATCHDOG_PID", pid, 1), 0);
        ck_assert_int_eq(aiot_sd_watchdog_usec(&usec), 0);
        ck_assert_uint_eq(usec, 7);
}
END_TEST

#endif

static Suite *sd_suite(void)
{
        Suite *s = suite_create("sd");
        TCase *tc = tcase_create("notify");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_bad_args);
#ifdef HAVE_SYSTEMD
        tcase_add_test(tc, test_ready);
        tcase_add_test(tc, test_reloading);
        tcase_add_test(tc, test_stopping_status_watchdog);
        tcase_add_test(tc, test_generic);
        tcase_add_test(tc, test_abstract);
        tcase_add_test(tc, test_env_kept_and_fork);
        tcase_add_test(tc, test_unset_sends_nothing);
        tcase_add_test(tc, test_send_error);
        tcase_add_test(tc, test_watchdog_usec);
#else
        tcase_add_test(tc, test_nosystemd_noop);
#endif
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        return testutil_run(sd_suite());
}
