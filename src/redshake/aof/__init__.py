"""AOF formats: the RESP command stream parser and the Redis 7+ multi-part manifest."""

from .manifest import (
    Manifest,
    ManifestEntry,
    ManifestError,
    parse_manifest,
    read_manifest,
    split_args,
)
from .parser import Annotation, AofError, AofParser

__all__ = [
    "AofError",
    "AofParser",
    "Annotation",
    "Manifest",
    "ManifestEntry",
    "ManifestError",
    "parse_manifest",
    "read_manifest",
    "split_args",
]
