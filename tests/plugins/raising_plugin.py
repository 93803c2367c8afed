"""Test plugin whose hook raises: homie must disable it and go on."""

from homie import hookimpl


@hookimpl
def homie_probe_resources(config):
    raise RuntimeError("this plugin is broken on purpose")
