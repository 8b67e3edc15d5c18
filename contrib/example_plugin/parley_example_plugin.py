"""An example Parley plugin: refuses spam-looking usernames at registration.

It implements the ``check_username_for_spam`` hook from Parley's ``plugins.hookspecs``.
The module is registered through the ``parley.plugins`` entry point (see
pyproject.toml); list its entry-point name under ``plugins:`` in the Parley config to
load it (Parley loads only the plugins the config names).
"""

from __future__ import annotations

import re

import pluggy

hookimpl = pluggy.HookimplMarker("parley")

# Words that may not appear in a localpart, and localparts that are only digits
# (a common pattern for bulk-registered accounts).
BLOCKED_WORDS = ("spam", "casino", "viagra")
_DIGITS_ONLY = re.compile(r"^[0-9]{6,}$")


@hookimpl
def check_username_for_spam(user_id: str) -> bool:
    """Return True if ``user_id`` (``@localpart:server``) looks like spam."""
    localpart = user_id[1:].split(":", 1)[0].lower() if user_id.startswith("@") else user_id
    if _DIGITS_ONLY.match(localpart):
        return True
    return any(word in localpart for word in BLOCKED_WORDS)
