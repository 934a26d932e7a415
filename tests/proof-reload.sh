#!/bin/bash
# Deploying new code with SIGHUP, against the real aiotools-serve started with
# a config file (-c), a test module rebuilt on disk between reloads
# (tests/versionmod.c, compiled here with a new -DVERSION each time into the
# same path), and keep-alive load from tests/proof-lines-client.py:
#  a. five module reloads: each answers with its new version, 0 failed requests;
#  b. reloads whose new code fails roll back (not a shared object, wrong ABI,
#     worker setup fails): the old version answers on, 0 failed requests, the
#     reason in the log and in STATUS=;
#  c. a config edit changes the worker count at SIGHUP; a bad edit is refused
#     with FILE:LINE and the bad value (log and STATUS=), 0 failed requests;
#  d. SIGUSR2 and SIGWINCH under load kill nothing (same supervisor, same
#     workers), 0 failed requests;
#  e. a SIGHUP storm while every generation holds idle connections (so each
#     would drain for the drain timeout) never leaves more than the serving,
#     one draining and the starting generation.
# Prints "figure: NAME VALUE" lines and ok/FAIL per check.  Needs python3 and
# a C compiler (skips without, fails with CI=true).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
. "${top_srcdir:-.}/tests/proof-lib.sh"
command -v python3 >/dev/null 2>&1 || missing "python3 is not installed"
CC=${CC:-cc}
command -v "${CC%% *}" >/dev/null 2>&1 || missing "no C compiler ($CC) to build the test module"
need_built
tmp=$(mktemp -d) || exit 1
trap 'cleanup_procs; [ "$fail" = 0 ] || grep -E "reload|SIGHUP|exited|failed" "$out" | tail -30 | sed "s|^|#   |"; rm -rf "$tmp"' EXIT
mod=$tmp/mod.so
conf=$tmp/serve.conf
out=$tmp/serve.out
notes=$tmp/notify.log
CONNS=8

# build VERSION [CFLAGS...]: compiles versionmod into $mod (the same path every time).
build() {
        local v=$1
        shift
        $CC -shared -fPIC -O1 -I"$src/include" -DVERSION="\"$v\"" "$@" -o "$mod" "$src/tests/versionmod.c" ||
                { echo "FAIL - cannot build the test module"; exit 1; }
}
# write_conf WORKERS [EXTRA-LINE]
write_conf() {
        printf '# proof-reload\nmodule = %s\nworkers = %s\n%sbind = 127.0.0.1:%s\nlog-level = debug\n' \
                "$mod" "$1" "${2:+$2
}" "$port" > "$conf"
}
# ask: one request on a fresh connection; prints the answer's version.
ask_version() {
        python3 - "$port" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"v\n")
print(s.makefile().readline().split()[0])
PY
}
reloads_done() { grep -c 'reload: generation [0-9]* ready' "$out"; }
reloads_failed() { grep -c 'reload failed:' "$out"; }
# load_start LABEL / load_stop LABEL: the client over one part; figures and $failed $answered.
load_start() {
        rm -f "$tmp/stop"
        python3 "$src/tests/proof-lines-client.py" "$port" "$CONNS" "$tmp/stop" 60 > "$tmp/$1.load" 2>&1 &
        lpid=$!
        track "$lpid"
        sleep 0.5
}
load_stop() {
        local f=$tmp/$1.load
        touch "$tmp/stop"
        wait "$lpid"
        failed=$(sed -n 's/^failed //p' "$f")
        answered=$(sed -n 's/^answered //p' "$f")
        echo "figure: $1_requests $(sed -n 's/^sent //p' "$f")"
        echo "figure: $1_answered ${answered:-0}"
        echo "figure: $1_failed_requests ${failed:-?}"
        echo "figure: $1_versions $(sed -n 's/^version //p' "$f" | tr '\n' ' ')"
        grep '^#' "$f"
}
seen() { sed -n "s/^version $2 //p" "$tmp/$1.load"; }
copies() { grep -c 'r-xp.*memfd:aiotools-module' /proc/"$spid"/maps; }

# A notify socket that records every datagram, one line each.
python3 - "$tmp/notify.sock" "$notes" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as f:
    while True:
        f.write(s.recv(4096).decode(errors="replace").replace("\n", "|") + "\n")
PY
track $!
wait_for 5 test -S "$tmp/notify.sock" || { echo "FAIL - no notify socket"; exit 1; }

port=$(free_port)
build v1
write_conf 2
NOTIFY_SOCKET=$tmp/notify.sock "$SERVE" -c "$conf" > "$out" 2>&1 &
spid=$!
track "$spid"
wait_for 10 grep -q 'all 2 workers ready' "$out" || { echo "FAIL - server did not start"; cat "$out"; exit 1; }
check "v1 answers" test "$(ask_version)" = v1

# ---- a. five module reloads under load
echo "# a. five rebuilds of the module into $mod, SIGHUP after each, under $CONNS keep-alive connections"
load_start reload
n=0
for v in v2 v3 v4 v5 v6; do
        build "$v"
        n=$((n + 1))
        kill -HUP "$spid"
        wait_for 10 eval 'test "$(reloads_done)" -ge $n' || echo "# reload $n did not complete"
        check "reload $n: a new connection answers $v" wait_for 5 eval 'test "$(ask_version)" = $v'
        sleep 0.4
done
load_stop reload
check "0 failed requests during 5 module reloads (${failed:-?}, ${answered:-0} answered)" test "${failed:-1}" = 0
check "answers came from every version v1..v6" eval 'for v in v1 v2 v3 v4 v5 v6; do [ "$(seen reload $v)" -gt 0 ] || exit 1; done'
check "the old copies are unloaded once their generations are gone (copies mapped: $(copies))" \
        wait_for 15 eval 'test "$(copies)" -le 2'
grep -q 'unloading their copy of module' "$out"
check "log: an old copy of the module was unloaded" test $? = 0

# ---- b. reloads whose new code fails roll back
echo "# b. not a shared object, wrong ABI, failing setup: each reload rolls back"
load_start rollback
f0=$(reloads_failed)
echo 'not an ELF file' > "$mod"
kill -HUP "$spid"
check "not a shared object: reload failed" wait_for 10 eval 'test "$(reloads_failed)" -ge $((f0 + 1))'
$CC -shared -fPIC -I"$src/include" -o "$mod" "$src/tests/badabi.c"
kill -HUP "$spid"
check "wrong ABI: reload failed" wait_for 10 eval 'test "$(reloads_failed)" -ge $((f0 + 2))'
build v7 -DFAIL_SETUP
kill -HUP "$spid"
check "setup fails: reload failed" wait_for 10 eval 'test "$(reloads_failed)" -ge $((f0 + 3))'
check "v6 still answers" test "$(ask_version)" = v6
sleep 0.5
load_stop rollback
check "0 failed requests during 3 failed reloads (${failed:-?}, ${answered:-0} answered)" test "${failed:-1}" = 0
check "only v6 answered (v7 never did: $(seen rollback v7))" test -z "$(seen rollback v7)"
grep 'reload failed' "$out" | sed 's/^/#   /'
check "log: the not-a-shared-object reason" grep -q "reload failed: cannot load module '$mod': .*; generation 6 keeps serving" "$out"
check "log: the wrong-ABI reason" grep -q "reload failed: module '$mod' was built for module ABI 42, this aiotools-serve supports ABI 1" "$out"
check "log: the failed setup's reason" grep -q 'reload failed: worker [0-9] .*generation 6 keeps serving' "$out"
check "STATUS=: the wrong-ABI reason" grep -q 'STATUS=reload failed: module .* was built for module ABI 42' "$notes"

# ---- c. config edits
echo "# c. workers = 3 in the config file, then a bad edit"
build v8
load_start conf
before=$(reloads_done)
write_conf 3
kill -HUP "$spid"
check "config edit: the reload completed" wait_for 10 eval 'test "$(reloads_done)" -gt $before'
check "config edit: 3 workers" wait_for 10 eval 'test "$(live_children "$spid" | wc -l)" = 3'
check "config edit: v8 answers" test "$(ask_version)" = v8
workers=$(live_children "$spid" | sort)
f0=$(reloads_failed)
write_conf 2 'workers = lots'
kill -HUP "$spid"
check "bad edit: reload refused" wait_for 10 eval 'test "$(reloads_failed)" -gt $f0'
check "log: the bad edit is named $conf:4 with its value" \
        grep -q "reload failed: $conf:4: invalid worker count 'lots' for --workers" "$out"
check "STATUS=: the bad edit's FILE:LINE" grep -q "STATUS=reload failed: $conf:4: invalid worker count 'lots'" "$notes"
sleep 0.5
check "bad edit: the same 3 workers serve on" test "$(live_children "$spid" | sort)" = "$workers"
load_stop conf
check "0 failed requests during the config reloads (${failed:-?}, ${answered:-0} answered)" test "${failed:-1}" = 0

# ---- d. signals without a use
echo "# d. 20 x SIGUSR2 and 20 x SIGWINCH under load"
load_start signals
workers=$(live_children "$spid" | sort)
for i in $(seq 20); do
        kill -USR2 "$spid"
        kill -WINCH "$spid"
        sleep 0.05
done
sleep 0.5
load_stop signals
check "the supervisor lives after SIGUSR2/SIGWINCH" alive "$spid"
check "the same workers serve on" test "$(live_children "$spid" | sort)" = "$workers"
check "log: SIGUSR2 ignored" grep -q 'SIGUSR2 received: it has no use here, ignored' "$out"
check "0 failed requests during SIGUSR2/SIGWINCH (${failed:-?}, ${answered:-0} answered)" test "${failed:-1}" = 0

# ---- e. a SIGHUP storm with connections that keep every generation draining
echo "# e. 8 SIGHUPs 0.3 s apart while idle keep-alive connections pile up on every generation"
write_conf 2
python3 - "$port" 5 > "$tmp/idle.out" 2>&1 <<'PY' &
import socket, sys, time
# Every 50 ms one more connection that asks once and then idles: each
# generation holds some, so each drains until the drain timeout (10 s).
port, secs, held = int(sys.argv[1]), float(sys.argv[2]), []
end = time.monotonic() + secs
while time.monotonic() < end:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(b"v\n")
        s.recv(100)
        held.append(s)
    except OSError:
        pass
    time.sleep(0.05)
print("held", len(held))
PY
ipid=$!
track "$ipid"
max=0
for i in $(seq 8); do
        kill -HUP "$spid"
        for j in 1 2 3 4 5 6; do
                n=$(live_children "$spid" | wc -l)
                [ "$n" -gt "$max" ] && max=$n
                sleep 0.05
        done
done
wait "$ipid"
echo "figure: storm_most_processes_seen $max (2 workers: serving + draining + starting <= 6)"
echo "figure: storm_killed_lines $(grep -c 'still draining killed' "$out")"
check "SIGHUP storm: never more than 3 generations of 2 workers ($max processes)" test "$max" -le 6
check "SIGHUP storm: older draining generations were killed, with a log line" grep -q 'still draining killed (at most one draining generation)' "$out"
check "SIGHUP storm: the supervisor serves on" test "$(ask_version)" = v8

kill -TERM "$spid"
wait_for 35 eval '! alive "$spid"'
wait "$spid"
rc=$?
check "clean stop (exit $rc)" test "$rc" = 0
summary
