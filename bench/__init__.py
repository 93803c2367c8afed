"""homie's benchmark suite (issue 4): ``python -m bench [PART ...] [--quick] [--size N]``.

Run as root from the repository root with the venv interpreter
(``sudo .venv/bin/python -m bench``). Everything is measured in one run on
network-namespace hosts built by tests/netns.py (a private bridge, no uplink):
discovery, ``homie run hello.py`` vs local python vs ssh (and where homie's time
goes), ``homie map`` vs GNU parallel (``-S`` over ssh and local ``-j``), a large
upload vs scp and a raw TLS socket, the re-run of an unchanged input, and
``homie peers`` vs ``python -c "import click"``. PARTs (discovery, hello, peers,
map, upload) run a subset. The ssh/scp/parallel baselines log in as a dedicated
plain user (bench/sshd.py) with a plain interpreter. It prints a table and
writes docs/benchmarks.md.
"""
