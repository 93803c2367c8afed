"""Install homie as an OS service: a systemd unit (system or user) or a launchd agent.

`homie service install|uninstall|status` (see homie/cli/service.py) are thin
wrappers around :func:`install`, :func:`uninstall` and :func:`status`.

The unit files live once, at the top of the source tree (homie.service,
packaging/homie-user.service, packaging/io.homie.agent.plist); homie/data/
holds symlinks to them, which the sdist and the wheel carry as plain files, so
they are package data. The files stay valid for `systemd-analyze verify`, so
rendering only swaps placeholders:

* ``/usr/local/bin/homie`` -> the absolute path of the running homie executable
  (or ``python -m homie`` when there is no console script);
* ``%h/.homie`` (user unit) / ``__HOMIE_HOME__`` (plist) -> HOMIE_HOME.

For tests and packaging every written path can be prefixed with a root
directory (``root=`` or HOMIE_SERVICE_ROOT, like DESTDIR) and every command
goes through an injectable ``run`` callable. With a root prefix and no ``run``,
commands are printed but not executed (staging must not touch the host).
HOMIE_SERVICE_PLATFORM ("linux" or "darwin") overrides platform detection.
"""

from homie.service.execute import install, status, uninstall
from homie.service.plan import Command, Plan, plan_install, plan_uninstall
from homie.service.units import (
    LABEL,
    LAUNCHD,
    MODES,
    SERVICE_USER,
    SYSTEM,
    SYSTEM_HOME,
    TEMPLATE_EXE,
    UNIT_NAME,
    USER,
    render,
    template,
)

__all__ = [
    "LABEL", "LAUNCHD", "MODES", "SERVICE_USER", "SYSTEM", "SYSTEM_HOME", "TEMPLATE_EXE", "UNIT_NAME", "USER",
    "Command", "Plan", "install", "plan_install", "plan_uninstall", "render", "status", "template", "uninstall",
]
