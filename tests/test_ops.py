"""Operation: the reverse-sync guard and the DR runbook, env-only mode, the container and
Kubernetes files, the status web page (headless Chromium) and the Grafana dashboard."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from datagen import populate
from harness import Shake
from helpers import assert_same_data
from redshake.commands.slots import key_slot
from servers import free_port

ROOT = Path(__file__).resolve().parents[1]


def sync_run(tmp: Path, name: str, src: str | object, dst, reader: dict | None = None, **advanced) -> Shake:
    """``redshake CONFIG`` (a live sync) in its own work dir ``tmp/name``, with a status port."""
    return Shake(tmp, src, dst, reader=reader, name=name, advanced={"dir": str(tmp / name), **advanced})


def cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "redshake.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def writes(server, seed: int, n: int) -> None:
    """n mixed writes over dbs 0 and 2 (strings with TTLs, hashes, lists, sets, deletes)."""
    rnd = random.Random(seed)
    cs = {0: server.client(0), 2: server.client(2)}
    for i in range(n):
        c = cs[rnd.choice((0, 0, 2))]
        k = f"live:{seed}:{rnd.randrange(200)}"
        r = rnd.random()
        if r < 0.3:
            c.set(k, rnd.randbytes(rnd.randrange(1, 3000)), px=rnd.choice((None, 600_000)))
        elif r < 0.5:
            c.hset("h" + k, f"f{i % 40}", rnd.randrange(10**6))
        elif r < 0.65:
            c.rpush("l" + k, *[rnd.randbytes(8) for _ in range(rnd.randrange(1, 5))])
        elif r < 0.8:
            c.sadd("s" + k, rnd.randrange(500))
        else:
            c.delete(k)


def test_reverse_sync_guard_and_dr_runbook(servers, tmp_path, shakes):
    """The README's DR runbook: A->B, fail over, B->A (refused while A->B writes), switch back."""
    a, b = servers.start("redis-7.0"), servers.start("redis-7.0")
    populate(a.client(), a.version, False, seed=31, big=False, functions=False)
    writes(a, 1, 300)
    fwd = sync_run(tmp_path, "a_to_b", a, b).start()
    shakes.append(fwd)
    fwd.wait_consistent()
    r = cli("wait", "--converged", str(fwd.cfg), "--timeout", "120", "--sample", "200")
    assert r.returncode == 0, r.stderr + fwd.log()
    marker = b.client().keys("redshake:live:*")
    assert len(marker) == 1 and 0 < b.client().pttl(marker[0]) <= 15_000
    assert json.loads(b.client().get(marker[0]))["source"] == a.address
    # the reverse direction while A->B still writes into B: refused, nothing written
    rev = sync_run(tmp_path, "b_to_a", b, a, empty_db_before_sync=True)
    a.client().set("canary", "1")
    r = subprocess.run([sys.executable, "-m", "redshake.cli", str(rev.cfg)], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "reverse sync refused" in out and f"{a.address} -> {b.address}" in out, out
    assert a.client().get("canary") == b"1" and fwd.proc.poll() is None
    # fail over: the forward sync stops, its marker goes with it; B takes the writes
    assert fwd.terminate(60) == 0, fwd.log()
    assert b.client().keys("redshake:live:*") == []
    writes(b, 2, 300)
    shakes.append(rev.start())
    rev.wait_consistent()
    writes(b, 3, 200)  # (live, while B->A runs)
    r = cli("wait", "--converged", str(rev.cfg), "--timeout", "120", "--sample", "300")
    assert r.returncode == 0, r.stderr + rev.log()
    r = cli("verify", str(rev.cfg), "--mode", "full", "--no-progress")
    assert r.returncode == 0 and "EQUAL" in r.stdout, r.stdout + r.stderr
    assert_same_data(b, a, dbs=[0, 1, 2, 3])
    # now A->B is the reverse of the running B->A: refused too
    r = cli(str(fwd.cfg))
    assert r.returncode == 2 and f"{b.address} -> {a.address}" in r.stdout + r.stderr, r.stdout + r.stderr
    # switch back: stop B->A, A->B again. Resuming the old A->B checkpoint would replay, from
    # A's backlog, what B->A wrote into A back onto B: refused, nothing written
    assert rev.terminate(60) == 0, rev.log()
    before = {k: b.client().execute_command("DEBUG", "DIGEST-VALUE", k) for k in b.client().keys("l*")}
    r = cli(str(fwd.cfg))
    assert r.returncode == 2 and "resume refused" in r.stdout + r.stderr, r.stdout + r.stderr
    assert {k: b.client().execute_command("DEBUG", "DIGEST-VALUE", k) for k in b.client().keys("l*")} == before
    fwd2 = sync_run(tmp_path, "a_to_b_again", a, b, empty_db_before_sync=True).start()
    shakes.append(fwd2)
    writes(a, 4, 200)
    fwd2.wait_consistent()
    r = cli("wait", "--converged", str(fwd2.cfg), "--timeout", "120", "--sample", "300")
    assert r.returncode == 0, r.stderr + fwd2.log()
    r = cli("verify", str(fwd2.cfg), "--mode", "full", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_data(a, b, dbs=[0, 1, 2, 3])


def test_a_killed_sync_stops_blocking_when_its_marker_expires(servers, tmp_path, shakes):
    a, b = servers.start("redis-7.0"), servers.start("redis-7.0")
    writes(a, 5, 100)
    fwd = sync_run(tmp_path, "fwd", a, b).start()
    shakes.append(fwd)
    fwd.wait_consistent()
    deadline = time.monotonic() + 30
    while not b.client().keys("redshake:live:*") and time.monotonic() < deadline:
        time.sleep(0.1)
    fwd.kill()  # no clean stop: the marker stays until its TTL runs out
    (key,) = b.client().keys("redshake:live:*")
    rev = sync_run(tmp_path, "rev", b, a, empty_db_before_sync=True)
    r = cli(str(rev.cfg))
    assert r.returncode == 2 and "reverse sync refused" in r.stdout + r.stderr
    b.client().pexpire(key, 1)  # (as if the 15 s had passed)
    time.sleep(0.05)
    shakes.append(rev.start())
    rev.wait_consistent()
    assert_same_data(b, a, dbs=[0, 2])


def test_env_only_mode_sync_and_scan(servers, tmp_path, shakes):
    """RedisShake's container entrypoint: SYNC=true / SCAN=true, no config file."""
    src, dst, dst2 = servers.start("redis-7.0"), servers.start("valkey-8.1"), servers.start("redis-7.0")
    populate(src.client(), src.version, False, seed=41, big=False, functions=False)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if k not in ("SYNC", "SCAN") and not k.startswith("SHAKE_")}
    env = dict(base, SYNC="true", SHAKE_SRC_ADDRESS=src.address, SHAKE_DST_ADDRESS=dst.address,
               SHAKE_DIR=str(tmp_path / "envsync"), SHAKE_STATUS_PORT=str(port), SHAKE_LOG_LEVEL="info")  # fmt: skip
    sync = sync_run(tmp_path, "unused", src, dst)
    sync.status_port = port
    with open(sync.out, "ab") as fh:  # the container's CMD: the default config path, absent here
        sync.proc = subprocess.Popen([sys.executable, "-m", "redshake.cli", str(tmp_path / "etc/sync/sync.toml")],
                                     stdout=fh, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    shakes.append(sync)
    sync.wait_consistent()
    writes(src, 6, 300)
    deadline = time.monotonic() + 60
    while src.info("replication")["master_repl_offset"] != sync.status()["reader"]["aof_applied_offset"]:
        assert time.monotonic() < deadline, sync.log()
        time.sleep(0.1)
    assert "env-only mode" in sync.log() and (tmp_path / "envsync" / "shake.log").exists()
    assert sync.terminate(60) == 0, sync.log()
    assert_same_data(src, dst, dbs=[0, 1, 2, 3])
    # SCAN=true: a one-shot copy, no argument at all
    env2 = dict(base, SCAN="true", SHAKE_SRC_ADDRESS=src.address, SHAKE_DST_ADDRESS=dst2.address,
                SHAKE_DIR=str(tmp_path / "envscan"))  # fmt: skip
    r = cli(env=env2)
    assert r.returncode == 0 and "scan_reader" in r.stdout + r.stderr, r.stdout + r.stderr
    # (a scan copies TTLs as relative PTTLs: compared within verify's tolerance)
    r = cli("verify", "--source", f"redis://{src.address}", "--target", f"redis://{dst2.address}", "--mode", "full",
            "--no-progress")  # fmt: skip
    assert r.returncode == 0 and "EQUAL" in r.stdout, r.stdout + r.stderr
    # a required variable missing, or a config file as well: exit 2, nothing written
    dst2.client().flushall()
    r = cli(env=dict(base, SYNC="true", SHAKE_SRC_ADDRESS=src.address))
    assert r.returncode == 2 and "SHAKE_DST_ADDRESS" in r.stderr, r.stderr
    r = cli(str(sync.cfg), env=dict(env2))
    assert r.returncode == 2 and "both given" in r.stderr, r.stderr
    r = cli(env=dict(env2, SHAKE_STATUS_PORT="http"))
    assert r.returncode == 2 and "status_port" in r.stderr, r.stderr
    assert dst2.client().dbsize() == 0


def test_shards_selector_splits_a_cluster_source(servers, tmp_path, shakes):
    """sync_reader.shards = "I/N": N processes (pods) each read their slice of the masters."""
    import redis

    cl = servers.cluster("redis-7.0", masters=3)
    dst = servers.start("redis-7.0")
    rc = redis.RedisCluster(host="127.0.0.1", port=cl.masters[0].port, protocol=2)
    rnd = random.Random(3)
    for i in range(600):
        rc.set(f"k{i}", rnd.randbytes(rnd.randrange(1, 500)), px=rnd.choice((None, 900_000)))
        if i % 3 == 0:
            rc.hset(f"h{i}", mapping={f"f{j}": j for j in range(rnd.randrange(1, 20))})
    parts = [sync_run(tmp_path, f"part{i}", cl.seed, dst, reader={"cluster": True, "shards": f"{i}/2"}) for i in (0, 1)]
    for p in parts:
        shakes.append(p.start())
    docs = [p.wait_consistent() for p in parts]
    # 3 masters split 2 + 1, ordered by first slot; together every master exactly once
    read = [sorted(r["address"] for r in d["reader"]) for d in docs]
    assert sorted(len(x) for x in read) == [1, 2], read
    owners = sorted(cl.masters, key=lambda m: min(s[0] for s in m.client().execute_command("CLUSTER", "SLOTS")
                                                  if int(s[2][1]) == m.port))  # fmt: skip
    assert read[0] == sorted([owners[0].address, owners[2].address]) and read[1] == [owners[1].address]
    # /metrics of the process reading two shards: one labelled series per shard
    with urllib.request.urlopen(f"http://127.0.0.1:{parts[0].status_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for addr in read[0]:
        for name in ("redshake_shard_lag_seconds", "redshake_shard_reconnects_total", "redshake_shard_full_syncs_total"):
            assert f'{name}{{shard="{addr}"}}' in text, (name, addr)
    for i in range(600, 700):
        rc.set(f"k{i}", b"live")
    for p in parts:
        deadline = time.monotonic() + 60
        while not all(r["lag_bytes"] == 0 for r in p.status()["reader"]) or dst.client().get("k699") is None:
            assert time.monotonic() < deadline, p.log()
            time.sleep(0.1)
    for p in parts:
        assert p.terminate(60) == 0, p.log()
    keys = {k for m in cl.masters for k in m.client().keys("*")}
    got = {k for k in dst.client().keys("*") if not k.startswith(b"redshake:")}
    assert got == keys and len(keys) == 900
    for k in rnd.sample(sorted(keys), 100):
        node = cl.owner_of(key_slot(k))
        assert node.client().execute_command("DEBUG", "DIGEST-VALUE", k) == dst.client().execute_command(
            "DEBUG", "DIGEST-VALUE", k)


# -- the container and Kubernetes files (static: no Docker engine, no cluster, no helm here) --

def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out, cur = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = cur.partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    assert not cur, "a continuation line ends the file"
    return out


def test_dockerfile_lint():
    known = {"FROM", "RUN", "COPY", "ENV", "WORKDIR", "VOLUME", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT",
             "CMD", "ARG", "LABEL"}  # fmt: skip
    ins = _dockerfile()
    assert all(w in known for w, _ in ins), [w for w, _ in ins if w not in known]
    stages = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    final = ins[stages[-1]:]
    assert ins[stages[-1]][1].startswith("python:3.") and "slim" in ins[stages[-1]][1]
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [json.loads(a) for w, a in final if w == "ENTRYPOINT"] == [["redshake"]]
    assert [json.loads(a) for w, a in final if w == "CMD"] == [["/etc/sync/sync.toml"]]
    env = {}
    for w, a in final:
        if w == "ENV":
            for part in a.split():
                k, _, v = part.partition("=")
                env[k] = v
    assert env["SHAKE_DIR"] == "/data" and ["/data"] in [json.loads(a) for w, a in final if w == "VOLUME"]
    (hc,) = [a for w, a in final if w == "HEALTHCHECK"]
    assert "SHAKE_STATUS_PORT" in hc and env["SHAKE_STATUS_PORT"] in [a for w, a in final if w == "EXPOSE"]
    for w, a in ins:  # what COPY takes from the build context exists
        if w == "COPY" and not a.startswith("--from"):
            for src in a.split()[:-1]:
                assert (ROOT / src).exists(), src
    # the Kubernetes files agree: config mounted where CMD looks, dir on the volume, same port
    import yaml

    from redshake.config.loader import load_config_text

    docs = [d for f in sorted((ROOT / "deploy/k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    cfg = load_config_text(cm["data"]["sync.toml"], env={"POD_INDEX": "2", "SOURCE_PASSWORD": "s", "TARGET_PASSWORD": "t"})
    assert cfg.advanced.dir == env["SHAKE_DIR"] and str(cfg.advanced.status_port) == env["SHAKE_STATUS_PORT"]
    assert cfg.reader.shard_slice() == (2, 3)
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["config"] + "/sync.toml" == c["args"][0] == "/etc/sync/sync.toml" and mounts["data"] == "/data"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready" and pod["securityContext"]["runAsUser"] == 10001
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["podManagementPolicy"] == "Parallel"


def test_kubernetes_manifests_pass_the_schema_validator():
    import kubernetes_validate
    import yaml

    n = 0
    for f in sorted((ROOT / "deploy/k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
            n += 1
    assert n == 3
    # a broken one is caught (the validator really checks)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "x"},
                                      "spec": {"replicas": "three"}}, "1.30.0", strict=True)  # fmt: skip


def _helm() -> str:
    from servers import SERVERS_DIR

    helm = SERVERS_DIR / "helm" / "helm"
    assert helm.is_file(), f"helm not installed at {helm}: run `make servers`"
    return str(helm)


def _render(*sets: str) -> list[dict]:
    import yaml

    args = [_helm(), "template", "rel", str(ROOT / "deploy/helm/redshake")]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_helm_chart_renders_valid_manifests_and_configs():
    """`helm lint` and `helm template` (a real helm binary) for both modes; every rendered
    object passes the Kubernetes schema validator, and the rendered sync.toml, with the
    variables the pod sets, is a config redshake accepts (each pod reads its own shard)."""
    import kubernetes_validate

    from redshake.config.loader import load_config_text

    lint = subprocess.run([_helm(), "lint", str(ROOT / "deploy/helm/redshake")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr
    for mode, sets, pods in (
        ("perShard", ("shards=4", "source.passwordSecret.name=src", "advanced.emptyDbBeforeSync=true"), 4),
        ("cluster", ("mode=cluster", "source.cluster=false", "target.passwordSecret.name=dst"), 1),
    ):
        docs = _render(*sets)
        kinds = sorted(d["kind"] for d in docs)
        assert kinds == ["ConfigMap", "Service", "StatefulSet"], (mode, kinds)
        for d in docs:
            kubernetes_validate.validate(d, "1.30.0", strict=True)
        (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
        assert sts["spec"]["replicas"] == pods
        (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
        env_names = {e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
        for index in range(pods):
            env = {"POD_INDEX": str(index), "SOURCE_PASSWORD": "s3cret", "TARGET_PASSWORD": "t0p"}
            cfg = load_config_text(cm["data"]["sync.toml"], env=env)
            if mode == "perShard":
                assert cfg.reader.shards == f"{index}/{pods}" and cfg.reader.password == "s3cret"
                assert cfg.advanced.empty_db_before_sync is True
                assert "SOURCE_PASSWORD" in env_names and "TARGET_PASSWORD" not in env_names
            else:
                assert cfg.reader.shards == "" and cfg.writer.password == "t0p"
                assert "TARGET_PASSWORD" in env_names and "SOURCE_PASSWORD" not in env_names
            assert str(cfg.advanced.dir) == "/data"


def test_shards_setting_is_validated():
    from redshake.config.loader import ConfigError, load_config_text

    base = '[sync_reader]\naddress = "127.0.0.1:1"\n{}\n[redis_writer]\naddress = "127.0.0.1:2"\n'
    assert load_config_text(base.format('cluster = true\nshards = " 1 / 2 "')).reader.shards == "1/2"
    for bad, why in (('cluster = true\nshards = "2/2"', "0 <= I < N"), ('cluster = true\nshards = "x"', "I/N"),
                     ('shards = "0/2"', "cluster = true")):  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(why)):
            load_config_text(base.format(bad))


# -- the status web page in headless Chromium, /metrics and the Grafana dashboard ------------

CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]  # fmt: skip


class Browser:
    """Chromium driven by chromedriver over the WebDriver JSON protocol (plain HTTP)."""

    def __init__(self, tmp: Path) -> None:
        import shutil

        driver, chrome = shutil.which("chromedriver"), shutil.which("chromium")
        if not driver or not chrome:
            pytest.fail("chromium / chromedriver missing (run scripts/install-servers.sh; `make test` does)")
        self.port = free_port()
        self.proc = subprocess.Popen([driver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.1)
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chrome, "args": [*CHROME_ARGS, f"--user-data-dir={tmp / 'chrome-profile'}"]}}  # fmt: skip
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["value"]

    def open(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def js(self, script: str):
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": []})

    def close(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        except OSError:
            pass
        self.proc.kill()
        self.proc.wait(10)


# what the page shows, read back from its DOM
READ_PAGE = """
const f = (root, name) => { const e = root.querySelector('[data-field="' + name + '"]'); return e ? e.textContent : null; };
const shards = {};
for (const row of document.querySelectorAll('#shards tr[data-shard]')) {
  const r = {};
  for (const c of row.querySelectorAll('[data-field]')) r[c.getAttribute('data-field')] = c.textContent.trim();
  shards[row.getAttribute('data-shard')] = r;
}
return {consistent: f(document, 'consistent'), polls: Number(f(document, 'polls')), write_count: f(document, 'write_count'),
        read_count: f(document, 'read_count'), verify: f(document, 'verify_result'), shards: shards,
        errors: [...document.querySelectorAll('[data-field="error_message"]')].map(e => e.textContent),
        scripts: [...document.querySelectorAll('script[src], link[href]')].length};
"""


def _metric_names(text: str) -> set[str]:
    """Sample names, and the names of declared families (a counter with no label set yet,
    e.g. skipped entries by reason, has its # TYPE line but no sample)."""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name + "_total" if kind == "counter" and not name.endswith("_total") else name)
    return names


def test_status_page_metrics_and_grafana(servers, tmp_path, shakes):
    src, dst = servers.start("redis-7.0"), servers.start("redis-7.0")
    populate(src.client(), src.version, False, seed=51, big=False, functions=False)
    sync = sync_run(tmp_path, "ui", src, dst).start()
    shakes.append(sync)
    sync.wait_consistent()
    r = cli("verify", str(sync.cfg), "--mode", "quick", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{sync.status_port}/ready", timeout=10) as resp:
        assert resp.status == 200 and json.loads(resp.read()) == {"ready": True}
    browser = Browser(tmp_path)
    try:
        browser.open(f"http://127.0.0.1:{sync.status_port}/ui")

        def page_until(cond, what: str, timeout: float = 60) -> dict:
            deadline = time.monotonic() + timeout
            while True:
                seen = browser.js(READ_PAGE)
                if cond(seen):
                    return seen
                assert time.monotonic() < deadline, f"page never showed {what}: {seen}\n{sync.log()}"
                time.sleep(0.3)

        first = page_until(lambda p: src.address in p["shards"], "the shard row")
        assert first["scripts"] == 0  # self-contained: nothing loaded from elsewhere
        row = first["shards"][src.address]
        assert first["consistent"] == "consistent" and row["phase"] == "syncing aof" and row["lag_bytes"] == "0"
        assert first["verify"] == "EQUAL" and row["reconnects"] == "0"
        # live: writes on the source show up as the status JSON's counts, without a reload
        writes(src, 8, 400)
        deadline = time.monotonic() + 60
        while (doc := sync.status())["reader"]["aof_applied_offset"] < src.info("replication")["master_repl_offset"]:
            assert time.monotonic() < deadline, sync.log()
            time.sleep(0.1)
        want = doc["total_entries_count"]["write_count"]
        later = page_until(lambda p: p["write_count"] == str(want) and p["polls"] > first["polls"], f"write_count {want}")
        assert int(later["write_count"]) > int(first["write_count"])
        assert int(later["shards"][src.address]["aof_applied_offset"]) > int(row["aof_applied_offset"])
        # the source drops redshake's link: a reconnect and its warning appear on the page
        src.client().client_kill_filter(_type="replica")
        dropped = page_until(lambda p: p["shards"][src.address]["reconnects"] == "1" and p["errors"], "the reconnect")
        assert any("source" in e or "link" in e for e in dropped["errors"]), dropped["errors"]
        page_until(lambda p: p["shards"][src.address]["connected"] == "up", "the link up again")
    finally:
        browser.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{sync.status_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    shard = f'shard="{src.address}"'
    assert f"redshake_shard_reconnects_total{{{shard}}} 1.0" in text, text
    for name in ("redshake_shard_lag_seconds", "redshake_shard_lag_bytes", "redshake_shard_partial_resyncs_total",
                 "redshake_shard_full_syncs_total"):  # fmt: skip
        assert f"{name}{{{shard}}}" in text, name
    assert "redshake_lag_seconds " in text and "redshake_verify_equal 1.0" in text
    # every metric the Grafana dashboard queries is one /metrics really exports
    names = _metric_names(text)
    dash = json.loads((ROOT / "deploy/grafana/redshake.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    used = {m for e in exprs for m in re.findall(r"\b(redshake_\w+)", e)}
    assert len(used) >= 12 and used <= names, sorted(used - names)
    assert sync.terminate(60) == 0, sync.log()
    assert_same_data(src, dst, dbs=[0, 1, 2, 3])


def test_ready_is_503_until_consistent(tmp_path):
    """GET /ready follows ``consistent`` (the readiness probe of the Kubernetes manifests)."""
    from redshake.status.server import StatusServer

    state = {"consistent": False}
    with StatusServer(0, "127.0.0.1", lambda: dict(state), workdir=tmp_path) as srv:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{srv.url}/ready", timeout=10)
        assert e.value.code == 503
        state["consistent"] = True
        with urllib.request.urlopen(f"{srv.url}/ready", timeout=10) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"{srv.url}/", timeout=10) as resp:  # RedisShake's JSON stays at /
            assert json.loads(resp.read())["consistent"] is True
