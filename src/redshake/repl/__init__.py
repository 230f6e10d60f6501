"""Replica side of the Redis / Valkey replication protocol.

``protocol``: sans-I/O pieces (PSYNC reply, RDB transfer framing, command stream with exact
offsets); ``spool``: the on-disk buffer between the socket and the target; ``checkpoint``:
the persisted resume position; ``link``: the thread that owns the source connection.
"""
