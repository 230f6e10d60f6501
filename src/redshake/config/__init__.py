"""Configuration: one typed schema, loaded from RedisShake v4 or v3 TOML files."""

from redshake.config.loader import ConfigError, load_config, load_config_text
from redshake.config.schema import Config

__all__ = ["Config", "ConfigError", "load_config", "load_config_text"]
