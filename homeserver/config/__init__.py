"""Configuration: one YAML file, validated against a schema at start-up."""

from homeserver.config.loader import ConfigError, load_config, parse_config

__all__ = ["ConfigError", "load_config", "parse_config"]
