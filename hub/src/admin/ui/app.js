// Tether dashboard. Reads the admin JSON API of the hub that served it (same origin, same
// client certificate) and polls it every 2 s. Every value from the API is set as text, never
// as markup: labels, facts and messages come from agents. Buttons only call the API routes
// tetherctl calls; the hub decides whether the caller's role allows them.
"use strict";

const POLL_MS = 2000;
const STATES = ["Ready", "Unknown", "Offline", "Pending", "Denied"];
let me = null; // GET /v1/whoami
let lastShown = ""; // JSON of what the current page shows: redraw only on a change
let polling = false;

// ------------------------------------------------------------------ DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function table(headers, rows, testid) {
  return h("table", { "data-testid": testid },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.length
      ? rows.map((r) => h("tr", { "data-row": r.key }, r.cells.map((c) => h("td", {}, c))))
      : h("tr", {}, h("td", { colspan: headers.length, class: "empty" }, "none"))));
}

function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
}

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  return `${Math.round(s / 3600)}h ago`;
}

function stateBadge(state) {
  return h("span", { class: `state state-${state}` }, state);
}

function link(hash, text) {
  return h("a", { href: hash }, text);
}

function notice(text, isError) {
  const el = document.getElementById("notice");
  el.textContent = text || "";
  el.className = text ? (isError ? "error" : "info") : "";
}

// ------------------------------------------------------------------ API

async function api(path, init) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, init || {}));
  let body = null;
  try {
    body = await r.json();
  } catch (_) {
    body = null;
  }
  if (!r.ok) {
    const why = body && body.error ? body.error : r.statusText;
    const e = new Error(`${r.status}: ${why}`);
    e.status = r.status;
    throw e;
  }
  return body;
}

const enc = encodeURIComponent;

function canOperate() {
  return me !== null && (me.role === "operator" || me.role === "admin");
}

// An operator action: the button is disabled for a viewer (the server refuses it anyway).
// `confirmText`: asked first, for actions that change what clusters run.
function action(label, path, body, testid, confirmText) {
  const allowed = canOperate();
  return h("button", {
    "data-testid": testid,
    disabled: !allowed,
    title: allowed ? undefined : "needs the operator role",
    onclick: async (ev) => {
      if (confirmText && !window.confirm(confirmText)) return;
      ev.target.disabled = true;
      try {
        await api(path, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body || {}),
        });
        notice(`${label}: done`, false);
      } catch (e) {
        notice(`${label}: ${e.message}`, true);
      }
      lastShown = "";
      poll();
    },
  }, label);
}

// ------------------------------------------------------------------ pages

function labelFilter() {
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  return q.get("l") || "";
}

function matches(labels, filter) {
  return filter.split(",").map((s) => s.trim()).filter(Boolean).every((term) => {
    const [k, v] = term.split("=");
    return v === undefined ? k in (labels || {}) : (labels || {})[k] === v;
  });
}

async function overviewData() {
  const [clusters, joins, works] = await Promise.all([
    api("/v1/clusters"), api("/v1/join-requests"), api("/v1/works"),
  ]);
  return { clusters, joins, works };
}

function countBy(items, keyOf) {
  const out = new Map();
  for (const it of items) {
    const k = keyOf(it);
    if (k === undefined) continue;
    out.set(k, (out.get(k) || 0) + 1);
  }
  return [...out.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1));
}

function overview(d) {
  const filter = labelFilter();
  const shown = d.clusters.filter((c) => matches(c.labels, filter));
  const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const c of shown) counts[c.state] = (counts[c.state] || 0) + 1;
  // A cluster exists only once approved: pending requests are counted from the requests.
  counts.Pending = d.joins.filter((j) => j.state === "Pending" && matches(j.labels, filter)).length;
  const byLabel = (key) => countBy(shown, (c) => (c.labels || {})[key]);
  const labelCounts = (key) => h("section", { class: "card" },
    h("h3", {}, `By ${key}`),
    h("ul", { class: "counts", "data-testid": `by-${key}` }, byLabel(key).map(([v, n]) =>
      h("li", { "data-label": `${key}=${v}` }, link(`#/?l=${enc(`${key}=${v}`)}`, `${v}`), " ", h("b", {}, n)))));
  const changed = [...shown]
    .filter((c) => c.last_seen_ms)
    .sort((a, b) => b.last_seen_ms - a.last_seen_ms);
  return [
    h("h2", {}, "Fleet", filter ? ` (${filter})` : ""),
    h("div", { class: "cards" },
      STATES.map((s) => h("div", { class: `card count state-${s}`, "data-testid": `count-${s}` },
        h("div", { class: "n" }, counts[s]), h("div", {}, s)))),
    h("div", { class: "cards" }, labelCounts("region"), labelCounts("zone")),
    h("h3", {}, "Changed state in the last hour"),
    table(["Name", "State", "Since"], shown
      .filter((c) => c.state_since_ms && Date.now() - c.state_since_ms < 3600 * 1000)
      .sort((a, b) => b.state_since_ms - a.state_since_ms)
      .slice(0, 20)
      .map((c) => ({ key: c.name, cells: [link(`#/cluster/${enc(c.name)}`, c.name), stateBadge(c.state), ago(c.state_since_ms)] })),
    "recent-changes"),
    h("h3", {}, `Clusters (${shown.length} of ${d.clusters.length})`),
    table(["Name", "State", "Session", "Labels", "Arch", "Last heartbeat"], changed.concat(shown.filter((c) => !c.last_seen_ms)).map((c) => ({
      key: c.name,
      cells: [link(`#/cluster/${enc(c.name)}`, c.name), stateBadge(c.state),
        c.connected ? "connected" : "—", labelsText(c.labels), c.facts.arch, ago(c.last_seen_ms)],
    })), "clusters"),
    h("h3", {}, `Works (${d.works.length})`),
    table(["Work", "Generation", "Targeted", "Delivered", "Applied", "Failed"], d.works.map((w) => ({
      key: w.name,
      cells: [link(`#/work/${enc(w.name)}`, w.name), w.generation, w.targeted, w.delivered,
        w.applied, w.failed],
    })), "works"),
  ];
}

async function clusterData(name) {
  const [cluster, works, audit] = await Promise.all([
    api(`/v1/clusters/${enc(name)}`), api("/v1/works"),
    api(`/v1/audit?cluster=${enc(name)}&limit=20`),
  ]);
  // The works this cluster holds or is meant to: each work's detail has its per-cluster row.
  const details = await Promise.all(works.map((w) => api(`/v1/works/${enc(w.name)}`).catch(() => null)));
  const held = [];
  for (const d of details) {
    if (!d) continue;
    const row = d.clusters.find((r) => r.cluster === name);
    if (row) held.push({ work: d.summary.name, generation: d.summary.generation, row });
  }
  return { cluster, held, audit };
}

function clusterPage(d) {
  const c = d.cluster;
  const facts = Object.entries(c.facts).map(([k, v]) => ({ key: k, cells: [k, v === null ? "—" : v, k in (c.pins || {}) ? `pinned: ${c.pins[k]}` : ""] }));
  return [
    h("h2", {}, "Cluster ", h("span", { "data-testid": "cluster-name" }, c.name), " ", stateBadge(c.state)),
    h("p", {}, c.connected ? "Session connected. " : "No session. ", `Last heartbeat ${ago(c.last_seen_ms)}; joined ${new Date(c.joined_at_ms).toISOString()}; certificate ${c.cert_serial} valid until ${new Date(c.cert_not_after_ms).toISOString()}.`),
    h("h3", {}, "Labels"),
    table(["Key", "Value"], Object.entries(c.labels).map(([k, v]) => ({ key: k, cells: [k, v] })), "labels"),
    h("h3", {}, "Facts"),
    table(["Fact", "Reported", "Pin"], facts, "facts"),
    h("h3", {}, "Conditions"),
    table(["Type", "Status", "Reason", "Message"], c.conditions.map((x) => ({ key: x.type, cells: [x.type, x.status, x.reason, x.message] })), "conditions"),
    h("h3", {}, "Works"),
    table(["Work", "Targeted", "Delivered gen.", "Applied gen.", "Phase", "Message", "Observed"], d.held.map((w) => ({
      key: w.work,
      cells: [link(`#/work/${enc(w.work)}`, w.work), w.row.targeted ? "yes" : "being removed",
        w.row.delivered_generation ?? "—", w.row.applied_generation ?? "—",
        w.row.phase || "—", w.row.message, ago(w.row.observed_at_ms)],
    })), "cluster-works"),
    h("h3", {}, "Sessions with this hub (newest last)"),
    table(["Opened", "Closed", "Lasted"], (c.recent_sessions || []).map((s) => ({
      key: String(s.opened_ms),
      cells: [new Date(s.opened_ms).toISOString(), s.closed_ms ? new Date(s.closed_ms).toISOString() : "open",
        `${Math.round(((s.closed_ms || Date.now()) - s.opened_ms) / 1000)}s`],
    })), "sessions"),
    h("h3", {}, "Audit events (newest 20)"),
    table(["When", "Kind", "Actor", "Detail"], [...d.audit].reverse().map((e) => ({
      key: String(e.seq),
      cells: [ago(e.at_ms), e.kind, e.actor, e.detail],
    })), "cluster-audit"),
  ];
}

async function workData(name) {
  const [detail, placement, rollout] = await Promise.all([
    api(`/v1/works/${enc(name)}`), api(`/v1/works/${enc(name)}/placement`), api(`/v1/works/${enc(name)}/rollout`),
  ]);
  return { detail, placement, rollout };
}

function workPage(d) {
  const s = d.detail.summary;
  const r = d.rollout;
  const paused = r.paused;
  return [
    h("h2", {}, "Work ", h("span", { "data-testid": "work-name" }, s.name), ` — generation ${s.generation}`, s.deleted ? " (deleted)" : ""),
    h("section", { class: "card rollout", "data-testid": "rollout" },
      h("h3", {}, "Rollout: ", h("span", { "data-testid": "rollout-phase" }, r.phase), paused ? " (paused)" : ""),
      r.reason ? h("p", {}, r.reason) : null,
      h("progress", { max: Math.max(r.total, 1), value: r.done, "data-testid": "rollout-progress" }),
      h("p", { "data-testid": "rollout-counts" },
        `${r.done} of ${r.total} done · ${r.admitted} admitted · ${r.in_flight} in flight · ${r.failed} failed · ${r.pending_offline} waiting offline`),
      h("p", {},
        paused
          ? action("Resume", `/v1/works/${enc(s.name)}/resume`, null, "resume")
          : action("Pause", `/v1/works/${enc(s.name)}/pause`, null, "pause"),
        " ",
        s.generation > 1 && !s.deleted
          ? action(`Undo to generation ${s.generation - 1}`, `/v1/works/${enc(s.name)}/undo`, null, "undo",
            `Roll ${s.name} back to the manifests of generation ${s.generation - 1}? It becomes generation ${s.generation + 1} and rolls out like any change.`)
          : null)),
    h("h3", {}, "Placement"),
    table(["Cluster", "Selected", "Why"], d.placement.map((c) => ({
      key: c.cluster,
      cells: [link(`#/cluster/${enc(c.cluster)}`, c.cluster), c.selected ? "selected" : "not selected", c.reason],
    })), "placement"),
    h("h3", {}, "Clusters"),
    table(["Cluster", "Targeted", "Delivered gen.", "Applied gen.", "Phase", "Message"], d.detail.clusters.map((c) => ({
      key: c.cluster,
      cells: [link(`#/cluster/${enc(c.cluster)}`, c.cluster), c.targeted ? "yes" : "being removed",
        c.delivered_generation ?? "—", c.applied_generation ?? "—",
        h("span", { "data-testid": "phase" }, c.phase || "—"), c.message],
    })), "work-clusters"),
  ];
}

async function joinsData() {
  return { joins: await api("/v1/join-requests") };
}

function joinsPage(d) {
  const pending = d.joins.filter((j) => j.state === "Pending");
  const decided = d.joins.filter((j) => j.state !== "Pending");
  return [
    h("h2", {}, "Join requests"),
    h("h3", {}, `Pending (${pending.length})`),
    table(["Name", "Labels", "Arch", "Host", "From", "Requested", ""], pending.map((j) => ({
      key: j.name,
      cells: [j.name, labelsText(j.labels), j.facts.arch, j.facts.hostname, j.peer_addr, ago(j.created_at_ms),
        h("span", {}, action("Approve", `/v1/clusters/${enc(j.name)}/approve`, null, `approve-${j.name}`), " ",
          action("Deny", `/v1/clusters/${enc(j.name)}/deny`, { reason: "denied from the dashboard" }, `deny-${j.name}`))],
    })), "pending"),
    h("h3", {}, "Decided"),
    table(["Name", "State", "Reason", "Labels"], decided.map((j) => ({
      key: j.name, cells: [j.name, j.state, j.reason || "", labelsText(j.labels)],
    })), "decided"),
  ];
}

// ------------------------------------------------------------------ router and polling

function route() {
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/";
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "cluster" && parts[1]) return { load: () => clusterData(parts[1]), show: clusterPage };
  if (parts[0] === "work" && parts[1]) return { load: () => workData(parts[1]), show: workPage };
  if (parts[0] === "joins") return { load: joinsData, show: joinsPage };
  return { load: overviewData, show: overview };
}

let again = false; // a poll was asked for while one was under way (a click, a new page)

async function poll() {
  if (polling) {
    again = true;
    return;
  }
  polling = true;
  const hash = location.hash;
  try {
    if (me === null) {
      me = await api("/v1/whoami");
      document.getElementById("whoami").textContent = `${me.name} (${me.role})`;
    }
    const r = route();
    const data = await r.load();
    if (data.joins) {
      const n = data.joins.filter((j) => j.state === "Pending").length;
      document.getElementById("pending-badge").textContent = n ? `(${n})` : "";
    }
    const key = hash + JSON.stringify(data);
    // The page changed while we waited: the next poll draws the new one.
    if (hash === location.hash && key !== lastShown) {
      lastShown = key;
      document.getElementById("main").replaceChildren(...r.show(data));
    }
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (e) {
    notice(`${e.message}`, true);
  } finally {
    polling = false;
    if (again) {
      again = false;
      poll();
    }
  }
}

window.addEventListener("hashchange", () => {
  lastShown = "";
  notice("");
  poll();
});
document.addEventListener("DOMContentLoaded", () => {
  poll();
  setInterval(poll, POLL_MS);
});
