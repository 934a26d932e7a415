#!/bin/bash
# aiotools-serve as PID 1 of a fresh PID namespace (unshare --pid --fork
# --mount-proc), as in a container: orphaned grandchildren are reparented to
# it and must be reaped (no zombie left), its own workers must still be
# tracked correctly (a SIGKILLed worker is reported as such and respawned),
# and SIGTERM stops it cleanly (exit 0, nothing left in the namespace).
# Run twice: pidfd tracking and --no-pidfd (SIGCHLD).  proofmod's "orphan MS"
# command double-forks a grandchild that lives MS ms.
# Needs unshare (util-linux) and root or unprivileged user namespaces.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
. "${top_srcdir:-.}/tests/proof-lib.sh"
command -v unshare >/dev/null 2>&1 || missing "unshare (util-linux) is not installed"
command -v python3 >/dev/null 2>&1 || missing "python3 is not installed"
need_built
uns=(unshare --pid --fork --mount-proc)
[ "$(id -u)" = 0 ] || uns+=(--map-root-user)
"${uns[@]}" true 2>/dev/null || missing "cannot create a PID namespace here (${uns[*]} true failed)"
tmp=$(mktemp -d) || exit 1
trap 'cleanup_procs; rm -rf "$tmp"' EXIT

# One line per process in the PID namespace ns (a /proc/X/ns/pid link):
# "HOSTPID STATE PPID NSPID" (one pass over /proc, in python: fast enough to
# time the reaping).
ns_scan() {
        python3 - "$1" <<'EOF'
import os, sys
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        if os.readlink("/proc/%s/ns/pid" % d) != sys.argv[1]:
            continue
        st = dict(l.split(":", 1) for l in open("/proc/%s/status" % d).read().splitlines() if ":" in l)
    except OSError:
        continue
    print(d, st["State"].split()[0], st["PPid"].strip(), st["NSpid"].split()[-1])
EOF
}
ns_procs() { ns_scan "$1" | cut -d' ' -f1; }
host_pid() { ns_scan "$1" | awk -v n="$2" '$4 == n { print $1 }'; }
zombies() { ns_scan "$1" | awk '$2 == "Z" { print $1 }'; }
ppid_of() { sed -n 's/^PPid:\s*//p' /proc/"$1"/status 2>/dev/null; }

run_case() { # label, extra server args...
        local label=$1 out upid spid ns port r g gh i n z w wn rc t0
        shift
        out="$tmp/$label.out"
        "${uns[@]}" "$SERVE" -w 2 -b 127.0.0.1:0 "$@" "$PROOFMOD" > "$out" 2>&1 &
        upid=$!
        track "$upid"
        wait_for 10 grep -q 'ready' "$out"
        spid=$(children "$upid" | head -n1)
        ns=$(readlink /proc/"$spid"/ns/pid)
        port=$(log_port "$out")
        check "[$label] the supervisor (host pid $spid) is PID 1 of its namespace" \
                grep -qE "^NSpid:\s$spid\s1$" /proc/"$spid"/status
        check "[$label] 2 workers ready" wait_for 10 eval 'test "$(children "$spid" | wc -l)" = 2'
        # Orphans: each grandchild must be reparented to PID 1 while it lives
        # (4 s: five asks and /proc scans take well over 1 s at load 10) ...
        : > "$tmp/gh"
        for i in 1 2 3 4 5; do
                r=$(ask "$port" "orphan 4000")
                g=${r#orphan=}
                gh=$(host_pid "$ns" "$g")
                echo "$gh" >> "$tmp/gh"
                [ -n "$gh" ] && [ "$(ppid_of "$gh")" = "$spid" ] && echo "reparented $gh"
        done > "$tmp/reparented"
        n=$(grep -c reparented "$tmp/reparented")
        check "[$label] 5 orphaned grandchildren were reparented to the supervisor ($n)" test "$n" = 5
        # ... and, once they exit (4 s after each was made), reaped: no zombie
        # anywhere in the namespace.  Bounded at 5 s; the time is a figure.
        t0=$(date +%s%N)
        sleep 4
        if wait_for 5 eval 'test -z "$(zombies "$ns")"'; then z=; else z=$(zombies "$ns"); fi
        echo "figure: pid1_zombie_free_after_${label} $(( ($(date +%s%N) - t0) / 1000000 - 4000 )) ms (after the last orphan's exit)"
        check "[$label] no zombie remains in the namespace (zombies: ${z:-none})" test -z "$z"
        n=0
        for gh in $(cat "$tmp/gh"); do
                [ -e /proc/"$gh" ] && n=$((n + 1))
        done
        check "[$label] every orphan is gone from /proc ($n left)" test "$n" = 0
        # The supervisor's own children are still tracked with their real status.
        w=$(children "$spid" | head -n1)
        wn=$(sed -n 's/^NSpid:.*\s\([0-9]*\)$/\1/p' /proc/"$w"/status)
        kill -KILL "$w"
        check "[$label] SIGKILLed worker (pid $wn in the namespace) reported as such and respawned" \
                wait_for 10 grep -q "worker [0-9]* (pid $wn) was killed by SIGKILL; respawning" "$out"
        check "[$label] 2 workers again" wait_for 10 eval 'test "$(live_children "$spid" | wc -l)" = 2'
        check "[$label] still answering" wait_for 5 eval 'ask "$port" name 5 | grep -q "^name="'
        r=$(ask "$port" "orphan 200")
        kill -TERM "$spid"
        for i in $(seq 200); do
                alive "$upid" || break
                sleep 0.05
        done
        wait "$upid"
        rc=$?
        check "[$label] SIGTERM stops PID 1 cleanly: exit 0 (got $rc)" test "$rc" = 0
        check "[$label] log: all processes have exited" grep -q 'all processes have exited' "$out"
        check "[$label] nothing left in the namespace" test -z "$(ns_procs "$ns")"
        [ "$fail" = 0 ] || sed 's/^/#   /' "$out"
}

run_case pidfd
run_case no-pidfd --no-pidfd
summary
