#!/bin/bash
# Recycling policies of the real aiotools-serve under keep-alive load
# (tests/versionmod.c, built here; tests/proof-lines-client.py):
#  a. --max-worker-lifetime=1 --max-worker-lifetime-jitter=1 with 2 workers
#     for 6 s: workers are replaced again and again, each after a lifetime of
#     its own in [1, 2) s plus the tick, ready-gated (the replacement is ready
#     before the old one stops), 0 failed requests;
#  b. --max-worker-memory 64 MiB above a worker's use under load: a worker
#     asked to grow by 160 MiB is replaced, the other is not, 0 failed
#     requests;
#  c. --max-requests=2000 --max-requests-jitter=1000 with 2 workers for 6 s:
#     workers are replaced once the serving layer has counted their limit,
#     each limit drawn in [2000, 3000], ready-gated, 0 failed requests.
# Prints "figure: NAME VALUE" lines and ok/FAIL per check.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
. "${top_srcdir:-.}/tests/proof-lib.sh"
command -v python3 >/dev/null 2>&1 || missing "python3 is not installed"
CC=${CC:-cc}
command -v "${CC%% *}" >/dev/null 2>&1 || missing "no C compiler ($CC) to build the test module"
need_built
tmp=$(mktemp -d) || exit 1
trap 'cleanup_procs; [ "$fail" = 0 ] || tail -30 "$out" | sed "s|^|#   |"; rm -rf "$tmp"' EXIT
mod=$tmp/mod.so
out=$tmp/serve.out
$CC -shared -fPIC -O1 -I"$src/include" -DVERSION='"r1"' -o "$mod" "$src/tests/versionmod.c" ||
        { echo "FAIL - cannot build the test module"; exit 1; }

serve() {
        port=$(free_port)
        "$SERVE" -w 2 -b 127.0.0.1:"$port" "$@" "$mod" > "$out" 2>&1 &
        spid=$!
        track "$spid"
        wait_for 10 grep -q 'all 2 workers ready' "$out" || { echo "FAIL - server did not start"; cat "$out"; exit 1; }
}
load() { # SECONDS LABEL: keep-alive load for SECONDS; figures; sets $failed $answered
        local f=$tmp/$2.load
        python3 "$src/tests/proof-lines-client.py" "$port" 8 "$tmp/never" "$1" > "$f" 2>&1
        failed=$(sed -n 's/^failed //p' "$f")
        answered=$(sed -n 's/^answered //p' "$f")
        echo "figure: $2_requests $(sed -n 's/^sent //p' "$f")"
        echo "figure: $2_failed_requests ${failed:-?}"
        grep '^#' "$f"
}
stop() {
        kill -TERM "$spid"
        wait_for 35 eval '! alive "$spid"'
        wait "$spid"
}

# ---- a. lifetime with jitter
echo "# a. --max-worker-lifetime=1 --max-worker-lifetime-jitter=1, 2 workers, 6 s of load"
serve --max-worker-lifetime=1 --max-worker-lifetime-jitter=1
load 6 lifetime
served=$(sed -n 's/.*worker [0-9]* (pid [0-9]*) has served \([0-9.]*\) s, its lifetime: recycling it.*/\1/p' "$out")
n=$(echo "$served" | grep -c .)
distinct=$(echo "$served" | sort -u | grep -c .)
echo "figure: lifetime_recycles $n"
echo "figure: lifetime_served_seconds $(echo $served)"
check "workers were recycled by lifetime ($n times)" test "$n" -ge 4
check "each lifetime within [1, 2.2) s" eval 'for s in $served; do awk -v s=$s "BEGIN{exit !(s >= 1 && s < 2.2)}" || exit 1; done'
# The policy checks every tenth of the lifetime, so lifetimes come in 0.1 s
# steps and repeat; without jitter every one would be in [1, 1.2).  With it,
# all of 4 or more below 1.2 s has a chance of 0.2^4 at most.
longest=$(echo "$served" | sort -n | tail -n1)
check "the lifetimes differ (jitter: $distinct distinct of $n, the longest $longest s)" \
        eval 'test "$distinct" -ge 2 && awk -v s="$longest" "BEGIN{exit !(s >= 1.2)}"'
check "each replacement was ready before its worker stopped ($(grep -c 'replaced by pid' "$out") 'replaced by' lines)" \
        test "$(grep -c 'replaced by pid' "$out")" -ge "$n"
check "0 failed requests while recycling (${failed:-?}, ${answered:-0} answered)" test "${failed:-1}" = 0
# Recycling goes on: a replacement may overlap its worker at any moment.
check "2 workers serve on" wait_for 5 eval 'test "$(live_children "$spid" | wc -l)" = 2'
stop
check "clean stop (exit $?)" test $? = 0

# ---- b. memory
# The limit is 64 MiB above what a worker uses after 2 s of the same load
# (a sanitizer build's workers start far above a fixed limit; its quarantine
# is kept small so that it does not grow meanwhile).
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=4"
serve
load 2 baseline
base=0
for w in $(live_children "$spid"); do
        r=$(awk -v p="$(getconf PAGESIZE)" '{ print int($2 * p / 1024) }' /proc/"$w"/statm)
        [ "$r" -gt "$base" ] && base=$r
done
stop
limit=$((base / 1024 + 64))
echo "figure: memory_worker_rss_kib_under_load $base"
echo "# b. --max-worker-memory=${limit}M, one worker grows by 160 MiB"
serve --max-worker-memory=${limit}M
python3 "$src/tests/proof-lines-client.py" "$port" 8 "$tmp/stop" 30 > "$tmp/memory.load" 2>&1 &
lpid=$!
track "$lpid"
grown=$(python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"m 160\n")
print(s.makefile().readline().split("pid=")[1].strip())
PY
)
echo "# worker $grown grew by 160 MiB"
check "the grown worker is recycled for its memory" \
        wait_for 10 grep -q "worker [0-9] (pid $grown) uses [0-9]* KiB, more than its memory limit of $((limit * 1024)) KiB: recycling it" "$out"
check "its replacement took over (ready-gated)" wait_for 10 grep -q "(pid $grown) replaced by pid" "$out"
check "it is gone" wait_for 15 eval '! alive "$grown"'
sleep 1
touch "$tmp/stop"
wait "$lpid"
failed=$(sed -n 's/^failed //p' "$tmp/memory.load")
echo "figure: memory_requests $(sed -n 's/^sent //p' "$tmp/memory.load")"
echo "figure: memory_failed_requests ${failed:-?}"
check "only that worker was recycled ($(grep -c 'more than its memory limit' "$out") lines)" \
        test "$(grep -c 'more than its memory limit' "$out")" = 1
check "0 failed requests around the memory recycle (${failed:-?})" test "${failed:-1}" = 0
stop
check "clean stop (exit $?)" test $? = 0

# ---- c. requests with jitter
echo "# c. --max-requests=2000 --max-requests-jitter=1000, 2 workers, 6 s of load"
serve --max-requests=2000 --max-requests-jitter=1000
load 6 requests
counts=$(sed -n 's/.*worker [0-9]* (pid [0-9]*) has served \([0-9]*\) requests, its limit \([0-9]*\): recycling it.*/\1:\2/p' "$out")
n=$(echo "$counts" | grep -c .)
limits=$(echo "$counts" | cut -d: -f2)
distinct=$(echo "$limits" | sort -u | grep -c .)
echo "figure: requests_recycles $n"
echo "figure: requests_served_limit $(echo $counts)"
check "workers were recycled by request count ($n times)" test "$n" -ge 4
check "each limit drawn within [2000, 3000]" eval 'for l in $limits; do [ "$l" -ge 2000 ] && [ "$l" -le 3000 ] || exit 1; done'
check "each worker had served its limit" eval 'for c in $counts; do [ "${c%%:*}" -ge "${c##*:}" ] || exit 1; done'
check "the limits differ (jitter: $distinct distinct of $n)" test "$distinct" -ge $((n / 2 + 1))
check "each replacement was ready before its worker stopped ($(grep -c 'replaced by pid' "$out") 'replaced by' lines)" \
        test "$(grep -c 'replaced by pid' "$out")" -ge "$n"
check "0 failed requests while recycling by requests (${failed:-?}, ${answered:-0} answered)" test "${failed:-1}" = 0
# Recycling goes on: a replacement may overlap its worker at any moment.
check "2 workers serve on" wait_for 5 eval 'test "$(live_children "$spid" | wc -l)" = 2'
stop
check "clean stop (exit $?)" test $? = 0
summary
