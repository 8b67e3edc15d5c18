"""Loads the plugins named in the config into a pluggy PluginManager."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

import pluggy

from plugins.hookspecs import PROJECT, ParleySpec

ENTRY_POINT_GROUP = "parley.plugins"


class PluginError(Exception):
    """A configured plugin could not be loaded."""


def load_plugins(names: list[str]) -> pluggy.PluginManager:
    """Each name is an entry point of ``parley.plugins`` or an importable module path."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(ParleySpec)
    available = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for name in names:
        try:
            plugin = available[name].load() if name in available else importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 (any import failure is a config error)
            raise PluginError(f"plugin {name!r} could not be loaded: {e}") from e
        pm.register(plugin, name=name)
    pm.check_pending()
    return pm
