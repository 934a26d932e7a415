#!/bin/bash
# SPDX-License-Identifier: MIT
# The serving layer's promises, against the real aiotools-serve (`make check`;
# about 40 s, most of it waiting):
#  a. 500 slowloris connections (a request head trickled one byte a second)
#     against http-hello with --request-timeout=2: every one is closed by the
#     timeout (not before 1.5 s after its first byte, with EOF: a lingering
#     close, not a reset), while a normal keep-alive client's p99 over 300
#     requests stays under 20 ms (the issue's bound; printed);
#  b. at RLIMIT_NOFILE 64 (soft = hard) 300 concurrent short connections,
#     their requests sent 1 s after they connected (so the worker sits at its
#     fd limit that long), are all answered, the worker's CPU time stays under
#     half the wall time (an acceptor spinning on EMFILE would take all of it)
#     and the log names the limit;
#  c. ten reloads (SIGHUP) and then a stop under keep-alive load, against
#     http-hello and against echo (tests/proof-client.py): zero failed
#     requests, zero resets, and the server exits 0.
# Prints "figure: NAME VALUE" lines (with the load average) and ok/FAIL.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
. "${top_srcdir:-.}/tests/proof-lib.sh"
command -v python3 >/dev/null 2>&1 || missing "python3 is not installed"
need_built
ECHO="$bld/examples/.libs/echo.so"
CLIENT="$src/tests/serve-client.py"
tmp=$(mktemp -d) || exit 1
trap 'cleanup_procs; rm -rf "$tmp"' EXIT
ulimit -n 4096 2>/dev/null
echo "figure: loadavg_start $(cut -d' ' -f1-3 /proc/loadavg)"

# serve LABEL WORKERS MODULE [OPTIONS...]: starts aiotools-serve (through
# PREFIX, e.g. a limit wrapper); sets $spid $port $out.
PREFIX=()
serve() {
        local label=$1 workers=$2 module=$3
        shift 3
        out="$tmp/$label.out"
        "${PREFIX[@]}" "$SERVE" -w "$workers" -b 127.0.0.1:0 "$@" "$module" > "$out" 2>&1 &
        spid=$!
        track "$spid"
        wait_for 20 grep -q "all $workers workers\? ready" "$out" ||
                { echo "FAIL - [$label] server did not start"; cat "$out"; exit 1; }
        port=$(log_port "$out")
}
# stop_server: SIGTERM, then the exit status in $rc.
stop_server() {
        kill -TERM "$spid" 2>/dev/null
        wait_for 40 eval '! alive "$spid"'
        wait "$spid"
        rc=$?
}
# get FILE KEY: a "key value" line's value.
get() { sed -n "s/^$2 //p" "$1"; }
# lt A B: A < B for decimals.
lt() { python3 -c "import sys; sys.exit(not float('$1') < float('$2'))"; }

# ---- a. slowloris
echo "# a. 500 slowloris connections, --request-timeout=2, a normal client meanwhile"
serve slowloris 1 "$HELLO" --request-timeout=2
timeout 150 python3 "$CLIENT" slowloris "$port" 500 300 > "$tmp/slow.txt" 2>&1
f=$tmp/slow.txt
sed -n 's/^\([a-z0-9_]*\) \(.*\)$/figure: \1 \2/p' "$f"
echo "figure: loadavg_slowloris $(cut -d' ' -f1-3 /proc/loadavg)"
grep -v '^[a-z0-9_]* ' "$f" | sed 's/^/# /'
check "all 500 slowloris connections were closed ($(get "$f" slow_closed))" test "$(get "$f" slow_closed)" = 500
check "by the request timeout: none before 1.5 s after its first byte ($(get "$f" slow_first_close_s) s)" \
        lt 1.5 "$(get "$f" slow_first_close_s)"
check "within 20 s of its first byte ($(get "$f" slow_last_close_s) s)" lt "$(get "$f" slow_last_close_s)" 20
check "each saw EOF, none a reset or an answer (eof $(get "$f" slow_eof), reset $(get "$f" slow_reset))" \
        test "$(get "$f" slow_eof)" = 500
check "the normal client's 300 requests were answered ($(get "$f" probe_answered), failed $(get "$f" probe_failed))" \
        test "$(get "$f" probe_answered)" = 300
check "its p99 stayed under 20 ms ($(get "$f" probe_p99_ms) ms)" lt "$(get "$f" probe_p99_ms)" 20
stop_server
check "clean stop (exit $rc)" test "$rc" = 0

# ---- b. RLIMIT_NOFILE 64
echo "# b. RLIMIT_NOFILE 64 (soft = hard), 300 concurrent short connections"
PREFIX=(python3 -c 'import os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
os.execv(sys.argv[1], sys.argv[1:])')
serve nofile 1 "$HELLO"
PREFIX=()
worker=$(live_children "$spid" | head -n1)
cpu_ticks() { awk '{ print $14 + $15 }' /proc/"$1"/stat; }
c0=$(cpu_ticks "$worker")
timeout 90 python3 "$CLIENT" burst "$port" 300 1.0 > "$tmp/burst.txt" 2>&1
c1=$(cpu_ticks "$worker")
f=$tmp/burst.txt
hz=$(getconf CLK_TCK)
cpu=$(python3 -c "print('%.3f' % (($c1 - $c0) / $hz))")
elapsed=$(get "$f" elapsed_s)
echo "figure: nofile_answered $(get "$f" answered) of 300, failed $(get "$f" failed)"
echo "figure: nofile_elapsed_s $elapsed"
echo "figure: nofile_worker_cpu_s $cpu"
echo "figure: loadavg_nofile $(cut -d' ' -f1-3 /proc/loadavg)"
check "every one of the 300 requests was answered ($(get "$f" answered))" test "$(get "$f" answered)" = 300
check "the worker's soft and hard RLIMIT_NOFILE are 64" \
        grep -q '^Max open files *64 *64 ' /proc/"$worker"/limits
check "the log names the limit ('RLIMIT_NOFILE is 64')" grep -q 'RLIMIT_NOFILE is 64' "$out"
check "the worker's CPU time ($cpu s) is under half the run's $elapsed s (no spin on EMFILE)" \
        lt "$cpu" "$(python3 -c "print(max(0.5 * $elapsed, 0.2))")"
stop_server
check "clean stop (exit $rc)" test "$rc" = 0

# ---- c. ten reloads and a stop under keep-alive load
# reload_run LABEL MODULE MODE: 16 keep-alive connections for 9 s; ten
# reloads from 1 s on, one every 0.5 s, then the stop.
reload_run() {
        local label=$1 module=$2 mode=$3 cpid gens
        echo "# c. $label: ten reloads and a stop under keep-alive load (proof-client.py $mode)"
        serve "$label" 2 "$module"
        python3 "$src/tests/proof-client.py" "$port" 9 16 "$mode" > "$tmp/$label.client" 2>&1 &
        cpid=$!
        track "$cpid"
        sleep 1
        for i in $(seq 10); do
                kill -HUP "$spid"
                sleep 0.5
        done
        wait_for 30 eval 'test "$(grep -c "reload: generation [0-9]* ready" "$out")" -ge 10'
        sleep 0.5
        stop_server
        wait "$cpid"
        f=$tmp/$label.client
        sed -n "s/^\([a-z_]*\) \([0-9]*\)$/figure: ${label}_\1 \2/p" "$f"
        grep '^#' "$f"
        gens=$(grep -c 'reload: generation [0-9]* ready' "$out")
        check "[$label] 10 reloads completed ($gens)" test "$gens" = 10
        check "[$label] requests were answered ($(get "$f" answered))" test "$(get "$f" answered)" -gt 50
        check "[$label] zero failed requests (lost $(get "$f" lost), lost_first $(get "$f" lost_first))" \
                test "$(get "$f" lost)" = 0 -a "$(get "$f" lost_first)" = 0
        check "[$label] zero resets ($(get "$f" resets))" test "$(get "$f" resets)" = 0
        check "[$label] clean stop (exit $rc)" test "$rc" = 0
}
reload_run reload-http "$HELLO" http
reload_run reload-echo "$ECHO" echo
echo "figure: loadavg_end $(cut -d' ' -f1-3 /proc/loadavg)"
summary
