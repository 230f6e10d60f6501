"""Decode every value of the shipped RDB corpus and compare with the expected outputs.

Records come from the streaming parser; this file checks the value decoders on them."""

from __future__ import annotations

import json

import pytest

from helpers import TESTDATA
from rdbgen import corpus_keys
from redshake.rdb.primitives import RdbError
from redshake.rdb.values import (
    HashValue,
    ListValue,
    ModuleValue,
    SetValue,
    StreamValue,
    StringValue,
    ZSetValue,
    decode_value,
)

DATA = TESTDATA
MANIFEST = json.loads((DATA / "manifest.json").read_text())
RDB_FILES = [f for f in MANIFEST["files"] if f["path"].endswith(".rdb") and f.get("rdb")]


TYPE_NAME = {
    0: "STRING", 1: "LIST", 2: "SET", 3: "ZSET", 4: "HASH", 5: "ZSET_2", 6: "MODULE_PRE_GA",
    7: "MODULE_2", 9: "HASH_ZIPMAP", 10: "LIST_ZIPLIST", 11: "SET_INTSET", 12: "ZSET_ZIPLIST",
    13: "HASH_ZIPLIST", 14: "LIST_QUICKLIST", 15: "STREAM_LISTPACKS", 16: "HASH_LISTPACK",
    17: "ZSET_LISTPACK", 18: "LIST_QUICKLIST_2", 19: "STREAM_LISTPACKS_2", 20: "SET_LISTPACK",
    21: "STREAM_LISTPACKS_3",
}  # fmt: skip


def type_name(t: int, valkey: bool) -> str:
    if t in TYPE_NAME:
        return TYPE_NAME[t]
    if valkey:
        return {22: "HASH_2"}[t]
    return {
        22: "HASH_METADATA_PRE_GA", 23: "HASH_LISTPACK_EX_PRE_GA",
        24: "HASH_METADATA", 25: "HASH_LISTPACK_EX",
    }[t]  # fmt: skip


@pytest.mark.parametrize("f", RDB_FILES, ids=[f["path"] for f in RDB_FILES])
def test_corpus_file_decodes(f: dict) -> None:
    meta = f["rdb"]
    corrupt = str(f.get("intentionally_corrupt", "no"))
    types = meta.get("types") or {}
    if "MODULE_PRE_GA" in types:
        with pytest.raises(RdbError, match="pre-GA"):
            corpus_keys(f["path"])
        return
    if corrupt.startswith("YES") and "empty" not in corrupt and "zipmap" not in corrupt:
        if "version 99" in corrupt or "bad CRC" in corrupt:
            with pytest.raises(RdbError):  # the parser refuses the header / trailer
                corpus_keys(f["path"])
            return
        else:
            with pytest.raises(RdbError):
                for _, _, t, raw, _, valkey in corpus_keys(f["path"]):
                    decode_value(t, raw, valkey=valkey)
            return
    counts: dict[str, int] = {}
    empties = 0
    for _, _, t, raw, _, valkey in corpus_keys(f["path"]):
        v = decode_value(t, raw, valkey=valkey)
        name = type_name(t, valkey)
        counts[name] = counts.get(name, 0) + 1
        if not isinstance(v, (StringValue, ModuleValue, StreamValue)) and len(v) == 0:
            empties += 1
    assert counts == types
    if "empty aggregates" in corrupt:
        assert empties == 9  # the file's notes list nine (the scanner counted one less)
    else:
        assert empties == meta.get("empty_values", 0)


# --------------------------------------------------------------------------------------
# expected JSON outputs of HDT3213/rdb
# --------------------------------------------------------------------------------------

HDT_JSON = sorted(
    {
        (f["path"], out)
        for f in RDB_FILES
        for out in (o["path"] for o in f.get("expected_outputs") or [])
        if out.startswith("rdb/hdt3213-rdb/") and out.endswith(".json")
    }
)


def _s(b: bytes) -> str:
    # the expected JSON was written by Go, which replaces invalid UTF-8 with U+FFFD
    return b.decode("utf-8", "replace")


_KEY_TYPES = {"string", "list", "set", "zset", "hash", "stream"}


def _score(x: bytes) -> float:
    return float(x)


@pytest.mark.parametrize(("rdb", "expected"), HDT_JSON, ids=[e for _, e in HDT_JSON])
def test_matches_hdt3213_json(rdb: str, expected: str) -> None:
    # aux fields and function libraries are listed too; memory_regex.json is a filtered subset
    want = [o for o in json.loads((DATA / expected).read_text()) if o["type"] in _KEY_TYPES]
    got = {}
    for db, key, t, raw, expire, valkey in corpus_keys(rdb):
        got[(db, _s(key))] = (decode_value(t, raw, valkey=valkey), expire)
    if "regex" not in expected:
        assert len(got) == len(want)
    for obj in want:
        v, expire = got[(obj.get("db", 0), obj["key"])]
        if "expiration" in obj:
            # ISO time in the JSON; only check that a TTL exists
            assert expire >= 0
        kind = obj["type"]
        if kind == "string":
            assert isinstance(v, StringValue)
            assert _s(v.data) == obj["value"]
        elif kind == "list":
            assert isinstance(v, ListValue)
            assert [_s(x) for x in v.items] == obj["values"]
        elif kind == "set":
            assert isinstance(v, SetValue)
            assert sorted(_s(x) for x in v.members) == sorted(obj["members"])
        elif kind == "zset":
            assert isinstance(v, ZSetValue)
            assert {_s(m): _score(s) for m, s in v.items} == {
                e["member"]: float(e["score"]) for e in obj["entries"]
            }
        elif kind == "hash":
            assert isinstance(v, HashValue)
            assert {_s(k): _s(x) for k, x in v.pairs} == obj["hash"]
            if "expire" in obj:
                want_exp = {k: ms for k, ms in obj["expire"].items() if ms}
                assert {_s(k): ms for k, ms in (v.field_expire or {}).items()} == want_exp
        elif kind == "stream":
            assert isinstance(v, StreamValue)
            live = [
                (m["id"], m["fields"])
                for node in obj["entries"]
                for m in node["msgs"]
                if not m.get("deleted")
            ]
            assert [
                (_s(i), {_s(fv[j]): _s(fv[j + 1]) for j in range(0, len(fv), 2)})
                for i, fv in v.entries
            ] == live
            assert _s(v.last_id) == obj["lastId"]
            if "firstId" in obj:
                assert _s(v.first_id) == obj["firstId"]
                assert _s(v.max_deleted_id) == obj["maxDeletedId"]
                assert v.entries_added == obj["addedEntriesCount"]
            for g, wg in zip(v.groups, obj.get("groups") or [], strict=True):
                assert _s(g.name) == wg["name"]
                assert _s(g.last_id) == wg["lastId"]
        else:
            raise AssertionError(f"unexpected JSON type {kind}")
