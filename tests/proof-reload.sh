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
#  d. SIGWINCH under load kills nothing (same supervisor, same workers), 0
#     failed requests (SIGUSR2 upgrades: g);
#  e. a SIGHUP storm while every generation holds idle connections (so each
#     would drain for the drain timeout) never leaves more than the serving,
#     one draining and the starting generation;
#  f. bind addresses edited in the config: an added address is bound before
#     the new generation starts and answers, a removed one is closed once the
#     old generation has drained (and refuses from then on), an address that
#     cannot be bound refuses the reload; 0 failed requests on the addresses
#     that stay;
#  g. five in-place upgrades (SIGUSR2) of a copy of the program, the file
#     replaced on disk (and the module rebuilt) before each: the same
#     supervisor PID, /proc/PID/exe the new file, every worker new, the new
#     module answering, 0 failed requests; upgrades whose new code fails roll
#     back (a program file that is no program, a module of another ABI: the
#     check run fails and nothing changes; a module whose setup fails: the new
#     image keeps the adopted workers serving), 0 failed requests, and an
#     upgrade after that works from the adopted state; `ctl upgrade` as well.
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
# write_binds WORKERS PORT...: the config with one bind line per port.
write_binds() {
        local w=$1 p
        shift
        { printf '# proof-reload\nmodule = %s\nworkers = %s\nlog-level = debug\n' "$mod" "$w"
          for p in "$@"; do printf 'bind = 127.0.0.1:%s\n' "$p"; done; } > "$conf"
}
# ask: one request on a fresh connection (to PORT, default $port); prints the answer's version.
ask_version() {
        python3 - "${1:-$port}" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"v\n")
print(s.makefile().readline().split()[0])
PY
}
reloads_done() { grep -c 'reload: generation [0-9]* ready' "$out"; }
reloads_failed() { grep -c 'reload failed:' "$out"; }
# load_start LABEL / load_stop LABEL: the client over one part; figures and $failed $answered.
load_start() { # LABEL [PORT]
        rm -f "$tmp/stop"
        python3 "$src/tests/proof-lines-client.py" "${2:-$port}" "$CONNS" "$tmp/stop" 60 > "$tmp/$1.load" 2>&1 &
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

# ---- d. a signal without a use
echo "# d. 20 x SIGWINCH under load"
load_start signals
workers=$(live_children "$spid" | sort)
for i in $(seq 20); do
        kill -WINCH "$spid"
        sleep 0.05
done
sleep 0.5
load_stop signals
check "the supervisor lives after SIGWINCH" alive "$spid"
check "the same workers serve on" test "$(live_children "$spid" | sort)" = "$workers"
check "log: SIGWINCH ignored" grep -q 'SIGWINCH received: it has no use here, ignored' "$out"
check "0 failed requests during SIGWINCH (${failed:-?}, ${answered:-0} answered)" test "${failed:-1}" = 0

# ---- e. a SIGHUP storm with connections that keep every generation draining
echo "# e. 8 SIGHUPs 0.3 s apart while idle keep-alive connections pile up on every generation"
write_conf 2
ready_before=$(grep -c "reload: generation [0-9]* ready" "$out")
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
check "SIGHUP storm: a reload waits for the draining generation, with a log line" \
        grep -q 'reload waits for generation [0-9]* to drain (at most one draining generation)' "$out"
check "SIGHUP storm: no draining generation was killed" test "$(grep -c 'still draining killed' "$out")" = 0
# The SIGHUPs that waited make one more reload, once the drain is over.
check "SIGHUP storm: the reload that waited completes after the drain" \
        wait_for 30 eval 'test "$(grep -c "reload: generation [0-9]* ready" "$out")" -ge $((ready_before + 2))'
check "SIGHUP storm: the supervisor serves on" test "$(ask_version)" = v8

# ---- f. bind addresses change at a reload
port2=$(free_port)
echo "# f. bind 127.0.0.1:$port2 added, then 127.0.0.1:$port removed, then an address in use"
load_start bindadd
before=$(reloads_done)
write_binds 2 "$port" "$port2"
kill -HUP "$spid"
check "bind added: the reload completed" wait_for 10 eval 'test "$(reloads_done)" -gt $before'
check "bind added: 127.0.0.1:$port2 answers v8" test "$(ask_version "$port2")" = v8
check "bind added: 127.0.0.1:$port answers on" test "$(ask_version)" = v8
check "log: the new address is bound for the new generation" grep -q "also listens on 127.0.0.1:$port2" "$out"
sleep 0.5
load_stop bindadd
check "0 failed requests on 127.0.0.1:$port while an address was added (${failed:-?}, ${answered:-0} answered)" \
        test "${failed:-1}" = 0
load_start bindrm "$port2"
before=$(reloads_done)
write_binds 2 "$port2"
kill -HUP "$spid"
check "bind removed: the reload completed" wait_for 10 eval 'test "$(reloads_done)" -gt $before'
check "bind removed: 127.0.0.1:$port is closed once the old generation has drained" \
        wait_for 15 grep -q "no longer listening on 127.0.0.1:$port\$" "$out"
check "bind removed: 127.0.0.1:$port refuses" eval 'test -z "$(ask_version)"'
check "bind removed: 127.0.0.1:$port2 answers on" test "$(ask_version "$port2")" = v8
port3=$(free_port)
python3 -c 'import socket,sys,time; s=socket.socket(); s.bind(("127.0.0.1",int(sys.argv[1]))); s.listen(); open(sys.argv[2],"w").close(); time.sleep(30)' \
        "$port3" "$tmp/busy" &
busy=$!
track "$busy"
wait_for 10 test -e "$tmp/busy" || echo "# the port $port3 could not be taken"
f0=$(reloads_failed)
write_binds 2 "$port2" "$port3"
kill -HUP "$spid"
check "address in use: reload refused" wait_for 10 eval 'test "$(reloads_failed)" -gt $f0'
check "log: the bind failure is the reason" grep -q "reload failed: .*127.0.0.1:$port3.*in use.*keeps serving" "$out"
kill "$busy"
sleep 0.5
load_stop bindrm
check "0 failed requests on 127.0.0.1:$port2 while an address was removed and one refused (${failed:-?}, ${answered:-0} answered)" \
        test "${failed:-1}" = 0
port=$port2

kill -TERM "$spid"
wait_for 35 eval '! alive "$spid"'
wait "$spid"
rc=$?
check "clean stop (exit $rc)" test "$rc" = 0

# ---- g. in-place upgrades of the program itself
# A copy of the real program (not libtool's wrapper), replaced on disk like a
# package upgrade does: the new file renamed over the old one.
bin=$tmp/bin/aiotools-serve
mkdir -p "$tmp/bin"
replace_bin() { # [FILE]: renames a fresh copy of FILE (default: the built program) over $bin
        cp "${1:-$bld/daemon/.libs/aiotools-serve}" "$bin.new" && chmod +x "$bin.new" && mv -f "$bin.new" "$bin"
}
replace_bin
cp "$out" "$tmp/serve1.out"
out=$tmp/upgrade.out
port=$(free_port)
build u0
write_conf 2 "control = $tmp/up.sock"
LD_LIBRARY_PATH="$bld/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" NOTIFY_SOCKET=$tmp/notify.sock \
        "$bin" -c "$conf" > "$out" 2>&1 &
spid=$!
track "$spid"
wait_for 10 grep -q 'all 2 workers ready' "$out" || { echo "FAIL - the copy did not start"; cat "$out"; exit 1; }
upgrades_done() { grep -c 'upgrade: generation [0-9]* of the new program is ready' "$out"; }
upgrades_failed() { grep -c 'upgrade failed:' "$out"; }
exe_ino() { stat -L -c %i /proc/"$spid"/exe; }
echo "# g. five upgrades: $bin replaced and the module rebuilt before each SIGUSR2, pid $spid"
load_start upgrade
n=0
for v in u1 u2 u3 u4 u5; do
        build "$v"
        replace_bin
        ino=$(stat -c %i "$bin")
        before=$(live_children "$spid" | sort)
        old_exe=$(readlink /proc/"$spid"/exe)
        n=$((n + 1))
        kill -USR2 "$spid"
        wait_for 15 eval 'test "$(upgrades_done)" -ge $n' || echo "# upgrade $n did not complete"
        now=$(live_children "$spid" | sort)
        echo "# upgrade $n: pid $spid, exe before: $old_exe, after: $(readlink /proc/"$spid"/exe) (inode $(exe_ino), file $ino)"
        check "upgrade $n: the supervisor is the same process ($spid)" alive "$spid"
        check "upgrade $n: /proc/$spid/exe is the new file" eval 'test "$(exe_ino)" = "$ino" && test "$(readlink /proc/$spid/exe)" = "$bin"'
        check "upgrade $n: every worker is new" wait_for 15 eval \
                'now=$(live_children "$spid" | sort); test "$(echo $now | wc -w)" = 2 && test -z "$(comm -12 <(echo "$before" | tr " " "\n") <(echo "$now" | tr " " "\n"))"'
        check "upgrade $n: a new connection answers $v" wait_for 5 eval 'test "$(ask_version)" = $v'
        sleep 0.3
done
load_stop upgrade
check "0 failed requests during 5 upgrades (${failed:-?}, ${answered:-0} answered)" test "${failed:-1}" = 0
check "answers came from every version u0..u5" eval 'for v in u0 u1 u2 u3 u4 u5; do [ "$(seen upgrade $v)" -gt 0 ] || exit 1; done'
check "STATUS=: upgrading then ready" grep -q 'RELOADING=1.*STATUS=upgrading' "$notes"

echo "# g. upgrades whose new code fails: a program file that is no program, a module of another ABI, a failing setup"
load_start upgfail
workers=$(live_children "$spid" | sort)
f0=$(upgrades_failed)
printf 'not a program\n' > "$tmp/notaprogram"
replace_bin "$tmp/notaprogram"
kill -USR2 "$spid"
check "no program: the upgrade failed" wait_for 10 eval 'test "$(upgrades_failed)" -gt $f0'
check "log: the check run could not execute it" grep -q "upgrade failed: cannot execute $bin (the check run exited with 127); generation [0-9]* keeps serving" "$out"
replace_bin
$CC -shared -fPIC -I"$src/include" -o "$mod" "$src/tests/badabi.c"
kill -USR2 "$spid"
check "wrong ABI: the upgrade failed" wait_for 10 eval 'test "$(upgrades_failed)" -gt $((f0 + 1))'
check "log: the check run exited with status 2" grep -q "upgrade failed: the check run of $bin exited with status 2" "$out"
check "no program, wrong ABI: the same workers serve on" test "$(live_children "$spid" | sort)" = "$workers"
build u6 -DFAIL_SETUP
ino=$(stat -c %i "$bin")
kill -USR2 "$spid"
check "setup fails: the upgrade failed in the new image" wait_for 15 grep -q "upgrade failed: the new program's generation [0-9]* did not start; the adopted generation [0-9]* serves on" "$out"
check "setup fails: the same process runs the new file" eval 'alive "$spid" && test "$(exe_ino)" = "$ino"'
sleep 0.5
check "setup fails: the adopted workers serve on" test "$(live_children "$spid" | sort)" = "$workers"
check "setup fails: u5 still answers" test "$(ask_version)" = u5
build u7
before=$(upgrades_done)
kill -USR2 "$spid"
check "an upgrade after the failed one works from the adopted state" wait_for 15 eval 'test "$(upgrades_done)" -gt $before'
check "u7 answers" wait_for 5 eval 'test "$(ask_version)" = u7'
check "the adopted workers are gone" wait_for 15 eval 'test -z "$(comm -12 <(echo "$workers") <(live_children "$spid" | sort))"'
build u8
before=$(upgrades_done)
"$SERVE" ctl --socket="$tmp/up.sock" upgrade > "$tmp/ctl.out" 2>&1
check "ctl upgrade: accepted ($(head -c 200 "$tmp/ctl.out" | tr '\n' ' '))" grep -q 'upgrading: checking that' "$tmp/ctl.out"
check "ctl upgrade: done in the same process" wait_for 15 eval 'test "$(upgrades_done)" -gt $before && alive "$spid"'
check "ctl upgrade: u8 answers" wait_for 5 eval 'test "$(ask_version)" = u8'
check "ctl status answers through the new image's control socket" eval '"$SERVE" ctl --socket="$tmp/up.sock" status | grep -q "supervisor pid $spid"'
load_stop upgfail
check "0 failed requests during the failed upgrades and the one after (${failed:-?}, ${answered:-0} answered)" \
        test "${failed:-1}" = 0
check "u6 never answered (u6 never did: $(seen upgfail u6))" test -z "$(seen upgfail u6)"
grep 'upgrade' "$out" | grep -v debug | sed 's/^/#   /' | tail -12
kill -TERM "$spid"
wait_for 35 eval '! alive "$spid"'
wait "$spid"
rc=$?
check "clean stop after the upgrades (exit $rc)" test "$rc" = 0
summary
