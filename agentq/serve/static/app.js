// AgentQ dashboard: plain JS over the service's REST API and per-round event stream. No build step: what is
// committed here is what the browser runs.
//
// Task ids, round names and model answers are untrusted text. Nothing here builds HTML from strings: every
// element is made with createElement and every datum goes in as a text node or an attribute value (see h()),
// and handlers are attached with addEventListener. The service's Content-Security-Policy forbids inline
// script and style as a second wall.
"use strict";

const view = document.getElementById("view");
const crumbs = document.getElementById("crumbs");
const live = document.getElementById("live");
const SVG_NS = "http://www.w3.org/2000/svg";
const TERMINAL = ["Succeeded", "Failed", "Interrupted"];
let cleanup = [];  // timers and sockets of the current page, closed when the route changes

// ---- DOM -------------------------------------------------------------------------------------------------

function safeHref(value) {
  const text = String(value);
  return text.startsWith("#") || text.startsWith("/") ? text : "#";
}

function build(ns, tag, attrs, children) {
  const el = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key === "on") {
      for (const [type, handler] of Object.entries(value)) el.addEventListener(type, handler);
    } else if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) if (v != null) el.dataset[k] = String(v);
    } else if (key.startsWith("on")) {
      throw new Error(`inline handler ${key}: use the on: {} map`);
    } else if (key === "href") {
      el.setAttribute("href", safeHref(value));
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const h = (tag, attrs, ...children) => build(null, tag, attrs, children);
const s = (tag, attrs, ...children) => build(SVG_NS, tag, attrs, children);
const fill = (el, ...children) => { el.replaceChildren(); return add(el, children); };
const enc = encodeURIComponent;

// ---- formatting ------------------------------------------------------------------------------------------

const pct = (x) => (x == null ? "–" : `${(100 * x).toFixed(1)}%`);
const num = (x, digits = 2) => (x == null ? "–" : Number(x).toFixed(digits));
const signed = (x) => (x == null ? "–" : `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)}%`);
function duration(seconds) {
  if (seconds == null) return "";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)}s`;
  const m = Math.floor(seconds / 60);
  return m < 60 ? `${m}m ${Math.round(seconds % 60)}s` : `${Math.floor(m / 60)}h ${m % 60}m`;
}
const when = (t) => (t != null ? new Date(t * 1000).toLocaleString() : "–");
const badge = (state, label) => h("span", {class: `badge ${String(state ?? "").replace(/[^A-Za-z_]/g, "")}`}, label ?? state ?? "–");
const roundHref = (name, tab) => `#/round/${enc(name)}${tab ? `/${tab}` : ""}`;
const treeHref = (name, task) => `#/round/${enc(name)}/tree/${String(task).split("/").map(enc).join("/")}`;

// ---- the API ---------------------------------------------------------------------------------------------

const token = () => localStorage.getItem("agentq-token") || "";
const authHeaders = () => (token() ? {Authorization: `Bearer ${token()}`} : {});

function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v != null && v !== "") query.set(k, v);
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

async function fetchOk(path, params) {
  const response = await fetch(withQuery(path, params), {headers: authHeaders(), cache: "no-store"});
  if (response.status === 401) { await response.text(); askToken(); throw new Error("a bearer token is needed"); }
  return response;
}

async function api(path, params) {
  const response = await fetchOk(path, params);
  // A response is read to its end even when its body is not wanted: an unread one stays in flight, holding its
  // connection until garbage collection.
  if (response.status === 404) { await response.text(); return null; }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(String(detail));
  }
  return response.json();
}

async function download(path, params, format) {
  // The token is a header, so an export is fetched and handed to the browser as a blob, never a link with it.
  const response = await fetchOk(path, {...params, format, offset: null, limit: null});
  if (!response.ok) { await response.text(); throw new Error(`export failed: ${response.status}`); }
  const name = (response.headers.get("content-disposition") || "").match(/filename="([^"]+)"/);
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", {href: "#", download: name ? name[1] : `table.${format}`});
  link.href = url;  // a blob: URL, set directly (safeHref keeps data out of href attributes)
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function askToken() {
  const dialog = document.getElementById("login");
  if (!dialog.open) dialog.showModal();
}

document.getElementById("login-form").addEventListener("submit", () => {
  localStorage.setItem("agentq-token", document.getElementById("token").value.trim());
  route();
});

function setCrumbs(parts) {
  const items = parts.map(([label, href]) => (href ? h("a", {href}, label) : h("span", {}, label)));
  fill(crumbs, items.flatMap((item, i) => (i ? [" / ", item] : [item])));
}

function showError(err) {
  view.prepend(h("div", {class: "panel error", role: "alert"}, String(err && err.message ? err.message : err)));
}

// ---- tables: paged, searchable, filterable, exportable ---------------------------------------------------

function select(label, options, value, onChange) {
  const el = h("select", {"aria-label": label, on: {change: () => onChange(el.value)}},
    options.map(([v, text]) => h("option", {value: v, selected: v === value}, text)));
  return el;
}

function dataTable({id, path, params = {}, columns, filters = [], rowLink, rowData, empty, search = "search tasks",
                    onData, expand}) {
  // columns: [{key, label, num, cls, render(row) -> node|string}]; filters: [{key, label, options(data) -> [[v, text]]}]
  const state = {offset: 0, limit: 50, q: ""};
  for (const f of filters) state[f.key] = f.value ?? "";
  const root = h("div", {class: "table-block", id: `${id}-block`});
  const controls = h("div", {class: "controls"});
  const body = h("div", {class: "table-wrap"});
  const pager = h("div", {class: "pager"});
  let lastData = null;
  let timer = null;
  const input = h("input", {type: "search", placeholder: search, "aria-label": search, value: state.q, on: {input: () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.q = input.value; state.offset = 0; load().catch(showError); }, 250);
  }}});
  const query = () => ({...params, ...state});
  const exportButtons = ["csv", "json"].map((format) => h("button", {type: "button", dataset: {export: format},
    on: {click: () => download(path, query(), format).catch(showError)}}, `Export ${format.toUpperCase()}`));
  const filterSlot = h("span", {class: "filters"});
  add(controls, [input, filterSlot, h("span", {class: "spacer"}), exportButtons]);
  add(root, [controls, body, pager]);

  let drawn = "";
  function drawFilters(data) {
    const options = filters.map((f) => [["", f.all || `any ${f.label}`], ...f.options(data)]);
    const key = JSON.stringify([options, filters.map((f) => state[f.key])]);
    if (key === drawn) return;  // a periodic refresh must not close a list the user has open
    drawn = key;
    fill(filterSlot, filters.map((f, i) => select(f.label, options[i], state[f.key],
      (value) => { state[f.key] = value; state.offset = 0; load().catch(showError); })));
  }

  function row(item) {
    const href = rowLink ? rowLink(item) : null;
    const attrs = {dataset: rowData ? rowData(item) : {}};
    if (href) {
      attrs.class = "link";
      attrs.on = {click: (e) => { if (!e.target.closest("a, button, summary, input, select, details")) location.hash = href; }};
    }
    const cells = columns.map((c) => h("td", {class: [c.num ? "num" : "", c.cls || ""].join(" ").trim() || null},
      c.render ? c.render(item) : item[c.key] ?? "–"));
    const tr = h("tr", attrs, cells);
    return expand ? [tr, expand(item, columns.length)] : [tr];
  }

  async function load() {
    const data = await api(path, query());
    if (!data) { fill(body, h("p", {class: "muted"}, empty)); fill(pager); return null; }
    lastData = data;
    drawFilters(data);
    if (!data.total) {
      fill(body, h("p", {class: "muted", dataset: {empty: id}}, state.q || filters.some((f) => state[f.key]) ? "Nothing matches." : empty));
    } else {
      fill(body, h("table", {id}, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {class: c.num ? "num" : null, scope: "col"}, c.label)))),
        h("tbody", {}, data.items.map(row))));
    }
    const first = data.total ? data.offset + 1 : 0, last = Math.min(data.offset + data.limit, data.total);
    fill(pager,
      h("button", {type: "button", disabled: data.offset === 0, "aria-label": "previous page",
        on: {click: () => { state.offset = Math.max(0, state.offset - state.limit); load().catch(showError); }}}, "‹ Prev"),
      h("span", {class: "muted", dataset: {total: data.total}}, `${first}–${last} of ${data.total}`),
      h("button", {type: "button", disabled: last >= data.total, "aria-label": "next page",
        on: {click: () => { state.offset += state.limit; load().catch(showError); }}}, "Next ›"));
    if (onData) onData(data);
    return data;
  }
  return {root, load, state, get data() { return lastData; }};
}

// ---- charts (inline SVG, built as elements) --------------------------------------------------------------

function yAxis(svg, y, left, right) {
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    add(svg, [s("line", {class: "gridline", x1: left, x2: right, y1: y(t), y2: y(t)}),
      s("text", {x: left - 6, y: y(t) + 4, "text-anchor": "end"}, `${t * 100}%`)]);
  }
}

function passRateChart(summary) {
  const arms = summary.arms;
  const modes = [...new Set(arms.flatMap((a) => Object.keys(a.modes)))];
  const W = 560, H = 260, left = 44, bottom = 34, top = 14;
  const plotH = H - bottom - top, groupW = (W - left - 10) / Math.max(modes.length, 1);
  const barW = Math.min(46, (groupW - 24) / arms.length);
  const y = (v) => top + plotH * (1 - v);
  const svg = s("svg", {id: "pass-rate-chart", viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": "pass rate per mode"});
  yAxis(svg, y, left, W - 10);
  modes.forEach((mode, i) => {
    const x0 = left + i * groupW + (groupW - barW * arms.length) / 2;
    arms.forEach((arm, j) => {
      const row = arm.modes[mode];
      if (!row) return;
      const x = x0 + j * barW, cx = x + barW / 2;
      const [lo, hi] = row.ci95;
      add(svg, [
        s("rect", {x: x + 3, y: y(row.pass_rate), width: barW - 6, height: y(0) - y(row.pass_rate),
          class: arm.arm === "baseline" ? "bar-base" : "bar-round", dataset: {arm: arm.arm, mode}},
          s("title", {}, `${arm.label} ${mode}: ${pct(row.pass_rate)} (95% ${row.interval} ${pct(lo)}–${pct(hi)}, ${row.tasks} tasks)`)),
        s("path", {class: "ci", d: `M${cx} ${y(hi)}V${y(lo)}M${cx - 6} ${y(hi)}h12M${cx - 6} ${y(lo)}h12`}),
        s("text", {x: cx, y: y(hi) - 4, "text-anchor": "middle"}, `${(100 * row.pass_rate).toFixed(0)}%`)]);
    });
    add(svg, s("text", {x: left + i * groupW + groupW / 2, y: H - 12, "text-anchor": "middle"}, mode));
  });
  add(svg, s("line", {class: "axis", x1: left, x2: W - 10, y1: y(0), y2: y(0)}));
  const method = [...new Set(arms.flatMap((a) => Object.values(a.modes).map((m) => m.interval)))].join(", ");
  return [svg, h("div", {class: "legend"},
    arms.map((a) => h("span", {}, h("i", {class: `swatch ${a.arm === "baseline" ? "base" : "round"}`}), a.label)),
    h("span", {}, `whiskers: 95% interval (${method})`))];
}

function lineChart(id, series, xLabels, yLabel, yMax = 1, format = (v) => pct(v)) {
  // series: [{name, points: [[xIndex, value]]}]
  const W = 560, H = 240, left = 48, bottom = 44, top = 14, right = 16, inset = 36;
  const n = Math.max(xLabels.length - 1, 1);
  const x = (i) => left + inset + (W - left - right - 2 * inset) * (xLabels.length === 1 ? 0.5 : i / n);
  const y = (v) => top + (H - top - bottom) * (1 - v / yMax);
  const svg = s("svg", {id, viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": yLabel});
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    add(svg, [s("line", {class: "gridline", x1: left, x2: W - right, y1: y(t * yMax), y2: y(t * yMax)}),
      s("text", {x: left - 6, y: y(t * yMax) + 4, "text-anchor": "end"}, format(t * yMax))]);
  }
  const step = Math.ceil(xLabels.length / 12);  // at most a dozen labels
  xLabels.forEach((label, i) => { if (i % step === 0) add(svg, s("text", {x: x(i), y: H - 26, "text-anchor": "middle"}, label)); });
  series.forEach((line, k) => {
    const cls = `series-${k % 5}`;
    add(svg, s("polyline", {class: `line ${cls}`, points: line.points.map(([i, v]) => `${x(i)},${y(v)}`).join(" ")}));
    for (const [i, v] of line.points) add(svg, s("circle", {class: cls, cx: x(i), cy: y(v), r: 3.5}, s("title", {}, `${line.name} ${xLabels[i]}: ${format(v)}`)));
  });
  return [svg, h("div", {class: "legend"}, series.map((line, k) => h("span", {}, h("i", {class: `swatch series-${k % 5}`}), line.name)), h("span", {}, yLabel))];
}

// ---- the rounds list -------------------------------------------------------------------------------------

function stepBar(steps, big = false, progress = null) {
  return h("div", {class: `steps${big ? " big" : ""}`}, (steps || []).map((step) => {
    let detail = step.state === "Succeeded" ? duration(step.seconds) : step.state === "Partial" ? `${step.shards.done}/${step.shards.total}` : step.state;
    const collect = progress && progress.collect;
    if (step.name === "collect" && step.state === "Running" && collect) detail = `${collect.trees}${collect.tasks != null ? `/${collect.tasks}` : ""} trees`;
    const train = progress && progress.train;
    if (step.name === "train" && step.state === "Running" && train && train.maxSteps) detail = `step ${train.step}/${train.maxSteps}`;
    return h("div", {class: `step ${step.state}`, dataset: {step: step.name, state: step.state}, title: `${step.name}: ${step.state}`},
      step.name, big ? h("small", {}, detail || "\u00a0") : null);
  }));
}

async function roundsPage() {
  setCrumbs([["rounds"]]);
  const rounds = dataTable({
    id: "rounds-table", path: "/api/rounds", search: "search rounds", empty: "No rounds in this store yet.",
    rowLink: (r) => roundHref(r.name), rowData: (r) => ({round: r.name}),
    filters: [{key: "phase", label: "phase", options: (d) => (d.phases || []).map((p) => [p, p])},
      {key: "kind", label: "kind", options: (d) => (d.kinds || []).map((k) => [k, k])}],
    columns: [
      {label: "round", cls: "id", render: (r) => h("a", {href: roundHref(r.name)}, r.name)},
      {label: "phase", render: (r) => badge(r.phase)},
      {label: "steps", render: (r) => stepBar(r.steps)},
      {label: "kind", render: (r) => r.kind || "–"},
      {label: "model", cls: "text", render: (r) => [r.model || "", r.fromRound ? h("span", {class: "muted"}, ` from ${r.fromRound}`) : null]},
      {label: "pass rate", render: (r) => Object.entries(r.passRate || {}).map(([m, v], i) => [i ? h("br") : null, `${m} ${pct(v)}`])},
      {label: "updated", cls: "muted", render: (r) => when(r.updatedTime || r.completionTime)}],
  });
  const campaigns = dataTable({
    id: "campaigns-table", path: "/api/campaigns", search: "search campaigns", empty: "No campaigns in this store.",
    rowLink: (c) => `#/campaign/${enc(c.name)}`, rowData: (c) => ({campaign: c.name}),
    columns: [
      {label: "campaign", cls: "id", render: (c) => h("a", {href: `#/campaign/${enc(c.name)}`}, c.name)},
      {label: "rounds", num: true, render: (c) => `${c.rounds} / ${c.plannedRounds ?? "–"}`},
      {label: "stopped", render: (c) => c.stopped || c.phase || "running"},
      {label: "mode judged", render: (c) => c.mode || "–"},
      {label: "best pass@1", num: true, render: (c) => pct(c.bestPassRate)}],
  });
  const campaignPanel = h("section", {class: "panel", id: "campaigns"}, h("h2", {}, "Campaigns"), campaigns.root);
  fill(view, h("h1", {}, "Rounds"), h("section", {class: "panel"}, rounds.root), campaignPanel);
  await rounds.load();
  const found = await campaigns.load();
  campaignPanel.hidden = !found || (!found.total && !campaigns.state.q);
  const timer = setInterval(() => rounds.load().catch(showError), 2000);
  cleanup.push(() => clearInterval(timer));
}

// ---- one round -------------------------------------------------------------------------------------------

const TABS = [["", "Overview"], ["trees", "Trees"], ["results", "Results"], ["pairs", "Pairs"], ["compare", "Compare"]];

function progressPanel(round) {
  const out = [];
  const collect = round.progress && round.progress.collect;
  const collecting = round.steps.some((st) => st.name === "collect" && st.state !== "Pending");
  if (collect && (collect.trees || collecting)) {
    const share = collect.tasks ? Math.min(1, collect.trees / collect.tasks) : null;
    const bar = h("div", {class: "bar", role: "progressbar", "aria-label": "trees collected", "aria-valuemin": 0,
      "aria-valuemax": collect.tasks ?? collect.trees, "aria-valuenow": collect.trees}, h("span", {}));
    if (share != null) bar.firstChild.style.width = `${(100 * share).toFixed(1)}%`;  // CSSOM, allowed by the CSP
    out.push(h("div", {class: "progress", id: "collect-progress", dataset: {trees: collect.trees, tasks: collect.tasks}},
      h("h3", {}, "Collect"), bar,
      h("span", {}, `${collect.trees}${collect.tasks != null ? ` of ${collect.tasks}` : ""} trees · ${collect.samples} samples · ${collect.executions} sandbox runs · ${collect.solved} solved · shards ${collect.shardsDone}/${collect.shards} done`)));
  }
  const train = round.progress && round.progress.train;
  if (train) {
    const losses = train.history.filter((p) => p.loss != null);
    const accs = train.history.filter((p) => p.rewardAccuracy != null || p.evalRewardAccuracy != null);
    const steps = [...new Set(train.history.map((p) => p.step))].sort((a, b) => a - b);
    const maxLoss = Math.max(1, ...losses.map((p) => p.loss));
    const share = train.maxSteps ? Math.min(1, train.step / train.maxSteps) : null;
    const bar = h("div", {class: "bar", role: "progressbar", "aria-label": "training steps", "aria-valuemin": 0,
      "aria-valuemax": train.maxSteps, "aria-valuenow": train.step}, h("span", {}));
    if (share != null) bar.firstChild.style.width = `${(100 * share).toFixed(1)}%`;
    const series = [];
    if (losses.length) series.push({name: "loss", points: losses.map((p) => [steps.indexOf(p.step), p.loss / maxLoss])});
    const acc = accs.filter((p) => p.rewardAccuracy != null);
    if (acc.length) series.push({name: "reward accuracy", points: acc.map((p) => [steps.indexOf(p.step), p.rewardAccuracy])});
    const held = accs.filter((p) => p.evalRewardAccuracy != null);
    if (held.length) series.push({name: "held-out reward accuracy", points: held.map((p) => [steps.indexOf(p.step), p.evalRewardAccuracy])});
    out.push(h("div", {class: "progress", id: "train-progress", dataset: {step: train.step, maxSteps: train.maxSteps}},
      h("h3", {}, `Train (${train.method || "?"})`), bar,
      h("span", {}, `step ${train.step ?? "–"} of ${train.maxSteps ?? "–"} · loss ${num(train.loss, 3)} · reward accuracy ${num(train.rewardAccuracy)}${train.evalRewardAccuracy != null ? ` · held out ${num(train.evalRewardAccuracy)}` : ""}`),
      series.length && steps.length > 1 ? h("div", {class: "chart-small"}, lineChart("train-curve", series, steps.map((st) => `step ${st}`),
        maxLoss > 1 ? `per step (loss divided by ${num(maxLoss, 2)})` : "per step", 1, (v) => num(v, 2))) : null));
  }
  return out;
}

function stepsPanel(round, full) {
  const rows = round.steps.map((st) => h("tr", {},
    h("td", {}, st.name), h("td", {}, badge(st.state)), h("td", {class: "muted"}, when(st.startTime)),
    h("td", {class: "num"}, duration(st.seconds)),
    h("td", {class: "text"}, Object.entries(st.result || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", "))));
  return [h("h2", {}, "Steps"), stepBar(round.steps, true, round.progress), ...progressPanel(round),
    full ? h("div", {class: "table-wrap"}, h("table", {id: "steps-table"},
      h("thead", {}, h("tr", {}, ["step", "state", "started", "took", "result"].map((c, i) => h("th", {class: i === 3 ? "num" : null, scope: "col"}, c)))),
      h("tbody", {}, rows))) : null,
    round.message && round.phase !== "Succeeded" ? h("p", {class: "error", id: "round-message"}, round.message) : null];
}

function comparisonTable(summary) {
  const entries = Object.entries(summary.comparison || {});
  if (!entries.length) return h("p", {class: "muted"}, "No base arm in this summary: the round was evaluated without its starting model, so there is no paired difference to show.");
  const head = ["mode", "paired tasks", "Δ pass@1", "95% CI", "fixed / broken", "McNemar p", "reading"];
  return h("div", {class: "table-wrap"}, h("table", {id: "comparison"},
    h("thead", {}, h("tr", {}, head.map((c, i) => h("th", {class: i && i < 6 ? "num" : null, scope: "col"}, c)))),
    h("tbody", {}, entries.map(([mode, c]) => {
      const [lo, hi] = c.delta_ci95;
      const word = lo > 0 ? "gain" : hi < 0 ? "loss" : "no detectable difference";
      return h("tr", {}, h("td", {}, mode), h("td", {class: "num"}, c.tasks), h("td", {class: "num"}, signed(c.delta_pass_at_1)),
        h("td", {class: "num"}, `[${signed(lo)}, ${signed(hi)}]`), h("td", {class: "num"}, `${c.greedy_wins} / ${c.greedy_losses}`),
        h("td", {class: "num"}, num(c.mcnemar_p, 3)), h("td", {}, word));
    }))));
}

function computeCurve(summary) {
  // pass@k against k: what drawing more samples per task buys (needs evaluate.samples > 1)
  const series = [];
  let ks = new Set();
  for (const arm of summary.arms) {
    for (const [mode, row] of Object.entries(arm.modes)) {
      const points = Object.entries(row.pass_at || {}).map(([k, v]) => [Number(k), v]).sort((a, b) => a[0] - b[0]);
      if (points.length > 1) { series.push({name: `${arm.arm} ${mode}`, raw: points}); points.forEach(([k]) => ks.add(k)); }
    }
  }
  if (!series.length) return h("p", {class: "muted"}, "One sample per task: no pass@k beyond pass@1 to plot (set evaluate.samples above 1).");
  ks = [...ks].sort((a, b) => a - b);
  return lineChart("compute-curve", series.map((line) => ({name: line.name, points: line.raw.map(([k, v]) => [ks.indexOf(k), v])})), ks.map((k) => `k=${k}`), "pass@k vs samples per task");
}

async function learningCurve(name) {
  const curve = await api(`/api/rounds/${enc(name)}/learning-curve`);
  if (!curve) return h("p", {class: "muted"}, "Not evaluated yet.");
  const note = h("p", {class: "muted", id: "curve-note"}, `Rounds evaluated on this round's test set (${curve.testSet.kind} tasks, ${curve.testSet.tasks} of them)` +
    (curve.otherTestSets ? `; ${curve.otherTestSets} round(s) evaluated on other sets are not joined into the line.` : "."));
  if (curve.points.length < 2) return [h("p", {class: "muted"}, "One evaluated round on this test set: the learning curve needs two or more."), note];
  const modes = [...new Set(curve.points.flatMap((p) => Object.keys(p.modes)))];
  const series = modes.map((mode) => ({name: mode, points: curve.points.map((p, i) => [i, p.modes[mode]?.pass_rate]).filter(([, v]) => v != null)}));
  return [...lineChart("learning-curve", series, curve.points.map((p) => p.round), "pass@1 by round, in evaluation order"), note];
}

async function overviewTab(name, slot) {
  const summary = await api(`/api/rounds/${enc(name)}/eval/summary`);
  if (!summary) { fill(slot, h("div", {class: "panel muted", id: "results"}, "Not evaluated yet.")); return; }
  fill(slot, h("div", {class: "grid", id: "results"},
    h("section", {class: "panel"}, h("h2", {}, `Pass rate per mode${summary.arms.length > 1 ? ": base vs round" : ""}`), passRateChart(summary)),
    h("section", {class: "panel"}, h("h2", {}, "Learning curve"), await learningCurve(name)),
    h("section", {class: "panel wide"}, h("h2", {}, "Paired difference with the base"), comparisonTable(summary)),
    h("section", {class: "panel"}, h("h2", {}, "Test-time compute"), computeCurve(summary))));
}

function treesTab(name, slot) {
  const trees = dataTable({
    id: "tree-list", path: `/api/rounds/${enc(name)}/trajectories`, empty: "No trees collected yet.",
    rowLink: (t) => treeHref(name, t.task_id), rowData: (t) => ({task: t.task_id}),
    filters: [{key: "status", label: "outcome", options: () => [["solved", "solved"], ["unsolved", "unsolved"]]},
      {key: "kind", label: "kind", options: () => [["function", "function"], ["repo", "repo"]]}],
    columns: [
      {label: "task", cls: "id", render: (t) => h("a", {href: treeHref(name, t.task_id)}, t.task_id)},
      {label: "solved", render: (t) => (t.solved ? badge("passed") : badge("failed"))},
      {label: "kind", render: (t) => t.kind},
      {label: "nodes", num: true, key: "nodes"}, {label: "samples", num: true, render: (t) => t.samples ?? "–"},
      {label: "sandbox runs", num: true, render: (t) => t.executions ?? "–"},
      {label: "best reward", num: true, render: (t) => num(t.best_reward)},
      {label: "search time", num: true, render: (t) => duration(t.seconds)}],
  });
  fill(slot, h("section", {class: "panel", id: "trees"}, h("h2", {}, "Search trees (collection)"), trees.root));
  return trees;
}

function resultsTab(name, slot) {
  const results = dataTable({
    id: "results-table", path: `/api/rounds/${enc(name)}/eval/results`, empty: "Not evaluated yet: no per-task results.",
    rowData: (r) => ({task: r.task_id, solved: r.solved}),
    filters: [
      {key: "arm", label: "arm", all: "round arm", options: (d) => Object.keys(d.arms || {}).map((a) => [a, a])},
      {key: "mode", label: "mode", all: "first mode", options: (d) => ((d.arms || {})[d.arm] || []).map((m) => [m, m])},
      {key: "status", label: "status", options: (d) => [["solved", "solved"], ["unsolved", "unsolved"], ...(d.statuses || []).map((st) => [st, st])]},
      {key: "kind", label: "kind", options: () => [["function", "function"], ["repo", "repo"]]}],
    columns: [
      {label: "task", cls: "id", render: (r) => r.task_id},
      {label: "solved", render: (r) => (r.solved ? badge("solved") : badge("unsolved"))},
      {label: "status", render: (r) => r.status || "–"},
      {label: "reward", num: true, render: (r) => num(r.reward)},
      {label: "correct / n", num: true, render: (r) => `${r.correct ?? "–"} / ${r.n ?? "–"}`},
      {label: "time", num: true, render: (r) => duration(r.seconds)},
      {label: "message", cls: "text", render: (r) => (r.message ? h("span", {class: "fail"}, r.message) : "")}],
    onData: (d) => { fill(caption, `arm ${d.arm}, mode ${d.mode}`); },
  });
  const caption = h("span", {class: "muted", id: "results-caption"});
  fill(slot, h("section", {class: "panel", id: "results-panel"}, h("h2", {}, "Evaluation results per task ", caption), results.root));
  return results;
}

function pairsTab(name, slot) {
  const stats = h("p", {class: "muted", id: "pair-stats"});
  const pairs = dataTable({
    id: "pairs-table", path: `/api/rounds/${enc(name)}/preferences`, empty: "No preference pairs (yet).",
    rowData: (p) => ({pair: p.index, task: p.task_id}),
    filters: [{key: "decided_by", label: "decided by", options: (d) => (d.decided_by || []).map((v) => [v, v])}],
    columns: [
      {label: "#", num: true, render: (p) => p.index},
      {label: "task", cls: "id", render: (p) => h("a", {href: treeHref(name, p.task_id)}, p.task_id)},
      {label: "decided by", render: (p) => p.decided_by || "–"},
      {label: "Δ reward", num: true, render: (p) => num(p.delta_reward ?? p.delta_q)},
      {label: "chosen passed", render: (p) => (p.chosen_passed == null ? "–" : p.chosen_passed ? "yes" : "no")},
      {label: "answers", render: (p) => h("details", {dataset: {pair: p.index}}, h("summary", {}, "chosen vs rejected"),
        h("div", {class: "sides"}, h("div", {}, h("h3", {}, "chosen"), h("pre", {class: "chosen"}, p.chosen ?? "")),
          h("div", {}, h("h3", {}, "rejected"), h("pre", {class: "rejected"}, p.rejected ?? ""))))}],
    onData: (d) => {
      const st = d.stats || {};
      fill(stats, `${st.pairs ?? d.total} pairs in preferences.jsonl` + (st.decided_by_tests != null ? ` · ${st.decided_by_tests} decided by tests` : "") +
        (st.flagged_candidates ? ` · ${st.flagged_candidates} flagged candidates` : ""));
    },
  });
  fill(slot, h("section", {class: "panel", id: "pairs"}, h("h2", {}, "Preference pairs"), stats, pairs.root));
  return pairs;
}

async function compareTab(name, slot, round, other) {
  if (!Object.keys(round.passRate || {}).length) { fill(slot, h("div", {class: "panel muted", id: "compare"}, "Not evaluated yet: nothing to compare.")); return null; }
  const listing = await api("/api/rounds", {limit: 1000});
  const others = (listing ? listing.items : []).filter((r) => r.name !== name && Object.keys(r.passRate || {}).length && (!round.kind || !r.kind || r.kind === round.kind));
  if (!others.length) { fill(slot, h("div", {class: "panel muted", id: "compare"}, "No other evaluated round of this kind in the store to compare with.")); return null; }
  const against = others.find((r) => r.name === other) || others.find((r) => r.name === round.fromRound) || others[0];
  const counts = h("div", {class: "counts", id: "compare-counts"});
  const table = dataTable({
    id: "compare-table", path: "/api/compare", params: {a: against.name, b: name}, empty: "No task was evaluated in both rounds.",
    rowData: (r) => ({task: r.task_id, outcome: r.outcome}),
    filters: [{key: "mode", label: "mode", all: "first shared mode", options: (d) => (d.modes || []).map((m) => [m, m])}],
    columns: [
      {label: "task", cls: "id", render: (r) => r.task_id},
      {label: "outcome", render: (r) => badge(r.outcome)},
      {label: `in ${against.name}`, render: (r) => (r.a_solved ? "solved" : "unsolved")},
      {label: `in ${name}`, render: (r) => (r.b_solved ? "solved" : "unsolved")}],
    onData: (d) => {
      fill(counts, ["fixed", "broken", "both", "neither"].map((o) => h("button", {type: "button", "aria-pressed": String(table.state.outcome === o),
        dataset: {outcome: o, count: d.counts[o]}, on: {click: () => {
          table.state.outcome = table.state.outcome === o ? "" : o;
          table.state.offset = 0;
          table.load().catch(showError);
        }}}, `${o}: ${d.counts[o]}`)),
      h("span", {class: "muted"}, `${d.counts.onlyA} task(s) only in ${d.a}, ${d.counts.onlyB} only in ${d.b}`));
    },
  });
  table.state.outcome = "";
  const picker = select("compare with", others.map((r) => [r.name, r.name]), against.name,
    (value) => { location.hash = `${roundHref(name, "compare")}/${enc(value)}`; });
  fill(slot, h("section", {class: "panel", id: "compare", dataset: {a: against.name}}, h("h2", {}, "Task by task: ", name, " against ", picker),
    h("p", {class: "muted"}, "fixed: solved here, not there; broken: solved there, not here (greedy answers, one mode)."), counts, table.root));
  return table;
}

async function roundPage(name, tab, extra) {
  setCrumbs([["rounds", "#/"], [name, tab ? roundHref(name) : null], ...(tab ? [[tab]] : [])]);
  let round = await api(`/api/rounds/${enc(name)}`);
  if (!round) { fill(view, h("div", {class: "panel error"}, "No round ", h("b", {}, name), " in this store.")); return; }
  const phase = h("span", {id: "phase"}, badge(round.phase));
  const kind = h("span", {id: "kind"});
  const steps = h("section", {class: "panel", id: "steps-panel"});
  const tabs = h("nav", {class: "tabs", id: "tabs", "aria-label": "round views"}, TABS.map(([key, label]) =>
    h("a", {href: roundHref(name, key), "aria-current": (tab || "") === key ? "page" : null, dataset: {tab: key || "overview"}}, label)));
  const slot = h("div", {id: "tab"});
  fill(view, h("h1", {}, name, " ", phase, " ", kind), steps, tabs, slot);
  const drawRound = () => {
    fill(phase, badge(round.phase));
    fill(kind, round.kind ? badge("kind", round.kind) : null);
    fill(steps, stepsPanel(round, !tab));
  };
  drawRound();
  let refresh = async () => {};
  const open = async () => {
    if (tab === "trees") { const t = treesTab(name, slot); await t.load(); refresh = () => t.load(); }
    else if (tab === "results") { const t = resultsTab(name, slot); await t.load(); refresh = () => t.load(); }
    else if (tab === "pairs") { const t = pairsTab(name, slot); await t.load(); refresh = () => t.load(); }
    else if (tab === "compare") { const t = await compareTab(name, slot, round, extra); if (t) { await t.load(); refresh = () => t.load(); } }
    else { await overviewTab(name, slot); refresh = () => overviewTab(name, slot); }
  };
  await open();
  watch(name, async (event) => {
    if (event.type === "trees") {
      if (tab === "trees") await refresh();
      return;
    }
    if (event.type === "error") return;
    const previous = round;
    round = event.data;
    drawRound();
    const newRun = event.type === "snapshot" && previous.run !== round.run;
    const evaluated = (r) => (r.steps.find((st) => st.name === "evaluate") || {}).state;
    if (newRun || (evaluated(previous) !== evaluated(round) && (!tab || tab === "results"))) await open();
  });
}

// ---- campaigns -------------------------------------------------------------------------------------------

async function campaignPage(name) {
  setCrumbs([["rounds", "#/"], [`campaign ${name}`]]);
  const c = await api(`/api/campaigns/${enc(name)}`);
  if (!c) { fill(view, h("div", {class: "panel error"}, "No campaign ", h("b", {}, name), " in this store.")); return; }
  const curve = c.learningCurve || [];
  const points = curve.map((p, i) => [i, p.passRate]).filter(([, v]) => v != null);
  const table = dataTable({
    id: "campaign-rounds", path: `/api/campaigns/${enc(name)}/curve`, search: "search rounds", empty: "No round has finished yet.",
    rowLink: (p) => (c.roundsInStore.includes(p.name) ? roundHref(p.name) : null), rowData: (p) => ({round: p.name}),
    columns: [
      {label: "round", cls: "id", render: (p) => (c.roundsInStore.includes(p.name) ? h("a", {href: roundHref(p.name)}, p.name) : p.name)},
      {label: "pass@1", num: true, render: (p) => pct(p.passRate)},
      {label: "Δ vs its start", num: true, render: (p) => signed(p.delta)},
      {label: "95% CI", num: true, render: (p) => (p.deltaCi95 ? `[${signed(p.deltaCi95[0])}, ${signed(p.deltaCi95[1])}]` : "–")},
      {label: "reading", render: (p) => (p.gain ? "gain" : "no gain")}],
  });
  fill(view, h("h1", {}, `Campaign ${name} `, badge(c.phase || "campaign", c.stopped || c.phase || "running")),
    h("p", {class: "muted"}, `${c.rounds} of ${c.plannedRounds ?? "–"} rounds · mode judged: ${c.mode ?? "–"} · best pass@1 ${pct(c.bestPassRate)}` +
      (c.currentRound ? ` · running ${c.currentRound}` : "")),
    c.error ? h("p", {class: "error"}, c.error) : null,
    h("div", {class: "grid"},
      h("section", {class: "panel"}, h("h2", {}, "Learning curve"), points.length ? lineChart("campaign-curve", [{name: c.mode, points}], curve.map((p) => p.name), "pass@1 by round") : h("p", {class: "muted"}, "No round has a pass rate yet.")),
      h("section", {class: "panel"}, h("h2", {}, "Rounds"), table.root)));
  await table.load();
}

// ---- the event stream ------------------------------------------------------------------------------------

function watch(name, onEvent) {
  // The round's event stream; the token goes in the first message, never the URL. On a dropped connection,
  // reconnect after the last sequence number seen. The stream stays open after a round ends: a round run
  // again opens a new run, which the page follows.
  let lastSeq = 0, stopped = false, socket, retry;
  const connect = () => {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/api/rounds/${enc(name)}/events?after_seq=${lastSeq}`);
    socket.addEventListener("open", () => {
      if (token()) socket.send(JSON.stringify({type: "auth", token: token()}));
      live.textContent = "live";
    });
    socket.addEventListener("message", (message) => {
      const event = JSON.parse(message.data);
      if (event.seq <= lastSeq && event.type !== "snapshot") return;
      lastSeq = event.seq;
      live.textContent = event.type === "final" ? `finished (event ${event.seq})` : `live (event ${event.seq})`;
      live.dataset.seq = event.seq;
      live.dataset.type = event.type;
      if (event.data && event.data.run) live.dataset.run = event.data.run;
      onEvent(event).catch(showError);
    });
    socket.addEventListener("close", (event) => {
      if (stopped) return;
      if (event.code === 4401) { live.textContent = "no token"; askToken(); return; }
      if (event.code === 4404 || event.code === 4403) { live.textContent = "not watching"; return; }
      live.textContent = "reconnecting…";
      retry = setTimeout(connect, 1000);
    });
  };
  connect();
  cleanup.push(() => { stopped = true; clearTimeout(retry); if (socket) socket.close(); live.textContent = ""; delete live.dataset.type; });
}

// ---- the tree browser ------------------------------------------------------------------------------------

const STATUS_CLASS = {passed: "ok", failed: "bad", error: "bad", timeout: "bad", memory: "bad", killed: "bad", parse_error: "warn"};

function layout(nodes) {
  // Leaves left to right in depth-first order, each parent centred over its children.
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const pos = new Map();
  let next = 0;
  const place = (n) => {
    const kids = n.children.map((c) => byId.get(c)).filter(Boolean);
    kids.forEach(place);
    const x = kids.length ? (pos.get(kids[0].id).x + pos.get(kids.at(-1).id).x) / 2 : next++;
    pos.set(n.id, {x, y: n.depth});
  };
  if (nodes.length) place(nodes[0]);
  return {pos, width: Math.max(next, 1), depth: Math.max(...nodes.map((n) => n.depth), 0)};
}

function nodeLabel(n) {
  if (n.parent == null) return `node ${n.id}: the ${n.status}`;
  return `node ${n.id}: ${n.status || "not run"}, reward ${num(n.reward)}, Q ${num(n.q_mcts)} / ${num(n.q_ai)}, ${n.visits ?? 0} visits`;
}

function treeSvg(tree, onSelect) {
  const {pos, width, depth} = layout(tree.nodes);
  const dx = 96, dy = 104, pad = 40;
  const W = Math.max(width * dx + pad, 320), H = (depth + 1) * dy + pad;
  const shift = width * dx + pad > 320 ? 0 : (width * dx + pad - 320) / 2;
  const px = (id) => pad / 2 + pos.get(id).x * dx + dx / 2 - shift;
  const py = (id) => pad / 2 + pos.get(id).y * dy + 16;
  const svg = s("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, id: "tree-svg", role: "group", "aria-label": `search tree of ${tree.task_id}`});
  // edges leave below the parent's labels and end at the child's circle
  for (const n of tree.nodes) {
    if (n.parent != null && pos.has(n.parent)) {
      add(svg, s("path", {class: "edge", d: `M${px(n.parent)} ${py(n.parent) + 46}C${px(n.parent)} ${py(n.id) - 30} ${px(n.id)} ${py(n.parent) + 60} ${px(n.id)} ${py(n.id) - 19}`}));
    }
  }
  for (const n of tree.nodes) {
    const roles = new Set(n.pairs.map((p) => p.role));
    const ring = roles.has("chosen") ? "chosen" : roles.has("rejected") ? "rejected" : null;
    const cls = n.parent == null ? "root" : n.change === "none" && !STATUS_CLASS[n.status] ? "none" : STATUS_CLASS[n.status] || "none";
    const g = s("g", {class: `node ${cls}`, dataset: {node: n.id}, transform: `translate(${px(n.id)},${py(n.id)})`,
      tabindex: 0, role: "button", "aria-pressed": "false", "aria-label": nodeLabel(n),
      on: {click: () => onSelect(n.id), keydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onSelect(n.id); } }}},
    s("rect", {class: "hit", x: -34, y: -20, width: 68, height: 68, rx: 6}),  // the whole node takes the click
    ring ? s("circle", {class: `ring ${ring}`, r: 18}) : null, s("circle", {class: "dot", r: 13}),
    s("text", {class: "id", "text-anchor": "middle", y: 4}, n.id),
    n.parent == null ? s("text", {class: "q", "text-anchor": "middle", y: 30}, "buggy")
      : [s("text", {class: "q", "text-anchor": "middle", y: 30}, `Q ${num(n.q_mcts)}/${num(n.q_ai)}`), s("text", {class: "q", "text-anchor": "middle", y: 42}, `n=${n.visits ?? 0}`)]);
    add(svg, g);
  }
  return svg;
}

function diffBlock(text) {
  return h("pre", {id: "node-diff"}, text.split("\n").map((line, i) => {
    const cls = line.startsWith("@@") ? "hunk" : line.startsWith("+") && !line.startsWith("+++") ? "add" : line.startsWith("-") && !line.startsWith("---") ? "del" : null;
    return [i ? "\n" : "", cls ? h("span", {class: cls}, line) : line];
  }));
}

function changeBlock(tree, node) {
  const what = tree.kind === "repo" ? "patch" : "program";
  if (node.change === "none") return [h("h2", {}, `No ${what}`), h("p", {class: "muted", id: "node-diff"}, `The model's answer held no ${what} that could be read (${node.status || "not run"}): there is nothing to run or compare. Its full answer is below.`)];
  if (node.change === "same") return [h("h2", {}, tree.kind === "repo" ? "Patch" : "Code vs the buggy program"), h("p", {class: "muted", id: "node-diff"}, tree.kind === "repo" ? "(an empty patch: the buggy repository unchanged)" : "(same as the buggy program)")];
  return [h("h2", {}, tree.kind === "repo" ? "Patch (against the buggy repository)" : "Code vs the buggy program"), diffBlock(node.diff)];
}

function nodeDetail(tree, node, onSelect) {
  if (node.parent == null) {
    const repo = tree.kind === "repo";
    return [h("h2", {}, `Node 0: the buggy ${repo ? "repository" : "program"}`),
      repo ? [h("p", {class: "muted"}, "The root is the empty patch on the buggy repository. Files shown to the model: ", (tree.localization?.files || []).join(", ") || "–"),
        node.failing_tests.length ? [h("h2", {}, "Failing tests"), h("ul", {}, node.failing_tests.map((t) => h("li", {}, h("b", {}, t.name), " ", h("span", {class: "fail"}, t.message))))] : null]
        : h("pre", {}, node.code ?? "")];
  }
  const pairs = node.pairs.length ? node.pairs.map((p) => h("button", {type: "button", class: `pair ${p.role}`, title: `pair #${p.pair} in preferences.jsonl`,
    on: {click: () => onSelect(p.partner ?? node.id)}},
  `pair #${p.pair}: ${p.role}${p.partner != null ? ` vs node ${p.partner}` : ""} (Δ ${num(p.delta)}${p.decided_by ? `, ${p.decided_by}` : ""})`)) : h("span", {class: "muted"}, "in no preference pair");
  const failing = node.failing_tests.map((t) => h("li", {}, h("b", {}, t.name), " ", h("span", {class: "fail"}, t.message)));
  return [h("h2", {}, `Node ${node.id} `, badge(node.status)),
    h("dl", {class: "kv"},
      h("dt", {}, "tests passed"), h("dd", {}, `${node.passed_tests} / ${node.expected_tests ?? "–"}`),
      h("dt", {}, "reward"), h("dd", {}, num(node.reward)),
      h("dt", {}, "Q_mcts"), h("dd", {}, num(node.q_mcts)), h("dt", {}, "Q_ai"), h("dd", {}, num(node.q_ai)),
      h("dt", {}, "visits"), h("dd", {}, node.visits ?? 0), h("dt", {}, "depth"), h("dd", {}, node.depth),
      node.category ? [h("dt", {}, "category"), h("dd", {}, node.category)] : null,
      node.flags.length ? [h("dt", {}, "flags"), h("dd", {class: "error"}, node.flags.join(", "))] : null,
      h("dt", {}, "pairs"), h("dd", {id: "node-pairs"}, pairs)),
    failing.length ? [h("h2", {}, "Failing tests"), h("ul", {}, failing)] : node.message ? h("p", {class: "fail"}, node.message) : null,
    node.feedback ? [h("h2", {}, "What the next prompt quotes"), h("pre", {}, node.feedback)] : null,
    changeBlock(tree, node),
    h("details", {}, h("summary", {}, "the model's full answer"), h("pre", {}, node.completion))];
}

async function treePage(name, task) {
  setCrumbs([["rounds", "#/"], [name, roundHref(name, "trees")], [task]]);
  const tree = await api(`/api/rounds/${enc(name)}/trajectories/${task.split("/").map(enc).join("/")}`);
  if (!tree) { fill(view, h("div", {class: "panel error"}, "Round ", h("b", {}, name), " has no search tree for ", h("b", {}, task), ".")); return; }
  const st = tree.stats;
  const detail = h("section", {class: "panel", id: "node-detail"});
  const holder = h("div", {id: "tree-view"});
  const select = (id) => {
    const node = tree.nodes.find((n) => n.id === id);
    if (!node) return;
    for (const g of holder.querySelectorAll("g.node")) {
      const on = Number(g.dataset.node) === id;
      g.classList.toggle("selected", on);
      g.setAttribute("aria-pressed", String(on));
    }
    fill(detail, nodeDetail(tree, node, (other) => { select(other); const g = holder.querySelector(`g.node[data-node="${Number(other)}"]`); if (g) g.focus(); }));
    detail.dataset.node = id;
  };
  add(holder, treeSvg(tree, select));
  fill(view, h("h1", {}, task, " ", tree.solved ? badge("passed") : badge("failed"), " ", badge("kind", tree.kind)),
    h("p", {class: "muted"}, `${tree.nodes.length} nodes · ${st.samples ?? "–"} samples · ${st.executions ?? "–"} sandbox runs · ${st.rollouts ?? "–"} rollouts · ${duration(st.wall_s)}`),
    h("div", {class: "tree-layout"},
      h("section", {class: "panel tree"}, h("h2", {}, "Search tree"), holder,
        h("div", {class: "legend"}, h("span", {}, h("i", {class: "swatch ok"}), "passed"), h("span", {}, h("i", {class: "swatch bad"}), "failed"),
          h("span", {}, h("i", {class: "swatch warn"}), tree.kind === "repo" ? "no patch" : "no program"),
          h("span", {}, "dashed ring: entered a pair as chosen (green) / rejected (red)"), h("span", {}, "Q = Q_mcts / Q_ai, n = visits"),
          h("span", {}, "Tab to a node, Enter to open it"))),
      detail));
  const best = tree.nodes.filter((n) => n.parent != null).sort((a, b) => (b.reward ?? 0) - (a.reward ?? 0) || a.id - b.id)[0];
  select(best ? best.id : 0);
}

// ---- routing ---------------------------------------------------------------------------------------------

async function route() {
  cleanup.forEach((f) => f());
  cleanup = [];
  let parts;
  try {
    parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  } catch (e) {
    parts = [];
  }
  try {
    if (parts[0] === "round" && parts[1] && parts[2] === "tree") await treePage(parts[1], parts.slice(3).join("/"));
    else if (parts[0] === "round" && parts[1]) await roundPage(parts[1], TABS.some(([k]) => k && k === parts[2]) ? parts[2] : "", parts[3]);
    else if (parts[0] === "campaign" && parts[1]) await campaignPage(parts[1]);
    else await roundsPage();
  } catch (err) { showError(err); }
}

window.addEventListener("hashchange", route);
route();
