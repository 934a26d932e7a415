/* SPDX-License-Identifier: MIT */
/* Shared helpers for the Check suites.  Header-only so each suite stays one file. */
#ifndef AIOT_TESTUTIL_H
#define AIOT_TESTUTIL_H

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aiotools/task.h"

/* Runs a suite and returns the process exit status; prints Check's summary. */
static inline int testutil_run(Suite *s)
{
        SRunner *sr = srunner_create(s);
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* Runs fn as the root task of a fresh loop (on the virtual clock if asked) and
 * returns its result. */
static inline int testutil_run_loop(aiot_task_fn fn, void *arg, int virtual_clock)
{
        struct aiot_loop_opts opts = {.size = sizeof(opts), .virtual_clock = virtual_clock};
        aiot_loop *loop = NULL;
        int rc;

        ck_assert_int_eq(aiot_loop_new(&loop, &opts), 0);
        rc = aiot_loop_run(loop, fn, arg);
        aiot_loop_free(loop);
        return rc;
}

/* Number of children of this process that are zombies (state Z). */
static inline int testutil_count_zombies(void)
{
        char path[300], buf[512];
        struct dirent *de;
        int n = 0;
        DIR *d = opendir("/proc");

        if (!d)
                return -1;
        while ((de = readdir(d))) {
                FILE *f;
                int ppid;
                char state;

                if (de->d_name[0] < '1' || de->d_name[0] > '9')
                        continue;
                snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
                f = fopen(path, "re");
                if (!f)
                        continue;
                if (fgets(buf, sizeof(buf), f)) {
                        /* The comm field may contain spaces: parse after the last ')'. */
                        char *p = strrchr(buf, ')');
                        if (p && sscanf(p + 1, " %c %d", &state, &ppid) == 2 && ppid == getpid() && state == 'Z')
                                n++;
                }
                fclose(f);
        }
        closedir(d);
        return n;
}

/* Number of open fds of this process (for leak checks). */
static inline int testutil_count_fds(void)
{
        struct dirent *de;
        int n = 0;
        DIR *d = opendir("/proc/self/fd");

        if (!d)
                return -1;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n - 1; /* the directory's own fd */
}

/* Forks a child that runs child(arg) with its stderr on a pipe and no core
 * dump (it is expected to die), then _exit(0)s.  Returns the child's wait
 * status; out gets what it wrote to stderr, NUL-terminated. */
static inline int testutil_child_stderr(void (*child)(void *), void *arg, char *out, size_t outsz)
{
        int pfd[2], status;
        size_t len = 0;
        ssize_t r;
        pid_t pid;

        ck_assert_int_eq(pipe(pfd), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                struct rlimit nocore = {0, 0};

                setrlimit(RLIMIT_CORE, &nocore);
                dup2(pfd[1], STDERR_FILENO);
                close(pfd[0]);
                child(arg);
                _exit(0);
        }
        close(pfd[1]);
        while (len < outsz - 1 && (r = read(pfd[0], out + len, outsz - 1 - len)) != 0) {
                if (r < 0 && errno == EINTR)
                        continue;
                ck_assert_int_gt(r, 0);
                len += (size_t)r;
        }
        out[len] = '\0';
        close(pfd[0]);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        return status;
}

#endif
