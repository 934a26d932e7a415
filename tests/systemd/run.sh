#!/bin/bash
# aiotools-serve under REAL systemd 252 booted as PID 1 in fresh namespaces
# (tests/tools/systemd-sandbox), driven through the unit this build
# generates from contrib/aiotools-serve@.service.in (Type=notify,
# ExecReload=aiotools-serve ctl reload, KillMode=mixed, WatchdogSec=, hardening) and the
# shipped contrib/aiotools-serve@.socket.  `make check-systemd`; needs root.
#
# Installed into the sandbox like `make install` would: the real binary and
# library from .libs (not libtool's wrapper scripts) into /usr/local, the
# modules (examples/http-hello, tests/proofmod) into the module directory.
# Each instance's settings in its /etc/aiotools-serve/NAME.conf (the unit runs
# aiotools-serve -c on it), test settings in drop-ins.  Checks:
#  1. start: `systemctl start` returns only after READY, which waits for the
#     slowest worker (proofmod slow=1:1500): it takes >= 1.5 s, the journal has
#     the slow worker's ready line before systemd's "Started", and right after
#     start returns the unit is active and the workers answer;
#  2. reload: `systemctl reload` x3 under keep-alive load: ActiveState sampled
#     throughout is only active/reloading, MainPID unchanged, new workers,
#     StatusText "2 workers, generation 4", no request lost or refused;
#  2a. module reload: a new build of a module at the same path answers after
#     `systemctl reload` (MainPID unchanged);
#  2b. upgrade: the program file replaced, SIGUSR2 to the main process under
#     keep-alive load: MainPID unchanged, /proc/MainPID/exe the new file,
#     ActiveState only active/reloading, new workers, nothing lost or refused;
#  3. stop: every process of the unit's cgroup gone, well within
#     TimeoutStopSec, Result=success;
#  4. watchdog: WatchdogSec=2 and a worker loop blocked (proofmod "hang"):
#     systemd reports the watchdog timeout, Result 'watchdog', and (shipped
#     Restart=on-failure) the unit comes back; then `systemctl stop` with a
#     blocked worker ends within --stop-timeout=2 (KillMode=mixed), success;
#  5. socket activation: the shipped .socket (TCP drop-in) starts the service
#     on the first connection, which a worker answers with the name "http";
#  6. synchronous reload (ExecReload= runs `aiotools-serve ctl reload`): with a
#     worker whose setup takes 1.5 s, `systemctl reload` returns only after it
#     (>= 1.5 s) with generation 2 serving; a reload whose new generation fails
#     its setup makes `systemctl reload` fail while the unit stays active and
#     generation 2 serves; `ctl status` works through $RUNTIME_DIRECTORY.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
. "${top_srcdir:-.}/tests/proof-lib.sh"
SBX="$tools/systemd-sandbox"
[ "$(id -u)" = 0 ] || missing "tests/systemd/run.sh needs root (systemd-sandbox)"
[ -x "$SBX" ] || missing "systemd-sandbox not found at $SBX (set AIOTOOLS_SHARED_TOOLS)"
"$SBX" check > /dev/null 2>&1 || missing "systemd-sandbox check failed: $("$SBX" check 2>&1 | tail -n1)"
need_built
UNIT_IN="$src/contrib/aiotools-serve@.service.in"
NAME=aiot-proof-$$
S() { "$SBX" -n "$NAME" "$@"; }
R() { S run "$@"; }
prop() { R systemctl show -P "$2" "$1"; }
tmp=$(mktemp -d) || exit 1
trap 'S stop --journal "$tmp/journal" >/dev/null 2>&1; [ "$fail" = 0 ] || { echo "# journal tail:"; tail -n 40 "$tmp/journal" 2>/dev/null | sed "s/^/#   /"; }; cleanup_procs; rm -rf "$tmp"' EXIT
ms() { echo $(( $(date +%s%N) / 1000000 )); }
MODDIR=/usr/local/lib/libaiotools-server
HH=aiotools-serve@http-hello.service
PM=aiotools-serve@proofmod.service

t=$(ms)
S start > "$tmp/start.out" 2>&1 || { echo "FAIL: the sandbox did not boot:"; cat "$tmp/start.out"; exit 1; }
echo "# sandbox booted in $(( $(ms) - t )) ms"
lib=$(readlink -f "$bld/.libs/libaiotools-server.so")
S cp "$bld/daemon/.libs/aiotools-serve" /usr/local/bin/aiotools-serve
S cp "$lib" /usr/local/lib/
S cp "$HELLO" "$PROOFMOD" "$MODDIR/"
S cp "$src/tests/proof-client.py" /usr/local/share/proof-client.py
# The shipped unit, with the paths where this test installs the build (the
# build's own prefix may be elsewhere, e.g. under make distcheck).
sed -e "s|@bindir@|/usr/local/bin|g" -e "s|@moduledir@|$MODDIR|g" -e "s|@sysconfdir@|/etc|g" "$UNIT_IN" > "$tmp/aiotools-serve@.service"
S cp "$tmp/aiotools-serve@.service" "$src/contrib/aiotools-serve@.socket" /usr/local/lib/systemd/system/
# A --enable-sanitizers build: LeakSanitizer cannot stop the world inside the
# hardened unit (it reports a fatal error and exit 1), so leaks are checked
# elsewhere (check-valgrind.sh, the Check suites); other sanitizers stay on.
R sh -c "mkdir -p /etc/systemd/system/aiotools-serve@.service.d &&
        printf '[Service]\nEnvironment=ASAN_OPTIONS=detect_leaks=0\n' > /etc/systemd/system/aiotools-serve@.service.d/asan.conf"
R sh -c "ldconfig && chmod 755 $MODDIR && chmod 644 $MODDIR/*.so && systemctl daemon-reload"
# conf NAME LINE...: writes the instance's /etc/aiotools-serve/NAME.conf.
conf() {
        local name=$1
        shift
        R sh -c 'mkdir -p /etc/aiotools-serve && f=$1 && shift && printf "%s\n" "$@" > "$f"' sh "/etc/aiotools-serve/$name.conf" "$@"
}
conf http-hello "module = $MODDIR/http-hello.so" "workers = 2" "bind = 127.0.0.1:18080"
conf proofmod "module = $MODDIR/proofmod.so" "workers = 2" "bind = 127.0.0.1:18081" "worker-timeout = 0" "arg = slow=1:1500"
check "systemd-analyze verify of the generated unit and the socket" \
        eval 'test -z "$(R systemd-analyze verify --man=no /usr/local/lib/systemd/system/aiotools-serve@http-hello.service /usr/local/lib/systemd/system/aiotools-serve@http-hello.socket 2>&1)"'

# procs UNIT: the pids in the unit's cgroup (none once the cgroup is gone).
procs() {
        local cg
        cg=$(prop "$1" ControlGroup)
        # (passed as an argument: unit cgroup names contain "\x2d")
        [ -n "$cg" ] && R sh -c 'cat "/sys/fs/cgroup$1/cgroup.procs" 2>/dev/null' sh "$cg" | sort -n
        true
}
ask_in() { # port line: one command to proofmod from inside the sandbox
        R bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && echo '$2' >&3 && timeout 10 head -n1 <&3"
}

# ---- 1. start waits for the slowest worker
echo "# 1. start ($PM with worker 1 taking 1.5 s)"
t=$(ms)
R systemctl start "$PM"
rc=$?
el=$(( $(ms) - t ))
st=$(prop "$PM" ActiveState)
reply=$(ask_in 18081 name)
echo "figure: systemd_start_ms $el"
check "systemctl start succeeded (rc $rc)" test "$rc" = 0
check "systemctl start returned only after the slow worker: $el ms >= 1500" test "$el" -ge 1500
check "ActiveState=active right after start returned ($st)" test "$st" = active
check "a worker answers right after start returned ($reply)" grep -q '^name=' <<<"$reply"
check "3 processes in the unit cgroup (supervisor + 2 workers)" test "$(procs "$PM" | wc -l)" = 3
check "StatusText '2 workers, generation 1' ($(prop "$PM" StatusText))" test "$(prop "$PM" StatusText)" = "2 workers, generation 1"
check "WatchdogUSec from the unit (30 s): $(prop "$PM" WatchdogUSec)" test "$(prop "$PM" WatchdogUSec)" = 30s
S journal -u "$PM" > "$tmp/j1"
rl=$(grep -n 'proofmod: ready index=1' "$tmp/j1" | head -n1 | cut -d: -f1)
sl=$(grep -n 'Started aiotools-serve' "$tmp/j1" | head -n1 | cut -d: -f1)
check "journal: worker 1 ready (line ${rl:-none}) before systemd's 'Started' (line ${sl:-none})" \
        test -n "$rl" -a -n "$sl" -a "${rl:-0}" -lt "${sl:-0}"
R systemctl stop "$PM"

# ---- 2. reload under load
echo "# 2. reload x3 ($HH) under keep-alive load"
R systemctl start "$HH"
main=$(prop "$HH" MainPID)
before=$(procs "$HH" | grep -vx "$main")
R sh -c "python3 /usr/local/share/proof-client.py 18080 4 8 > /tmp/client.out 2>&1 & echo \$! > /tmp/client.pid
        while :; do systemctl show -P ActiveState $HH; done > /tmp/states 2>&1 & p=\$!
        sleep 0.5; rc=0
        for i in 1 2 3; do systemctl reload $HH || rc=\$?; sleep 0.5; done
        kill \$p; wait \$p 2>/dev/null; echo \$rc > /tmp/reload.rc
        while kill -0 \$(cat /tmp/client.pid) 2>/dev/null; do sleep 0.1; done"
R cat /tmp/states | sort | uniq -c | sed 's/^ */# states: /'
nstates=$(R cat /tmp/states | wc -l)
bad=$(R cat /tmp/states | grep -vxE 'active|reloading' | sort -u | tr '\n' ' ')
check "3 x systemctl reload succeeded (rc $(R cat /tmp/reload.rc))" test "$(R cat /tmp/reload.rc)" = 0
check "ActiveState only active/reloading in $nstates samples during the reloads${bad:+ (also: $bad)}" \
        test "$nstates" -gt 10 -a -z "$bad"
check "MainPID unchanged ($main -> $(prop "$HH" MainPID))" test "$(prop "$HH" MainPID)" = "$main"
check "StatusText '2 workers, generation 4' ($(prop "$HH" StatusText))" test "$(prop "$HH" StatusText)" = "2 workers, generation 4"
after=$(procs "$HH" | grep -vx "$main")
check "new workers after the reloads (old: $(echo $before); new: $(echo $after))" \
        test -z "$(comm -12 <(echo "$before") <(echo "$after"))" -a "$(echo "$after" | wc -l)" = 2
R cat /tmp/client.out > "$tmp/client.out"
get() { sed -n "s/^$1 //p" "$tmp/client.out"; }
echo "figure: systemd_reload_requests_answered $(get answered)"
echo "figure: systemd_reload_requests_lost $(( $(get lost) + $(get lost_first) )) refused $(get refused)"
check "keep-alive load during 3 reloads: $(get answered) answered, 0 lost, 0 refused" \
        test "$(get answered)" -gt 100 -a "$(get lost)" = 0 -a "$(get lost_first)" = 0 -a "$(get refused)" = 0

# ---- 3. stop
# ---- 2a. systemctl reload loads a new build of the module
VM=aiotools-serve@versionmod.service
echo "# 2a. module reload ($VM): a new build at the same path, then systemctl reload"
for v in v1 v2; do
        ${CC:-cc} -shared -fPIC -O1 -I"$src/include" -DVERSION="\"$v\"" -o "$tmp/versionmod-$v.so" \
                "$src/tests/versionmod.c" || { echo "FAIL - cannot build tests/versionmod.c"; exit 1; }
done
S cp "$tmp/versionmod-v1.so" "$MODDIR/versionmod.so"
S cp "$tmp/versionmod-v2.so" "$MODDIR/.versionmod-v2.so"
R chmod 644 "$MODDIR/versionmod.so" "$MODDIR/.versionmod-v2.so"
conf versionmod "module = $MODDIR/versionmod.so" "workers = 2" "bind = 127.0.0.1:18082"
R systemctl start "$VM"
main=$(prop "$VM" MainPID)
v_before=$(ask_in 18082 x)
R mv -f "$MODDIR/.versionmod-v2.so" "$MODDIR/versionmod.so"
R systemctl reload "$VM"
rc=$?
v_after=$(ask_in 18082 x)
echo "# module reload: answers '$v_before' -> '$v_after', MainPID $main -> $(prop "$VM" MainPID)"
check "module reload: the first build answers v1 ($v_before)" grep -q '^v1 ' <<<"$v_before"
check "module reload: systemctl reload succeeded (rc $rc)" test "$rc" = 0
check "module reload: the new build at the same path answers v2 after it ($v_after)" grep -q '^v2 ' <<<"$v_after"
check "module reload: MainPID unchanged" test "$(prop "$VM" MainPID)" = "$main"
R systemctl stop "$VM"

# ---- 2b. in-place upgrade under load
echo "# 2b. upgrade ($HH): /usr/local/bin/aiotools-serve replaced, SIGUSR2 to the main process, under keep-alive load"
main=$(prop "$HH" MainPID)
before=$(procs "$HH" | grep -vx "$main")
exe_before=$(R readlink /proc/"$main"/exe)
R sh -c "cp /usr/local/bin/aiotools-serve /usr/local/bin/.aiotools-serve.new && mv -f /usr/local/bin/.aiotools-serve.new /usr/local/bin/aiotools-serve"
ino=$(R stat -c %i /usr/local/bin/aiotools-serve)
R sh -c "python3 /usr/local/share/proof-client.py 18080 4 6 > /tmp/client.out 2>&1 & echo \$! > /tmp/client.pid
        while :; do systemctl show -P ActiveState $HH; done > /tmp/states 2>&1 & p=\$!
        sleep 0.5
        systemctl kill -s USR2 --kill-whom=main $HH
        for i in \$(seq 100); do journalctl -u $HH | grep -q 'of the new program is ready' && break; sleep 0.1; done
        sleep 0.5; kill \$p; wait \$p 2>/dev/null
        while kill -0 \$(cat /tmp/client.pid) 2>/dev/null; do sleep 0.1; done"
R cat /tmp/states | sort | uniq -c | sed 's/^ */# states: /'
nstates=$(R cat /tmp/states | wc -l)
bad=$(R cat /tmp/states | grep -vxE 'active|reloading' | sort -u | tr '\n' ' ')
echo "# upgrade: MainPID $main -> $(prop "$HH" MainPID), exe $exe_before -> $(R readlink /proc/"$main"/exe) (inode $(R stat -L -c %i /proc/"$main"/exe), file $ino)"
check "upgrade: the journal has the new program's generation ready" \
        eval 'R journalctl -u "$HH" | grep -q "of the new program is ready"'
check "upgrade: ActiveState only active/reloading in $nstates samples${bad:+ (also: $bad)}" \
        test "$nstates" -gt 10 -a -z "$bad"
check "upgrade: MainPID unchanged ($main -> $(prop "$HH" MainPID))" test "$(prop "$HH" MainPID)" = "$main"
check "upgrade: /proc/MainPID/exe is the new file" test "$(R stat -L -c %i /proc/"$main"/exe)" = "$ino"
after=$(procs "$HH" | grep -vx "$main")
check "upgrade: new workers (old: $(echo $before); new: $(echo $after))" \
        test -z "$(comm -12 <(echo "$before") <(echo "$after"))" -a "$(echo "$after" | wc -l)" = 2
R cat /tmp/client.out > "$tmp/client.out"
echo "figure: systemd_upgrade_requests_answered $(get answered)"
echo "figure: systemd_upgrade_requests_lost $(( $(get lost) + $(get lost_first) )) refused $(get refused)"
check "keep-alive load during the upgrade: $(get answered) answered, 0 lost, 0 refused" \
        test "$(get answered)" -gt 100 -a "$(get lost)" = 0 -a "$(get lost_first)" = 0 -a "$(get refused)" = 0

echo "# 3. stop ($HH)"
cg=$(prop "$HH" ControlGroup)
unit_pids=$(procs "$HH")
t=$(ms)
R systemctl stop "$HH"
el=$(( $(ms) - t ))
echo "figure: systemd_stop_ms $el"
left=$(R sh -c 'cat "/sys/fs/cgroup$1/cgroup.procs" 2>/dev/null' sh "$cg")
alive_n=0
for p in $unit_pids; do
        R kill -0 "$p" 2>/dev/null && alive_n=$((alive_n + 1))
done
check "systemctl stop took $el ms (< 5000, TimeoutStopSec=$(prop "$HH" TimeoutStopUSec))" test "$el" -lt 5000
check "the unit's cgroup ($(echo $unit_pids | wc -w) processes before) is empty (${left:-empty})" test -z "$left" -a -n "$unit_pids"
check "none of the unit's $(echo $unit_pids | wc -w) processes is left ($alive_n)" test "$alive_n" = 0 -a -n "$unit_pids"
check "Result=success ($(prop "$HH" Result))" test "$(prop "$HH" Result)" = success
check "ActiveState=inactive ($(prop "$HH" ActiveState))" test "$(prop "$HH" ActiveState)" = inactive

# ---- 4. watchdog
echo "# 4. watchdog ($PM, WatchdogSec=2, a worker's loop blocked)"
R sh -c "mkdir -p /etc/systemd/system/$PM.d && printf '[Service]\nWatchdogSec=2\n' > /etc/systemd/system/$PM.d/wd.conf &&
        systemctl daemon-reload"
conf proofmod "module = $MODDIR/proofmod.so" "workers = 2" "bind = 127.0.0.1:18081" "worker-timeout = 0" "stop-timeout = 2"
R systemctl start "$PM"
main=$(prop "$PM" MainPID)
sleep 3
check "WatchdogSec=2 honoured: still active after 3 s of pings ($(prop "$PM" ActiveState), WatchdogUSec=$(prop "$PM" WatchdogUSec))" \
        test "$(prop "$PM" ActiveState)" = active -a "$(prop "$PM" NRestarts)" = 0
reply=$(ask_in 18081 "hang 60")
echo "# $reply"
t=$(ms)
wait_for 10 eval 'S journal -u "$PM" | grep -q "Watchdog timeout"'
el=$(( $(ms) - t ))
S journal -u "$PM" > "$tmp/j4"
hang_ts=$(sed -n 's/^\[ *\([0-9.]*\)\].*proofmod: hanging .*/\1/p' "$tmp/j4" | head -n1)
wd_ts=$(sed -n 's/^\[ *\([0-9.]*\)\].*Watchdog timeout.*/\1/p' "$tmp/j4" | head -n1)
[ -n "$hang_ts" ] && [ -n "$wd_ts" ] && echo "figure: systemd_watchdog_detect_after_hang $(echo "$wd_ts - $hang_ts" | bc) s (journal timestamps; WatchdogSec=2)"
grep -E 'Watchdog timeout|Failed with result|Killing process' "$tmp/j4" | sed 's/^/#   /'
check "systemd detected the watchdog timeout ($el ms after the hang, limit 2 s)" grep -q 'Watchdog timeout (limit 2s)' "$tmp/j4"
check "the unit failed with result 'watchdog'" grep -q "Failed with result 'watchdog'" "$tmp/j4"
check "Restart=on-failure brought it back (NRestarts=1, a new MainPID, active)" \
        wait_for 10 eval 'test "$(prop "$PM" NRestarts)" = 1 -a "$(prop "$PM" ActiveState)" = active -a "$(prop "$PM" MainPID)" != "$main"'
# Stop while a worker's loop is blocked: the supervisor SIGKILLs it after its
# --stop-timeout=2, well within TimeoutStopSec, and the unit stops cleanly.
reply=$(ask_in 18081 "hang 60")
echo "# 4b. stop with a blocked worker: $reply"
unit_pids=$(procs "$PM")
cg=$(prop "$PM" ControlGroup)
t=$(ms)
R systemctl stop "$PM"
el=$(( $(ms) - t ))
echo "figure: systemd_stop_with_blocked_worker_ms $el"
left=$(R sh -c 'cat "/sys/fs/cgroup$1/cgroup.procs" 2>/dev/null' sh "$cg")
check "stop with a blocked worker took $el ms (>= 2000 = --stop-timeout, < 10000)" test "$el" -ge 2000 -a "$el" -lt 10000
check "log: the blocked worker 'did not stop within 2 s; killing it'" \
        eval 'S journal -u "$PM" | grep -q "did not stop within 2 s; killing it"'
# The sd-daemon "<N>" prefixes reach the journal as priorities.
S journal -u "$PM" -p warning > "$tmp/jw"
check "journal priorities: the kill is at warning or above, 'listening on' (info) is not" \
        eval 'grep -q "did not stop within 2 s; killing it" "$tmp/jw" && ! grep -q "listening on" "$tmp/jw"'
check "cgroup empty ($(echo $unit_pids | wc -w) processes before), Result=$(prop "$PM" Result)" \
        test -z "$left" -a -n "$unit_pids" -a "$(prop "$PM" Result)" = success
R rm -rf "/etc/systemd/system/$PM.d"

# ---- 5. socket activation through the shipped .socket
echo "# 5. socket activation (aiotools-serve@proofmod.socket on 127.0.0.1:18082)"
R sh -c "mkdir -p /etc/systemd/system/aiotools-serve@proofmod.socket.d &&
        printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:18082\n' > /etc/systemd/system/aiotools-serve@proofmod.socket.d/tcp.conf &&
        systemctl daemon-reload"
conf proofmod "module = $MODDIR/proofmod.so" "workers = 2"
R systemctl start aiotools-serve@proofmod.socket
check "socket active, service not started yet ($(prop "$PM" ActiveState))" \
        test "$(prop aiotools-serve@proofmod.socket ActiveState)" = active -a "$(prop "$PM" ActiveState)" = inactive
reply=$(ask_in 18082 name)
echo "# $reply"
check "the first connection is answered by a worker, listener name http" grep -q '^name=http address=127.0.0.1:18082 ' <<<"$reply"
check "the service is active after the connection" test "$(prop "$PM" ActiveState)" = active
R systemctl stop "$PM" aiotools-serve@proofmod.socket
check "stopped cleanly (Result=$(prop "$PM" Result))" test "$(prop "$PM" Result)" = success

# ---- 6. synchronous reload through the control socket
echo "# 6. systemctl reload = aiotools-serve ctl reload ($PM, worker 1's setup 1.5 s)"
R rm -f /run/aiot-fail
conf proofmod "module = $MODDIR/proofmod.so" "workers = 2" "bind = 127.0.0.1:18083" "arg = slow=1:1500" "arg = failif=/run/aiot-fail"
R systemctl start "$PM"
t=$(ms)
R systemctl reload "$PM"
rc=$?
el=$(( $(ms) - t ))
echo "figure: systemd_sync_reload_ms $el (rc $rc)"
check "systemctl reload succeeded (rc $rc)" test "$rc" = 0
check "systemctl reload returned only after the new generation was ready: $el ms >= 1500" test "$el" -ge 1500
check "right after it: StatusText '2 workers, generation 2' ($(prop "$PM" StatusText))" \
        test "$(prop "$PM" StatusText)" = "2 workers, generation 2"
out=$(R /usr/local/bin/aiotools-serve ctl --socket=/run/aiotools-serve-proofmod/control.sock status)
echo "$out" | sed 's/^/#   /'
check "ctl status through the unit's RuntimeDirectory: generation 2, 2 ready workers" \
        test -n "$(grep 'state ready, generation 2' <<<"$out")" -a "$(grep -c '^worker .* ready ' <<<"$out")" = 2
R touch /run/aiot-fail
t=$(ms)
R systemctl reload "$PM" 2>"$tmp/reload.err"
rc=$?
el=$(( $(ms) - t ))
echo "figure: systemd_failed_reload_ms $el (rc $rc)"
S journal -u "$PM" > "$tmp/j6"
grep -E 'reload failed|ctl\[' "$tmp/j6" | tail -n 3 | sed 's/^/#   /'
check "a reload whose new generation fails its setup: systemctl reload fails (rc $rc)" test "$rc" != 0
check "the journal has the reason from ctl" grep -q 'aiotools-serve ctl: reload failed: worker [01] failed during setup' "$tmp/j6"
check "the unit stays active, generation 2 serving ($(prop "$PM" ActiveState))" \
        test "$(prop "$PM" ActiveState)" = active -a -n "$(ask_in 18083 name | grep '^name=')"
R systemctl stop "$PM"
R rm -f /run/aiot-fail
summary
