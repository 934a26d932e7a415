/* SPDX-License-Identifier: MIT */
/* Leveled logging to stderr: one write(2) per line, journal-aware. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "aiotools/log.h"

static int log_level = AIOT_LOG_INFO;
static char log_prefix[64];

/* -1 unknown, 0 no, 1 yes; cached on first use (forked workers share stderr, so
 * the answer they inherit is still right). */
static int log_to_journal = -1;

static const char *const level_names[] = {
        [AIOT_LOG_ERR] = "err",         [AIOT_LOG_WARNING] = "warning", [AIOT_LOG_NOTICE] = "notice",
        [AIOT_LOG_INFO] = "info",       [AIOT_LOG_DEBUG] = "debug",
};

void aiot_log_set_level(int level)
{
        if (level < 0)
                level = 0;
        if (level > AIOT_LOG_DEBUG)
                level = AIOT_LOG_DEBUG;
        log_level = level;
}

int aiot_log_get_level(void)
{
        return log_level;
}

int aiot_log_parse_level(const char *name, int *level)
{
        if (!name || !level)
                return -EINVAL;
        if (name[0] >= '0' && name[0] <= '7' && name[1] == '\0') {
                *level = name[0] - '0';
                return 0;
        }
        for (int l = AIOT_LOG_ERR; l <= AIOT_LOG_DEBUG; l++)
                if (strcasecmp(name, level_names[l]) == 0) {
                        *level = l;
                        return 0;
                }
        if (strcasecmp(name, "error") == 0) {
                *level = AIOT_LOG_ERR;
                return 0;
        }
        return -EINVAL;
}

void aiot_log_set_prefix(const char *prefix)
{
        if (prefix)
                snprintf(log_prefix, sizeof(log_prefix), "%s", prefix);
        else
                log_prefix[0] = '\0';
}

/* stderr is the journal when JOURNAL_STREAM's "device:inode" is stderr's own. */
static int stderr_is_journal(void)
{
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return 0;
        if (fstat(STDERR_FILENO, &st) < 0)
                return 0;
        return st.st_dev == (dev_t)dev && st.st_ino == (ino_t)ino;
}

static const char *current_prefix(void)
{
        if (log_prefix[0])
                return log_prefix;
        return program_invocation_short_name;
}

static size_t format_header(char *buf, size_t size, int level)
{
        const char *name = level >= AIOT_LOG_ERR && level <= AIOT_LOG_DEBUG ? level_names[level] : "log";
        struct timespec ts;
        struct tm tm;
        int n;

        if (log_to_journal < 0)
                log_to_journal = stderr_is_journal();
        /* journald adds the program name and pid itself: only a prefix the
         * process chose ("worker 3") is worth repeating there. */
        if (log_to_journal)
                n = snprintf(buf, size, "<%d>%s%s", level, log_prefix, log_prefix[0] ? ": " : "");
        else {
                clock_gettime(CLOCK_REALTIME, &ts);
                gmtime_r(&ts.tv_sec, &tm);
                n = snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d] %s: ", tm.tm_year + 1900,
                             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                             current_prefix(), (int)getpid(), name);
        }
        return n < 0 ? 0 : (size_t)n < size ? (size_t)n : size - 1;
}

void aiot_logv(int level, const char *fmt, va_list ap)
{
        char buf[2048];
        size_t len;
        int saved = errno, n;

        if (level > log_level || !fmt)
                return;
        len = format_header(buf, sizeof(buf), level);
        n = vsnprintf(buf + len, sizeof(buf) - len, fmt, ap);
        if (n > 0)
                len += (size_t)n < sizeof(buf) - len ? (size_t)n : sizeof(buf) - len - 1;
        /* Multi-line messages stay one record: newlines become spaces. */
        for (size_t i = 0; i < len; i++)
                if (buf[i] == '\n')
                        buf[i] = ' ';
        buf[len++] = '\n';
        while (write(STDERR_FILENO, buf, len) < 0 && errno == EINTR)
                ;
        errno = saved;
}

void aiot_log(int level, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        aiot_logv(level, fmt, ap);
        va_end(ap);
}
