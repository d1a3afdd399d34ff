// AgentQ dashboard: plain JS over the service's REST API and per-round event stream. No build step:
// what is committed here is what the browser runs. Charts are inline SVG drawn below.
"use strict";

const view = document.getElementById("view");
const crumbs = document.getElementById("crumbs");
const live = document.getElementById("live");
const STEPS = ["collect", "preferences", "train", "merge", "evaluate"];
let cleanup = [];  // timers and sockets of the current page, closed when the route changes

// ---- helpers ---------------------------------------------------------------------------------------------

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
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
const token = () => localStorage.getItem("agentq-token") || "";

async function api(path) {
  const headers = token() ? {Authorization: `Bearer ${token()}`} : {};
  const response = await fetch(path, {headers});
  if (response.status === 401) { askToken(); throw new Error("a bearer token is needed"); }
  if (response.status === 404) return null;
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(`${path}: ${detail}`);
  }
  return response.json();
}

function askToken() {
  const dialog = document.getElementById("login");
  if (dialog.open) return;
  dialog.showModal();
  document.getElementById("login-form").onsubmit = () => {
    localStorage.setItem("agentq-token", document.getElementById("token").value.trim());
    route();
  };
}

function setCrumbs(parts) {
  crumbs.innerHTML = parts.map(([label, href]) => (href ? `<a href="${href}">${esc(label)}</a>` : `<span>${esc(label)}</span>`)).join(" / ");
}

const badge = (state) => `<span class="badge ${esc(state)}">${esc(state)}</span>`;

function stepBar(steps, big = false, collected = null) {
  const cells = (steps || []).map((s) => {
    let detail = s.state === "Succeeded" ? duration(s.seconds) : s.state === "Partial" ? `${s.shards.done}/${s.shards.total}` : s.state;
    if (s.name === "collect" && s.state === "Running" && collected) detail = `Running · ${collected} trees`;
    return `<div class="step ${esc(s.state)}" data-step="${esc(s.name)}" data-state="${esc(s.state)}" title="${esc(s.name)}: ${esc(s.state)}">${esc(s.name)}${big ? `<small>${esc(detail)}</small>` : ""}</div>`;
  });
  return `<div class="steps${big ? " big" : ""}">${cells.join("")}</div>`;
}

// ---- charts (inline SVG) ---------------------------------------------------------------------------------

function passRateChart(summary) {
  const arms = summary.arms;
  const modes = [...new Set(arms.flatMap((a) => Object.keys(a.modes)))];
  const W = 560, H = 260, left = 44, bottom = 34, top = 14;
  const plotH = H - bottom - top, groupW = (W - left - 10) / Math.max(modes.length, 1);
  const barW = Math.min(46, (groupW - 24) / arms.length);
  const y = (v) => top + plotH * (1 - v);
  let svg = `<svg id="pass-rate-chart" viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="pass rate per mode">`;
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    svg += `<line class="grid" x1="${left}" x2="${W - 10}" y1="${y(t)}" y2="${y(t)}"/><text x="${left - 6}" y="${y(t) + 4}" text-anchor="end">${t * 100}%</text>`;
  }
  modes.forEach((mode, i) => {
    const x0 = left + i * groupW + (groupW - barW * arms.length) / 2;
    arms.forEach((arm, j) => {
      const row = arm.modes[mode];
      if (!row) return;
      const x = x0 + j * barW, color = arm.arm === "baseline" ? "var(--base)" : "var(--round)";
      const [lo, hi] = row.ci95;
      svg += `<rect x="${x + 3}" y="${y(row.pass_rate)}" width="${barW - 6}" height="${y(0) - y(row.pass_rate)}" fill="${color}" data-arm="${esc(arm.arm)}" data-mode="${esc(mode)}"><title>${esc(arm.label)} ${esc(mode)}: ${pct(row.pass_rate)} (95% ${esc(row.interval)} ${pct(lo)}–${pct(hi)}, ${row.tasks} tasks)</title></rect>`;
      const cx = x + barW / 2;
      svg += `<path class="ci" d="M${cx} ${y(hi)}V${y(lo)}M${cx - 6} ${y(hi)}h12M${cx - 6} ${y(lo)}h12" stroke="#101828" stroke-width="1.4"/>`;
      svg += `<text x="${cx}" y="${y(hi) - 4}" text-anchor="middle">${(100 * row.pass_rate).toFixed(0)}%</text>`;
    });
    svg += `<text x="${left + i * groupW + groupW / 2}" y="${H - 12}" text-anchor="middle">${esc(mode)}</text>`;
  });
  svg += `<line class="axis" x1="${left}" x2="${W - 10}" y1="${y(0)}" y2="${y(0)}"/></svg>`;
  const legend = arms.map((a) => `<span><i style="background:${a.arm === "baseline" ? "var(--base)" : "var(--round)"}"></i>${esc(a.label)}</span>`).join("");
  const method = [...new Set(arms.flatMap((a) => Object.values(a.modes).map((m) => m.interval)))].join(", ");
  return `${svg}<div class="legend">${legend}<span>whiskers: 95% interval (${esc(method)})</span></div>`;
}

function lineChart(id, series, xLabels, yLabel) {
  // series: [{name, color, points: [[xIndex, value]]}]
  const W = 560, H = 240, left = 44, bottom = 44, top = 14, right = 16;
  const n = Math.max(xLabels.length - 1, 1);
  const inset = 36;  // room for the first and last labels
  const x = (i) => left + inset + (W - left - right - 2 * inset) * (xLabels.length === 1 ? 0.5 : i / n);
  const y = (v) => top + (H - top - bottom) * (1 - v);
  let svg = `<svg id="${id}" viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="${esc(yLabel)}">`;
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    svg += `<line class="grid" x1="${left}" x2="${W - right}" y1="${y(t)}" y2="${y(t)}"/><text x="${left - 6}" y="${y(t) + 4}" text-anchor="end">${t * 100}%</text>`;
  }
  xLabels.forEach((label, i) => { svg += `<text x="${x(i)}" y="${H - 26}" text-anchor="middle">${esc(label)}</text>`; });
  const palette = ["#1f6feb", "#d97706", "#7c3aed", "#059669", "#db2777"];
  series.forEach((s, k) => {
    const color = s.color || palette[k % palette.length];
    svg += `<polyline fill="none" stroke="${color}" stroke-width="2" points="${s.points.map(([i, v]) => `${x(i)},${y(v)}`).join(" ")}"/>`;
    for (const [i, v] of s.points) svg += `<circle cx="${x(i)}" cy="${y(v)}" r="3.5" fill="${color}"><title>${esc(s.name)} ${esc(xLabels[i])}: ${pct(v)}</title></circle>`;
  });
  svg += `</svg><div class="legend">${series.map((s, k) => `<span><i style="background:${s.color || palette[k % palette.length]}"></i>${esc(s.name)}</span>`).join("")}<span>${esc(yLabel)}</span></div>`;
  return svg;
}

// ---- pages -----------------------------------------------------------------------------------------------

async function roundsPage() {
  setCrumbs([["rounds"]]);
  const draw = async () => {
    const rounds = await api("/api/rounds");
    if (!rounds.length) { view.innerHTML = `<div class="panel muted">No rounds in this store yet.</div>`; return; }
    const rows = rounds.map((r) => `<tr class="link" data-round="${esc(r.name)}" onclick="location.hash='#/round/${encodeURIComponent(r.name)}'">
      <td><a href="#/round/${encodeURIComponent(r.name)}">${esc(r.name)}</a></td><td>${badge(r.phase)}</td><td>${stepBar(r.steps)}</td>
      <td>${esc(r.model || "")}${r.fromRound ? ` <span class="muted">from ${esc(r.fromRound)}</span>` : ""}</td>
      <td>${Object.entries(r.passRate || {}).map(([m, v]) => `${esc(m)} ${pct(v)}`).join("<br>") || "–"}</td>
      <td class="muted">${when(r.updatedTime || r.completionTime)}</td></tr>`);
    const campaigns = (await api("/api/campaigns")) || [];
    const campaignRows = campaigns.map((c) => `<tr class="link" data-campaign="${esc(c.name)}" onclick="location.hash='#/campaign/${encodeURIComponent(c.name)}'">
      <td><a href="#/campaign/${encodeURIComponent(c.name)}">${esc(c.name)}</a></td><td class="num">${c.rounds} / ${c.plannedRounds}</td>
      <td>${esc(c.stopped || "running")}</td><td>${esc(c.mode)}</td><td class="num">${pct(c.bestPassRate)}</td></tr>`);
    const campaignPanel = campaigns.length ? `<h1>Campaigns</h1><div class="panel"><table id="campaigns-table"><thead><tr><th>campaign</th><th class="num">rounds</th><th>stopped</th><th>mode judged</th><th class="num">best pass@1</th></tr></thead><tbody>${campaignRows.join("")}</tbody></table></div>` : "";
    view.innerHTML = `${campaignPanel}<h1>Rounds</h1><div class="panel"><table id="rounds-table"><thead><tr><th>round</th><th>phase</th><th>steps</th><th>model</th><th>pass rate</th><th>updated</th></tr></thead><tbody>${rows.join("")}</tbody></table></div>`;
  };
  await draw();
  const timer = setInterval(() => draw().catch(showError), 2000);
  cleanup.push(() => clearInterval(timer));
}

function stepsPanel(round) {
  const rows = (round.steps || []).map((s) => `<tr><td>${esc(s.name)}</td><td>${badge(s.state)}</td><td class="muted">${when(s.startTime)}</td><td class="num">${duration(s.seconds)}</td>
    <td>${Object.entries(s.result || {}).map(([k, v]) => `${esc(k)}=${esc(typeof v === "object" ? JSON.stringify(v) : v)}`).join(", ")}</td></tr>`);
  return `<h2>Steps</h2>${stepBar(round.steps, true, round.collected)}
    <table style="margin-top:10px"><thead><tr><th>step</th><th>state</th><th>started</th><th class="num">took</th><th>result</th></tr></thead><tbody>${rows.join("")}</tbody></table>
    ${round.message ? `<p class="error">${esc(round.message)}</p>` : ""}`;
}

function comparisonTable(summary) {
  const entries = Object.entries(summary.comparison || {});
  if (!entries.length) return `<p class="muted">No base arm in this summary: the round was evaluated without its starting model, so there is no paired difference to show.</p>`;
  const rows = entries.map(([mode, c]) => {
    const [lo, hi] = c.delta_ci95;
    const word = lo > 0 ? "gain" : hi < 0 ? "loss" : "no detectable difference";
    return `<tr><td>${esc(mode)}</td><td class="num">${c.tasks}</td><td class="num">${signed(c.delta_pass_at_1)}</td><td class="num">[${signed(lo)}, ${signed(hi)}]</td><td class="num">${c.greedy_wins} / ${c.greedy_losses}</td><td class="num">${num(c.mcnemar_p, 3)}</td><td>${word}</td></tr>`;
  });
  return `<table id="comparison"><thead><tr><th>mode</th><th class="num">paired tasks</th><th class="num">Δ pass@1</th><th class="num">95% CI</th><th class="num">fixed / broken</th><th class="num">McNemar p</th><th>reading</th></tr></thead><tbody>${rows.join("")}</tbody></table>`;
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
  if (!series.length) return `<p class="muted">One sample per task: no pass@k beyond pass@1 to plot (set evaluate.samples above 1).</p>`;
  ks = [...ks].sort((a, b) => a - b);
  return lineChart("compute-curve", series.map((s) => ({name: s.name, points: s.raw.map(([k, v]) => [ks.indexOf(k), v])})), ks.map((k) => `k=${k}`), "pass@k vs samples per task");
}

async function learningCurve() {
  const rounds = (await api("/api/rounds")) || [];
  const summaries = (await Promise.all(rounds.filter((r) => Object.keys(r.passRate || {}).length).map((r) => api(`/api/rounds/${encodeURIComponent(r.name)}/eval/summary`)))).filter(Boolean);
  summaries.sort((a, b) => (a.finished_at || 0) - (b.finished_at || 0));
  if (summaries.length < 2) return `<p class="muted">One evaluated round in this store: the learning curve needs two or more.</p>`;
  const labels = summaries.map((s) => s.round);
  const modes = [...new Set(summaries.flatMap((s) => Object.keys(s.arms.at(-1).modes)))];
  const series = modes.map((mode) => ({name: mode, points: summaries.map((s, i) => [i, s.arms.at(-1).modes[mode]?.pass_rate]).filter(([, v]) => v != null)}));
  return lineChart("learning-curve", series, labels, "pass@1 by round, in evaluation order");
}

async function roundPage(name) {
  setCrumbs([["rounds", "#/"], [name]]);
  const round = await api(`/api/rounds/${encodeURIComponent(name)}`);
  if (!round) { view.innerHTML = `<div class="panel error">No round ${esc(name)} in this store.</div>`; return; }
  view.innerHTML = `<h1>${esc(name)} <span id="phase">${badge(round.phase)}</span></h1>
    <div class="panel" id="steps-panel">${stepsPanel(round)}</div>
    <div id="results"></div><div id="trees"></div>`;
  const drawResults = async () => {
    const summary = await api(`/api/rounds/${encodeURIComponent(name)}/eval/summary`);
    const results = document.getElementById("results");
    if (!summary) { results.innerHTML = `<div class="panel muted">Not evaluated yet.</div>`; return; }
    results.innerHTML = `<div class="grid">
      <div class="panel"><h2>Pass rate per mode${summary.arms.length > 1 ? ": base vs round" : ""}</h2>${passRateChart(summary)}</div>
      <div class="panel"><h2>Paired difference with the base</h2>${comparisonTable(summary)}</div>
      <div class="panel"><h2>Test-time compute</h2>${computeCurve(summary)}</div>
      <div class="panel"><h2>Learning curve</h2>${await learningCurve()}</div></div>`;
  };
  const drawTrees = async () => {
    const trees = (await api(`/api/rounds/${encodeURIComponent(name)}/trajectories`)) || [];
    const rows = trees.map((t) => `<tr class="link" data-task="${esc(t.task_id)}" onclick="location.hash='#/round/${encodeURIComponent(name)}/tree/${encodeURIComponent(t.task_id)}'">
      <td><a href="#/round/${encodeURIComponent(name)}/tree/${encodeURIComponent(t.task_id)}">${esc(t.task_id)}</a></td><td>${t.solved ? badge("passed") : badge("failed")}</td>
      <td class="num">${t.nodes}</td><td class="num">${t.samples ?? "–"}</td><td class="num">${t.executions ?? "–"}</td><td class="num">${num(t.best_reward)}</td><td class="num">${duration(t.seconds)}</td></tr>`);
    document.getElementById("trees").innerHTML = `<div class="panel"><h2>Search trees (collection)</h2>${trees.length ? `<table id="tree-list"><thead><tr><th>task</th><th>solved</th><th class="num">nodes</th><th class="num">samples</th><th class="num">sandbox runs</th><th class="num">best reward</th><th class="num">search time</th></tr></thead><tbody>${rows.join("")}</tbody></table>` : `<p class="muted">No trees collected yet.</p>`}</div>`;
  };
  await Promise.all([drawResults(), drawTrees()]);
  let shownTrees = round.collected;
  watch(name, async (event) => {
    document.getElementById("phase").innerHTML = badge(event.data.phase);
    document.getElementById("steps-panel").innerHTML = stepsPanel(event.data);
    const stepsChanged = (event.changes || []).some((c) => c.what === "step");
    if (event.type === "final" || stepsChanged) await Promise.all([drawResults(), drawTrees()]);
    else if (event.data.collected !== shownTrees) await drawTrees();  // a search tree finished
    shownTrees = event.data.collected;
  });
}

async function campaignPage(name) {
  setCrumbs([["rounds", "#/"], [`campaign ${name}`]]);
  const c = await api(`/api/campaigns/${encodeURIComponent(name)}`);
  if (!c) { view.innerHTML = `<div class="panel error">No campaign ${esc(name)} in this store.</div>`; return; }
  const curve = c.learningCurve || [];
  const points = curve.map((p, i) => [i, p.passRate]).filter(([, v]) => v != null);
  const rows = curve.map((p) => `<tr><td>${c.roundsInStore.includes(p.name) ? `<a href="#/round/${encodeURIComponent(p.name)}">${esc(p.name)}</a>` : esc(p.name)}</td>
    <td class="num">${pct(p.passRate)}</td><td class="num">${signed(p.delta)}</td><td class="num">${p.deltaCi95 ? `[${signed(p.deltaCi95[0])}, ${signed(p.deltaCi95[1])}]` : "–"}</td><td>${p.gain ? "gain" : "no gain"}</td></tr>`);
  view.innerHTML = `<h1>Campaign ${esc(name)} <span class="badge">${esc(c.stopped || "running")}</span></h1>
    <p class="muted">${c.rounds} of ${c.plannedRounds} rounds · mode judged: ${esc(c.mode)} · best pass@1 ${pct(c.bestPassRate)}</p>
    <div class="grid"><div class="panel"><h2>Learning curve</h2>${lineChart("campaign-curve", [{name: c.mode, points}], curve.map((p) => p.name), "pass@1 by round")}</div>
    <div class="panel"><h2>Rounds</h2><table><thead><tr><th>round</th><th class="num">pass@1</th><th class="num">Δ vs its start</th><th class="num">95% CI</th><th>reading</th></tr></thead><tbody>${rows.join("")}</tbody></table></div></div>`;
}

function watch(name, onEvent) {
  // The round's event stream; on a dropped connection, reconnect after the last sequence number seen.
  let lastSeq = 0, closed = false, socket;
  const connect = () => {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const auth = token() ? `&token=${encodeURIComponent(token())}` : "";
    socket = new WebSocket(`${scheme}://${location.host}/api/rounds/${encodeURIComponent(name)}/events?after_seq=${lastSeq}${auth}`);
    live.textContent = "live";
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.seq <= lastSeq && event.type !== "snapshot") return;
      lastSeq = event.seq;
      live.textContent = event.type === "final" ? `finished (event ${event.seq})` : `live (event ${event.seq})`;
      live.dataset.seq = event.seq;
      live.dataset.type = event.type;
      onEvent(event).catch(showError);
      if (event.type === "final") closed = true;
    };
    socket.onclose = () => { if (!closed) { live.textContent = "reconnecting…"; setTimeout(connect, 1000); } };
  };
  connect();
  cleanup.push(() => { closed = true; socket && socket.close(); live.textContent = ""; });
}

// ---- the tree browser ------------------------------------------------------------------------------------

const STATUS_COLOR = {passed: "#1a7f37", failed: "#c62828", error: "#c62828", timeout: "#c62828", memory: "#c62828", killed: "#c62828", parse_error: "#b26a00"};

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

function treeSvg(tree, selected) {
  const {pos, width, depth} = layout(tree.nodes);
  const dx = 96, dy = 104, pad = 40;
  const W = Math.max(width * dx + pad, 320), H = (depth + 1) * dy + pad;
  const px = (id) => pad / 2 + pos.get(id).x * dx + dx / 2 - (width * dx + pad > 320 ? 0 : (width * dx + pad - 320) / 2);
  const py = (id) => pad / 2 + pos.get(id).y * dy + 16;
  let svg = `<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" id="tree-svg">`;
  // edges leave below the parent's labels and end at the child's circle
  for (const n of tree.nodes) if (n.parent != null && pos.has(n.parent)) svg += `<path class="edge" d="M${px(n.parent)} ${py(n.parent) + 46}C${px(n.parent)} ${py(n.id) - 30} ${px(n.id)} ${py(n.parent) + 60} ${px(n.id)} ${py(n.id) - 19}"/>`;
  for (const n of tree.nodes) {
    const color = n.parent == null ? "#101828" : STATUS_COLOR[n.status] || "#9aa3ae";
    const roles = new Set(n.pairs.map((p) => p.role));
    const ringColor = roles.has("chosen") ? "#1a7f37" : roles.has("rejected") ? "#c62828" : null;
    const ring = ringColor ? `<circle class="ring" r="18" style="stroke:${ringColor}"/>` : "";
    svg += `<g class="node${n.id === selected ? " selected" : ""}" data-node="${n.id}" transform="translate(${px(n.id)},${py(n.id)})" onclick="selectNode(${n.id})">${ring}<circle class="dot" r="13" fill="${color}"/><text text-anchor="middle" y="4" style="fill:#fff;font-weight:600">${n.id}</text>
      ${n.parent == null ? `<text class="q" text-anchor="middle" y="30">buggy</text>` : `<text class="q" text-anchor="middle" y="30">Q ${num(n.q_mcts)}/${num(n.q_ai)}</text><text class="q" text-anchor="middle" y="42">n=${n.visits ?? 0}</text>`}</g>`;
  }
  return `${svg}</svg><div class="legend"><span><i style="background:#1a7f37"></i>passed</span><span><i style="background:#c62828"></i>failed</span><span><i style="background:#b26a00"></i>no program</span><span>dashed ring: entered a pair as chosen (green) / rejected (red)</span><span>Q = Q_mcts / Q_ai, n = visits</span></div>`;
}

function diffHtml(diff) {
  if (!diff) return `<span class="muted">(same as the buggy program)</span>`;
  return diff.split("\n").map((line) => {
    const cls = line.startsWith("@@") ? "hunk" : line.startsWith("+") && !line.startsWith("+++") ? "add" : line.startsWith("-") && !line.startsWith("---") ? "del" : "";
    return cls ? `<span class="${cls}">${esc(line)}</span>` : esc(line);
  }).join("\n");
}

function nodeDetail(tree, node) {
  if (node.parent == null) return `<h2>Node 0: the buggy program</h2><pre>${esc(node.code)}</pre>`;
  const pairs = node.pairs.map((p) => `<span class="pair ${p.role}" onclick="selectNode(${p.partner ?? node.id})" title="pair #${p.pair} in preferences.jsonl">pair #${p.pair}: ${p.role}${p.partner != null ? ` vs node ${p.partner}` : ""} (Δ ${num(p.delta)}${p.decided_by ? `, ${esc(p.decided_by)}` : ""})</span>`).join("") || `<span class="muted">in no preference pair</span>`;
  const failing = node.failing_tests.map((t) => `<li><b>${esc(t.name)}</b> <span class="fail">${esc(t.message)}</span></li>`).join("");
  return `<h2>Node ${node.id} <span class="badge ${esc(node.status)}">${esc(node.status)}</span></h2>
    <dl class="kv">
      <dt>tests passed</dt><dd>${node.passed_tests} / ${node.expected_tests ?? "–"}</dd>
      <dt>reward</dt><dd>${num(node.reward)}</dd>
      <dt>Q_mcts</dt><dd>${num(node.q_mcts)}</dd><dt>Q_ai</dt><dd>${num(node.q_ai)}</dd>
      <dt>visits</dt><dd>${node.visits ?? 0}</dd><dt>depth</dt><dd>${node.depth}</dd>
      ${node.flags.length ? `<dt>flags</dt><dd class="error">${esc(node.flags.join(", "))}</dd>` : ""}
      <dt>pairs</dt><dd id="node-pairs">${pairs}</dd>
    </dl>
    ${failing ? `<h2>Failing tests</h2><ul>${failing}</ul>` : node.message ? `<p class="fail">${esc(node.message)}</p>` : ""}
    <h2>Code vs the buggy program</h2><pre id="node-diff">${diffHtml(node.diff)}</pre>
    <details><summary>the model's full answer</summary><pre>${esc(node.completion)}</pre></details>`;
}

let currentTree = null;
window.selectNode = (id) => {
  if (!currentTree) return;
  const node = currentTree.nodes.find((n) => n.id === id);
  if (!node) return;
  document.getElementById("tree-view").innerHTML = treeSvg(currentTree, id);
  document.getElementById("node-detail").innerHTML = nodeDetail(currentTree, node);
  document.getElementById("node-detail").dataset.node = id;
};

async function treePage(name, task) {
  setCrumbs([["rounds", "#/"], [name, `#/round/${encodeURIComponent(name)}`], [task]]);
  const tree = await api(`/api/rounds/${encodeURIComponent(name)}/trajectories/${task.split("/").map(encodeURIComponent).join("/")}`);
  if (!tree) { view.innerHTML = `<div class="panel error">Round ${esc(name)} has no search tree for ${esc(task)}.</div>`; return; }
  currentTree = tree;
  const s = tree.stats;
  view.innerHTML = `<h1>${esc(task)} ${tree.solved ? badge("passed") : badge("failed")}</h1>
    <p class="muted">${tree.nodes.length} nodes · ${s.samples ?? "–"} samples · ${s.executions ?? "–"} sandbox runs · ${s.rollouts ?? "–"} rollouts · ${duration(s.wall_s)}</p>
    <div class="tree-layout"><div class="panel tree"><h2>Search tree</h2><div id="tree-view" style="overflow:auto"></div></div>
    <div class="panel" id="node-detail"></div></div>`;
  const best = tree.nodes.filter((n) => n.parent != null).sort((a, b) => (b.reward ?? 0) - (a.reward ?? 0) || a.id - b.id)[0];
  window.selectNode(best ? best.id : 0);
}

// ---- routing ---------------------------------------------------------------------------------------------

function showError(err) {
  view.insertAdjacentHTML("afterbegin", `<div class="panel error">${esc(err.message || err)}</div>`);
}

async function route() {
  cleanup.forEach((f) => f());
  cleanup = [];
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    if (parts[0] === "round" && parts[1] && parts[2] === "tree") await treePage(parts[1], parts.slice(3).join("/"));
    else if (parts[0] === "round" && parts[1]) await roundPage(parts[1]);
    else if (parts[0] === "campaign" && parts[1]) await campaignPage(parts[1]);
    else await roundsPage();
  } catch (err) { showError(err); }
}

window.addEventListener("hashchange", route);
route();
