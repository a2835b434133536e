// GET / on the admin listener: one HTML page, with its style and script inline and nothing from
// anywhere else, that reads the admin endpoints (/config, /clusters, /stats, /policy/history,
// /metrics) every two seconds and shows them. Every piece of text it shows goes in with
// textContent, never as markup: names, paths and errors come from policy files and requests.
#include "server/status_page.h"

#include "text/sha256.h"

namespace pilotfish {

namespace {

constexpr const char kPage[] = R"PAGE(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pilotfish</title>
<link rel="icon" href="data:,">
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d232a; background: #fbfbfa; }
h1 { font-size: 1.4em; margin: 0; } h2 { font-size: 1.1em; margin: 1.6em 0 .4em; }
header { display: flex; gap: 1.5em; align-items: baseline; flex-wrap: wrap; }
.muted { color: #66707a; } .mono { font-family: ui-monospace, monospace; font-size: 12px; }
table { border-collapse: collapse; margin-bottom: .6em; } th, td { padding: .2em .8em .2em 0; text-align: left; vertical-align: top; }
th { font-weight: 600; border-bottom: 1px solid #ccd; } td.n, th.n { text-align: right; }
.ok { color: #17803d; } .bad { color: #b3261e; font-weight: 600; } .warn { color: #9a6700; }
#banner { background: #fde7e5; color: #b3261e; padding: .5em .8em; }
.cluster { margin: .4em 0 1em; } .cluster h3 { font-size: 1em; margin: 0 0 .2em; }
</style>
</head>
<body>
<header><h1>pilotfish <span id="service"></span></h1><span id="policy" class="muted"></span><span id="updated" class="muted"></span></header>
<p id="banner" hidden></p>
<h2>Golden signals <span class="muted">(busiest first; the last 10 s and 1 min)</span></h2>
<table id="signals"></table>
<h2>Listeners and routes</h2>
<table id="listeners"></table>
<h2>Clusters</h2>
<div id="clusters"></div>
<h2>Certificates</h2>
<table id="certs"></table>
<h2>Policy history <span class="muted">(newest first)</span></h2>
<table id="history"></table>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function cell(v, cls) { return v instanceof Node ? v : el("td", v ?? "", cls); }
function fill(id, head, rows, empty) {
  const t = $(id);
  const out = [];
  const tr = el("tr");
  for (const h of head) tr.append(el("th", h[0], h[1]));
  out.push(tr);
  for (const cells of rows) {
    const r = el("tr");
    for (const c of cells) r.append(Array.isArray(c) ? cell(c[0], c[1]) : cell(c));
    out.push(r);
  }
  if (!rows.length) { const r = el("tr"); const td = el("td", empty, "muted"); td.colSpan = head.length; r.append(td); out.push(r); }
  t.replaceChildren(...out);
}
const fixed = (v, d) => (v === null || v === undefined) ? "-" : Number(v).toFixed(d);
const pct = (v) => (v === null || v === undefined) ? "-" : (100 * v).toFixed(1) + "%";
const rateClass = (v) => (v === null || v === undefined) ? "n" : v >= 0.99 ? "n ok" : v >= 0.9 ? "n warn" : "n bad";
const named = (n) => n === "" ? "(unnamed)" : n;

function signals(stats) {
  const head = [["listener"], ["route"], ["cluster"]];
  for (const w of ["10s", "1m"]) head.push([w + " req/s", "n"], [w + " success", "n"], [w + " p50 ms", "n"], [w + " p99 ms", "n"]);
  const rows = stats.routes.map((r) => {
    const cells = [r.listener, named(r.route), r.cluster || "-"];
    for (const w of ["10s", "1m"]) {
      const s = r[w];
      cells.push([fixed(s.rate, 1), "n"], [pct(s.success_rate), rateClass(s.success_rate)], [fixed(s.p50_ms, 2), "n"], [fixed(s.p99_ms, 2), "n"]);
    }
    return cells;
  });
  fill("signals", head, rows, "no requests in the last minute");
}

function target(route) {
  if (route.cluster) return "-> " + route.cluster;
  if (route.split) return "split " + route.split.map((s) => s.cluster + " " + s.weight).join(", ");
  if (route.respond) return "answers " + route.respond.status;
  if (route.redirect) return "redirects";
  return "";
}

function listeners(config) {
  const rows = [];
  for (const l of config.policy.listeners || []) {
    const flags = [l.protocol || "http"];
    if (l.mtls) flags.push("mtls");
    if (l.intercept && l.intercept !== "none") flags.push("intercept " + l.intercept);
    const routes = l.routes || [];
    routes.forEach((r, i) => {
      rows.push([i ? "" : l.name, i ? "" : l.address, i ? "" : flags.join(", "), named(r.name || ""),
                 [JSON.stringify(r.match || {}), "mono"], target(r)]);
    });
    if (!routes.length) rows.push([l.name, l.address, flags.join(", "), "", "", ""]);
  }
  fill("listeners", [["listener"], ["address"], ["kind"], ["route"], ["match"], ["to"]], rows, "no listeners");
}

function clusters(doc) {
  const out = [];
  for (const c of doc.clusters) {
    const box = el("div", null, "cluster");
    box.dataset.cluster = c.name;
    const b = c.circuit_breaker, f = c.in_flight;
    box.append(el("h3", c.name));
    box.append(el("div", "connections " + c.open_connections + " open; breaker: requests " + f.requests + "/" + b.max_requests +
      ", pending " + f.pending_requests + "/" + b.max_pending_requests + ", connections " + f.connections + "/" + b.max_connections +
      ", retries " + f.retries + "/" + b.max_retries + "; ejected now: " + c.endpoints_ejected, "muted"));
    const t = el("table");
    const head = el("tr");
    for (const h of ["endpoint", "health", "ejected until", "ejections", "failures in a row"]) head.append(el("th", h));
    t.append(head);
    for (const e of c.endpoints) {
      const r = el("tr");
      r.dataset.endpoint = e.address;
      r.append(el("td", e.address), el("td", e.health, e.health === "ok" ? "ok" : "bad"), el("td", e.ejected_until || "-"),
               el("td", e.ejections, "n"), el("td", e.consecutive_failures, "n"));
      t.append(r);
    }
    box.append(t);
    out.push(box);
  }
  $("clusters").replaceChildren(...out);
}

function certs(metrics) {
  const rows = [];
  const re = /^pilotfish_cert_expiry_timestamp_seconds\{cert="((?:[^"\\]|\\.)*)"\} (\S+)$/;
  for (const line of metrics.split("\n")) {
    const m = re.exec(line);
    if (!m) continue;
    const when = Number(m[2]) * 1000;
    const days = (when - Date.now()) / 86400000;
    rows.push([m[1], new Date(when).toISOString(), [days.toFixed(1), days < 0 ? "n bad" : days < 7 ? "n warn" : "n ok"]]);
  }
  fill("certs", [["certificate"], ["expires"], ["days left", "n"]], rows, "no identity: this sidecar has no certificates");
}

function changes(e) {
  const parts = [];
  if (Array.isArray(e.changes)) for (const c of e.changes) parts.push(typeof c === "string" ? c : JSON.stringify(c));
  else if (e.changes) parts.push(JSON.stringify(e.changes));
  for (const x of e.errors || []) parts.push(x);
  for (const x of e.warnings || []) parts.push("warning: " + x);
  return parts.join("; ");
}

function history(doc) {
  const rows = doc.events.slice(-20).reverse().map((e) => [[e.version, "n"], e.time, e.trigger,
    [e.outcome, e.outcome === "applied" || e.outcome === "started" ? "ok" : e.outcome === "rejected" ? "bad" : ""],
    [(e.sha256 || "").slice(0, 12), "mono"], [changes(e), "mono"]]);
  fill("history", [["version", "n"], ["time"], ["trigger"], ["outcome"], ["sha256"], ["changes"]], rows, "no policy events");
}

async function get(path, text) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + " answered " + r.status);
  return text ? r.text() : r.json();
}

async function refresh() {
  try {
    const [config, cl, stats, hist, metrics] = await Promise.all(
      [get("/config"), get("/clusters"), get("/stats"), get("/policy/history"), get("/metrics", true)]);
    $("service").textContent = config.policy.service || "";
    $("policy").textContent = "policy version " + config.version + " (" + config.sha256.slice(0, 12) + "), loaded " + config.loaded_at;
    signals(stats);
    listeners(config);
    clusters(cl);
    certs(metrics);
    history(hist);
    $("banner").hidden = true;
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (e) {
    $("banner").textContent = "the sidecar did not answer: " + e.message;
    $("banner").hidden = false;
  }
  setTimeout(refresh, 2000);
}
refresh();
</script>
</body>
</html>
)PAGE";

// 'sha256-BASE64' of the text between the first `open` tag and its closing tag.
std::string inline_hash(std::string_view page, std::string_view open, std::string_view close) {
  size_t start = page.find(open);
  size_t end = page.find(close, start);
  if (start == std::string_view::npos || end == std::string_view::npos) return "'none'";
  start += open.size();
  return "'sha256-" + sha256_base64(page.substr(start, end - start)) + "'";
}

}  // namespace

std::string_view status_page_html() { return {kPage, sizeof kPage - 1}; }

const std::string& status_page_headers() {
  static const std::string headers = [] {
    std::string_view page = status_page_html();
    return "content-security-policy: default-src 'none'; script-src " + inline_hash(page, "<script>", "</script>") +
           "; style-src " + inline_hash(page, "<style>", "</style>") +
           "; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n"
           "x-content-type-options: nosniff\r\nx-frame-options: DENY\r\nreferrer-policy: no-referrer\r\n";
  }();
  return headers;
}

}  // namespace pilotfish
