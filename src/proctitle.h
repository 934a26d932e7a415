/* SPDX-License-Identifier: MIT */
/* Process titles for ps: overwriting the argv area.  Internal. */
#ifndef AIOT_PROCTITLE_H
#define AIOT_PROCTITLE_H

/* Shows title as the process's command line (ps -o args) by overwriting the
 * argv area the kernel reports (arg_start..arg_end of /proc/self/stat), and,
 * when comm is not NULL, sets the thread name (ps -o comm, 15 bytes) to it.
 * The argv strings are gone afterwards: only for a caller that no longer
 * uses them.  Returns 0 or -errno (-ENOENT without /proc). */
int aiot__proctitle_set(const char *title, const char *comm);

#endif
