#!/bin/bash
# SPDX-License-Identifier: MIT
# The installed aiotools-serve packages under real systemd 252 (booted as PID 1
# of a sandbox whose root is an overlay of this machine's, so it sees exactly
# the files dpkg installed; what the checks write stays in the sandbox):
# contrib/ci-packages.sh runs it after dpkg -i.  An instance NAME runs
# aiotools-serve -c /etc/aiotools-serve/NAME.conf.
#  1. aiotools-serve@echo as the examples package ships it: `systemctl enable
#     --now` with nothing written first: enabled, active, /usr/bin/aiotools-serve
#     on /etc/aiotools-serve/echo.conf, a client's line comes back from
#     127.0.0.1:7007, `aiotools-serve ctl status` (the unit's RuntimeDirectory)
#     shows its 2 workers;
#  2. `systemctl reload` after an edit of echo.conf (workers = 3): the same
#     MainPID, generation 2 with 3 workers;
#  3. the instance names a config, not a module: /etc/aiotools-serve/api.conf
#     runs http-hello.so on 127.0.0.1:18081 as aiotools-serve@api;
#  4. an instance without a config file fails at once with the file's name in
#     the journal, and is not restarted (exit status 2);
#  5. aiotools-serve@http-hello.socket: `systemctl enable --now` of the socket
#     only; the first connection to /run/aiotools-serve/http-hello.sock starts
#     the service, which answers HTTP 200;
#  6. `systemctl disable --now` of all: inactive, Result=success.
# AIOTOOLS_SBX is the sandbox script, AIOTOOLS_SBX_NAME the sandbox's name.
set -u
SBX=${AIOTOOLS_SBX:?}
NAME=${AIOTOOLS_SBX_NAME:-aiot-pkg}
S() { "$SBX" -n "$NAME" "$@"; }
R() { S run "$@"; }
pass=0
fail=0
tmp=$(mktemp -d)
trap 'S stop --journal "$tmp/journal" >/dev/null 2>&1; [ "$fail" = 0 ] || { echo "# journal tail:"; tail -n 40 "$tmp/journal" | sed "s/^/#   /"; }; rm -rf "$tmp"' EXIT

check() { # check LABEL COMMAND...: one result line.
        local label=$1
        shift
        if "$@"; then
                echo "ok: $label"
                pass=$((pass + 1))
        else
                echo "FAIL: $label"
                fail=$((fail + 1))
        fi
}
is() { [ "$(R systemctl show -P "$2" "$1")" = "$3" ]; }
# ask ADDR DATA: the first line that ADDR (a port on 127.0.0.1 or a unix socket)
# answers to DATA (\n and \r in DATA are a newline and a carriage return).
ask() {
        R python3 -c '
import socket, sys
addr = sys.argv[1]
if addr.startswith("/"):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(addr)
else:
    s = socket.create_connection(("127.0.0.1", int(addr)), timeout=20)
s.sendall(sys.argv[2].encode().replace(b"\\n", b"\n").replace(b"\\r", b"\r"))
out = b""
while b"\n" not in out:
    d = s.recv(4096)
    if not d:
        break
    out += d
print(out.split(b"\n", 1)[0].decode().rstrip("\r"))' "$@"
}
status() { R aiotools-serve ctl --socket="/run/aiotools-serve-$1/control.sock" status; }
ready_workers() { status "$1" | grep -c '^worker .* ready '; }

S start >"$tmp/start.out" 2>&1 || { echo "FAIL: the sandbox did not boot:"; cat "$tmp/start.out"; exit 1; }
E=aiotools-serve@echo.service

# 1. the packaged echo instance, as installed
check "/etc/aiotools-serve/echo.conf is installed and names the packaged echo.so" \
        R sh -c 'm=$(sed -n "s/^module = //p" /etc/aiotools-serve/echo.conf) && test -f "$m" && aiotools-serve --check -c /etc/aiotools-serve/echo.conf >/dev/null'
check "systemctl enable --now aiotools-serve@echo" R systemctl enable --now --quiet "$E"
check "aiotools-serve@echo is enabled" is "$E" UnitFileState enabled
check "aiotools-serve@echo is active" is "$E" ActiveState active
runs_packaged() { R systemctl show -P ExecStart "$E" | grep -q 'path=/usr/bin/aiotools-serve ; argv\[\]=/usr/bin/aiotools-serve --config=/etc/aiotools-serve/echo.conf '; }
check "aiotools-serve@echo runs /usr/bin/aiotools-serve --config=/etc/aiotools-serve/echo.conf" runs_packaged
check "a client on 127.0.0.1:7007 gets its line back from echo" \
        eval '[ "$(ask 7007 "from the package\\n")" = "from the package" ]'
check "ctl status through /run/aiotools-serve-echo/control.sock: 2 ready workers" \
        eval '[ "$(ready_workers echo)" = 2 ]'

# 2. systemctl reload re-reads the file
main=$(R systemctl show -P MainPID "$E")
R sed -i 's/^workers = .*/workers = 3/' /etc/aiotools-serve/echo.conf
check "systemctl reload aiotools-serve@echo after workers = 3 in echo.conf" R systemctl reload "$E"
check "the same MainPID ($main), generation 2 with 3 ready workers" \
        eval '[ "$(R systemctl show -P MainPID "$E")" = "$main" ] && status echo | grep -q "generation 2" && [ "$(ready_workers echo)" = 3 ]'
check "echo still answers after the reload" eval '[ "$(ask 7007 "again\\n")" = again ]'

# 3. an instance named after its config, running another module
R sh -c 'printf "%s\n" "module = $(sed -n "s/^module = //p" /etc/aiotools-serve/http-hello.conf)" "workers = 1" "bind = 127.0.0.1:18081" > /etc/aiotools-serve/api.conf'
check "systemctl enable --now aiotools-serve@api (api.conf runs http-hello.so)" R systemctl enable --now --quiet aiotools-serve@api.service
check "aiotools-serve@api answers HTTP 200 on 127.0.0.1:18081" \
        eval 'ask 18081 "GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n" | grep -q "^HTTP/1.1 200"'

# 4. no config, no server
R systemctl start aiotools-serve@nothere.service 2>/dev/null
check "aiotools-serve@nothere (no nothere.conf) failed" is aiotools-serve@nothere.service ActiveState failed
check "its journal names the missing /etc/aiotools-serve/nothere.conf" \
        eval 'S journal -u aiotools-serve@nothere.service | grep -q "cannot read config file .*/etc/aiotools-serve/nothere.conf"'
sleep 1.5
check "it was not restarted (exit status 2: RestartPreventExitStatus)" is aiotools-serve@nothere.service NRestarts 0

# 5. socket activation from the packaged .socket
H=aiotools-serve@http-hello.service
check "systemctl enable --now aiotools-serve@http-hello.socket" R systemctl enable --now --quiet aiotools-serve@http-hello.socket
check "the service waits for the first connection" is "$H" ActiveState inactive
check "the first connection to /run/aiotools-serve/http-hello.sock gets HTTP 200" \
        eval 'ask /run/aiotools-serve/http-hello.sock "GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n" | grep -q "^HTTP/1.1 200"'
check "aiotools-serve@http-hello.service was started by its socket" is "$H" ActiveState active

# 6. stop
check "systemctl disable --now of all" R systemctl disable --now --quiet "$E" aiotools-serve@api.service aiotools-serve@http-hello.socket "$H"
for u in "$E" aiotools-serve@api.service "$H"; do
        check "$u stopped cleanly" is "$u" Result success
done
none_active() { ! R systemctl is-active --quiet "$E" aiotools-serve@api.service "$H"; }
check "nothing of aiotools-serve is left active" none_active
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
