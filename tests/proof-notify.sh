#!/bin/bash
# The real aiotools-serve under the real notify-listener (tests/tools):
#  1. http-hello, 3 workers: the exact notify sequence STATUS=starting, READY
#     (only after every worker is ready), RELOADING ... READY around SIGHUP,
#     STATUS on SIGTTIN/SIGTTOU, STOPPING on SIGTERM; WATCHDOG=1 at
#     WATCHDOG_USEC/2; process titles; SIGUSR1 forwarded.
#  2. proofmod with a slow worker: READY waits for it; a worker whose loop
#     blocks (proofmod "hang") stops the WATCHDOG pings until it unblocks; a
#     reload whose new generation fails its setup is rolled back (READY=1 with
#     "reload failed", the old workers keep serving).
#  3. --worker-timeout=1: the blocked worker is aborted (SIGABRT) and replaced
#     with the same index, and the pings resume.
# Skips (77) without python3 or notify-listener unless CI=true.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
. "${top_srcdir:-.}/tests/proof-lib.sh"
[ -f "$NL" ] || missing "notify-listener not found at $NL (set AIOTOOLS_SHARED_TOOLS)"
command -v python3 >/dev/null 2>&1 || missing "python3 is not installed (needed by notify-listener)"
need_built
tmp=$(mktemp -d) || exit 1
trap 'cleanup_procs; rm -rf "$tmp"' EXIT
ulimit -c 0 # the aborted worker of part 3 must not leave a core file

# msgs FILE: the notify messages in FILE, one line each:
# "T PID FIELD=VALUE;FIELD=VALUE..." (the fields in the datagram's order).
# The listener and the server write one file, so a server line can land right
# behind a message, before its newline: parse the object and ignore the rest.
msgs() {
        python3 - "$1" <<'EOF'
import json, sys
dec = json.JSONDecoder()
for line in open(sys.argv[1], errors="replace"):
    if line.startswith('{"t"'):
        m, _ = dec.raw_decode(line)
        print("%.6f %s %s" % (m["t"], m["pid"], ";".join("%s=%s" % kv for kv in m["fields"].items())))
EOF
}
# The messages other than WATCHDOG=1, pids replaced by P, MONOTONIC_USEC by N.
seq_of() {
        msgs "$1" | grep -v ' WATCHDOG=1$' | cut -d' ' -f3- |
                sed -e "s/MAINPID=$2\b/MAINPID=P/" -e 's/MONOTONIC_USEC=[0-9]*/MONOTONIC_USEC=N/'
}
has_msg() { msgs "$1" | grep -q " $2"; }
# Line number in FILE of the first line matching the regex (0: none).
line_of() { grep -n -m1 -E "$2" "$1" | cut -d: -f1 | grep . || echo 0; }
workers_of() { live_children "$1" | sort; }
count_of() { live_children "$1" | wc -l; }

# start LABEL WATCHDOG_USEC SERVE-ARGS...: runs the server under the listener;
# sets $out (listener messages and the server's stderr interleaved in one file,
# in the order they were written) and $spid once READY=1 arrived.
start() {
        local label=$1 wd=$2
        shift 2
        out="$tmp/$label.out"
        : > "$out"
        python3 "$NL" --jsonl --timeout 90 --watchdog-usec "$wd" -- "$SERVE" "$@" >> "$out" 2>&1 &
        nlpid=$!
        track "$nlpid"
        spid=
        wait_for 20 eval 'has_msg "$out" READY=1 || ! alive "$nlpid"'
        if ! has_msg "$out" READY=1; then
                echo "FAIL - [$label] no READY=1 within 20 s; output:"
                cat "$out"
                fail=$((fail + 1))
                return 1
        fi
        spid=$(children "$nlpid" | head -n1)
        port=$(log_port "$out")
}
stop_and_wait() {
        kill -TERM "$spid"
        local i
        for i in $(seq 200); do
                alive "$nlpid" || break
                sleep 0.05
        done
        wait "$nlpid"
        rc=$?
}
wd_count() { # FILE FROM TO: WATCHDOG=1 messages with FROM <= t < TO
        msgs "$1" | awk -v a="$2" -v b="$3" '$3 == "WATCHDOG=1" && $1 >= a && $1 < b' | wc -l
}
last_t() { msgs "$1" | tail -n1 | cut -d' ' -f1; }
# The largest gap between consecutive WATCHDOG=1 messages after t >= FROM.
wd_max_gap() {
        msgs "$1" | awk -v a="$2" '$3 == "WATCHDOG=1" && $1 >= a { if (p != "") { g = $1 - p; if (g > m) m = g } p = $1 } END { printf "%.3f\n", m + 0 }'
}

# ---- 1. http-hello, 3 workers
echo "# 1. http-hello -w 3, WATCHDOG_USEC=400000"
if start hello 400000 -w 3 -b 127.0.0.1:0 "$HELLO"; then
        out1=$out
        check "supervisor pid $spid sends READY with MAINPID=$spid" has_msg "$out" "$spid READY=1;MAINPID=$spid"
        allready=$(line_of "$out" 'all 3 workers ready \(generation 1\)')
        ready=$(line_of "$out" '"READY": "1"')
        check "READY after the log line 'all 3 workers ready (generation 1)' (lines $allready < $ready)" \
                test "$allready" -gt 0 -a "$allready" -lt "$ready"
        check "3 workers running at READY" test "$(count_of "$spid")" = 3
        check "HTTP answered right after READY" test "$(http_get "$port")" = "HTTP/1.1 200 OK"
        check "supervisor title 'aiotools-serve: supervisor'" \
                grep -q '^aiotools-serve: supervisor' /proc/"$spid"/cmdline
        w0=$(workers_of "$spid" | head -n1)
        check "worker title 'aiotools-serve: worker N'" grep -q '^aiotools-serve: worker [0-2]' /proc/"$w0"/cmdline
        # Watchdog: a 2 s window well after READY; nominally 10 pings.
        t=$(last_t "$out")
        sleep 2.6
        n=$(wd_count "$out" "$(echo "$t + 0.3" | bc)" "$(echo "$t + 2.3" | bc)")
        echo "figure: notify_watchdog_pings_per_2s $n count"
        check "WATCHDOG=1 every ~200 ms: $n pings in 2 s (want 5..15)" test "$n" -ge 5 -a "$n" -le 15
        check "every WATCHDOG=1 comes from the supervisor" \
                test -z "$(msgs "$out" | awk -v p="$spid" '$3 == "WATCHDOG=1" && $2 != p')"
        before=$(workers_of "$spid")
        kill -HUP "$spid"
        wait_for 20 grep -q 'STATUS=3 workers, generation 2' <(msgs "$out")
        wait_for 10 grep -q 'reload: generation 2 ready, stopping generation 1' "$out"
        wait_for 10 eval 'test "$(count_of "$spid")" = 3'
        after=$(workers_of "$spid")
        check "reload replaced all 3 workers (old: $(echo $before), new: $(echo $after))" \
                test -z "$(comm -12 <(echo "$before") <(echo "$after"))" -a "$(echo "$after" | wc -l)" = 3
        check "HTTP answered after the reload" test "$(http_get "$port")" = "HTTP/1.1 200 OK"
        # Scaling: STATUS follows the worker count.
        kill -TTIN "$spid"
        check "SIGTTIN: STATUS=4 workers, generation 2" \
                wait_for 10 eval 'msgs "$out" | grep -q " STATUS=4 workers, generation 2$"'
        check "SIGTTIN: 4 workers" wait_for 10 eval 'test "$(count_of "$spid")" = 4'
        kill -TTOU "$spid"
        check "SIGTTOU: STATUS=3 workers, generation 2" \
                wait_for 10 eval 'msgs "$out" | tail -n +2 | grep " STATUS=" | tail -n1 | grep -q " STATUS=3 workers, generation 2$"'
        check "SIGTTOU: 3 workers" wait_for 10 eval 'test "$(count_of "$spid")" = 3'
        # SIGUSR1 is forwarded to the workers, which survive it.
        before=$(workers_of "$spid")
        kill -USR1 "$spid"
        check "SIGUSR1: log 'SIGUSR1 received: forwarded to 3 processes'" \
                wait_for 5 grep -q 'SIGUSR1 received: forwarded to 3 processes' "$out"
        sleep 0.3
        check "SIGUSR1: the same 3 workers still run" test "$(workers_of "$spid")" = "$before"
        stop_and_wait
        check "exit status 0 after SIGTERM (got $rc)" test "$rc" = 0
        seq_of "$out" "$spid" > "$tmp/got"
        cat > "$tmp/want" <<'EOF'
STATUS=starting 3 workers
READY=1;MAINPID=P;STATUS=3 workers, generation 1
RELOADING=1;MONOTONIC_USEC=N;STATUS=reloading: starting generation 2
READY=1;MAINPID=P;STATUS=3 workers, generation 2
STATUS=4 workers, generation 2
STATUS=3 workers, generation 2
STOPPING=1;STATUS=stopping (SIGTERM)
EOF
        check "exact notify sequence (besides WATCHDOG=1)" diff -u "$tmp/want" "$tmp/got"
        stopping=$(line_of "$out" '"STOPPING": "1"')
        check "no READY after STOPPING" test -z "$(tail -n +"$((stopping + 1))" "$out" | grep '"READY"')"
        echo "# observed sequence (run 1, $(msgs "$out" | grep -c ' WATCHDOG=1$') WATCHDOG=1 pings left out):"
        msgs "$out" | grep -v ' WATCHDOG=1$' | sed 's/^/#   /'
fi

# ---- 2. a slow worker and a blocked worker loop
echo "# 2. proofmod -w 3 slow=2:1000, WATCHDOG_USEC=400000, worker 2's setup takes 1 s"
if start slow 400000 -w 3 -b 127.0.0.1:0 --worker-timeout=0 "$PROOFMOD" -- slow=2:1000 "failif=$tmp/fail"; then
        ready=$(line_of "$out" '"READY": "1"')
        r2=$(line_of "$out" 'proofmod: ready index=2 ')
        nr=$(head -n "$ready" "$out" | grep -c 'proofmod: ready index=')
        check "READY after the slow worker 2 was ready (lines $r2 < $ready)" test "$r2" -gt 0 -a "$r2" -lt "$ready"
        check "all 3 workers ready before READY ($nr)" test "$nr" = 3
        check "STATUS=starting 3 workers before READY" \
                test "$(seq_of "$out" "$spid" | head -n1)" = "STATUS=starting 3 workers"
        sleep 1
        t0=$(last_t "$out")
        reply=$(ask "$port" "hang 3")
        echo "# $reply: blocked for 3 s"
        sleep 4
        gap=$(wd_max_gap "$out" "$t0")
        base=$(msgs "$out" | awk -v a="$t0" '$3 == "WATCHDOG=1" && $1 < a' | awk '{ if (p != "") { g = $1 - p; if (g > m) m = g } p = $1 } END { printf "%.3f\n", m + 0 }')
        echo "figure: notify_watchdog_gap_while_blocked $gap s"
        echo "figure: notify_watchdog_gap_before $base s"
        check "worker answered 'hanging' ($reply)" grep -q '^hanging index=' <<<"$reply"
        check "WATCHDOG pings stopped while the loop was blocked (largest gap $gap s, want >= 2.0)" \
                test "$(echo "$gap >= 2.0" | bc)" = 1
        check "... and not before (largest gap before $base s, want < 1.0)" test "$(echo "$base < 1.0" | bc)" = 1
        t1=$(last_t "$out")
        sleep 1
        n=$(wd_count "$out" "$t1" 99999)
        check "WATCHDOG pings resumed after the worker unblocked ($n in 1 s)" test "$n" -ge 2
        check "the blocked worker was not killed (--worker-timeout=0)" \
                test "$(grep -c 'hung for' "$out")" = 0 -a "$(count_of "$spid")" = 3
        # A reload whose new generation fails its setup: rolled back, the old
        # generation keeps serving, systemd is told (READY=1 with the reason).
        before=$(workers_of "$spid")
        : > "$tmp/fail"
        n0=$(seq_of "$out" "$spid" | wc -l)
        kill -HUP "$spid"
        wait_for 10 eval 'seq_of "$out" "$spid" | tail -n +$((n0 + 1)) | grep -q "^READY=1"'
        seq_of "$out" "$spid" | tail -n +$((n0 + 1)) > "$tmp/failseq"
        echo "# failed reload, observed:"
        sed 's/^/#   /' "$tmp/failseq"
        check "failed reload: RELOADING=1;MONOTONIC_USEC=N;STATUS=reloading: starting generation 2" \
                test "$(sed -n 1p "$tmp/failseq")" = "RELOADING=1;MONOTONIC_USEC=N;STATUS=reloading: starting generation 2"
        check "failed reload: READY=1;MAINPID=P;STATUS=reload failed: ...; 3 workers, generation 1" \
                grep -qE '^READY=1;MAINPID=P;STATUS=reload failed: .+; 3 workers, generation 1$' "$tmp/failseq"
        check "log: 'reload failed: worker I failed during setup: ...; generation 1 keeps serving'" \
                grep -qE 'reload failed: worker [0-9]+ failed during setup: .*; generation 1 keeps serving' "$out"
        sleep 0.3
        check "the old generation still serves with the same pids" \
                eval 'test "$(workers_of "$spid")" = "$before" && ask "$port" name | grep -q "^name="'
        rm -f "$tmp/fail"
        kill -HUP "$spid"
        check "the next reload succeeds (STATUS=3 workers, generation 2 or 3)" \
                wait_for 10 eval 'seq_of "$out" "$spid" | tail -n1 | grep -qE "^READY=1;MAINPID=P;STATUS=3 workers, generation [23]$"'
        stop_and_wait
        check "exit status 0 (got $rc)" test "$rc" = 0
fi

# ---- 3. --worker-timeout: a hung worker is aborted and replaced
echo "# 3. proofmod -w 2 --worker-timeout=1, WATCHDOG_USEC=400000"
if start wt 400000 -w 2 -b 127.0.0.1:0 --worker-timeout=1 "$PROOFMOD"; then
        sleep 0.5
        t0=$(last_t "$out")
        reply=$(ask "$port" "hang 30")
        hpid=$(sed -n 's/^hanging index=\([0-9]*\) pid=\([0-9]*\)$/\2/p' <<<"$reply")
        hidx=$(sed -n 's/^hanging index=\([0-9]*\) pid=\([0-9]*\)$/\1/p' <<<"$reply")
        echo "# $reply"
        check "the hung worker $hpid is gone within 6 s" wait_for 6 eval '! alive "$hpid"'
        check "log: 'worker $hidx (pid $hpid) hung for ... s: aborting'" \
                grep -qE "worker $hidx \(pid $hpid\) hung for [0-9.]+ s: aborting" "$out"
        check "log: killed by SIGABRT, respawning" \
                grep -q "worker $hidx (pid $hpid) was killed by SIGABRT; respawning" "$out"
        check "a new worker $hidx is ready again" wait_for 10 grep -q "worker $hidx (pid [0-9]*) is ready again" "$out"
        check "2 workers again" wait_for 5 eval 'test "$(count_of "$spid")" = 2'
        t1=$(last_t "$out")
        sleep 1
        n=$(wd_count "$out" "$t1" 99999)
        check "WATCHDOG pings resumed after the replacement ($n in 1 s)" test "$n" -ge 2
        gap=$(wd_max_gap "$out" "$t0")
        echo "figure: notify_watchdog_gap_until_replaced $gap s"
        check "WATCHDOG pings paused while the worker hung, until its replacement (gap $gap s, want >= 0.6)" \
                test "$(echo "$gap >= 0.6" | bc)" = 1
        check "the replacement answers" wait_for 5 eval 'ask "$port" name | grep -q "^name="'
        grep -E 'hung for|SIGABRT|ready again' "$out" | sed 's/^/#   /'
        stop_and_wait
        check "exit status 0 (got $rc)" test "$rc" = 0
fi
summary
