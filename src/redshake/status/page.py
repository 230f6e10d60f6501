"""The status web page (``GET /ui`` on the status port): one self-contained HTML document
(no external script, style sheet or font) that polls the status JSON every second and shows,
per source shard, the phase, progress, lag in bytes and seconds, link counters and the last
link error; the totals and rates; the writers; the last warnings and errors; and the result of
the last ``redshake verify`` run on the sync's config.

Every value the page shows sits in an element with a ``data-field`` attribute (and, per
shard, a row with ``data-shard="<address>"``), so it can be read back by tools and tests.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>redshake status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em; color: #1d1d1f; background: #fafafa; }
  h1 { font-size: 1.3em; margin: 0 0 .4em; }
  h2 { font-size: 1.05em; margin: 1.2em 0 .4em; }
  table { border-collapse: collapse; background: #fff; }
  th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; white-space: nowrap; }
  th { background: #f0f0f0; }
  td.l, th.l { text-align: left; }
  .badge { display: inline-block; padding: .1em .6em; border-radius: .8em; color: #fff; font-weight: 600; }
  .ok { background: #2e7d32; } .no { background: #c62828; } .wait { background: #9e9e9e; }
  .bar { display: inline-block; width: 8em; height: .7em; background: #e0e0e0; vertical-align: middle; }
  .bar > span { display: block; height: 100%; background: #1976d2; }
  #meta { color: #555; margin-bottom: .6em; }
  .err { color: #b71c1c; }
  td.err { white-space: normal; max-width: 32em; text-align: left; }
</style>
</head>
<body>
<h1>redshake <span id="consistent" data-field="consistent" class="badge wait">connecting</span></h1>
<div id="meta">started <span data-field="start_time">-</span> &middot;
  updated <span data-field="updated">never</span> &middot; polls <span data-field="polls">0</span>
  <span data-field="fetch_error" class="err"></span></div>

<h2>Totals</h2>
<table id="totals"><tr>
  <th>read</th><th>read/s</th><th>written</th><th>written/s</th><th>skipped</th><th>failed</th><th>lag bytes</th><th>lag s</th>
</tr><tr>
  <td data-field="read_count">-</td><td data-field="read_ops">-</td>
  <td data-field="write_count">-</td><td data-field="write_ops">-</td>
  <td data-field="skipped_count">-</td><td data-field="failed_count">-</td>
  <td data-field="lag_bytes_total">-</td><td data-field="lag_seconds_max">-</td>
</tr></table>

<h2>Source shards</h2>
<table id="shards"><thead><tr>
  <th class="l">shard</th><th class="l">phase</th><th>progress</th><th>lag bytes</th><th>lag s</th>
  <th>applied offset</th><th>link</th><th>reconnects</th><th>partial resyncs</th><th>full syncs</th>
  <th>target reconnects</th><th class="l">last error</th>
</tr></thead><tbody></tbody></table>

<h2>Writers</h2>
<table id="writers"><thead><tr><th class="l">writer</th><th>unanswered entries</th><th>unanswered bytes</th></tr></thead>
<tbody></tbody></table>

<h2>Last verify</h2>
<div id="verify" data-field="verify">no verify run yet (<code>redshake verify CONFIG</code>)</div>

<h2>Commands</h2>
<table id="commands"><thead><tr><th class="l">command</th><th>read</th><th>written</th><th>read/s</th></tr></thead>
<tbody></tbody></table>

<h2>Last warnings and errors</h2>
<table id="errors"><thead><tr><th class="l">time</th><th class="l">level</th><th class="l">message</th></tr></thead>
<tbody></tbody></table>

<script>
"use strict";
const base = location.pathname.replace(/\\/ui\\/?$/, "/");
let polls = 0;
function el(tag, text, cls, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}
function set(field, value) {
  for (const e of document.querySelectorAll('[data-field="' + field + '"]')) e.textContent = String(value);
}
function human(n) {
  if (typeof n !== "number") return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}
function progress(r) {
  if (r.status === "syncing aof") return [100, "stream"];
  if (typeof r.rdb_file_size_bytes === "number" && r.rdb_file_size_bytes > 0) {
    const p = Math.min(100, 100 * (r.rdb_sent_bytes || 0) / r.rdb_file_size_bytes);
    return [p, p.toFixed(1) + "%"];
  }
  if (typeof r.percent === "number") return [r.percent, r.percent.toFixed(1) + "%"];
  if (r.scan_percent) return [parseFloat(r.scan_percent) || 0, r.scan_percent];
  return [0, "-"];
}
function cell(row, field, value, cls) {
  const td = el("td", value, cls, {"data-field": field});
  row.appendChild(td);
  return td;
}
function render(doc) {
  const c = document.getElementById("consistent");
  c.textContent = doc.consistent ? "consistent" : "catching up";
  c.className = "badge " + (doc.consistent ? "ok" : "no");
  set("start_time", doc.start_time || "-");
  const t = doc.total_entries_count || {};
  set("read_count", t.read_count ?? "-"); set("read_ops", Number(t.read_ops || 0).toFixed(1));
  set("write_count", t.write_count ?? "-"); set("write_ops", Number(t.write_ops || 0).toFixed(1));
  const x = doc.redshake || {};
  set("skipped_count", x.skipped_count ?? 0); set("failed_count", x.failed_count ?? 0);
  const readers = (Array.isArray(doc.reader) ? doc.reader : [doc.reader]).filter(r => r && typeof r === "object");
  let lagBytes = 0, lagSec = 0;
  const body = document.querySelector("#shards tbody");
  body.replaceChildren();
  for (const r of readers) {
    const id = r.address || r.name || r.filepath || "?";
    const row = el("tr", null, null, {"data-shard": id});
    cell(row, "address", id, "l");
    cell(row, "phase", r.status || r.aof_status || (r.scan_finished ? "scan finished" : "scanning"), "l");
    const [p, label] = progress(r);
    const td = el("td", null, null, {"data-field": "progress"});
    const bar = el("span", null, "bar"); const fill = el("span"); fill.style.width = p + "%";
    bar.appendChild(fill); td.appendChild(bar); td.appendChild(document.createTextNode(" " + label));
    row.appendChild(td);
    cell(row, "lag_bytes", r.lag_bytes ?? "-");
    cell(row, "lag_seconds", r.lag_seconds ?? "-");
    cell(row, "aof_applied_offset", r.aof_applied_offset ?? "-");
    cell(row, "connected", r.connected === undefined ? "-" : (r.connected ? "up" : "down"));
    cell(row, "reconnects", r.reconnects ?? "-");
    cell(row, "partial_resyncs", r.partial_resyncs ?? "-");
    cell(row, "full_syncs", r.full_syncs ?? "-");
    cell(row, "target_reconnects", r.target_reconnects ?? "-");
    cell(row, "last_link_error", r.last_link_error || "", "l err");
    body.appendChild(row);
    lagBytes += Number(r.lag_bytes || 0); lagSec = Math.max(lagSec, Number(r.lag_seconds || 0));
  }
  set("lag_bytes_total", lagBytes); set("lag_seconds_max", lagSec.toFixed(3));
  const wb = document.querySelector("#writers tbody");
  wb.replaceChildren();
  const writers = (Array.isArray(doc.writer) ? doc.writer : [doc.writer]).filter(w => w && typeof w === "object");
  for (const w of writers) {
    const row = el("tr", null, null, {"data-writer": w.name || "?"});
    cell(row, "writer_name", w.name || "?", "l");
    cell(row, "unanswered_entries", w.unanswered_entries ?? "-");
    cell(row, "unanswered_bytes", human(w.unanswered_bytes));
    wb.appendChild(row);
  }
  const v = x.verify, vd = document.getElementById("verify");
  if (v && v.result) {
    vd.replaceChildren();
    vd.appendChild(el("span", v.result.toUpperCase(), "badge " + (v.result === "equal" ? "ok" : "no"), {"data-field": "verify_result"}));
    const diffs = Object.entries(v.differences || {}).map(([k, n]) => k + "=" + n).join(", ");
    vd.appendChild(el("span", " mode " + v.mode + ", " + (v.total_differences ?? 0) + " difference(s)" +
      (diffs ? " (" + diffs + ")" : "") + ", " + (v.keys_equal ?? "-") + " keys equal, at " +
      new Date((v.finished || 0) * 1000).toLocaleString(), null, {"data-field": "verify_summary"}));
    for (const k of (v.keys || []).slice(0, 10))
      vd.appendChild(el("div", "db " + k.db + " " + k.key + ": " + k.reason, "err", {"data-field": "verify_key"}));
  }
  const cb = document.querySelector("#commands tbody");
  cb.replaceChildren();
  const cmds = Object.entries(doc.per_cmd_entries_count || {}).sort((a, b) => (b[1].read_count || 0) - (a[1].read_count || 0)).slice(0, 15);
  for (const [name, n] of cmds) {
    const row = el("tr", null, null, {"data-cmd": name});
    cell(row, "cmd", name, "l"); cell(row, "cmd_read", n.read_count ?? 0);
    cell(row, "cmd_written", n.write_count ?? 0); cell(row, "cmd_read_ops", Number(n.read_ops || 0).toFixed(1));
    cb.appendChild(row);
  }
  const eb = document.querySelector("#errors tbody");
  eb.replaceChildren();
  for (const e of (x.recent_errors || []).slice().reverse()) {
    const row = el("tr", null, null, {"data-field": "error_row"});
    cell(row, "error_time", e.time || "", "l"); cell(row, "error_level", e.level || "", "l");
    cell(row, "error_message", e.message || "", "l err");
    eb.appendChild(row);
  }
}
async function poll() {
  try {
    const r = await fetch(base, {cache: "no-store", headers: {"Accept": "application/json"}});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    polls++;
    set("polls", polls); set("updated", new Date().toLocaleTimeString()); set("fetch_error", "");
  } catch (e) {
    set("fetch_error", "status not reachable: " + e.message);
    const c = document.getElementById("consistent");
    c.textContent = "unreachable"; c.className = "badge wait";
  }
  setTimeout(poll, 1000);
}
poll();
</script>
</body>
</html>
"""
