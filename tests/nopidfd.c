/* SPDX-License-Identifier: MIT */
/* nopidfd CMD [ARGS...]: runs CMD as if on a kernel older than 5.3.
 *
 * A seccomp filter (inherited by every descendant) makes pidfd_open,
 * pidfd_send_signal, pidfd_getfd and clone3 fail with ENOSYS, and waitid with
 * idtype P_PIDFD fail with EINVAL: exactly what such a kernel answers.  make
 * check runs every Check suite a second time under it, so that the fork
 * module's SIGCHLD fallback is proven, not assumed. */

#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

/* Not a macro in glibc (an enum member), and absent from older headers. */
#define NOPIDFD_P_PIDFD 3

static int add_rule(scmp_filter_ctx ctx, const char *name, int err)
{
        int nr = seccomp_syscall_resolve_name(name);

        if (nr == __NR_SCMP_ERROR) {
                fprintf(stderr, "nopidfd: libseccomp does not know %s\n", name);
                return -1;
        }
        if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(err), nr, 0) < 0) {
                fprintf(stderr, "nopidfd: cannot filter %s\n", name);
                return -1;
        }
        return 0;
}

int main(int argc, char **argv)
{
        static const char *const gone[] = {"pidfd_open", "pidfd_send_signal", "pidfd_getfd", "clone3"};
        /* Spelled out: clang's -Wextra objects to SCMP_A0()'s partial initializer. */
        const struct scmp_arg_cmp is_pidfd = {
                .arg = 0, .op = SCMP_CMP_EQ, .datum_a = NOPIDFD_P_PIDFD, .datum_b = 0};
        scmp_filter_ctx ctx;
        int r;

        if (argc < 2) {
                fprintf(stderr, "usage: nopidfd CMD [ARGS...]\n");
                return 2;
        }
        /* seccomp without privileges needs no_new_privs. */
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
                fprintf(stderr, "nopidfd: PR_SET_NO_NEW_PRIVS: %s\n", strerror(errno));
                return 1;
        }
        ctx = seccomp_init(SCMP_ACT_ALLOW);
        if (!ctx) {
                fprintf(stderr, "nopidfd: seccomp_init failed\n");
                return 1;
        }
        for (size_t i = 0; i < sizeof(gone) / sizeof(gone[0]); i++)
                if (add_rule(ctx, gone[i], ENOSYS) < 0)
                        return 1;
        r = seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(EINVAL), SCMP_SYS(waitid), 1, &is_pidfd);
        if (r < 0) {
                fprintf(stderr, "nopidfd: cannot filter waitid: %s\n", strerror(-r));
                return 1;
        }
        r = seccomp_load(ctx);
        seccomp_release(ctx);
        if (r < 0) {
                fprintf(stderr, "nopidfd: seccomp_load: %s\n", strerror(-r));
                return 1;
        }
        execvp(argv[1], argv + 1);
        fprintf(stderr, "nopidfd: %s: %s\n", argv[1], strerror(errno));
        return 127;
}
