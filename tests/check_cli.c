/* SPDX-License-Identifier: MIT */
/* aiotools-serve's option parser (daemon/cli.c) and its config file parser
 * (daemon/conffile.c), as pure functions. */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>

#include "aiotools/log.h"
#include "cli.h"
#include "conffile.h"
#include "testutil.h"

static struct cli_config cfg;
static char err[512];

/* Parses a NULL-terminated list of arguments (argv[0] is added). */
static int parse(const char *first, ...)
{
        static char *argv[64] = {"aiotools-serve"};
        int argc = 1;
        va_list ap;

        va_start(ap, first);
        for (const char *a = first; a; a = va_arg(ap, const char *))
                argv[argc++] = (char *)a;
        va_end(ap);
        argv[argc] = NULL;
        return cli_parse(argc, argv, &cfg, err, sizeof(err));
}

START_TEST(test_defaults)
{
        ck_assert_int_eq(parse("mod.so", NULL), 0);
        ck_assert_str_eq(cfg.module, "mod.so");
        ck_assert_int_eq(cfg.workers, 0);
        ck_assert_uint_eq(cfg.n_binds, 0);
        ck_assert_double_eq(cfg.stop_timeout, 30.0);
        ck_assert_double_eq(cfg.worker_timeout, 30.0);
        ck_assert_uint_eq(cfg.n_stop_signals, 0);
        ck_assert_int_eq(cfg.restart_limit, 5);
        ck_assert_double_eq(cfg.restart_window, 10.0);
        ck_assert_int_eq(cfg.log_level, -1);
        ck_assert_int_eq(cfg.module_argc, 0);
        ck_assert_double_eq(cfg.setup_timeout, 60.0);
        ck_assert(!cfg.control && !cfg.control_group && !cfg.metrics);
        ck_assert(!cfg.check && !cfg.help && !cfg.version && !cfg.reuseport && !cfg.no_pidfd);
}
END_TEST

START_TEST(test_every_option_long)
{
        ck_assert_int_eq(parse("--workers=4", "--bind=127.0.0.1:80", "--bind", "unix:/tmp/s", "--reuseport",
                               "--stop-timeout=2.5", "--stop-signals=USR1,SIGTERM", "--user=nobody",
                               "--group", "nogroup", "--pidfile=/run/x.pid", "--restart-limit=3/7.5", "--no-pidfd",
                               "--worker-timeout=0.5", "--log-level=debug", "--check", "mod.so", "--", "a", "--b", "-c", NULL),
                         0);
        ck_assert_int_eq(cfg.workers, 4);
        ck_assert_uint_eq(cfg.n_binds, 2);
        ck_assert_str_eq(cfg.binds[0], "127.0.0.1:80");
        ck_assert_str_eq(cfg.binds[1], "unix:/tmp/s");
        ck_assert(cfg.reuseport && cfg.no_pidfd && cfg.check);
        ck_assert_double_eq(cfg.stop_timeout, 2.5);
        ck_assert_uint_eq(cfg.n_stop_signals, 2);
        ck_assert_int_eq(cfg.stop_signals[0], SIGUSR1);
        ck_assert_int_eq(cfg.stop_signals[1], SIGTERM);
        ck_assert_str_eq(cfg.user, "nobody");
        ck_assert_str_eq(cfg.group, "nogroup");
        ck_assert_str_eq(cfg.pidfile, "/run/x.pid");
        ck_assert_int_eq(cfg.restart_limit, 3);
        ck_assert_double_eq(cfg.restart_window, 7.5);
        ck_assert_double_eq(cfg.worker_timeout, 0.5);
        ck_assert_int_eq(cfg.log_level, AIOT_LOG_DEBUG);
        ck_assert_str_eq(cfg.module, "mod.so");
        ck_assert_int_eq(cfg.module_argc, 3);
        ck_assert_str_eq(cfg.module_argv[0], "a");
        ck_assert_str_eq(cfg.module_argv[1], "--b");
        ck_assert_str_eq(cfg.module_argv[2], "-c");
}
END_TEST

START_TEST(test_short_options)
{
        ck_assert_int_eq(parse("-w", "3", "-b127.0.0.1:1", "-t", "0", "-u", "u", "-gg", "-p", "p", "mod.so", NULL),
                         0);
        ck_assert_int_eq(cfg.workers, 3);
        ck_assert_str_eq(cfg.binds[0], "127.0.0.1:1");
        ck_assert_double_eq(cfg.stop_timeout, 0.0);
        ck_assert_str_eq(cfg.user, "u");
        ck_assert_str_eq(cfg.group, "g");
        ck_assert_str_eq(cfg.pidfile, "p");
        /* Options after MODULE, as with GNU getopt; bundled flags. */
        ck_assert_int_eq(parse("mod.so", "-w2", "--restart-limit=9", NULL), 0);
        ck_assert_int_eq(cfg.workers, 2);
        ck_assert_int_eq(cfg.restart_limit, 9);
        ck_assert_double_eq(cfg.restart_window, 10.0);
        ck_assert_int_eq(parse("-hV", NULL), 0);
        ck_assert(cfg.help && cfg.version);
        ck_assert_int_eq(parse("--help", NULL), 0);
        ck_assert(cfg.help);
        ck_assert_int_eq(parse("-V", NULL), 0);
        ck_assert(cfg.version);
}
END_TEST

/* The serving layer's options: given, absent, and every bad value named. */
START_TEST(test_serve_options)
{
        static const struct {
                const char *arg, *needle;
        } bad_serve[] = {
                {"--max-connections=0", "invalid connection limit '0' for --max-connections"},
                {"--max-connections=-5", "invalid connection limit '-5' for --max-connections"},
                {"--max-connections=10x", "invalid connection limit '10x' for --max-connections"},
                {"--max-connections=99999999999", "invalid connection limit '99999999999'"},
                {"--idle-timeout=-1", "invalid idle timeout '-1' for --idle-timeout"},
                {"--idle-timeout=inf", "invalid idle timeout 'inf' for --idle-timeout"},
                {"--request-timeout=nan", "invalid request timeout 'nan' for --request-timeout"},
                {"--request-timeout=1e9", "invalid request timeout '1e9' for --request-timeout"},
                {"--drain-timeout=", "invalid drain timeout '' for --drain-timeout"},
                {"--drain-timeout=two", "invalid drain timeout 'two' for --drain-timeout"},
                {"--write-timeout=-0.5", "invalid write timeout '-0.5' for --write-timeout"},
        };

        ck_assert_int_eq(parse("mod.so", NULL), 0);
        ck_assert_int_eq(cfg.max_connections, 0);
        ck_assert(cfg.idle_timeout == -1 && cfg.request_timeout == -1 && cfg.drain_timeout == -1 &&
                  cfg.write_timeout == -1);
        ck_assert_int_eq(parse("--max-connections=500", "--idle-timeout=5", "--request-timeout", "0.5",
                               "--drain-timeout=0", "--write-timeout=2.5", "mod.so", NULL),
                         0);
        ck_assert_double_eq(cfg.write_timeout, 2.5);
        ck_assert_int_eq(cfg.max_connections, 500);
        ck_assert_double_eq(cfg.idle_timeout, 5.0);
        ck_assert_double_eq(cfg.request_timeout, 0.5);
        ck_assert_double_eq(cfg.drain_timeout, 0.0);
        for (size_t i = 0; i < sizeof(bad_serve) / sizeof(bad_serve[0]); i++) {
                ck_assert_int_eq(parse(bad_serve[i].arg, "m.so", NULL), -EINVAL);
                ck_assert_msg(strstr(err, bad_serve[i].needle) && !strchr(err, '\n'), "%s: got '%s'",
                              bad_serve[i].arg, err);
        }
}
END_TEST

/* --blocking-threads: absent, given, and bad values named. */
START_TEST(test_blocking_threads)
{
        ck_assert_int_eq(parse("mod.so", NULL), 0);
        ck_assert_int_eq(cfg.blocking_threads, 0);
        ck_assert_int_eq(parse("--blocking-threads=16", "mod.so", NULL), 0);
        ck_assert_int_eq(cfg.blocking_threads, 16);
        ck_assert_int_eq(parse("--blocking-threads", "2", "mod.so", NULL), 0);
        ck_assert_int_eq(cfg.blocking_threads, 2);
        ck_assert_int_eq(parse("--blocking-threads=0", "m.so", NULL), -EINVAL);
        ck_assert_msg(strstr(err, "invalid thread count '0' for --blocking-threads: expected 1 to 1024"), "%s", err);
        ck_assert_int_eq(parse("--blocking-threads=1025", "m.so", NULL), -EINVAL);
        ck_assert_msg(strstr(err, "invalid thread count '1025'"), "%s", err);
        ck_assert_int_eq(parse("--blocking-threads=x", "m.so", NULL), -EINVAL);
        ck_assert_msg(strstr(err, "invalid thread count 'x'") && !strchr(err, '\n'), "%s", err);
}
END_TEST

/* Every bad input: -EINVAL and one line naming the bad value. */
static const struct {
        const char *args[4];
        const char *needle;
} bad[] = {
        {{"--frobnicate", "m.so"}, "unknown option '--frobnicate'"},
        {{"-x", "m.so"}, "unknown option '-x'"},
        {{"-w", "0", "m.so"}, "invalid worker count '0'"},
        {{"-w", "abc", "m.so"}, "invalid worker count 'abc'"},
        {{"--workers=-3", "m.so"}, "invalid worker count '-3'"},
        {{"-w", "99999", "m.so"}, "invalid worker count '99999'"},
        {{"-w", "4x", "m.so"}, "invalid worker count '4x'"},
        {{"-w"}, "option -w needs a value"},
        {{"m.so", "--bind"}, "option --bind needs a value"},
        {{"--bind=", "m.so"}, "empty address"},
        {{"-t", "-1", "m.so"}, "invalid stop timeout '-1'"},
        {{"-t", "nan", "m.so"}, "invalid stop timeout 'nan'"},
        {{"-t", "inf", "m.so"}, "invalid stop timeout 'inf'"},
        {{"--stop-signals=INT,FOO", "m.so"}, "unknown signal 'FOO'"},
        {{"--stop-signals=KILL", "m.so"}, "KILL cannot be a stop signal"},
        {{"--stop-signals=INT,INT", "m.so"}, "given twice"},
        {{"--stop-signals=INT,", "m.so"}, "invalid --stop-signals 'INT,'"},
        {{"--restart-limit=0/10", "m.so"}, "invalid --restart-limit '0/10'"},
        {{"--restart-limit=5/0", "m.so"}, "invalid --restart-limit '5/0'"},
        {{"--restart-limit=x", "m.so"}, "invalid --restart-limit 'x'"},
        {{"--worker-timeout=-1", "m.so"}, "invalid worker timeout '-1' for --worker-timeout"},
        {{"--worker-timeout=inf", "m.so"}, "invalid worker timeout 'inf' for --worker-timeout"},
        {{"--log-level=loud", "m.so"}, "invalid log level 'loud'"},
        {{"--setup-timeout=-2", "m.so"}, "invalid setup timeout '-2' for --setup-timeout"},
        {{"--setup-timeout=nan", "m.so"}, "invalid setup timeout 'nan' for --setup-timeout"},
        {{"--control=", "m.so"}, "empty value for --control"},
        {{"--control-group=", "m.so"}, "empty value for --control-group"},
        {{"--metrics=", "m.so"}, "empty value for --metrics"},
        {{"--check=yes", "m.so"}, "option --check takes no value"},
        {{NULL}, "no MODULE given"},
        {{"-w", "2"}, "no MODULE given"},
        {{"a.so", "b.so"}, "unexpected argument 'b.so'"},
        {{"--reuseport", "m.so"}, "--reuseport needs at least one --bind"},
        {{""}, "empty module path"},
};

START_TEST(test_control_options)
{
        ck_assert_int_eq(parse("--control=/run/x/c.sock", "--control-group", "adm", "--metrics=127.0.0.1:9100",
                               "--setup-timeout=2.5", "m.so", NULL),
                         0);
        ck_assert_str_eq(cfg.control, "/run/x/c.sock");
        ck_assert_str_eq(cfg.control_group, "adm");
        ck_assert_str_eq(cfg.metrics, "127.0.0.1:9100");
        ck_assert_double_eq(cfg.setup_timeout, 2.5);
        ck_assert_int_eq(parse("--setup-timeout=0", "m.so", NULL), 0);
        ck_assert_double_eq(cfg.setup_timeout, 0.0);
}
END_TEST

START_TEST(test_bad_input)
{
        char *argv[8] = {"aiotools-serve"};
        int argc = 1;

        for (int j = 0; j < 4 && bad[_i].args[j]; j++)
                argv[argc++] = (char *)bad[_i].args[j];
        argv[argc] = NULL;
        ck_assert_int_eq(cli_parse(argc, argv, &cfg, err, sizeof(err)), -EINVAL);
        ck_assert_msg(strstr(err, bad[_i].needle), "case %d: '%s' lacks '%s'", _i, err, bad[_i].needle);
        ck_assert_ptr_null(strchr(err, '\n'));
}
END_TEST

START_TEST(test_signal_names)
{
        ck_assert_int_eq(cli_parse_signal("TERM"), SIGTERM);
        ck_assert_int_eq(cli_parse_signal("sigint"), SIGINT);
        ck_assert_int_eq(cli_parse_signal("SIGUSR2"), SIGUSR2);
        ck_assert_int_eq(cli_parse_signal("10"), 10);
        ck_assert_int_eq(cli_parse_signal("0"), -EINVAL);
        ck_assert_int_eq(cli_parse_signal("SIG"), -EINVAL);
        ck_assert_int_eq(cli_parse_signal(NULL), -EINVAL);
        ck_assert_str_eq(cli_signal_name(SIGTERM), "TERM");
        ck_assert_ptr_null(cli_signal_name(0));
}
END_TEST

/* A tiny truncated error buffer and NULL buffers never overflow or crash. */
START_TEST(test_small_err_buffer)
{
        char *argv[] = {"aiotools-serve", "--no-such-option-with-a-long-name", NULL};
        char small[8];

        ck_assert_int_eq(cli_parse(2, argv, &cfg, small, sizeof(small)), -EINVAL);
        ck_assert_uint_eq(strlen(small), 7);
        ck_assert_int_eq(cli_parse(2, argv, &cfg, NULL, 0), -EINVAL);
        ck_assert_int_eq(cli_parse(1, argv, NULL, err, sizeof(err)), -EINVAL);
}
END_TEST

/* ---------------------------------------------------------------- the config file */

static struct conf_file conf;
static char **merged;

/* Parses text as the file "f.conf", merges it under the command line given
 * (NULL-terminated, argv[0] added) and parses the result into cfg. */
static int parse_conf(const char *text, ...)
{
        static char *argv[64] = {"aiotools-serve"};
        struct cli_config cmd;
        int argc = 1, n, r;
        va_list ap;

        conffile_free(&conf);
        free(merged);
        merged = NULL;
        va_start(ap, text);
        for (const char *a = va_arg(ap, const char *); a; a = va_arg(ap, const char *))
                argv[argc++] = (char *)a;
        va_end(ap);
        argv[argc] = NULL;
        r = cli_parse(argc, argv, &cmd, err, sizeof(err));
        ck_assert_msg(r == 0, "command line: %s", err);
        r = conffile_parse("f.conf", text, strlen(text), &conf, err, sizeof(err));
        if (r < 0)
                return r;
        n = conffile_merge(&conf, argc, argv, &cmd, &merged);
        ck_assert_int_gt(n, 0);
        ck_assert_ptr_null(merged[n]);
        r = cli_parse(n, merged, &cfg, err, sizeof(err));
        return r < 0 ? r : cli_validate(&cfg, err, sizeof(err));
}

START_TEST(test_conf_every_setting)
{
        ck_assert_int_eq(parse_conf("# a comment\n"
                                    "\n"
                                    "workers = 4\n"
                                    "  bind=127.0.0.1:80  \n"
                                    "bind = unix:/tmp/s\r\n"
                                    "reuseport = yes\n"
                                    "no-pidfd = no\n"
                                    "stop-timeout = 2.5\n"
                                    "stop-signals = USR1,TERM\n"
                                    "restart-limit = 3/7.5\n"
                                    "log-level = debug\n"
                                    "idle-timeout = 0\n"
                                    "module = /srv/m.so\n"
                                    "arg = --flag\n"
                                    "arg = \"two words\"\n"
                                    "\t# indented comment",
                                    "-c", "f.conf", NULL),
                         0);
        ck_assert_str_eq(cfg.config, "f.conf");
        ck_assert_int_eq(cfg.workers, 4);
        ck_assert_uint_eq(cfg.n_binds, 2);
        ck_assert_str_eq(cfg.binds[0], "127.0.0.1:80");
        ck_assert_str_eq(cfg.binds[1], "unix:/tmp/s");
        ck_assert(cfg.reuseport && !cfg.no_pidfd);
        ck_assert_double_eq(cfg.stop_timeout, 2.5);
        ck_assert_uint_eq(cfg.n_stop_signals, 2);
        ck_assert_int_eq(cfg.stop_signals[0], SIGUSR1);
        ck_assert_int_eq(cfg.restart_limit, 3);
        ck_assert_double_eq(cfg.restart_window, 7.5);
        ck_assert_int_eq(cfg.log_level, AIOT_LOG_DEBUG);
        ck_assert_double_eq(cfg.idle_timeout, 0);
        ck_assert_str_eq(cfg.module, "/srv/m.so");
        ck_assert_int_eq(cfg.module_argc, 2);
        ck_assert_str_eq(cfg.module_argv[0], "--flag");
        ck_assert_str_eq(cfg.module_argv[1], "two words");
}
END_TEST

/* The command line wins: its values, its addresses (instead of the file's),
 * its MODULE with its own arguments. */
START_TEST(test_conf_command_line_wins)
{
        const char *text = "workers = 2\nbind = 127.0.0.1:1\nbind = 127.0.0.1:2\nstop-signals = USR1\n"
                           "module = file.so\narg = from-file\n";

        ck_assert_int_eq(parse_conf(text, "-c", "f.conf", "-w", "3", "-b", "127.0.0.1:9", "--stop-signals=INT",
                                    "cmd.so", "--", "x", NULL),
                         0);
        ck_assert_int_eq(cfg.workers, 3);
        ck_assert_uint_eq(cfg.n_binds, 1);
        ck_assert_str_eq(cfg.binds[0], "127.0.0.1:9");
        ck_assert_uint_eq(cfg.n_stop_signals, 1);
        ck_assert_int_eq(cfg.stop_signals[0], SIGINT);
        ck_assert_str_eq(cfg.module, "cmd.so");
        ck_assert_int_eq(cfg.module_argc, 1);
        ck_assert_str_eq(cfg.module_argv[0], "x");
        /* Arguments on the command line go to the file's module. */
        ck_assert_int_eq(parse_conf(text, "--config=f.conf", "--", "y", "z", NULL), 0);
        ck_assert_str_eq(cfg.module, "file.so");
        ck_assert_uint_eq(cfg.n_binds, 2);
        ck_assert_int_eq(cfg.workers, 2);
        ck_assert_int_eq(cfg.module_argc, 2);
        ck_assert_str_eq(cfg.module_argv[1], "z");
        /* Without any, the file's. */
        ck_assert_int_eq(parse_conf(text, "-c", "f.conf", NULL), 0);
        ck_assert_int_eq(cfg.module_argc, 1);
        ck_assert_str_eq(cfg.module_argv[0], "from-file");
}
END_TEST

/* Each bad line: FILE:LINE and the bad value in one line. */
static const struct {
        const char *text, *msg;
} bad_conf[] = {
        {"workers = 0\n", "f.conf:1: invalid worker count '0' for --workers"},
        {"# c\nworkers = 2\nworkers = many\n", "f.conf:3: invalid worker count 'many'"},
        {"\n\nnosuch = 1\n", "f.conf:3: unknown setting 'nosuch'"},
        {"workers\n", "f.conf:1: expected 'name = value', got 'workers'"},
        {"= 3\n", "f.conf:1: bad setting name ''"},
        {"reuseport = maybe\n", "f.conf:1: expected yes or no for 'reuseport'"},
        {"check = yes\n", "f.conf:1: unknown setting 'check'"},
        {"config = other.conf\n", "f.conf:1: unknown setting 'config'"},
        {"module =\n", "f.conf:1: an empty 'module'"},
        {"module = a.so\nmodule = b.so\n", "f.conf:2: a second 'module'"},
        {"log-level = loud\n", "f.conf:1: invalid log level 'loud'"},
        {"bind =\n", "f.conf:1: empty address for --bind"},
        {"stop-timeout = -1\n", "f.conf:1: invalid stop timeout '-1'"},
        {"restart-limit = 5/0\n", "f.conf:1: invalid --restart-limit '5/0'"},
        {"stop-signals = KILL\n", "f.conf:1: invalid --stop-signals 'KILL'"},
};

START_TEST(test_conf_bad_line)
{
        ck_assert_int_eq(parse_conf(bad_conf[_i].text, "-c", "f.conf", "m.so", NULL), -EINVAL);
        ck_assert_msg(strncmp(err, bad_conf[_i].msg, strlen(bad_conf[_i].msg)) == 0, "got '%s', expected '%s...'",
                      err, bad_conf[_i].msg);
        ck_assert_ptr_null(strchr(err, '\n'));
        ck_assert_int_eq(conf.n_opts, 0);
}
END_TEST

/* The recycling policies: lifetime, jitter and a memory size with its unit. */
START_TEST(test_recycling_options)
{
        ck_assert_int_eq(parse("--max-worker-lifetime=3600", "--max-worker-lifetime-jitter=60.5",
                               "--max-worker-memory=512M", "m.so", NULL),
                         0);
        ck_assert_double_eq(cfg.max_worker_lifetime, 3600);
        ck_assert_double_eq(cfg.max_worker_lifetime_jitter, 60.5);
        ck_assert_uint_eq(cfg.max_worker_memory, 512ULL << 20);
        ck_assert_int_eq(parse("--max-worker-memory=4096", "m.so", NULL), 0);
        ck_assert_uint_eq(cfg.max_worker_memory, 4096);
        ck_assert_int_eq(parse("--max-worker-memory=2GiB", "m.so", NULL), 0);
        ck_assert_uint_eq(cfg.max_worker_memory, 2ULL << 30);
        ck_assert_int_eq(parse("--max-worker-memory=1kb", "m.so", NULL), 0);
        ck_assert_uint_eq(cfg.max_worker_memory, 1024);
        ck_assert_int_eq(parse("m.so", NULL), 0);
        ck_assert(cfg.max_worker_lifetime == 0 && cfg.max_worker_memory == 0);
        ck_assert_int_eq(parse("--max-worker-memory=12X", "m.so", NULL), -EINVAL);
        ck_assert_str_eq(err, "invalid memory size '12X' for --max-worker-memory: expected bytes with K, M, G or T, "
                              "e.g. 512M");
        ck_assert_int_eq(parse("--max-worker-memory=0", "m.so", NULL), -EINVAL);
        ck_assert_int_eq(parse("--max-worker-memory=-1M", "m.so", NULL), -EINVAL);
        ck_assert_int_eq(parse("--max-worker-memory=2000000T", "m.so", NULL), -EINVAL);
        ck_assert_int_eq(parse("--max-worker-lifetime=soon", "m.so", NULL), -EINVAL);
        ck_assert_str_eq(err, "invalid lifetime 'soon' for --max-worker-lifetime: expected seconds, 0 to 31536000");
        ck_assert_int_eq(parse("--max-worker-lifetime-jitter=5", "m.so", NULL), -EINVAL);
        ck_assert_str_eq(err, "--max-worker-lifetime-jitter needs --max-worker-lifetime");
        /* The file has them too. */
        ck_assert_int_eq(parse_conf("max-worker-memory = 1G\nmax-worker-lifetime = 10\n", "-c", "f.conf", "m.so",
                                    NULL),
                         0);
        ck_assert_uint_eq(cfg.max_worker_memory, 1ULL << 30);
        ck_assert_int_eq(parse_conf("\nmax-worker-memory = lots\n", "-c", "f.conf", "m.so", NULL), -EINVAL);
        ck_assert_str_eq(err, "f.conf:2: invalid memory size 'lots' for --max-worker-memory: expected bytes with K, M, "
                              "G or T, e.g. 512M");
}
END_TEST

/* What only the whole configuration can tell: a MODULE somewhere, --bind for --reuseport. */
START_TEST(test_conf_whole)
{
        ck_assert_int_eq(parse_conf("workers = 2\n", "-c", "f.conf", NULL), -EINVAL);
        ck_assert_str_eq(err, "no MODULE given (see --help)");
        ck_assert_int_eq(parse_conf("reuseport = on\nmodule = m.so\n", "-c", "f.conf", NULL), -EINVAL);
        ck_assert_str_eq(err, "--reuseport needs at least one --bind address");
        ck_assert_int_eq(parse_conf("bind = :0\nmodule = m.so\n", "-c", "f.conf", "--reuseport", NULL), 0);
        ck_assert_int_eq(parse_conf("", "-c", "f.conf", "m.so", NULL), 0);
        ck_assert_int_eq(cli_option_takes_value("workers"), 1);
        ck_assert_int_eq(cli_option_takes_value("reuseport"), 0);
        ck_assert_int_eq(cli_option_takes_value("nope"), -1);
        conffile_free(&conf);
        free(merged);
        merged = NULL;
}
END_TEST

static Suite *cli_suite(void)
{
        Suite *s = suite_create("cli");
        TCase *tc = tcase_create("parse");

        tcase_add_test(tc, test_defaults);
        tcase_add_test(tc, test_control_options);
        tcase_add_test(tc, test_every_option_long);
        tcase_add_test(tc, test_short_options);
        tcase_add_loop_test(tc, test_bad_input, 0, (int)(sizeof(bad) / sizeof(bad[0])));
        tcase_add_test(tc, test_serve_options);
        tcase_add_test(tc, test_blocking_threads);
        tcase_add_test(tc, test_signal_names);
        tcase_add_test(tc, test_small_err_buffer);
        suite_add_tcase(s, tc);
        tc = tcase_create("conffile");
        tcase_add_test(tc, test_conf_every_setting);
        tcase_add_test(tc, test_conf_command_line_wins);
        tcase_add_loop_test(tc, test_conf_bad_line, 0, (int)(sizeof(bad_conf) / sizeof(bad_conf[0])));
        tcase_add_test(tc, test_conf_whole);
        tcase_add_test(tc, test_recycling_options);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        return testutil_run(cli_suite());
}
