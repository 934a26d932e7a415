#!/bin/sh
# SPDX-License-Identifier: MIT
# The task runtime's suites under valgrind memcheck: every use of uninitialised
# or unaddressable memory and every definite or indirect leak fails the test.
# Both context implementations run (the asm switch and the *_uc ucontext build),
# including check_task's 100 000-task spawn/join test.
#
# Check forks each test (CK_FORK stays at its default); valgrind follows the
# fork, so every test runs in a memcheck process of its own and its errors make
# that child exit 1 (--error-exitcode), which Check reports as an error of that
# test.  Every process also writes a log, and any "ERROR SUMMARY" above 0 fails
# the run as well, so that a child that dies by a signal cannot hide its errors.
# No suppression file: none is needed (src/runtime/stack.c tells valgrind about every task
# stack and marks a reused one undefined when it hands it out).
#
# check_ctx is not run: its tests fault on purpose (a write to a low address, a
# stack overflow), which memcheck rightly reports.
#
# Skips (77) without valgrind, unless CI=true; skips in sanitizer builds, where
# ASan and memcheck cannot share a process.
set -u

: "${top_builddir:=.}"
: "${top_srcdir:=.}"

. "$top_srcdir/tests/need.sh"
need valgrind valgrind
if grep -qE '^SAN_CFLAGS = .*-fsanitize=(address|thread)' "$top_builddir/Makefile" 2>/dev/null; then
        echo "check-valgrind: SKIP: sanitizer build (ASan or TSan and valgrind do not mix)"
        exit 77
fi

suites="check_task check_scope check_io check_timer check_task_uc check_scope_uc check_io_uc check_timer_uc"
# The blocking pool's suite (threads, 100 000 calls, a fork while calls run).
suites="$suites check_blocking check_blocking_uc"
for s in $suites; do
        if [ ! -x "$top_builddir/tests/$s" ]; then
                echo "check-valgrind: SKIP: tests/$s is not built (Check missing?)"
                exit 77
        fi
done

logdir="$top_builddir/tests/check-valgrind.logs"
rm -rf "$logdir"
mkdir -p "$logdir" || exit 1

# Valgrind runs ~20-50x slower: stretch Check's per-test timeouts to match.
CK_TIMEOUT_MULTIPLIER=10
export CK_TIMEOUT_MULTIPLIER
unset CK_FORK CK_RUN_CASE CK_RUN_SUITE

status=0
for s in $suites; do
        echo "== $s under valgrind"
        CK_LOG_FILE_NAME="$logdir/$s.results" "$top_builddir/libtool" --mode=execute valgrind \
                --leak-check=full --errors-for-leak-kinds=definite,indirect \
                --error-exitcode=1 --log-file="$logdir/$s.%p.log" \
                "$top_builddir/tests/$s"
        rc=$?
        if [ $rc -ne 0 ]; then
                echo "check-valgrind: $s exited with $rc" >&2
                status=1
        fi
        case $s in
        check_task*)
                # Check's log lists every test with its result.
                if ! grep -q ':P:[^:]*:test_100k_spawn_join:' "$logdir/$s.results"; then
                        echo "check-valgrind: $s: test_100k_spawn_join did not pass" >&2
                        status=1
                fi ;;
        esac
        nlogs=$(ls "$logdir" | grep -c "^$s\.[0-9]*\.log\$")
        bad=$(grep -l 'ERROR SUMMARY: [1-9]' "$logdir/$s".[0-9]*.log 2>/dev/null)
        if [ -n "$bad" ]; then
                echo "check-valgrind: memcheck errors in $s:" >&2
                for f in $bad; do
                        sed -n '/^==[0-9]*== Command/,$p' "$f" | head -n 80 >&2
                done
                status=1
        fi
        # The parent and one process per test: fewer logs would mean the tests
        # did not run under valgrind at all.
        if [ "$nlogs" -lt 2 ]; then
                echo "check-valgrind: only $nlogs valgrind log(s) for $s" >&2
                status=1
        fi
        echo "   $nlogs processes checked"
done
[ $status -eq 0 ] && rm -rf "$logdir"
exit $status
