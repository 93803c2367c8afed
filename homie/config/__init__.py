"""Node configuration: HOMIE_HOME/config.yaml plus command-line overrides.

Every setting is declared once, as a field of Config (keys.py): its annotation is its
type, setting() gives its default, validator and help. CONFIG_KEYS is read off those
fields, so the docs and `homie doctor` are generated from the table the loader checks.

Every problem becomes a one-line ConfigError naming the setting and where it came
from, e.g.::

    config error in /home/ann/.homie/config.yaml: port: must be an integer between 1 and 65535 (got 'abc')
    config error in --port: must be an integer between 1 and 65535 (got 0)

yaml is imported lazily (inside the functions that need it): the CLI must start fast.

The package: values.py (validators and error messages), keys.py (the settings: Config
and CONFIG_KEYS), load.py (load_config), save.py (save_config_value).
"""

from homie.config.keys import CONFIG_KEYS, Config, KeySpec, config_reference
from homie.config.load import load_config
from homie.config.save import save_config_value
from homie.config.values import parse_peer

__all__ = [
    "CONFIG_KEYS",
    "Config",
    "KeySpec",
    "config_reference",
    "load_config",
    "parse_peer",
    "save_config_value",
]
