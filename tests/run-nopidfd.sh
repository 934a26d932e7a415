#!/bin/sh
# The LOG_COMPILER of .nopidfd tests: "run-nopidfd.sh tests/check_fork-nopidfd.nopidfd"
# (or tests/check_fork.nopidfd) runs tests/check_fork under tests/nopidfd, which
# makes the pidfd system calls fail as on a pre-5.3 kernel.  AIOTOOLS_EXPECT_FORK_MODE tells the suites which
# mode the fork module must now report (and that the filter must be in force).
set -eu
if [ $# -ne 1 ]; then
        echo "usage: run-nopidfd.sh SUITE.nopidfd" >&2
        exit 99
fi
suite=${1%.nopidfd}
suite=${suite%-nopidfd}
builddir=${top_builddir:-.}
# tests/nopidfd is built only when configure found libseccomp.
[ -x "$builddir/tests/nopidfd" ] || { . "${top_srcdir:-.}/tests/need.sh"; missing "tests/nopidfd (configure found no libseccomp)" libseccomp-dev; }
AIOTOOLS_EXPECT_FORK_MODE=sigchld
export AIOTOOLS_EXPECT_FORK_MODE
exec "$builddir/tests/nopidfd" "$suite"
