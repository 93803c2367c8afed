#!/usr/bin/env bash
# Run the test suite: ./scripts/test.sh [pytest args]. Multi-host tests need root
# (sudo ./scripts/test.sh); without it they are skipped, and with CI set they fail.
# The lint (ruff check ., mypy homie; config in pyproject.toml) runs first and
# fails the run on any finding: always in CI or without arguments, and with
# arguments only when HOMIE_LINT=1, so one test file reruns quickly.
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

in_ci() { local ci="${CI:-}"; case "${ci,,}" in ""|0|false|no) return 1 ;; esac; }  # as tests/conftest.py
if [ $# -eq 0 ] || in_ci || [ "${HOMIE_LINT:-}" = 1 ]; then
    echo "scripts/test.sh: ruff check . && mypy homie" >&2
    .venv/bin/ruff check --quiet . || { echo "scripts/test.sh: ruff found problems (above)" >&2; exit 1; }
    .venv/bin/mypy homie || { echo "scripts/test.sh: mypy found problems (above)" >&2; exit 1; }
fi

rc=0
export HOMIE_TEST_COMMAND="./scripts/test.sh${*:+ $*}"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests; treating that as a failure" >&2
    rc=1
fi
exit "$rc"
