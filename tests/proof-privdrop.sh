#!/bin/bash
# Privileges and files of the real aiotools-serve, verified from /proc:
#  - started as root with --user nobody --group nogroup and a privileged port:
#    the supervisor stays root, every worker (first generation, after a
#    SIGHUP reload, after a SIGKILL respawn, after SIGTTIN) runs with
#    Uid/Gid 65534 (real, effective, saved, fs), Groups exactly nobody's
#    (root's group 0 gone) and no capabilities, yet serves the socket that
#    root bound;
#  - an unknown user is a clear error (exit 2), never a root worker;
#  - as root, a module file or directory that others can write is refused
#    (exit 2), the same file with safe permissions is accepted;
#  - --pidfile: written with the supervisor's pid, a second instance with the
#    same pidfile refuses to start (exit 2), removed at exit.
# Needs root (skips otherwise unless CI=true).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
. "${top_srcdir:-.}/tests/proof-lib.sh"
[ "$(id -u)" = 0 ] || missing "proof-privdrop.sh needs root"
command -v python3 >/dev/null 2>&1 || missing "python3 is not installed"
getent passwd nobody >/dev/null && getent group nogroup >/dev/null || missing "no user nobody / group nogroup"
need_built
tmp=$(mktemp -d) || exit 1
chmod 755 "$tmp"
trap 'cleanup_procs; rm -rf "$tmp"' EXIT
NUID=$(id -u nobody)
NGID=$(getent group nogroup | cut -d: -f3)
NGROUPS=$(id -G nobody | tr ' ' '\n' | sort -n | tr '\n' ' ' | sed 's/ $//')

field() { sed -n "s/^$2:\s*//p" /proc/"$1"/status 2>/dev/null | tr -s ' \t' ' ' | sed 's/ $//'; }
groups_of() { field "$1" Groups | tr ' ' '\n' | grep . | sort -n | tr '\n' ' ' | sed 's/ $//'; }
unprivileged() { # pid: all four uids/gids nobody's, groups nobody's, no capabilities
        [ "$(field "$1" Uid)" = "$NUID $NUID $NUID $NUID" ] &&
                [ "$(field "$1" Gid)" = "$NGID $NGID $NGID $NGID" ] &&
                [ "$(groups_of "$1")" = "$NGROUPS" ] &&
                [ "$(field "$1" CapEff)" = 0000000000000000 ] &&
                [ "$(field "$1" CapPrm)" = 0000000000000000 ]
}
all_unprivileged() { # label, supervisor pid, expected worker count
        local w n=0 bad=
        for w in $(live_children "$2"); do
                n=$((n + 1))
                unprivileged "$w" || bad="$bad $w(Uid $(field "$w" Uid); Gid $(field "$w" Gid); Groups $(groups_of "$w"); CapEff $(field "$w" CapEff))"
        done
        check "$1: $n workers, all uid/gid $NUID/$NGID, groups '$NGROUPS', no capabilities${bad:+ -- not:$bad}" \
                test "$n" = "$3" -a -z "$bad"
}
# A free privileged port, so that serving it proves root bound it before the drop.
low_port() {
        python3 -c '
import socket
for p in range(870, 1000):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()'
}

port=$(low_port)
out="$tmp/serve.out"
"$SERVE" -w 2 -b "127.0.0.1:$port" --user nobody --group nogroup --pidfile "$tmp/serve.pid" \
        "$PROOFMOD" > "$out" 2>&1 &
spid=$!
track "$spid"
check "started with --user nobody --group nogroup on privileged port $port" \
        wait_for 10 grep -q 'all 2 workers ready' "$out"
check "supervisor $spid stays root (Uid $(field "$spid" Uid))" test "$(field "$spid" Uid)" = "0 0 0 0"
all_unprivileged "first generation" "$spid" 2
check "an unprivileged worker serves the port root bound" eval 'ask "$port" name | grep -q "^name="'
check "pidfile holds the supervisor's pid" test "$(cat "$tmp/serve.pid" 2>/dev/null)" = "$spid"
"$SERVE" -w 1 -b 127.0.0.1:0 --pidfile "$tmp/serve.pid" "$PROOFMOD" > "$tmp/second.out" 2>&1 &
p2=$!
track "$p2"
wait_for 10 eval '! alive "$p2"'
wait "$p2"
rc=$?
check "a second instance with the same pidfile refuses to start: exit 2 (got $rc: $(tail -n1 "$tmp/second.out"))" \
        test "$rc" = 2
check "... and leaves the pidfile alone" test "$(cat "$tmp/serve.pid" 2>/dev/null)" = "$spid"

kill -HUP "$spid"
wait_for 10 grep -q 'reload: generation 2 ready' "$out"
sleep 0.5
all_unprivileged "after a SIGHUP reload" "$spid" 2
w=$(live_children "$spid" | head -n1)
kill -KILL "$w"
wait_for 10 grep -q "(pid $w) was killed by SIGKILL; respawning" "$out"
wait_for 10 eval 'test "$(live_children "$spid" | wc -l)" = 2 && grep -q "is ready again" "$out"'
all_unprivileged "after a SIGKILL respawn" "$spid" 2
kill -TTIN "$spid"
wait_for 10 eval 'test "$(live_children "$spid" | wc -l)" = 3'
sleep 0.3
all_unprivileged "after SIGTTIN" "$spid" 3
kill -TERM "$spid"
wait_for 35 eval '! alive "$spid"'
wait "$spid"
rc=$?
check "clean stop: exit 0 (got $rc)" test "$rc" = 0
check "pidfile removed at exit" test ! -e "$tmp/serve.pid"

# An unknown user: a clear error, nothing started.
timeout 20 "$SERVE" -w 1 -b 127.0.0.1:0 --user no-such-user-aiot "$PROOFMOD" > "$tmp/nouser.out" 2>&1
rc=$?
check "unknown user: exit 2 (got $rc) with 'unknown user' ($(tail -n1 "$tmp/nouser.out"))" \
        eval 'test "$rc" = 2 && grep -q "unknown user" "$tmp/nouser.out"'

# Module files others can write are refused when running as root.
mkdir -p "$tmp/safe" "$tmp/opendir"
cp "$PROOFMOD" "$tmp/safe/ok.so"
cp "$PROOFMOD" "$tmp/safe/ww.so"
cp "$PROOFMOD" "$tmp/opendir/m.so"
chmod 755 "$tmp/safe"
chmod 644 "$tmp/safe/ok.so" "$tmp/opendir/m.so"
chmod 666 "$tmp/safe/ww.so"
chmod 777 "$tmp/opendir"
# (the accepted one only with --check; a refused one exits at once, an accepted
# one would run until timeout's SIGTERM: 124)
for m in "--check $tmp/safe/ok.so" "$tmp/safe/ww.so" "$tmp/opendir/m.so"; do
        timeout 5 "$SERVE" -w 1 -b 127.0.0.1:0 $m > "$tmp/m.out" 2>&1
        echo "$? $(tail -n1 "$tmp/m.out")"
done > "$tmp/mods"
check "module 0644 in a 0755 directory is accepted: $(sed -n 1p "$tmp/mods")" test "$(sed -n 1p "$tmp/mods" | cut -d' ' -f1)" = 0
check "world-writable module file refused: $(sed -n 2p "$tmp/mods")" test "$(sed -n 2p "$tmp/mods" | cut -d' ' -f1)" = 2
check "module in a world-writable directory refused: $(sed -n 3p "$tmp/mods")" test "$(sed -n 3p "$tmp/mods" | cut -d' ' -f1)" = 2
summary
