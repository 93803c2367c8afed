"""Whatever is in the config file or the overrides, the result is a Config or a
one-line ConfigError -- never another exception."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("homie") is None:  # not installed: run from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homie.config import CONFIG_KEYS, Config, load_config
from homie.errors import ConfigError

from reliability import fuzz_budget  # noqa: E402

SETTINGS = settings(max_examples=fuzz_budget(1000), deadline=None, suppress_health_check=list(HealthCheck))
KEYS = [s.name for s in CONFIG_KEYS]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-5, 70000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["udp", "eth0", "10.0.0.1", "a:1", "host:99999", "idle", "debug", "x.y", ""])
)
values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=10,
)
keys = st.sampled_from(KEYS) | st.text(max_size=20) | st.integers()
documents = st.dictionaries(keys, values, max_size=8) | values

_dir = tempfile.TemporaryDirectory()
PATH = Path(_dir.name) / "config.yaml"


def check(result_fn):
    try:
        cfg = result_fn()
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith("config error")
        return
    assert isinstance(cfg, Config)
    assert 1 <= cfg.port <= 65535 and 1 <= cfg.discovery_port <= 65535
    assert 0 < cfg.heartbeat_interval <= 60 < 61 and cfg.peer_timeout > cfg.heartbeat_interval
    assert not (cfg.interface and cfg.bind)
    assert all(1 <= port <= 65535 for _, port in cfg.static_addresses)
    cfg.dump(show_sources=True)


@SETTINGS
@given(documents)
def test_yaml_documents(doc):
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return
    PATH.write_text(text, encoding="utf-8")
    check(lambda: load_config(PATH))


@SETTINGS
@given(st.text())
def test_arbitrary_text(text):
    PATH.write_text(text, encoding="utf-8", errors="surrogatepass")
    check(lambda: load_config(PATH))


@SETTINGS
@given(st.binary())
def test_arbitrary_bytes(data):
    PATH.write_bytes(data)
    check(lambda: load_config(PATH))


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), values | st.text(), max_size=5))
def test_overrides(overrides):
    PATH.write_text("interface: eth0\n", encoding="utf-8")
    check(lambda: load_config(PATH, overrides))


near_valid = st.sampled_from([
    None, True, False, 0, 1, 2, 5, 60, 61, 100, 5556, 65535, 65536, -1, 0.5, 2.5, 1e300, "auto",
    "eth0", "10.0.0.1", "udp", "idle", "always", "info", "DEBUG", "box-1", "a:5", "x.y",
    ["udp"], ["a", "b:7"], ["10.0.0.300"], ["mod.name"], [], [""],
])


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), near_valid, max_size=10),
       st.dictionaries(st.sampled_from(KEYS), near_valid, max_size=3))
def test_near_valid_files_and_overrides(doc, overrides):
    PATH.write_text(yaml.safe_dump(doc), encoding="utf-8")
    check(lambda: load_config(PATH, overrides))
