/* SPDX-License-Identifier: MIT */
/* Process titles.  The kernel reports a process's command line from the
 * memory between arg_start and arg_end (fields 48 and 49 of /proc/PID/stat),
 * which is the process's own argv strings: writing there is what ps shows.
 * Only that area is used (never the environment beyond it), so a long title is
 * truncated rather than moving environ around as setproctitle() does. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "macro.h"
#include "proctitle.h"

/* The argv area from /proc/self/stat. */
static int argv_area(char **start, size_t *len)
{
        char buf[4096], *p, *save = NULL;
        unsigned long long a = 0, e = 0;
        int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC), field = 2;
        ssize_t n;

        if (fd < 0)
                return -errno;
        n = AIOT_RETRY_EINTR(read(fd, buf, sizeof(buf) - 1));
        close(fd);
        if (n <= 0)
                return -EIO;
        buf[n] = '\0';
        /* The command name (field 2) may hold spaces and parentheses. */
        p = strrchr(buf, ')');
        if (!p)
                return -EIO;
        for (char *tok = strtok_r(p + 1, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
                field++;
                if (field == 48)
                        a = strtoull(tok, NULL, 10);
                else if (field == 49) {
                        e = strtoull(tok, NULL, 10);
                        break;
                }
        }
        if (!a || e <= a)
                return -ENOENT;
        *start = (char *)(uintptr_t)a;
        *len = (size_t)(e - a);
        return 0;
}

int aiot__proctitle_set(const char *title, const char *comm)
{
        char *area;
        size_t len;
        int r;

        if (comm)
                (void)prctl(PR_SET_NAME, comm, 0, 0, 0);
        r = argv_area(&area, &len);
        if (r < 0)
                return r;
        /* The area must hold this process's own argv[0]: under an emulator
         * (valgrind) the kernel's area belongs to the host, not to us. */
        if (program_invocation_name < area || program_invocation_name >= area + len)
                return -ENOENT;
        /* NUL-filled to the end: the last byte must stay NUL, or the kernel
         * takes the title to continue into the environment. */
        memset(area, 0, len);
        memcpy(area, title, strnlen(title, len - 1));
        return 0;
}
