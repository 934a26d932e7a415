/* SPDX-License-Identifier: MIT */
#ifndef AIOTOOLS_LOG_H
#define AIOTOOLS_LOG_H

#include <stdarg.h>

#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

/* Levels are syslog priorities, so that they map onto sd-daemon "<N>" prefixes. */
enum aiot_log_level {
        AIOT_LOG_ERR = 3,
        AIOT_LOG_WARNING = 4,
        AIOT_LOG_NOTICE = 5,
        AIOT_LOG_INFO = 6,
        AIOT_LOG_DEBUG = 7,
};

/* Messages above this level are dropped.  The default is AIOT_LOG_INFO. */
void aiot_log_set_level(int level);
int aiot_log_get_level(void);

/* Parses "err", "warning", "notice", "info" or "debug" (or "0".."7") into *level.
 * Returns 0, or -EINVAL for any other name; *level is untouched on failure. */
int aiot_log_parse_level(const char *name, int *level);

/* Sets the per-process prefix shown before every message ("supervisor",
 * "worker 3").  A forked worker calls it once after fork.  Truncated to 63 bytes;
 * NULL restores the default (the program name). */
void aiot_log_set_prefix(const char *prefix);

/* Writes one line to stderr with a single write(2), so that lines of concurrent
 * processes never interleave.  When stderr is the journal (JOURNAL_STREAM names
 * it) the line starts with an sd-daemon "<N>" priority and carries no timestamp;
 * otherwise it starts with an ISO 8601 UTC timestamp with milliseconds.
 * errno is preserved. */
void aiot_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void aiot_logv(int level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif
