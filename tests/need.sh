# SPDX-License-Identifier: MIT
# Sourced by the shell tests: what a test does when something it needs is absent.
#   missing WHAT [PACKAGE]  skips the test (exit 77) with a message naming WHAT and
#                           the Debian package to install; under CI=true, where
#                           the CI script installs everything, fails (exit 1).
#   need COMMAND PACKAGE    missing COMMAND PACKAGE unless COMMAND is on PATH.
missing() {
        how=${2:+ (Debian: apt-get install $2)}
        if [ "${CI:-}" = true ]; then
                echo "FAIL: $1 is missing$how; CI=true requires it"
                exit 1
        fi
        echo "SKIP: $1 is missing$how"
        exit 77
}

need() {
        command -v "$1" >/dev/null 2>&1 || missing "$1" "$2"
}
