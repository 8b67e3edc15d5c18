"""Loads the plugins named in the config into a pluggy PluginManager."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

import pluggy

from plugins.hookspecs import PROJECT, ParleySpec

ENTRY_POINT_GROUP = "parley.plugins"


class PluginError(Exception):
    """A configured plugin could not be loaded or set up."""


def load_plugins(names: Iterable[str], builtins: Iterable[tuple[str, Any]] = ()) -> pluggy.PluginManager:
    """Each name is an entry point of ``parley.plugins`` or an importable module path.
    Only these load: an installed plugin the config does not name stays unused.
    ``builtins`` (name, plugin object) are registered first, by the same mechanism."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(ParleySpec)
    for name, plugin in builtins:
        pm.register(plugin, name=name)
    available = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for name in names:
        try:
            plugin = available[name].load() if name in available else importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 (any import failure is a config error)
            raise PluginError(f"plugin {name!r} could not be loaded: {e}") from e
        try:
            pm.register(plugin, name=name)
        except Exception as e:  # noqa: BLE001 (e.g. a hookimpl with an unknown argument)
            raise PluginError(f"plugin {name!r} could not be registered: {e}") from e
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(f"a plugin implements a hook Parley does not have: {e}") from e
    return pm
