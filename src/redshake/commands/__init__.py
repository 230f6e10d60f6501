"""Command table lookups (name, group, keys of an argv) and cluster hash slots."""

from .lookup import GROUPS, UNKNOWN_GROUP, CommandInfo, command_info, command_keys, lookup_name

__all__ = ["CommandInfo", "command_info", "command_keys", "lookup_name", "GROUPS", "UNKNOWN_GROUP"]
