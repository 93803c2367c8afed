#!/usr/bin/env bash
# Run the test suite: ./scripts/test.sh [pytest args]. Multi-host tests need root
# (sudo ./scripts/test.sh); without it they are skipped, and with CI set they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    py=""
    for c in ${PYTHON:-} python3 python3.13 python3.12 python3.11 python3.10; do
        if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
            py="$c"; break
        fi
    done
    [ -n "$py" ] || { echo "scripts/test.sh: need python >= 3.10" >&2; exit 1; }
    "$py" -m venv .venv
fi
.venv/bin/pip install -q -e '.[test]'

rc=0
export HOMIE_TEST_COMMAND="./scripts/test.sh${*:+ $*}"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests; treating that as a failure" >&2
    rc=1
fi
exit "$rc"
