/* SPDX-License-Identifier: MIT */
/* log: levels, prefixes, journal priorities and one write per line. */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aiotools/log.h"
#include "testutil.h"

/* Redirects stderr to a temp file, logs, and returns what was written. */
static char *capture(void (*emit)(void))
{
        static char out[8192];
        char path[] = "/tmp/aiot-log-XXXXXX";
        int fd = mkstemp(path), saved = dup(STDERR_FILENO);
        ssize_t n;

        ck_assert_int_ge(fd, 0);
        unlink(path);
        dup2(fd, STDERR_FILENO);
        emit();
        dup2(saved, STDERR_FILENO);
        close(saved);
        n = pread(fd, out, sizeof(out) - 1, 0);
        close(fd);
        ck_assert_int_ge(n, 0);
        out[n] = '\0';
        return out;
}

/* A program's own variadic wrapper, the reason aiot_logv exists. */
static void my_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void my_warn(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        aiot_logv(AIOT_LOG_WARNING, fmt, ap);
        va_end(ap);
}

static void emit_levels(void)
{
        aiot_log_set_level(AIOT_LOG_NOTICE);
        aiot_log(AIOT_LOG_ERR, "bad %d", 1);
        aiot_log(AIOT_LOG_NOTICE, "notice %s", "two");
        aiot_log(AIOT_LOG_INFO, "dropped info");
        aiot_log(AIOT_LOG_DEBUG, "dropped debug");
        my_warn("via %s %d", "logv", 3);
}

START_TEST(test_levels_filter)
{
        char *out = capture(emit_levels);

        ck_assert_ptr_nonnull(strstr(out, "err: bad 1\n"));
        ck_assert_ptr_nonnull(strstr(out, "notice: notice two\n"));
        ck_assert_ptr_null(strstr(out, "dropped"));
        ck_assert_ptr_nonnull(strstr(out, "warning: via logv 3\n"));
        ck_assert_int_eq(aiot_log_get_level(), AIOT_LOG_NOTICE);
}
END_TEST

static void emit_prefixed(void)
{
        aiot_log_set_prefix("worker 3");
        aiot_log(AIOT_LOG_WARNING, "line\nwith newline");
}

START_TEST(test_prefix_and_timestamp)
{
        char *out = capture(emit_prefixed);
        char expect[64];
        int y, mo, d, h, mi, s, ms;

        /* 2026-11-25T21:20:01.123Z worker 3[PID] warning: line with newline */
        ck_assert_int_eq(sscanf(out, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ ", &y, &mo, &d, &h, &mi, &s, &ms), 7);
        snprintf(expect, sizeof(expect), " worker 3[%d] warning: ", (int)getpid());
        ck_assert_ptr_nonnull(strstr(out, expect));
        ck_assert_ptr_nonnull(strstr(out, "line with newline\n"));
        /* Exactly one line. */
        ck_assert_ptr_eq(strchr(out, '\n'), out + strlen(out) - 1);
}
END_TEST

static void emit_journal(void)
{
        struct stat st;
        char env[64];

        /* Make JOURNAL_STREAM name our stderr, as systemd does for a service. */
        ck_assert_int_eq(fstat(STDERR_FILENO, &st), 0);
        snprintf(env, sizeof(env), "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
        setenv("JOURNAL_STREAM", env, 1);
        aiot_log_set_prefix("supervisor");
        aiot_log(AIOT_LOG_ERR, "boom");
        aiot_log(AIOT_LOG_INFO, "fine");
        aiot_log_set_prefix(NULL);
        aiot_log(AIOT_LOG_WARNING, "no prefix");
}

START_TEST(test_journal_priorities)
{
        char *out = capture(emit_journal);
        char expect[128];

        /* journald adds the program name and pid: only the chosen prefix. */
        snprintf(expect, sizeof(expect), "<3>supervisor: boom\n<6>supervisor: fine\n<4>no prefix\n");
        ck_assert_str_eq(out, expect);
}
END_TEST

static void emit_other_journal(void)
{
        setenv("JOURNAL_STREAM", "1:1", 1); /* some other file: not our stderr */
        aiot_log(AIOT_LOG_ERR, "not journal");
}

START_TEST(test_journal_stream_mismatch)
{
        char *out = capture(emit_other_journal);

        ck_assert_int_ne(out[0], '<');
        ck_assert_ptr_nonnull(strstr(out, "err: not journal\n"));
}
END_TEST

START_TEST(test_parse_level)
{
        int l = -1;

        ck_assert_int_eq(aiot_log_parse_level("debug", &l), 0);
        ck_assert_int_eq(l, AIOT_LOG_DEBUG);
        ck_assert_int_eq(aiot_log_parse_level("WARNING", &l), 0);
        ck_assert_int_eq(l, AIOT_LOG_WARNING);
        ck_assert_int_eq(aiot_log_parse_level("3", &l), 0);
        ck_assert_int_eq(l, AIOT_LOG_ERR);
        ck_assert_int_eq(aiot_log_parse_level("loud", &l), -EINVAL);
        ck_assert_int_eq(l, AIOT_LOG_ERR); /* untouched on failure */
        ck_assert_int_eq(aiot_log_parse_level(NULL, &l), -EINVAL);
        ck_assert_int_eq(aiot_log_parse_level("8", &l), -EINVAL);
}
END_TEST

static void emit_long(void)
{
        char big[5000];

        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        errno = EBADF;
        aiot_log(AIOT_LOG_ERR, "%s", big);
        ck_assert_int_eq(errno, EBADF); /* preserved */
}

START_TEST(test_long_line_truncated)
{
        char *out = capture(emit_long);
        size_t len = strlen(out);

        ck_assert_uint_le(len, 2048);
        ck_assert_int_eq(out[len - 1], '\n');
        ck_assert_ptr_eq(strchr(out, '\n'), out + len - 1);
}
END_TEST

static Suite *log_suite(void)
{
        Suite *s = suite_create("log");
        TCase *tc = tcase_create("log");

        tcase_add_test(tc, test_levels_filter);
        tcase_add_test(tc, test_prefix_and_timestamp);
        tcase_add_test(tc, test_journal_priorities);
        tcase_add_test(tc, test_journal_stream_mismatch);
        tcase_add_test(tc, test_parse_level);
        tcase_add_test(tc, test_long_line_truncated);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        return testutil_run(log_suite());
}
