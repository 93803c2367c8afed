#!/usr/bin/env bash
# The README's demo: set up, start a daemon, run a job end to end, show the results, stop.
# Runs on one machine; the daemon is confined to loopback so the demo sends nothing onto your network.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ ! -x .venv/bin/homie ]; then
    py=$(command -v python3)
    "$py" -m venv .venv
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e . >/dev/null
fi
export PATH="$root/.venv/bin:$PATH"
export HOMIE_HOME
HOMIE_HOME=$(mktemp -d "${TMPDIR:-/tmp}/homie-demo.XXXXXX")
work=$(mktemp -d "${TMPDIR:-/tmp}/homie-demo-work.XXXXXX")
trap 'homie down >/dev/null 2>&1 || true; rm -rf "$HOMIE_HOME" "$work"' EXIT
cat > "$HOMIE_HOME/config.yaml" <<CFG
name: demo
bind: 127.0.0.1
discovery: [static]
port: 25556
discovery_port: 25555
CFG
cp examples/train.py examples/data.csv "$work/"
chmod -R a+rX "$work"
cd "$work"
set -x
homie init --name demo
homie up
homie status
homie run -f data.csv train.py --epochs 3
cat results/model.pt; echo
homie ps --all
homie down
