"""The value-type and opcode registry (rdb/types.py): the Redis / Valkey collisions on type
bytes 22 / 23 and opcode 243, and version gates, as the parser and decoder see them."""

from __future__ import annotations

import re

import pytest

from redshake.rdb import types as T
from redshake.rdb.primitives import RdbError
from redshake.rdb.values import decode_value


def test_type_22_23_depend_on_magic():
    redis, valkey = T.value_types(False, 12), T.value_types(True, 80)
    assert redis[22].layout == T.HASH_TTL and valkey[22].layout == T.HASH_2
    assert redis[23].layout == T.HASH_LISTPACK_TTL and valkey[23] is None
    assert T.value_types(True, 81)[23].layout == T.UNSUPPORTED


def test_version_gates():
    assert T.value_types(False, 11)[22] is None  # Redis 7.2 has no field TTLs
    assert T.value_types(False, 13)[26].family == "stream" and T.value_types(False, 13)[27] is None
    assert T.value_types(False, 14)[28].layout == T.UNSUPPORTED
    assert T.value_types(False, 9)[21].layout == T.STREAM  # 0..21 at any version, as before
    assert T.STREAM_TYPES == {15, 19, 21, 26, 27}


def test_opcode_243():
    assert T.opcodes(False, 12)[0xF3] is None and T.opcodes(False, 13)[0xF3] == "KEY_META"
    assert T.opcodes(True, 80)[0xF3] == "SLOT_IMPORT"
    assert T.opcodes(False, 11)[0xF4] is None and T.opcodes(False, 12)[0xF4] == "SLOT_INFO"
    assert T.opcodes(True, 80)[0xF2] is None and T.opcodes(True, 81)[0xF2] == "UPDATE"


@pytest.mark.parametrize(
    "t, valkey, msg",
    [
        (6, False, "pre-GA module value (type 6)"),
        (8, False, "unknown RDB value type 8"),
        (28, False, "unknown RDB value type 28"),
        (8, True, "unsupported Valkey RDB value type 8"),
        (23, True, "unsupported Valkey RDB value type 23"),
        (26, True, "unsupported Valkey RDB value type 26"),
    ],
)
def test_decoder_refusals(t, valkey, msg):
    with pytest.raises(RdbError, match=re.escape(msg)):
        decode_value(t, b"\x00", valkey=valkey)


def test_hash_22_decodes_per_magic():
    # Redis 22: count, (len-enc ttl, field, value); Valkey 22: count, (field, value, 8-byte ms)
    redis = decode_value(22, b"\x01\x00\x01f\x01v", valkey=False)
    valkey = decode_value(22, b"\x01\x01f\x01v" + (-1).to_bytes(8, "little", signed=True), valkey=True)
    assert redis.pairs == valkey.pairs == [(b"f", b"v")]
    assert redis.field_expire is None and valkey.field_expire is None
