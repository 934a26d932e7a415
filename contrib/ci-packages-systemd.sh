#!/bin/bash
# SPDX-License-Identifier: MIT
# The installed aiotools-serve package under real systemd 252 (booted as PID 1
# of a sandbox whose root is an overlay of this machine's, so it sees exactly
# the files dpkg installed): contrib/ci-packages.sh runs it after dpkg -i.
#  1. aiotools-serve@echo: `systemctl enable --now` with its options in
#     /etc/default/aiotools-serve-echo (2 workers on 127.0.0.1:18080): enabled,
#     active, MainPID set, a client's line comes back;
#  2. aiotools-serve@http-hello.socket: `systemctl enable --now` of the socket
#     only; the first connection to /run/aiotools-serve/http-hello.sock starts
#     the service, which answers HTTP 200;
#  3. `systemctl disable --now` of both: inactive, Result=success.
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

S start >"$tmp/start.out" 2>&1 || { echo "FAIL: the sandbox did not boot:"; cat "$tmp/start.out"; exit 1; }

# 1. an instance enabled by name, its options in /etc/default
R sh -c 'echo "AIOTOOLS_SERVE_ARGS=\"--workers=2 --bind=127.0.0.1:18080\"" > /etc/default/aiotools-serve-echo'
check "systemctl enable --now aiotools-serve@echo" R systemctl enable --now --quiet aiotools-serve@echo.service
check "aiotools-serve@echo is enabled" is aiotools-serve@echo.service UnitFileState enabled
check "aiotools-serve@echo is active" is aiotools-serve@echo.service ActiveState active
runs_packaged_binary() { R systemctl show -P ExecStart aiotools-serve@echo.service | grep -q 'path=/usr/bin/aiotools-serve '; }
check "aiotools-serve@echo runs /usr/bin/aiotools-serve" runs_packaged_binary
echo_once() {
        [ "$(R python3 -c '
import socket
s = socket.create_connection(("127.0.0.1", 18080), timeout=10)
s.sendall(b"from the package\n")
out = b""
while not out.endswith(b"\n"):
    d = s.recv(4096)
    if not d:
        break
    out += d
print(out.decode(), end="")')" = "from the package" ]
}
check "a client on 127.0.0.1:18080 gets its line back from echo" echo_once

# 2. socket activation from the packaged .socket
check "systemctl enable --now aiotools-serve@http-hello.socket" R systemctl enable --now --quiet aiotools-serve@http-hello.socket
check "the service waits for the first connection" is aiotools-serve@http-hello.service ActiveState inactive
http_once() {
        R python3 -c '
import socket
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect("/run/aiotools-serve/http-hello.sock")
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
out = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    out += d
print(out.split(b"\r\n", 1)[0].decode())' | grep -q '^HTTP/1.1 200'
}
check "the first connection to /run/aiotools-serve/http-hello.sock gets HTTP 200" http_once
check "aiotools-serve@http-hello.service was started by its socket" is aiotools-serve@http-hello.service ActiveState active

# 3. stop
check "systemctl disable --now of both" R systemctl disable --now --quiet aiotools-serve@echo.service aiotools-serve@http-hello.socket aiotools-serve@http-hello.service
check "aiotools-serve@echo stopped cleanly" is aiotools-serve@echo.service Result success
check "aiotools-serve@http-hello stopped cleanly" is aiotools-serve@http-hello.service Result success
none_active() { ! R systemctl is-active --quiet aiotools-serve@echo.service aiotools-serve@http-hello.service; }
check "nothing of aiotools-serve is left active" none_active
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
