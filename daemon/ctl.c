/* SPDX-License-Identifier: MIT */
/* aiotools-serve ctl [--socket=PATH] [--json] COMMAND [ARG]: sends one line to
 * the control socket of a running server (see aiotools-serve(1), CONTROL)
 * and prints the answer.  The answer's first line is "OK", "ERR reason" or
 * "USAGE reason"; the rest is printed as it is (or, with --json, wrapped in a
 * JSON document when the server answered in words).  `reload` waits as long
 * as the server takes (it answers once the new generation is ready or rolled
 * back); the other commands give up after CTL_TIMEOUT seconds. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctl.h"

#define CTL_TIMEOUT 30
#define EXIT_DONE 0
#define EXIT_FAILED 1
#define EXIT_USAGE 2
#define EXIT_NO_SERVER 3

static const char ctl_usage[] =
        "Usage: aiotools-serve ctl [--socket=PATH] [--json] COMMAND [ARG]\n"
        "\n"
        "Commands: status, reload, scale N, recycle INDEX, stop, tasks INDEX, metrics,\n"
        "log-level LEVEL.  The socket: --socket, else $AIOTOOLS_CONTROL, else\n"
        "$RUNTIME_DIRECTORY/control.sock.\n"
        "Exit status: 0 done, 1 the command failed, 2 usage, 3 no server at the socket.\n";

static const struct {
        const char *name;
        int n_args;
} commands[] = {
        {"status", 0}, {"reload", 0}, {"scale", 1},   {"recycle", 1},
        {"stop", 0},   {"tasks", 1},  {"metrics", 0}, {"log-level", 1},
};

static int usage(const char *fmt, const char *arg)
{
        fputs("aiotools-serve ctl: ", stderr);
        fprintf(stderr, fmt, arg);
        fputc('\n', stderr);
        return EXIT_USAGE;
}

struct ctl_args {
        const char *socket, *cmd, *arg;
        int json;
};

static int parse_args(int argc, char **argv, struct ctl_args *a)
{
        int i, n = -1;

        for (i = 1; i < argc && argv[i][0] == '-'; i++) {
                if (strcmp(argv[i], "--json") == 0)
                        a->json = 1;
                else if (strncmp(argv[i], "--socket=", 9) == 0)
                        a->socket = argv[i] + 9;
                else if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc)
                        a->socket = argv[++i];
                else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
                        fputs(ctl_usage, stdout);
                        return -1;
                } else
                        return usage("unknown option '%.64s' (see aiotools-serve ctl --help)", argv[i]);
        }
        if (i == argc)
                return usage("no command given (see aiotools-serve ctl --help)%s", "");
        a->cmd = argv[i++];
        for (size_t c = 0; c < sizeof(commands) / sizeof(commands[0]); c++)
                if (strcmp(commands[c].name, a->cmd) == 0)
                        n = commands[c].n_args;
        if (n < 0)
                return usage("unknown command '%.64s' (see aiotools-serve ctl --help)", a->cmd);
        if (argc - i != n)
                return usage(n ? "command '%s' takes one argument" : "command '%s' takes no argument", a->cmd);
        a->arg = n ? argv[i] : NULL;
        if (a->arg && (!*a->arg || strpbrk(a->arg, " \n\r")))
                return usage("invalid argument '%.64s'", a->arg);
        return 0;
}

static const char *socket_path(const struct ctl_args *a, char *buf, size_t len)
{
        const char *env = getenv("AIOTOOLS_CONTROL"), *rt = getenv("RUNTIME_DIRECTORY");

        if (a->socket)
                return a->socket;
        if (env && *env)
                return env;
        if (rt && *rt) {
                snprintf(buf, len, "%.*s/control.sock", (int)strcspn(rt, ":"), rt);
                return buf;
        }
        return NULL;
}

static int connect_to(const char *path)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd;

        if (strlen(path) >= sizeof(sa.sun_path)) {
                errno = ENAMETOOLONG;
                return -1;
        }
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -1;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int e = errno;

                close(fd);
                errno = e;
                return -1;
        }
        return fd;
}

/* Everything the server sends until it closes; NULL on a timeout or error. */
static char *read_answer(int fd, int timeout_ms, size_t *len)
{
        size_t cap = 4096, n = 0;
        char *buf = malloc(cap + 1);

        while (buf) {
                struct pollfd p = {.fd = fd, .events = POLLIN};
                ssize_t r;

                if (poll(&p, 1, timeout_ms) <= 0) {
                        if (errno == EINTR)
                                continue;
                        free(buf);
                        return NULL;
                }
                if (n == cap) {
                        char *nb = realloc(buf, (cap *= 2) + 1);

                        if (!nb)
                                break;
                        buf = nb;
                }
                r = read(fd, buf + n, cap - n);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0)
                        break;
                n += (size_t)r;
        }
        if (buf)
                buf[n] = '\0';
        *len = n;
        return buf;
}

static void json_string(FILE *f, const char *s, size_t n)
{
        fputc('"', f);
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)s[i];

                if (c == '"' || c == '\\')
                        fprintf(f, "\\%c", c);
                else if (c < 0x20)
                        fprintf(f, "\\u%04x", c);
                else
                        fputc(c, f);
        }
        fputc('"', f);
}

/* Prints the body; a body in words becomes {"ok":true,"message":...} with --json. */
static void print_body(const struct ctl_args *a, const char *body)
{
        size_t n = strlen(body);

        if (!a->json || body[0] == '{' || body[0] == '[') {
                fputs(body, stdout);
                return;
        }
        while (n && body[n - 1] == '\n')
                n--;
        fputs("{\"ok\":true,\"message\":", stdout);
        json_string(stdout, body, n);
        fputs("}\n", stdout);
}

static int answer(const struct ctl_args *a, const char *path, char *buf)
{
        char *nl = strchr(buf, '\n');
        const char *body = nl ? nl + 1 : "";

        if (nl)
                *nl = '\0';
        if (strcmp(buf, "OK") == 0) {
                if (strcmp(a->cmd, "tasks") == 0 && !*body) {
                        fprintf(stderr, "aiotools-serve ctl: worker %s did not answer\n", a->arg);
                        return EXIT_FAILED;
                }
                print_body(a, body);
                return EXIT_DONE;
        }
        if (strncmp(buf, "USAGE ", 6) == 0) {
                fprintf(stderr, "aiotools-serve ctl: %s\n", buf + 6);
                return EXIT_USAGE;
        }
        if (strncmp(buf, "ERR ", 4) == 0) {
                if (a->json) {
                        fputs("{\"ok\":false,\"error\":", stdout);
                        json_string(stdout, buf + 4, strlen(buf + 4));
                        fputs("}\n", stdout);
                }
                fprintf(stderr, "aiotools-serve ctl: %s\n", buf + 4);
                return EXIT_FAILED;
        }
        fprintf(stderr, "aiotools-serve ctl: no answer from the server at %s\n", path);
        return EXIT_FAILED;
}

int ctl_main(int argc, char **argv)
{
        struct ctl_args a = {0};
        char pathbuf[4200], line[256];
        const char *path;
        char *buf;
        size_t len;
        int fd, r = parse_args(argc, argv, &a);

        if (r != 0)
                return r < 0 ? EXIT_DONE : r;
        path = socket_path(&a, pathbuf, sizeof(pathbuf));
        if (!path)
                return usage("no control socket: give --socket=PATH or set AIOTOOLS_CONTROL%s", "");
        fd = connect_to(path);
        if (fd < 0) {
                fprintf(stderr, "aiotools-serve ctl: no server at %s: %s\n", path, strerror(errno));
                return EXIT_NO_SERVER;
        }
        snprintf(line, sizeof(line), "%s%s%s%s\n", a.cmd, a.arg ? " " : "", a.arg ? a.arg : "",
                 a.json ? " --json" : "");
        if (write(fd, line, strlen(line)) != (ssize_t)strlen(line)) {
                fprintf(stderr, "aiotools-serve ctl: cannot send to %s: %s\n", path, strerror(errno));
                close(fd);
                return EXIT_NO_SERVER;
        }
        buf = read_answer(fd, strcmp(a.cmd, "reload") == 0 ? -1 : CTL_TIMEOUT * 1000, &len);
        close(fd);
        if (!buf) {
                fprintf(stderr, "aiotools-serve ctl: no answer from %s within %d s\n", path, CTL_TIMEOUT);
                return EXIT_FAILED;
        }
        r = answer(&a, path, buf);
        free(buf);
        return r;
}
