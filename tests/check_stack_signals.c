/* SPDX-License-Identifier: MIT */
/* The stack-overflow reporter claims only faults inside a stack guard.  Every
 * other SIGSEGV or SIGBUS (sent with raise, kill or sigqueue, or a real fault
 * outside any guard) ends a process that runs tasks exactly as it would end one
 * without the reporter: by that signal.  Each case runs in a forked child whose
 * loop has spawned a task, so the stack pool and its handler are in place. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aiotools/scope.h"
#include "aiotools/task.h"
#include "testutil.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

/* The exit status of a child that survived what should have killed it. */
#define SURVIVED 33
/* The exit status chosen by the handler a child installs before the runtime's. */
#define EARLIER_HANDLER_RAN 42

enum action { RAISE_SEGV, KILL_SEGV, SIGQUEUE_SEGV, RAISE_BUS, NULL_DEREF };

/* Nothing maps the first page.  Not 0 itself: UBSan would stop a store through
 * a null pointer before it faults. */
static volatile uintptr_t null_address = 16;

static void act(enum action a)
{
        switch (a) {
        case RAISE_SEGV:
                raise(SIGSEGV);
                break;
        case KILL_SEGV:
                kill(getpid(), SIGSEGV);
                break;
        case SIGQUEUE_SEGV:
                sigqueue(getpid(), SIGSEGV, (union sigval){.sival_int = 1});
                break;
        case RAISE_BUS:
                raise(SIGBUS);
                break;
        case NULL_DEREF:
                *(volatile int *)null_address = 1;
                break;
        }
}

static int acting_task(void *arg)
{
        act(*(enum action *)arg);
        return 0;
}

/* Runs the action inside a task, once: a handler that swallows the first
 * signal (and only then puts the default back) lets the child survive. */
static int root(void *arg)
{
        aiot_scope *s;
        aiot_task *t;

        ck_assert_int_eq(aiot_scope_open(&s, NULL), 0);
        ck_assert_int_eq(aiot_spawn(s, acting_task, arg, &t), 0);
        ck_assert_int_eq(aiot_join(t, NULL), 0);
        aiot_scope_close(s);
        return 0;
}

static void earlier_handler(int sig)
{
        (void)sig;
        _exit(EARLIER_HANDLER_RAN);
}

struct signal_child {
        enum action a;
        int with_earlier_handler;
};

/* In the child: the action in a task; it must not survive. */
static void signal_child(void *arg)
{
        struct signal_child *c = arg;

        if (c->with_earlier_handler) {
                signal(SIGSEGV, earlier_handler);
                signal(SIGBUS, earlier_handler);
        }
        testutil_run_loop(root, &c->a, 0);
        _exit(SURVIVED);
}

/* Returns the child's wait status and what it wrote to stderr. */
static int run_child(enum action a, int with_earlier_handler, char *out, size_t outsz)
{
        struct signal_child c = {a, with_earlier_handler};

        return testutil_child_stderr(signal_child, &c, out, outsz);
}

/* Without ASan the child dies by sig.  Under ASan the reporter passes the
 * signal on to ASan's own handler, which reports it and exits. */
static void assert_dies_by(enum action a, int sig)
{
        char out[8192];
        int status = run_child(a, 0, out, sizeof(out));

        ck_assert_msg(strstr(out, "stack overflow") == NULL, "stderr: %s", out);
#ifdef UNDER_ASAN
        (void)sig;
        ck_assert_msg(!(WIFEXITED(status) && WEXITSTATUS(status) == SURVIVED), "child survived: %s", out);
        ck_assert_msg(strstr(out, "AddressSanitizer") != NULL, "child status %#x, stderr: %s", status, out);
#else
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == sig, "child status %#x, stderr: %s", status,
                      out);
#endif
}

START_TEST(test_raise_segv_kills)
{
        assert_dies_by(RAISE_SEGV, SIGSEGV);
}
END_TEST

START_TEST(test_kill_segv_kills)
{
        assert_dies_by(KILL_SEGV, SIGSEGV);
}
END_TEST

START_TEST(test_sigqueue_segv_kills)
{
        assert_dies_by(SIGQUEUE_SEGV, SIGSEGV);
}
END_TEST

START_TEST(test_raise_bus_kills)
{
        assert_dies_by(RAISE_BUS, SIGBUS);
}
END_TEST

START_TEST(test_null_deref_kills)
{
        assert_dies_by(NULL_DEREF, SIGSEGV);
}
END_TEST

/* A handler the program installed before the runtime started keeps getting
 * the signals that are not stack overflows. */
START_TEST(test_earlier_handler_keeps_signals)
{
        char out[8192];
        int status = run_child(RAISE_SEGV, 1, out, sizeof(out));

        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == EARLIER_HANDLER_RAN,
                      "child status %#x, stderr: %s", status, out);
        status = run_child(NULL_DEREF, 1, out, sizeof(out));
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == EARLIER_HANDLER_RAN,
                      "child status %#x, stderr: %s", status, out);
}
END_TEST

static Suite *stack_signals_suite(void)
{
        Suite *s = suite_create("stack_signals");
        TCase *tc = tcase_create("foreign");

        tcase_add_test(tc, test_raise_segv_kills);
        tcase_add_test(tc, test_kill_segv_kills);
        tcase_add_test(tc, test_sigqueue_segv_kills);
        tcase_add_test(tc, test_raise_bus_kills);
        tcase_add_test(tc, test_null_deref_kills);
        tcase_add_test(tc, test_earlier_handler_keeps_signals);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        return testutil_run(stack_signals_suite());
}
