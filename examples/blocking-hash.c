/* SPDX-License-Identifier: MIT */
/* blocking-hash: an aiotools-serve module whose requests do real blocking work
 * on the worker's blocking pool (aiot_run_blocking(3)) while the loop goes on
 * serving every other connection.
 *
 *   aiotools-serve -w 2 -b 127.0.0.1:8080 --blocking-threads=4 examples/.libs/blocking-hash.so
 *   printf 'hash secret\nping\nfile /etc/hostname\nthreads\n' | nc 127.0.0.1 8080
 *
 * One command per line:
 *   hash TEXT   a deliberately slow key stretch of TEXT (a stand-in for a
 *               password hash: ~10 ms of CPU on a pool thread), as 16 hex digits
 *   stretch N TEXT  the same with N (1..100) times the rounds
 *   file PATH   reads PATH through the pool: "<bytes> <hash>"
 *   threads     the size of this worker's pool
 *   ping        "pong", answered by the loop at once, even while hashes run
 *
 * A hash abandoned by a client that went away (the handler is cancelled) goes
 * on on its thread; the abandon callback frees its request. */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <aiotools.h>

#define STRETCH_ROUNDS 2000000
#define MAX_LINE 4096

struct hash_req {
        long rounds;
        size_t len;
        uint64_t out;
        char text[];
};

/* splitmix64's finaliser, chained: cheap per round, impossible to skip. */
static uint64_t mix(uint64_t x)
{
        x ^= x >> 30;
        x *= 0xbf58476d1ce4e5b9ull;
        x ^= x >> 27;
        x *= 0x94d049bb133111ebull;
        return x ^ (x >> 31);
}

static uint64_t stretch(const char *p, size_t len, long rounds)
{
        uint64_t h = 0xcbf29ce484222325ull;

        for (size_t i = 0; i < len; i++)
                h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
        for (long i = 0; i < rounds; i++)
                h = mix(h + (uint64_t)i);
        return h;
}

/* Runs on a pool thread. */
static int hash_fn(void *arg)
{
        struct hash_req *q = arg;

        q->out = stretch(q->text, q->len, q->rounds);
        return 0;
}

static void hash_abandon(void *arg, int result)
{
        free(arg);
}

static int reply(aiot_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int reply(aiot_conn *c, const char *fmt, ...)
{
        char line[256];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        return aiot_conn_write(c, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static int do_hash(aiot_conn *c, long times, const char *text, size_t len)
{
        const struct aiot_blocking_opts o = { .size = sizeof(o), .abandon = hash_abandon };
        struct hash_req *q = malloc(sizeof(*q) + len);
        int r;

        if (!q)
                return reply(c, "error: %s\n", aiot_strerror(-ENOMEM));
        q->rounds = STRETCH_ROUNDS * times;
        q->len = len;
        memcpy(q->text, text, len);
        r = aiot_run_blocking_opts(hash_fn, q, &o, NULL);
        if (r < 0)
                return r; /* cancelled: hash_abandon() frees q when the thread is done */
        r = reply(c, "%016llx\n", (unsigned long long)q->out);
        free(q);
        return r;
}

static int do_file(aiot_conn *c, const char *path)
{
        void *data;
        size_t len;
        int r = aiot_read_file(path, 16u << 20, &data, &len);

        if (r < 0)
                return r == -ECANCELED || r == -ETIMEDOUT ? r : reply(c, "error: %s: %s\n", path, aiot_strerror(r));
        r = reply(c, "%zu %016llx\n", len, (unsigned long long)stretch(data, len, 0));
        free(data);
        return r;
}

static int do_threads(aiot_conn *c)
{
        struct aiot_blocking_stats st = { .size = sizeof(st) };
        int r = aiot_blocking_stats(NULL, &st);

        return r < 0 ? r : reply(c, "%u\n", st.max_threads);
}

static int hash_conn(aiot_conn *c, void *arg)
{
        char line[MAX_LINE + 1], *text;
        const char *data;
        long times;
        ssize_t n = aiot_conn_read_until(c, "\n", MAX_LINE, &data);
        int r;

        (void)arg;
        if (n <= 0)
                return (int)n; /* 0: the client closed */
        memcpy(line, data, (size_t)n - 1);
        line[n - 1] = '\0';
        if (n >= 2 && line[n - 2] == '\r')
                line[n - 2] = '\0';
        if (strncmp(line, "hash ", 5) == 0)
                r = do_hash(c, 1, line + 5, strlen(line + 5));
        else if (strncmp(line, "stretch ", 8) == 0 && (times = strtol(line + 8, &text, 10)) >= 1 &&
                 times <= 100 && *text == ' ')
                r = do_hash(c, times, text + 1, strlen(text + 1));
        else if (strncmp(line, "file ", 5) == 0)
                r = do_file(c, line + 5);
        else if (strcmp(line, "threads") == 0)
                r = do_threads(c);
        else if (strcmp(line, "ping") == 0)
                r = reply(c, "pong\n");
        else
                r = reply(c, "error: unknown command (hash TEXT, stretch N TEXT, file PATH, threads, ping)\n");
        return r < 0 ? r : AIOT_CONN_KEEP;
}

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI,
        .name = "blocking-hash",
        .conn = hash_conn,
};
