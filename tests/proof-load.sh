#!/bin/bash
# Load + chaos against the real aiotools-serve with http-hello, -w 2, on
# 127.0.0.1, with wrk (and tests/proof-client.py for the stop), bounded to
# well under 2 minutes (`make check-load`):
#  a. 10 SIGHUP reloads, one every 0.5 s, during a wrk run: 0 socket errors
#     (connect/read/write/timeout), 0 non-2xx;
#  b. SIGKILL of one worker during load: it is replaced (same index, new pid)
#     and the failed requests are at most the connections it held;
#  c. SIGTTIN then SIGTTOU during load: 0 errors;
#  d. SIGTERM during load (keep-alive client): every request written on an
#     established connection is answered; only new connects may be refused.
# Prints "figure: NAME VALUE" lines and ok/FAIL per check.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
. "${top_srcdir:-.}/tests/proof-lib.sh"
command -v wrk >/dev/null 2>&1 || missing "wrk is not installed (apt-get install wrk)"
command -v python3 >/dev/null 2>&1 || missing "python3 is not installed"
need_built
tmp=$(mktemp -d) || exit 1
trap 'cleanup_procs; rm -rf "$tmp"' EXIT
ulimit -n 4096 2>/dev/null
CONNS=${PROOF_LOAD_CONNS:-16}

# serve LABEL: starts http-hello -w 2; sets $spid $port $out.
serve() {
        out="$tmp/$1.out"
        "$SERVE" -w 2 -b 127.0.0.1:0 "$HELLO" > "$out" 2>&1 &
        spid=$!
        track "$spid"
        wait_for 10 grep -q 'all 2 workers ready' "$out" || { echo "FAIL - [$1] server did not start"; cat "$out"; exit 1; }
        port=$(log_port "$out")
}
stop_server() {
        kill -TERM "$spid" 2>/dev/null
        wait_for 35 eval '! alive "$spid"'
        wait "$spid"
}
# wrk_start SECONDS: runs wrk in the background into $tmp/wrk.out.
wrk_start() {
        wrk -t2 -c"$CONNS" -d"$1"s --timeout 5s "http://127.0.0.1:$port/" > "$tmp/wrk.out" 2>&1 &
        wpid=$!
        track "$wpid"
}
# wrk_wait LABEL: waits, then prints figures and sets $requests $errors.
wrk_wait() {
        local f=$tmp/wrk.out c r w t n
        wait "$wpid"
        requests=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' "$f")
        read -r c r w t <<<"$(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1 \2 \3 \4/p' "$f")"
        n=$(sed -n 's/.*Non-2xx or 3xx responses: \([0-9]*\).*/\1/p' "$f")
        c=${c:-0} r=${r:-0} w=${w:-0} t=${t:-0} n=${n:-0}
        errors=$((c + r + w + t + n))
        echo "figure: $1_requests ${requests:-0}"
        echo "figure: $1_socket_errors connect=$c read=$r write=$w timeout=$t"
        echo "figure: $1_non2xx $n"
        echo "figure: $1_failed_requests $errors"
        [ -n "$requests" ] || { echo "# wrk said:"; sed 's/^/#   /' "$f"; }
}
# Established TCP connections on the server port held by process PID.
held_conns() {
        local hex inodes
        hex=$(printf '%04X' "$port")
        inodes=$(ls -l /proc/"$1"/fd 2>/dev/null | sed -n 's/.*socket:\[\([0-9]*\)\].*/\1/p' | sort -u)
        awk -v p="0100007F:$hex" '$2 == p && $4 == "01" { print $10 }' /proc/net/tcp | sort -u |
                comm -12 - <(echo "$inodes") | wc -l
}

# ---- a. 10 reloads during load
echo "# a. 10 reloads (SIGHUP every 0.5 s) during wrk -c$CONNS"
serve reload
wrk_start 8
sleep 1
for i in $(seq 10); do
        kill -HUP "$spid"
        sleep 0.5
done
wrk_wait reload
gens=$(grep -c 'reload: generation [0-9]* ready' "$out")
check "10 reloads completed ($gens 'reload: generation G ready' lines)" test "$gens" = 10
check "wrk made requests (${requests:-0})" test "${requests:-0}" -gt 1000
check "0 failed or refused requests during 10 reloads ($errors)" test "$errors" = 0
check "2 workers after the reloads" wait_for 10 eval 'test "$(live_children "$spid" | wc -l)" = 2'
stop_server
rc=$?
check "clean stop after the reloads (exit $rc)" test "$rc" = 0

# ---- b. SIGKILL of a worker during load
echo "# b. SIGKILL of one worker during wrk -c$CONNS"
serve kill
wrk_start 6
sleep 2
# The victim is the worker holding the most connections (wrk's connections are
# not spread evenly), so that the bound below means something.
victim= held=-1
for w in $(live_children "$spid"); do
        h=$(held_conns "$w")
        echo "# worker $w holds $h of wrk's connections"
        [ "$h" -gt "$held" ] && victim=$w held=$h
done
kill -KILL "$victim"
wrk_wait kill
echo "figure: kill_victim_held_connections $held"
idx=$(sed -n "s/.*worker \([0-9]*\) (pid $victim) was killed by SIGKILL; respawning.*/\1/p" "$out")
check "the killed worker $victim (index ${idx:-?}) was reported and respawned" test -n "$idx"
check "a new worker ${idx:-?} is ready (new pid)" \
        eval 'grep -E "worker ${idx:-x} \(pid [0-9]+\) is ready again" "$out" | grep -vq "pid $victim)"'
check "failed requests ($errors) <= the connections the killed worker held ($held, > 0)" test "$errors" -le "$held" -a "$held" -gt 0
check "wrk made requests (${requests:-0})" test "${requests:-0}" -gt 1000
stop_server

# ---- c. SIGTTIN then SIGTTOU during load
echo "# c. SIGTTIN then SIGTTOU during wrk -c$CONNS"
serve scale
wrk_start 6
sleep 1.5
kill -TTIN "$spid"
check "SIGTTIN: a third worker" wait_for 5 eval 'test "$(live_children "$spid" | wc -l)" = 3'
sleep 1.5
kill -TTOU "$spid"
check "SIGTTOU: back to 2 workers" wait_for 10 eval 'test "$(live_children "$spid" | wc -l)" = 2'
wrk_wait scale
check "log: 'SIGTTIN received: adding worker 2 (3 workers)'" grep -q 'SIGTTIN received: adding worker 2 (3 workers)' "$out"
check "log: 'SIGTTOU received: stopping worker'" grep -q 'SIGTTOU received: stopping worker [0-9]* (2 workers)' "$out"
check "0 failed requests during SIGTTIN/SIGTTOU ($errors)" test "$errors" = 0
check "wrk made requests (${requests:-0})" test "${requests:-0}" -gt 1000
stop_server

# ---- d. graceful stop during load
echo "# d. SIGTERM during load ($CONNS keep-alive connections, proof-client.py)"
serve stop
python3 "$src/tests/proof-client.py" "$port" 4 "$CONNS" > "$tmp/client.out" 2>&1 &
cpid=$!
track "$cpid"
sleep 1.5
kill -TERM "$spid"
wait_for 35 eval '! alive "$spid"'
wait "$spid"
rc=$?
wait "$cpid"
sed -n 's/^\([a-z_]*\) \([0-9]*\)$/figure: stop_\1 \2/p' "$tmp/client.out"
grep '^#' "$tmp/client.out"
get() { sed -n "s/^$1 //p" "$tmp/client.out"; }
echo "figure: stop_unanswered_requests $(get lost) (on connections a worker had answered before)"
echo "figure: stop_unanswered_first_requests $(get lost_first) (fresh connections reset at the stop: accept queue)"
check "server exit 0 after SIGTERM under load (got $rc)" test "$rc" = 0
check "requests were answered before the stop ($(get answered))" test "$(get answered)" -gt 100
check "every request on a connection a worker had accepted was answered (lost: $(get lost))" test "$(get lost)" = 0
check "new connects refused after the stop (refused: $(get refused): the listener closed)" test "$(get refused)" -gt 0
summary
