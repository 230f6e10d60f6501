"""Data of every type written by each server version -> SAVE -> redshake -> every other
version (older and newer) -> digests equal. Downgrades go through re-stamped or re-encoded
RESTORE payloads and, where nothing else works, plain commands."""

from __future__ import annotations

import pytest

from datagen import populate
from helpers import assert_same_data, restore_file

VERSIONS = ["redis-5.0", "redis-6.0", "redis-6.2", "redis-7.0", "valkey-8.1", "valkey-9.1"]


def _supports_functions(s) -> bool:
    return s.version >= (7, 0, 0)


def _supports_hfe(s) -> bool:
    return s.is_valkey and s.version >= (9, 0, 0)


@pytest.mark.parametrize("dst_name", VERSIONS)
@pytest.mark.parametrize("src_name", VERSIONS)
def test_roundtrip(src_name, dst_name, servers, tmp_path):
    src = servers.start(src_name)
    dst = servers.start(dst_name)
    populate(
        src.client(),
        src.version,
        src.is_valkey,
        functions=_supports_functions(dst),
        hfe=_supports_hfe(dst),
        consumers_without_pel=dst.version >= (6, 2, 0),
    )
    src.client().save()
    r = restore_file(src.dir / "dump.rdb", dst, tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert_same_data(src, dst)
    if _supports_functions(src) and _supports_functions(dst):
        fa = src.client().execute_command("FUNCTION", "LIST", "WITHCODE")
        fb = dst.client().execute_command("FUNCTION", "LIST", "WITHCODE")
        assert fa == fb
