#!/bin/bash
# The control socket and `aiotools-serve ctl` against the real aiotools-serve
# with real workers (tests/ctlmod: named tasks parked on a sleep, an event, a
# semaphore, a socket, a join):
#  - the socket's mode (0600; 0660 and its group with --control-group), its
#    removal at exit, a stale socket replaced, a live one refused (exit 2);
#  - every command in both output forms: status, tasks, metrics (each sample
#    line parsed back), reload (one that succeeds, one whose new generation
#    fails its setup: exit 1 with the reason, the old generation serves on),
#    scale, recycle, log-level, stop; exit codes 2 (usage) and 3 (no server);
#    AIOTOOLS_CONTROL;
#  - garbage, half lines, overlong lines and a flood of idle clients leave the
#    server serving;
#  - as root: another uid is refused by SO_PEERCRED (setpriv), a member of the
#    control group is let in;
#  - --metrics: /healthz 200, then 503 while a worker is stopped (SIGSTOP);
#  - --setup-timeout: a setup past it fails the start (exit 1) and names the
#    timeout; a setup that blocks its loop longer than --worker-timeout is not
#    aborted for it;
#  - a hung worker aborted by --worker-timeout logs the running task's name
#    and a backtrace.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
. "${top_srcdir:-.}/tests/proof-lib.sh"
command -v python3 >/dev/null 2>&1 || missing "python3 is not installed"
CTLMOD="$bld/tests/.libs/ctlmod.so"
need_built
[ -e "$CTLMOD" ] || { echo "FAIL: $CTLMOD not built (run make)"; exit 1; }
tmp=$(mktemp -d) || exit 1
chmod 755 "$tmp"
trap 'cleanup_procs; rm -rf "$tmp"' EXIT
sock="$tmp/control.sock"
ctl() { "$SERVE" ctl --socket="$sock" "$@"; }

# start_server LOG ARGS...: starts aiotools-serve in the background; sets $srv.
start_server() {
        local log=$1
        shift
        "$SERVE" "$@" >"$log" 2>&1 &
        srv=$!
        track "$srv"
}
ready_in() { grep -q "all $2 workers ready" "$1"; }
gen_ready() { grep -q "generation $2 ready" "$1"; }

# ---------------------------------------------------------------- start
mport=$(free_port)
log="$tmp/serve.log"
start_server "$log" -w 2 -b 127.0.0.1:0 --control="$sock" --metrics=127.0.0.1:"$mport" "$CTLMOD" -- failif="$tmp/fail"
check "the server starts with 2 workers" wait_for 20 ready_in "$log" 2
port=$(log_port "$log")
check "the control socket is mode 600" test "$(stat -c %a "$sock")" = 600
check "the control socket is a socket owned by us" test -S "$sock" -a -O "$sock"

# ---------------------------------------------------------------- status
out=$(ctl status); rc=$?
check "status: exit 0" test $rc = 0
check "status: state ready, generation 1" grep -q "state ready, generation 1" <<<"$out"
check "status: two ready workers" test "$(grep -c '^worker .* ready ' <<<"$out")" = 2
out=$(AIOTOOLS_CONTROL="$sock" "$SERVE" ctl --json status); rc=$?
check "status --json (socket from AIOTOOLS_CONTROL): exit 0" test $rc = 0
check "status --json: one document with every field" python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
top = ["pid", "version", "generation", "state", "uptime_s", "reloads_done", "reloads_failed", "crashes_in_window"]
per = ["kind", "index", "pid", "generation", "state", "uptime_s", "rss_bytes", "connections_open",
       "connections_total", "requests_total", "tasks", "loop_lag_s", "heartbeat_age_s", "restarts", "last_exit"]
assert all(k in d for k in top), d
ps = d["processes"]
assert len(ps) == 2 and all(all(k in p for k in per) for p in ps), ps
assert all(p["state"] == "ready" and p["rss_bytes"] > 0 and p["tasks"] >= 8 for p in ps), ps
' <<<"$out"

# ---------------------------------------------------------------- connections counted
for i in 1 2 3 4 5 6; do ask "$port" x >/dev/null; done
conns_total() { ctl --json status | python3 -c '
import json, sys; print(sum(p["connections_total"] for p in json.load(sys.stdin)["processes"]))'; }
# ctlmod does not run the serving layer: its counts stay 0 (http-hello's are checked below).
check "status: a module without the serving layer counts no connections" test "$(conns_total)" = 0

# ---------------------------------------------------------------- tasks
out=$(ctl tasks 0); rc=$?
check "tasks 0: exit 0" test $rc = 0
echo "$out" | sed 's/^/    /'
has() { grep -qE "$1" <<<"$out"; }
check "tasks 0: the root is 'worker 0', parked" has '^- worker 0 \[parked'
check "tasks 0: sleeper parked on a sleep" has '^  - sleeper \[parked on sleep \([0-9.]+ s left\) for [0-9.]+ s\]'
check "tasks 0: event waiter parked on an event" has '^  - event waiter \[parked on event 0x[0-9a-f]+ for'
check "tasks 0: sem waiter parked on a semaphore" has '^  - sem waiter \[parked on semaphore 0x[0-9a-f]+ for'
check "tasks 0: socket reader parked on its fd" has '^  - socket reader \[parked on fd [0-9]+ readable for'
check "tasks 0: joiner parked on the end of the sleeper" has "^  - joiner \\[parked on end of task 'sleeper' for"
check "tasks 0: shielded waiter shown shielded" has '^  - shielded waiter \[parked on event .*\] shielded$'
check "tasks 0: the acceptor parked on the listener" has '^  - ctlmod acceptor \[parked on fd [0-9]+ readable'
check "tasks 0: the dump's own task is the running one" has '^  - ctl tasks \[running\]'
out=$(ctl --json tasks 1); rc=$?
check "tasks 1 --json: exit 0, one document naming each wait" python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
t = {x["name"]: x for x in d["tasks"]}
assert d["index"] == 1 and t["worker 1"]["depth"] == 0, d
assert t["sleeper"]["wait"] == "sleep" and t["sleeper"]["wake_in_s"] > 3000
assert t["event waiter"]["wait"] == "event" and t["sem waiter"]["wait"] == "sem"
assert t["socket reader"]["wait"] == "fd-read" and t["socket reader"]["wait_id"] > 2
assert t["joiner"]["wait"] == "join" and "sleeper" in t["joiner"]["waits_for"]
assert t["shielded waiter"]["shielded"] is True and t["sleeper"]["shielded"] is False
assert all(x["parent"] == t["worker 1"]["id"] for n, x in t.items() if n != "worker 1")
' <<<"$out"
"$SERVE" ctl --socket="$sock" tasks 7 2>"$tmp/err"; rc=$?
check "tasks 7 (no such worker): exit 1, one line" test $rc = 1 -a "$(wc -l <"$tmp/err")" = 1

# ---------------------------------------------------------------- metrics
out=$(ctl metrics); rc=$?
check "metrics: exit 0" test $rc = 0
check "metrics: every line HELP, TYPE or a well-formed sample; a worker label on per-process samples" python3 -c '
import re, sys
lines = sys.stdin.read().splitlines()
assert lines
help_re = re.compile(r"^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .+$")
type_re = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (gauge|counter)$")
sample_re = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*=\"[^\"\\]*\",?)*\})? (-?[0-9.]+(e[-+]?[0-9]+)?|NaN)$")
typed, n = set(), 0
for l in lines:
    m = type_re.match(l)
    if m:
        typed.add(m.group(1)); continue
    if help_re.match(l):
        continue
    m = sample_re.match(l)
    assert m, "bad line: " + l
    assert m.group(1) in typed, "sample before its TYPE: " + l
    n += 1
per = [l for l in lines if l.startswith("aiotools_tasks{")]
assert len(per) == 2 and all("worker=\"" in l for l in per), per
assert n > 20
' <<<"$out"
out=$(ctl --json metrics); rc=$?
check "metrics --json: exit 0, one document" python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
assert any(m["name"] == "aiotools_up" and m["value"] == 1 for m in d["metrics"])
' <<<"$out"

# ---------------------------------------------------------------- /healthz and /metrics over HTTP
http() { # PATH: prints the status code
        python3 - "$mport" "$1" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % sys.argv[2]).encode())
out = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    out += d
print(out.split(b" ", 2)[1].decode())
EOF
}
check "GET /healthz: 200" test "$(http /healthz)" = 200
check "GET /metrics: 200" test "$(http /metrics)" = 200
check "GET /nothing: 404" test "$(http /nothing)" = 404
w0=$(ctl --json status | python3 -c 'import json,sys; print([p["pid"] for p in json.load(sys.stdin)["processes"] if p["index"] == 0][0])')
kill -STOP "$w0"
is503() { [ "$(http /healthz)" = 503 ]; }
check "GET /healthz: 503 while worker 0 is stopped (SIGSTOP)" wait_for 10 is503
kill -CONT "$w0"
is200() { [ "$(http /healthz)" = 200 ]; }
check "GET /healthz: 200 again once it continues" wait_for 10 is200

# ---------------------------------------------------------------- reload
t0=$(date +%s%N)
out=$(ctl reload); rc=$?
t1=$(date +%s%N)
echo "    ctl reload: exit $rc in $(( (t1 - t0) / 1000000 )) ms: $out"
check "reload: exit 0, generation 2 ready" test $rc = 0 -a -n "$(grep 'generation 2 ready' <<<"$out")"
check "reload: it returned after the log said the generation was ready" grep -q "reload: generation 2 ready" "$log"
check "status: generation 2" grep -q "generation 2," <<<"$(ctl status)"
touch "$tmp/fail"
t0=$(date +%s%N)
"$SERVE" ctl --socket="$sock" reload >"$tmp/out" 2>"$tmp/err"; rc=$?
t1=$(date +%s%N)
echo "    ctl reload (failing setup): exit $rc in $(( (t1 - t0) / 1000000 )) ms: $(cat "$tmp/err")"
check "reload whose new generation fails its setup: exit 1" test $rc = 1
check "reload failure: the reason on stderr, one line" test "$(wc -l <"$tmp/err")" = 1 -a \
        -n "$(grep 'reload failed: worker [01] failed during setup: Cannot assign requested address' "$tmp/err")"
check "reload failure: the old generation still serves" test "$(ask "$port" x)" = ok
check "status: still generation 2, ready, 1 reload failed" grep -q "state ready, generation 2" <<<"$(ctl status)"
"$SERVE" ctl --socket="$sock" --json reload >"$tmp/out" 2>/dev/null; rc=$?
check "reload --json (failing): exit 1, a JSON error document" python3 -c '
import json, sys; d = json.load(open(sys.argv[1])); assert d["ok"] is False and "reload failed" in d["error"]' "$tmp/out"
rm -f "$tmp/fail"
# Generations 3 and 4 were the failed ones.
out=$(ctl --json reload); rc=$?
check "reload --json: exit 0, generation 5" python3 -c '
import json, sys; d = json.loads(sys.argv[1]); assert d["generation"] == 5 and d["seconds"] >= 0' "$out"

# ---------------------------------------------------------------- scale, recycle, log-level
nready() { ctl --json status | python3 -c 'import json,sys; print(sum(p["state"] == "ready" and p["generation"] == 5 for p in json.load(sys.stdin)["processes"]))'; }
out=$(ctl scale 3); rc=$?
check "scale 3: exit 0" test $rc = 0
three() { [ "$(nready)" = 3 ]; }
check "scale 3: three ready workers" wait_for 10 three
out=$(ctl --json scale 2); rc=$?
check "scale 2 --json: exit 0, a JSON document" python3 -c 'import json,sys; assert json.loads(sys.argv[1])["ok"]' "$out"
two() { [ "$(nready)" = 2 ]; }
check "scale 2: two ready workers" wait_for 10 two
pid0() { ctl --json status | python3 -c 'import json,sys; print([p["pid"] for p in json.load(sys.stdin)["processes"] if p["index"] == 0 and p["state"] == "ready"][0])'; }
before=$(pid0)
out=$(ctl recycle 0); rc=$?
check "recycle 0: exit 0" test $rc = 0
replaced() { [ "$(pid0)" != "$before" ] && [ "$(nready)" = 2 ]; }
check "recycle 0: worker 0 has a new pid" wait_for 10 replaced
out=$(ctl log-level debug); rc=$?
check "log-level debug: exit 0, sent to the processes" test $rc = 0 -a -n "$(grep 'sent\|process' <<<"$out")"
ctl log-level info >/dev/null

# ---------------------------------------------------------------- usage and missing servers
"$SERVE" ctl --socket="$sock" bogus 2>"$tmp/err"; rc=$?
check "unknown command: exit 2, one line" test $rc = 2 -a "$(wc -l <"$tmp/err")" = 1
"$SERVE" ctl --socket="$sock" scale 2>/dev/null; rc=$?
check "scale without N: exit 2" test $rc = 2
"$SERVE" ctl --socket="$sock" scale many 2>"$tmp/err"; rc=$?
check "scale many (refused by the server's parser): exit 2, naming it" test $rc = 2 -a -n "$(grep "'many'" "$tmp/err")"
"$SERVE" ctl --socket="$tmp/none.sock" status 2>"$tmp/err"; rc=$?
check "no server at the socket: exit 3, one line" test $rc = 3 -a "$(wc -l <"$tmp/err")" = 1
env -u AIOTOOLS_CONTROL -u RUNTIME_DIRECTORY "$SERVE" ctl status 2>/dev/null; rc=$?
check "no socket given at all: exit 2" test $rc = 2

# ---------------------------------------------------------------- garbage
python3 - "$sock" <<'EOF'
import os, socket, sys, time
path = sys.argv[1]
def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s
held = []
for i in range(40):                      # a flood of idle clients (more than the cap)
    try:
        held.append(conn())
    except OSError:
        pass
for blob in (os.urandom(5000), b"status", b"\x00\xff" * 100 + b"\n", b"x" * 300, b"status extra words here too\n"):
    try:
        s = conn(); s.sendall(blob); s.shutdown(socket.SHUT_WR); s.recv(4096); s.close()
    except OSError:
        pass
for s in held:
    s.close()
time.sleep(0.2)
half = conn(); half.sendall(b"sta")        # a half line, left open
EOF
out=$(ctl status); rc=$?
check "after garbage, half lines and a flood: status answers, both workers ready" test $rc = 0 -a "$(grep -c '^worker .* ready ' <<<"$out")" = 2
check "after garbage: the workers still serve" test "$(ask "$port" x)" = ok

# ---------------------------------------------------------------- another uid
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1 && getent passwd nobody >/dev/null; then
        # A lax mode, so that the peer check itself is what refuses.
        chmod 666 "$sock"
        setpriv --reuid=65534 --regid=65534 --clear-groups "$SERVE" ctl --socket="$sock" status >/dev/null 2>"$tmp/err"; rc=$?
        check "uid 65534 (not root, not the server's user, not in the group): refused, exit 1" \
                test $rc = 1 -a -n "$(grep 'permission denied' "$tmp/err")"
        check "the refused peer is logged" grep -q "control socket: refused pid [0-9]* uid 65534" "$log"
        chmod 600 "$sock"
else
        echo "SKIP - another uid (needs root and setpriv)"
        [ "${CI:-}" = true ] && [ "$(id -u)" = 0 ] && check "setpriv present in CI" false
fi

# ---------------------------------------------------------------- a live socket, stop, a stale socket
start_server "$tmp/second.log" -w 1 --control="$sock" "$CTLMOD"
wait "$srv"; rc=$?
check "a second server on the live control socket: exit 2" test $rc = 2
check "... saying why" grep -q "control socket $sock is in use by another running server" "$tmp/second.log"
first=$(grep -o 'pid [0-9]*)' "$log" | head -n1 | tr -dc 0-9)
out=$(ctl stop); rc=$?
check "stop: exit 0" test $rc = 0
gone() { ! alive "$first"; }
check "stop: the server exits" wait_for 20 gone
check "stop: the control socket is removed" test ! -e "$sock"
python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()' "$sock"
check "a stale socket file is there" test -S "$sock"
if getent group nogroup >/dev/null; then grp=nogroup; else grp=$(id -gn); fi
start_server "$tmp/third.log" -w 1 --control="$sock" --control-group="$grp" "$CTLMOD"
check "a stale control socket is replaced" wait_for 20 ready_in "$tmp/third.log" 1
check "with --control-group the socket is mode 660, group $grp" \
        test "$(stat -c '%a %G' "$sock")" = "660 $grp"
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1 && [ "$grp" = nogroup ]; then
        setpriv --reuid=65534 --regid=65534 --clear-groups "$SERVE" ctl --socket="$sock" status >/dev/null 2>&1; rc=$?
        check "a member of the control group (uid 65534, group $grp) is let in" test $rc = 0
fi
ctl stop >/dev/null
wait "$srv"; rc=$?
check "stopped by ctl stop: exit status 0" test $rc = 0

# ---------------------------------------------------------------- the serving layer's counts, under load
hlog="$tmp/hello.log"
start_server "$hlog" -w 2 -b 127.0.0.1:0 --control="$sock" "$HELLO"
check "http-hello starts" wait_for 20 ready_in "$hlog" 2
hport=$(log_port "$hlog")
for i in $(seq 20); do http_get "$hport" >/dev/null; done
counted() { [ "$(ctl --json status | python3 -c '
import json, sys; ps = json.load(sys.stdin)["processes"]
print(sum(p["connections_total"] for p in ps), sum(p["requests_total"] for p in ps))')" = "20 20" ]; }
check "http-hello: 20 connections and 20 requests counted" wait_for 5 counted
ctl stop >/dev/null
wait "$srv"

# ---------------------------------------------------------------- --setup-timeout
t0=$(date +%s)
start_server "$tmp/slow.log" -w 1 --setup-timeout=1 "$CTLMOD" -- slow=30
wait "$srv"; rc=$?
t1=$(date +%s)
check "a setup past --setup-timeout=1: exit 1 within 10 s" test $rc = 1 -a $((t1 - t0)) -lt 10
check "... naming the setup timeout" grep -q "worker 0 was not ready within 1 s (the setup timeout)" "$tmp/slow.log"
start_server "$tmp/block.log" -w 1 --worker-timeout=0.5 --setup-timeout=20 --control="$sock" "$CTLMOD" -- block=2
check "a setup that blocks its loop 2 s, with --worker-timeout=0.5: ready, not aborted" wait_for 20 ready_in "$tmp/block.log" 1
check "... no abort was logged" test -z "$(grep 'hung for' "$tmp/block.log")"
ctl stop >/dev/null
wait "$srv"

# ---------------------------------------------------------------- the watchdog names the task
start_server "$tmp/hang.log" -w 1 -b 127.0.0.1:0 --worker-timeout=1 "$CTLMOD"
check "ctlmod starts (--worker-timeout=1)" wait_for 20 ready_in "$tmp/hang.log" 1
hport=$(log_port "$tmp/hang.log")
ask "$hport" hang >/dev/null
aborted() { grep -q "SIGABRT while running task 'answer'; backtrace:" "$tmp/hang.log"; }
check "a hung worker's abort names the running task 'answer'" wait_for 15 aborted
check "... with a backtrace (frames after the line)" \
        test "$(sed -n "/SIGABRT while running task 'answer'/,\$p" "$tmp/hang.log" | grep -c '\[0x[0-9a-f]*\]')" -ge 3
sed -n "/SIGABRT while running/,+6p" "$tmp/hang.log" | sed 's/^/    /'
kill -TERM "$srv"
wait "$srv"

summary
