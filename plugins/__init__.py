"""Plugins: pluggy hook specifications and the manager that loads plugins.

A plugin is a module (or object) with functions marked ``@hookimpl`` (project name
``parley``). Only plugins named in the config are loaded: either an entry point of
the ``parley.plugins`` group or an importable module path.
"""

from plugins.hookspecs import hookimpl, hookspec
from plugins.manager import PluginError, load_plugins

__all__ = ["hookimpl", "hookspec", "load_plugins", "PluginError"]
