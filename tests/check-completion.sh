#!/bin/bash
# contrib/bash-completion/aiotools-serve, driven the way bash drives it (the
# COMP_* variables, then the completion function), against the build's
# aiotools-serve: every long option of its --help completes from "--" (so an
# option added to daemon/cli.c completes with no edit of the script); an
# option's argument completes by its placeholder (--log-level, a --pidfile
# path); the MODULE word completes *.so files; past "--" the words are plain
# files; -c/--config completes a file name; `aiotools-serve ctl` completes its
# options and every command of its --help (each one a command ctl accepts),
# and log-level's LEVEL.  Needs bash-completion (Debian: bash-completion).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -u
src="${top_srcdir:-.}"
bld=$(cd "${top_builddir:-.}" && pwd)
. "$src/tests/need.sh"
[ -f /usr/share/bash-completion/bash_completion ] || missing "bash-completion" bash-completion
[ -x "$bld/daemon/aiotools-serve" ] || { echo "FAIL: $bld/daemon/aiotools-serve not built"; exit 1; }
. /usr/share/bash-completion/bash_completion
. "$src/contrib/bash-completion/aiotools-serve"
# compopt only works inside a real completion; the test reads COMPREPLY only.
compopt() { :; }
PATH="$bld/daemon:$PATH"
fail=0
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

# offers LINE: the words offered for LINE (the cursor at its end), sorted, one line.
offers() {
        local line=$1
        COMP_LINE=$line
        COMP_POINT=${#line}
        read -ra COMP_WORDS <<<"$line"
        [[ $line == *' ' ]] && COMP_WORDS+=("")
        COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
        COMPREPLY=()
        _aiotools_serve aiotools-serve "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ' | sed 's/ $//'
}
expect() { # expect LINE WANTED: the offers for LINE are exactly WANTED (sorted words)
        local got
        got=$(offers "$1")
        if [ "$got" = "$2" ]; then
                echo "ok: '$1' -> $got"
        else
                echo "FAIL: '$1' offers '$got', not '$2'"
                fail=1
        fi
}

# Every long option of --help, with "=" when it takes an argument.
want=$(aiotools-serve --help | grep -E '^ +-' | sed -E 's/^ +//; s/  .*//' | grep -oE -- '--[a-z][a-z-]*(=)?' | sort -u | tr '\n' ' ' | sed 's/ $//')
[ -n "$want" ] || { echo "FAIL: no long option found in aiotools-serve --help"; exit 1; }
got=$(offers 'aiotools-serve --' | tr ' ' '\n' | sort -u | tr '\n' ' ' | sed 's/ $//')
if [ "$got" = "$want" ]; then
        echo "ok: 'aiotools-serve --' offers all $(echo "$want" | wc -w) long options of --help"
else
        echo "FAIL: 'aiotools-serve --' offers '$got', --help has '$want'"
        fail=1
fi
# What the parser read from --help: "OPTION PLACEHOLDER" lines and nothing else
# (a description or a continuation line read as an option would show here).
bad=$(_aiotools_serve_opts aiotools-serve | awk 'NF != 2 || $1 !~ /^-/ || $2 ~ /[a-z]/')
if [ -z "$bad" ]; then
        echo "ok: every option line of --help parsed as OPTION PLACEHOLDER"
else
        echo "FAIL: --help misparsed into: $bad"
        fail=1
fi
expect 'aiotools-serve --log-level ' 'debug err info notice warning'
expect 'aiotools-serve --log-level=w' 'warning'
mkdir -p "$tmp/mods/sub"
: >"$tmp/mods/echo.so"
: >"$tmp/mods/notes.txt"
cd "$tmp/mods" || exit 1
expect 'aiotools-serve -w 2 ' 'echo.so sub'
expect 'aiotools-serve --pidfile n' 'notes.txt'
expect 'aiotools-serve echo.so -- n' 'notes.txt'
# -c/--config FILE: any file name.
expect 'aiotools-serve -c n' 'notes.txt'
expect 'aiotools-serve --config=n' 'notes.txt'
# The subcommand is offered as the first word only (main() looks there).
expect 'aiotools-serve ' 'ctl echo.so sub'
expect 'aiotools-serve ctl --' '--json --socket='
expect 'aiotools-serve ctl --socket n' 'notes.txt'
expect 'aiotools-serve ctl --socket=n' 'notes.txt'
# Every command of `ctl --help`'s "Commands:" list (read here with sed, not
# the completion's awk), and each one a command ctl knows: against no server
# it exits 3 (no server), where an unknown command exits 2.
want=$(aiotools-serve ctl --help | tr '\n' ' ' | sed -E 's/.*Commands: *//; s/\.( .*)?$//' | tr ',' '\n' | awk '{ print $1 }' | sort | tr '\n' ' ' | sed 's/ $//')
[ "$(echo "$want" | wc -w)" -ge 5 ] || { echo "FAIL: no command list read from aiotools-serve ctl --help ('$want')"; fail=1; }
expect 'aiotools-serve ctl ' "$want"
expect 'aiotools-serve ctl --json ' "$want"
expect 'aiotools-serve ctl --socket /x ' "$want"
# A command with an argument (its placeholder in the list) gets one: a valid
# one for LEVEL, 1 for N and INDEX.
_aiotools_serve_commands aiotools-serve ctl >"$tmp/cmds"
for c in $(offers 'aiotools-serve ctl '); do
        case $(awk -v c="$c" '$1 == c { print $2 }' "$tmp/cmds") in
        -) set -- "$c" ;;
        LEVEL) set -- "$c" info ;;
        *) set -- "$c" 1 ;;
        esac
        rc=0
        aiotools-serve ctl --socket="$tmp/none.sock" "$@" >/dev/null 2>&1 || rc=$?
        if [ "$rc" = 3 ]; then
                echo "ok: 'ctl $*' is a command ctl knows (exit 3: no server)"
        else
                echo "FAIL: 'ctl $*' (offered) exits $rc against no server, not 3"
                fail=1
        fi
done
expect 'aiotools-serve ctl sc' 'scale'
expect 'aiotools-serve ctl log-level ' 'debug err info notice warning'
expect 'aiotools-serve ctl log-level w' 'warning'
expect 'aiotools-serve ctl status ' ''
expect 'aiotools-serve ctl log-level info ' ''
[ "$fail" = 0 ] && echo "PASS: the bash completion follows aiotools-serve --help"
exit $fail
