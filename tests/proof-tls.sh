#!/bin/bash
# SPDX-License-Identifier: MIT
# TLS on the serving layer, against the real aiotools-serve with real clients
# (openssl s_client, curl, python's ssl; `make check`, about 30 s).
# Certificates are made here, in a temporary directory: a CA, leaf
# certificates it signs (localhost, alpha.test, beta.test), a second leaf
# for the reload, an expired one and a key that matches none of them.
#  a. refusals before anything starts: a tls: bind without --tls-cert, a
#     certificate without its key, a key that does not match, a missing file
#     (exit 2, one line naming the file); an expired certificate is served
#     but the log warns;
#  b. s_client: TLS 1.3 and TLS 1.2 handshakes, TLS 1.1 refused; ALPN from
#     the module's list and from --tls-alpn, none when nothing is common;
#     SNI picks the matching certificate, an unknown name the first one;
#  c. a session resumed (s_client -sess_out / -sess_in) on another worker
#     than the one that made it (--reuseport spreads the connections);
#  d. curl --cacert against http-hello over TLS (and its plaintext port
#     beside), several requests on one kept-alive connection;
#  e. a plaintext client on the TLS port is closed cleanly (EOF, no reset),
#     truncated ClientHellos and garbage records (before and after a
#     handshake): the worker lives on (same pid) with no fd left behind;
#     sendfile over TLS delivers a 1 MB file intact;
#  f. reload (SIGHUP) reads the certificate afresh (the new one is served);
#     a reload with a mismatched key is refused with the reason, and the
#     running generation keeps serving its certificate; then three
#     certificate reloads under load: zero failed requests.
# Prints ok/FAIL lines and "N passed, N failed".
# PROOF_VALGRIND=DIR runs every server under valgrind memcheck (children
# traced, logs DIR/vg.PID.log; slow: about 5 minutes), to be read afterwards.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
. "${top_srcdir:-.}/tests/proof-lib.sh"
command -v python3 >/dev/null 2>&1 || missing "python3 is not installed"
command -v openssl >/dev/null 2>&1 || missing "openssl is not installed (Debian: openssl)"
command -v curl >/dev/null 2>&1 || missing "curl is not installed (Debian: curl)"
need_built
TLSMOD="$bld/tests/.libs/tlsmod.so"
CLIENT="$src/tests/tls-client.py"
tmp=$(mktemp -d) || exit 1
trap 'cleanup_procs; rm -rf "$tmp"' EXIT
echo "# loadavg $(cut -d' ' -f1-3 /proc/loadavg)"

if ! grep -q '^#define HAVE_OPENSSL 1' "$bld/config.h"; then
        # Built --with-openssl=no: TLS is refused, with the reason.
        "$SERVE" -b tls:127.0.0.1:0 --tls-cert=/dev/null --tls-key=/dev/null "$TLSMOD" > "$tmp/no.out" 2>&1
        r=$?
        echo "#   $(cat "$tmp/no.out")"
        check "without OpenSSL --tls-cert is refused (exit 2, naming the cause)" \
                eval '[ $r = 2 ] && grep -q "built without OpenSSL" "$tmp/no.out"'
        summary
        exit
fi

# ---- certificates
cd "$tmp" || exit 1
q() { "$@" > /dev/null 2>&1 || { echo "FAIL - $*"; exit 1; }; }
q openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=aiotools-test-ca
# leaf NAME CN SAN DAYS: NAME.pem / NAME.key signed by the CA.
leaf() {
        q openssl req -new -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"
        printf 'subjectAltName=%s\n' "$3" > "$1.ext"
        q openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$4" -extfile "$1.ext" \
                -out "$1.pem"
}
leaf local localhost DNS:localhost,IP:127.0.0.1 2
leaf local2 localhost DNS:localhost,IP:127.0.0.1 2
leaf alpha alpha.test DNS:alpha.test 2
leaf beta beta.test DNS:beta.test,DNS:www.beta.test 2
leaf old localhost DNS:localhost -1
q openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out other.key

WRAP=()
SC_WAIT=0.3 # how long s_client waits for the answer before it closes
if [ -n "${PROOF_VALGRIND:-}" ]; then
        SC_WAIT=3
        WRAP=("$bld/libtool" --mode=execute valgrind --trace-children=yes --leak-check=full
              --errors-for-leak-kinds=definite,indirect --log-file="$PROOF_VALGRIND/vg.%p.log")
fi
# serve LABEL [OPTIONS...] MODULE: starts aiotools-serve; sets $spid $port $out.
serve() {
        local label=$1
        shift
        out="$tmp/$label.out"
        "${WRAP[@]}" "$SERVE" "$@" > "$out" 2>&1 &
        spid=$!
        track "$spid"
        wait_for 60 grep -q "all [0-9]* workers\? ready" "$out" ||
                { echo "FAIL - [$label] server did not start"; cat "$out"; exit 1; }
        port=$(log_port "$out")
}
stop_server() {
        kill -TERM "$spid" 2>/dev/null
        wait_for 40 eval '! alive "$spid"'
        wait "$spid"
        rc=$?
}
# sc PORT ARGS...: one s_client connection (it sends "hello"); output in $tmp/sc.out.
sc() {
        local p=$1
        shift
        (printf 'hello\n'; sleep "$SC_WAIT") | timeout 20 openssl s_client -connect "127.0.0.1:$p" -CAfile ca.pem "$@" \
                > "$tmp/sc.out" 2>&1
}
has() { grep -q -- "$1" "$tmp/sc.out"; }

# ---- a. refusals and warnings at start
refused() { # LABEL PATTERN OPTIONS...: exit 2 and PATTERN in the output
        local label=$1 pat=$2
        shift 2
        "$SERVE" "$@" "$TLSMOD" > "$tmp/ref.out" 2>&1
        local r=$?
        check "refused: $label (exit $r: $(head -c 160 "$tmp/ref.out"))" \
                eval '[ $r = 2 ] && grep -q -- "$pat" "$tmp/ref.out"'
}
refused "tls: bind without --tls-cert" "no --tls-cert" -b tls:127.0.0.1:0
refused "--tls-cert without its key" "give one key per certificate" -b tls:127.0.0.1:0 --tls-cert=local.pem
refused "a key that does not match" "other.key' does not match certificate 'local.pem'" \
        -b tls:127.0.0.1:0 --tls-cert=local.pem --tls-key=other.key
refused "a missing certificate file" "nothere.pem" -b tls:127.0.0.1:0 --tls-cert=nothere.pem --tls-key=local.key
refused "--tls-cert but no bind marked tls:" "no --bind address is marked" -b 127.0.0.1:0 \
        --tls-cert=local.pem --tls-key=local.key
serve expired -w 1 -b tls:127.0.0.1:0 --tls-cert=old.pem --tls-key=old.key "$TLSMOD"
check "an expired certificate is served, and the log warns at start" \
        eval 'grep -q "warning: TLS certificate .old.pem. expired on" "$out" && sc $port && has "tls=1"'
stop_server

# ---- b. versions, ALPN, SNI
serve main -w 2 -b tls:127.0.0.1:0 --tls-cert=alpha.pem --tls-key=alpha.key \
        --tls-cert=beta.pem --tls-key=beta.key --tls-cert=local.pem --tls-key=local.key "$TLSMOD"
sc "$port" -tls1_3 -servername localhost
check "TLS 1.3 handshake, verified, and the handler sees tls=1" \
        eval 'has "New, TLSv1.3" && has "Verify return code: 0 (ok)" && has "tls=1 alpn=- len=5"'
sed -n '/^New, TLS/p;/Protocol *:/p;/^Verify return/p;/^pid=/p' "$tmp/sc.out" | sed 's/^/#   /'
sc "$port" -tls1_2 -servername localhost
check "TLS 1.2 handshake" eval 'has "New, TLSv1.2" && has "Protocol  : TLSv1.2" && has "tls=1"'
sc "$port" -tls1_1 -servername localhost
check "TLS 1.1 is refused (protocol version alert)" eval 'has "alert protocol version" && ! has "tls=1"'
sc "$port" -alpn http/1.1 -servername localhost
check "ALPN from the module's list (tlsmod,http/1.1): the client's http/1.1" \
        eval 'has "ALPN protocol: http/1.1" && has "alpn=http/1.1"'
sc "$port" -alpn foo,tlsmod -servername localhost
check "ALPN: the server's preference among the common ones (tlsmod)" eval 'has "ALPN protocol: tlsmod"'
sc "$port" -alpn h2 -servername localhost
check "ALPN: nothing in common goes on without ALPN" eval 'has "No ALPN negotiated" && has "alpn=-"'
sc "$port" -servername beta.test
check "SNI beta.test gets beta's certificate (verified)" \
        eval 'has "subject=CN = beta.test" && has "Verify return code: 0"'
sc "$port" -servername www.beta.test
check "SNI www.beta.test (a subjectAltName) gets beta's certificate" eval 'has "subject=CN = beta.test"'
sc "$port" -servername localhost
check "SNI localhost gets the third certificate" eval 'has "subject=CN = localhost"'
sc "$port" -servername nobody.test
check "an unknown SNI name gets the first certificate (alpha)" eval 'has "subject=CN = alpha.test"'
sc "$port" -noservername
check "no SNI at all gets the first certificate too" eval 'has "subject=CN = alpha.test" && has "tls=1"'
stop_server

# ---- c. resumption on another worker
serve resume -w 2 --reuseport -b tls:127.0.0.1:0 --tls-cert=local.pem --tls-key=local.key "$TLSMOD"
sc "$port" -servername localhost -sess_out sess.pem
first=$(sed -n 's/^pid=\([0-9]*\).*/\1/p' "$tmp/sc.out")
resumed_elsewhere=no
for i in $(seq 1 30); do
        sc "$port" -servername localhost -sess_in sess.pem
        pid=$(sed -n 's/^pid=\([0-9]*\).*/\1/p' "$tmp/sc.out")
        if [ -n "$pid" ] && [ "$pid" != "$first" ]; then
                has "^Reused, TLSv1.3" && resumed_elsewhere=yes
                echo "#   made on worker pid $first, attempt $i on pid $pid: $(grep -E '^(New|Reused),' "$tmp/sc.out")"
                break
        fi
done
check "a TLS 1.3 session made on one worker resumes on another" eval '[ $resumed_elsewhere = yes ]'
sc "$port" -servername localhost -tls1_2 -sess_out sess12.pem
first=$(sed -n 's/^pid=\([0-9]*\).*/\1/p' "$tmp/sc.out")
resumed_elsewhere=no
for i in $(seq 1 30); do
        sc "$port" -servername localhost -tls1_2 -sess_in sess12.pem
        pid=$(sed -n 's/^pid=\([0-9]*\).*/\1/p' "$tmp/sc.out")
        if [ -n "$pid" ] && [ "$pid" != "$first" ]; then
                has "^Reused, TLSv1.2" && resumed_elsewhere=yes
                break
        fi
done
check "a TLS 1.2 session (ticket) resumes on another worker" eval '[ $resumed_elsewhere = yes ]'
stop_server

# ---- d. curl against http-hello
serve hello -w 2 -b tls:127.0.0.1:0 -b 127.0.0.1:0 --tls-cert=local.pem --tls-key=local.key "$HELLO"
tport=$port
pport=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$out" | sed -n 2p)
curl -sS -v --cacert ca.pem "https://localhost:$tport/" "https://localhost:$tport/a" "https://localhost:$tport/b" \
        > "$tmp/curl.out" 2> "$tmp/curl.err"
check "curl --cacert: three answers over one verified TLS connection, ALPN http/1.1" \
        eval '[ "$(grep -c hello "$tmp/curl.out")" = 3 ] && grep -q "Re-using existing connection" "$tmp/curl.err" &&
              grep -q "ALPN: server accepted http/1.1\|ALPN, server accepted to use http/1.1" "$tmp/curl.err" &&
              grep -q "SSL certificate verify ok" "$tmp/curl.err"'
check "the plaintext port beside it still answers in plaintext" \
        eval '[ "$(curl -sS "http://127.0.0.1:$pport/")" = hello ]'
stop_server

# ---- e. plaintext, truncated handshakes, garbage
serve bad -w 1 -b tls:127.0.0.1:0 --tls-cert=local.pem --tls-key=local.key "$TLSMOD"
sc "$port" -servername localhost
wpid=$(sed -n 's/^pid=\([0-9]*\).*/\1/p' "$tmp/sc.out")
fds_before=$(ls /proc/"$wpid"/fd | wc -l)
check "a plaintext HTTP request on the TLS port is closed cleanly (EOF, not reset)" \
        eval '[ "$(python3 "$CLIENT" plain "$port")" = eof ]'
python3 "$CLIENT" truncated "$port" 100 > "$tmp/trunc.txt" 2>&1
python3 "$CLIENT" garbage "$port" 50 > "$tmp/garbage.txt" 2>&1
echo "#   $(cat "$tmp/garbage.txt")"
check "100 truncated ClientHellos, 100 garbage connections: no reset, no timeout" \
        eval 'grep -q "done 100" "$tmp/trunc.txt" && grep -q "^done 100" "$tmp/garbage.txt" &&
              ! grep -q "reset\|timeout\|Error" "$tmp/garbage.txt" && ! grep -q "Error" "$tmp/trunc.txt"'
sc "$port" -servername localhost
check "the worker lives on: same pid answers after all that" eval 'has "pid=$wpid "'
wait_for 10 eval '[ "$(ls /proc/$wpid/fd | wc -l)" -le "$fds_before" ]'
check "no fd left behind in the worker ($fds_before before, $(ls /proc/"$wpid"/fd | wc -l) after)" \
        eval '[ "$(ls /proc/$wpid/fd | wc -l)" -le "$fds_before" ]'
(printf 'big 1048576\n'; sleep 2) | timeout 10 openssl s_client -quiet -connect "127.0.0.1:$port" -CAfile ca.pem \
        -servername localhost 2>/dev/null | head -c 2000000 > "$tmp/big.out"
check "aiot_conn_sendfile over TLS: 1 MB arrives intact" \
        eval '[ "$(tr -d x < "$tmp/big.out")" = "" ] && [ "$(wc -c < "$tmp/big.out")" = 1048577 ]'
stop_server
check "it stops cleanly (exit 0)" eval '[ $rc = 0 ]'

# ---- f. reloads
cp local.pem cur.pem
cp local.key cur.key
serve reload -w 2 -b tls:127.0.0.1:0 --tls-cert=cur.pem --tls-key=cur.key "$TLSMOD"
serial() { openssl x509 -in "$1" -noout -serial; }
served_serial() {
        echo | timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername localhost 2>/dev/null |
                openssl x509 -noout -serial
}
check "the first certificate is served" eval '[ "$(served_serial)" = "$(serial local.pem)" ]'
cp local2.pem cur.pem
cp local2.key cur.key
kill -HUP "$spid"
wait_for 20 grep -q "reload: generation 2 ready" "$out"
check "SIGHUP reads the certificate afresh: generation 2 serves the new one" \
        eval '[ "$(served_serial)" = "$(serial local2.pem)" ]'
cp other.key cur.key
kill -HUP "$spid"
wait_for 20 grep -q "reload failed" "$out"
sleep 0.5
grep -i "reload" "$out" | tail -n 2 | sed 's/^/#   /'
check "a reload with a mismatched key is refused, saying why" \
        eval 'grep -q "cur.key. does not match certificate .cur.pem." "$out"'
check "... and the running generation keeps its certificate" \
        eval '[ "$(served_serial)" = "$(serial local2.pem)" ] && ! grep -q "generation 3 ready" "$out"'
cp local2.key cur.key
python3 "$CLIENT" load "$port" ca.pem 8 4 > "$tmp/load.txt" 2>&1 &
lpid=$!
track "$lpid"
readies() { grep -c "reload: generation [0-9]* ready" "$out"; }
reloaded=0
for g in 1 2 3; do
        sleep 1.5
        if [ $((g % 2)) = 1 ]; then cp local.pem cur.pem; cp local.key cur.key; else cp local2.pem cur.pem; cp local2.key cur.key; fi
        n=$(readies)
        kill -HUP "$spid"
        wait_for 20 eval '[ "$(readies)" -gt "$n" ]' && reloaded=$((reloaded + 1))
done
wait "$lpid"
echo "#   $(head -n 1 "$tmp/load.txt")"
check "three certificate reloads ($reloaded done) under load: zero failed requests" \
        eval '[ $reloaded = 3 ] && grep -q "failures=0" "$tmp/load.txt" && ! grep -q "requests=0 " "$tmp/load.txt"'
grep '^failure' "$tmp/load.txt" | sed 's/^/#   /'
check "after them the last certificate is served" eval '[ "$(served_serial)" = "$(serial local.pem)" ]'
stop_server
check "it stops cleanly (exit 0)" eval '[ $rc = 0 ]'
# In a sanitizer build (configure --enable-sanitizers) any report lands in a log.
check "no sanitizer or valgrind report in any server log" \
        eval '! grep -l "AddressSanitizer\|LeakSanitizer\|runtime error:\|ERROR SUMMARY: [1-9]" "$tmp"/*.out'
summary
