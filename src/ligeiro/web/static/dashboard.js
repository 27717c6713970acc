// The dashboard: polls /ui/status every few seconds, shows the models and their live
// numbers (rates and p95 from the differences between snapshots of the server's own
// cumulative metrics), draws the last minutes, and builds a try-it form per model.
// Plain DOM: every server string goes in through textContent, never as HTML.
"use strict";

const POLL_MS = 3000;
const WINDOW_S = 60; // rates and p95 over the last minute
const HISTORY = 200; // snapshots kept for the chart (10 minutes at 3 s)
const history = [];
const forms = new Map();
// The inference token, if the user gave one: every fetch of the page sends it. Kept for
// this tab only (sessionStorage, which /docs reads too), never put into the curl shown.
const TOKEN_KEY = "ligeiro.inference-token";

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function authorized(headers = {}) {
  const value = token();
  return value ? { ...headers, authorization: `Bearer ${value}` } : headers;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// The q-quantile of a cumulative histogram [[upper bound | null (+Inf), count], ...].
function quantile(buckets, q) {
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!total) return null;
  const target = q * total;
  let lower = 0, below = 0;
  for (const [bound, count] of buckets) {
    if (count >= target) {
      if (bound === null) return lower; // past the last finite bucket
      const inside = count - below;
      return inside ? lower + (bound - lower) * ((target - below) / inside) : bound;
    }
    if (bound !== null) lower = bound;
    below = count;
  }
  return lower;
}

function diffBuckets(now, then) {
  if (!then) return now;
  return now.map(([bound, count], i) => [bound, count - (then[i] ? then[i][1] : 0)]);
}

function total(requests) {
  return Object.values(requests || {}).reduce((a, b) => a + b, 0);
}

function failures(requests) {
  return Object.entries(requests || {}).reduce((a, [code, n]) => a + (code === "200" ? 0 : n), 0);
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const value = seconds * 1000;
  return value < 10 ? `${value.toFixed(2)} ms` : `${value.toFixed(0)} ms`;
}

function pct(x) {
  return x === null ? "–" : `${(x * 100).toFixed(x && x < 0.01 ? 2 : 1)}%`;
}

// The window's start: the oldest snapshot at most WINDOW_S old (or the oldest there is).
function windowStart(now) {
  let start = null;
  for (const sample of history) {
    if (now.t - sample.t <= WINDOW_S * 1000 && sample !== now) { start = sample; break; }
  }
  return start;
}

// Numbers of one model version (or of all, key null) between two snapshots.
function figures(now, then, key) {
  const pick = (snap) => {
    if (!snap) return null;
    const models = snap.status.metrics.models;
    if (key !== null) return models[key] || { requests: {}, latency_buckets: [], queue_length: 0 };
    const all = { requests: {}, latency_buckets: [], queue_length: 0 };
    for (const m of Object.values(models)) {
      for (const [code, n] of Object.entries(m.requests)) all.requests[code] = (all.requests[code] || 0) + n;
      m.latency_buckets.forEach(([bound, n], i) => {
        if (!all.latency_buckets[i]) all.latency_buckets[i] = [bound, 0];
        all.latency_buckets[i][1] += n;
      });
      all.queue_length += m.queue_length;
    }
    return all;
  };
  const a = pick(now), b = pick(then);
  const seconds = then ? (now.t - then.t) / 1000 : 0;
  const count = total(a.requests) - (b ? total(b.requests) : 0);
  const failed = failures(a.requests) - (b ? failures(b.requests) : 0);
  const windowed = diffBuckets(a.latency_buckets, b && b.latency_buckets);
  const p95 = count > 0 ? quantile(windowed, 0.95) : quantile(a.latency_buckets, 0.95);
  return {
    perSecond: seconds > 0 ? count / seconds : null,
    errorRate: count > 0 ? failed / count : (total(a.requests) ? failures(a.requests) / total(a.requests) : null),
    p95,
    queue: a.queue_length,
  };
}

function batchingText(batching) {
  if (!batching || !batching.max_batch_size) return "off";
  const delay = batching.max_queue_delay_us ? `, ${batching.max_queue_delay_us} µs` : "";
  return `≤${batching.max_batch_size} rows${delay}, queue ${batching.max_queue_size}`;
}

function renderModels(now, then) {
  const body = document.querySelector("#models tbody");
  const rows = [];
  for (const model of now.status.models) {
    const key = `${model.name}/${model.version}`;
    const f = figures(now, then, key);
    const state = el("td");
    if (model.ready) state.append(el("span", { class: "state-ready", text: "READY" }));
    else {
      state.append(el("span", { class: "state-failed", text: "FAILED" }));
      state.append(el("span", { class: "reason", text: model.reason }));
    }
    rows.push(el("tr", { "data-model": model.name },
      el("th", { scope: "row", text: model.name }),
      el("td", { text: model.version + (model.default ? " (default)" : "") }),
      state,
      el("td", { text: model.platform || "–" }),
      el("td", { text: model.ready ? batchingText(model.batching) : "–" }),
      el("td", { text: ms(f.p95) }),
      el("td", { text: f.perSecond === null ? "–" : (f.perSecond * 60).toFixed(1) }),
      el("td", { text: pct(f.errorRate) }),
      el("td", { text: String(f.queue) })));
  }
  body.replaceChildren(...rows);
}

function renderServer(now, then) {
  const status = now.status;
  document.getElementById("server-version").textContent = `version ${status.server.version}`;
  document.getElementById("workers").textContent = String(status.server.workers);
  const process = status.metrics.process;
  document.getElementById("memory").textContent = `${(process.resident_bytes / 2 ** 20).toFixed(0)} MiB`;
  if (then) {
    const cpu = (process.cpu_seconds - then.status.metrics.process.cpu_seconds) / ((now.t - then.t) / 1000);
    document.getElementById("cpu").textContent = `${(cpu * 100).toFixed(0)}% of a core`;
  }
  const f = figures(now, then, null);
  document.getElementById("rpm").textContent = f.perSecond === null ? "–" : (f.perSecond * 60).toFixed(1);
  document.getElementById("p95").textContent = ms(f.p95);
  document.getElementById("errors").textContent = pct(f.errorRate);
}

function renderChart() {
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const points = [];
  for (let i = 1; i < history.length; i++) {
    const f = figures(history[i], history[i - 1], null);
    points.push({ rate: f.perSecond || 0, p95: (f.p95 || 0) * 1000 });
  }
  if (!points.length) return;
  const step = width / Math.max(HISTORY - 1, 1);
  const line = (values, color) => {
    const top = Math.max(...values, 1e-9);
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    values.forEach((v, i) => {
      const x = width - (values.length - 1 - i) * step;
      const y = height - 4 - (v / top) * (height - 20);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = color;
    ctx.font = "12px sans-serif";
    return top;
  };
  const topRate = line(points.map((p) => p.rate), "#1f6feb");
  const topP95 = line(points.map((p) => p.p95), "#e67e22");
  ctx.fillStyle = "#1f6feb";
  ctx.fillText(`${topRate.toFixed(1)} req/s`, 6, 14);
  ctx.fillStyle = "#e67e22";
  ctx.fillText(`${topP95.toFixed(2)} ms`, 120, 14);
}

// -- try-it forms -----------------------------------------------------------------

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

function curlFor(path, body) {
  const auth = token() ? ` -H "authorization: Bearer $TOKEN"` : "";
  return `curl -s -X POST ${shellQuote(location.origin + path)} -H 'content-type: application/json'${auth} -d ${shellQuote(JSON.stringify(body))}`;
}

function showAnswer(target, answer, model) {
  target.replaceChildren();
  if (answer && answer.object === "list" && Array.isArray(answer.data)) {
    const vector = answer.data[0].embedding;
    const first = vector.slice(0, 8).map((v) => v.toFixed(4)).join(", ");
    target.append(el("p", { class: "embedding", text: `embedding of ${vector.length} dimensions: [${first}, …]` }));
    return;
  }
  if (answer && typeof answer === "object" && "label" in answer) {
    target.append(el("p", { class: "label", text: String(answer.label) }));
    for (const [name, p] of Object.entries(answer.probabilities || {})) {
      const value = p === null ? 0 : p;
      const meter = el("meter", { min: "0", max: "1", value: String(value), "aria-label": `probability of ${name}` });
      target.append(el("div", { class: "bar" }, el("span", { text: name }), meter,
        el("span", { text: `${(value * 100).toFixed(1)}%` })));
    }
    return;
  }
  target.append(el("pre", { text: JSON.stringify(answer, null, 2) }));
}

function request(model) {
  const name = encodeURIComponent(model.name);
  const predict = `/v1/models/${name}:predict`;
  // Placeholders: each feature's range in the model's warm-up file, else the example's value.
  const hint = (feature) => {
    const range = model.ranges && model.ranges[feature];
    if (range) return range[0] === range[1] ? String(range[0]) : `${range[0]} – ${range[1]}`;
    return model.example && model.example[feature] !== undefined ? String(model.example[feature]) : "";
  };
  const fields = model.form === "features"
    ? model.features.map((feature) => el("input", {
      type: "number", step: "any", name: feature, placeholder: hint(feature),
    }))
    : [];
  const text = model.form === "features" ? null : el("textarea", { name: "body" });
  if (model.form === "text") text.value = model.example.inputs;
  else if (model.form === "rows") text.value = model.example.instances[0].join(", ");
  else if (model.form === "json") text.value = JSON.stringify(model.example, null, 2);
  const build = () => {
    if (model.form === "features") {
      const body = {};
      for (const input of fields) body[input.name] = input.value === "" ? null : Number(input.value);
      return [predict, body];
    }
    if (model.form === "embedding") return ["/v1/embeddings", { model: model.name, input: text.value }];
    if (model.form === "text") return [predict, { inputs: text.value }];
    if (model.form === "rows") return [predict, { instances: [text.value.split(",").map((v) => Number(v.trim()))] }];
    return [`/v2/models/${name}/infer`, JSON.parse(text.value)];
  };
  if (model.form === "embedding") text.value = model.example.inputs;
  const what = { features: "Features", text: "Text", embedding: "Text to embed", rows: "Values, comma-separated", json: "V2 inference request (JSON)" }[model.form];
  return { fields, text, build, what };
}

function makeForm(model) {
  const id = `try-${model.name}`.replace(/[^A-Za-z0-9_-]/g, "_");
  const { fields, text, build, what } = request(model);
  const answer = el("div", { class: "answer", "aria-live": "polite", id: `${id}-answer` });
  const curl = el("pre", { class: "curl", id: `${id}-curl` });
  const form = el("form", { id, "aria-label": `Try ${model.name}` });
  if (fields.length) {
    const grid = el("div", { class: "fields" });
    for (const input of fields) grid.append(el("label", {}, input.name, input));
    const note = model.ranges
      ? "Placeholders: each feature's smallest and largest value in the model's warm-up file."
      : "Placeholders: the example request's values.";
    form.append(el("fieldset", {}, el("legend", { text: what }), grid,
      el("p", { class: "note", text: `${note} An empty field is sent as null (missing).` })));
  } else {
    form.append(el("label", {}, what, text));
  }
  const copy = el("button", { type: "button", class: "secondary", text: "Copy curl" });
  form.append(el("div", {}, el("button", { type: "submit", text: "Send" }), " ", copy));
  form.append(answer, curl);
  const refreshCurl = () => {
    try { const [path, body] = build(); curl.textContent = curlFor(path, body); } catch { curl.textContent = ""; }
  };
  form.addEventListener("input", refreshCurl);
  copy.addEventListener("click", () => {
    if (navigator.clipboard) navigator.clipboard.writeText(curl.textContent).catch(() => {});
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let path, body;
    try { [path, body] = build(); } catch (error) {
      answer.replaceChildren(el("p", { class: "error", text: `not valid JSON: ${error.message}` }));
      return;
    }
    curl.textContent = curlFor(path, body);
    answer.replaceChildren(el("p", { text: "…" }));
    try {
      const response = await fetch(path, {
        method: "POST", headers: authorized({ "content-type": "application/json" }),
        body: JSON.stringify(body),
      });
      const data = await response.json();
      if (!response.ok) answer.replaceChildren(el("p", { class: "error", text: `${response.status}: ${data.error}` }));
      else showAnswer(answer, data, model);
    } catch (error) {
      answer.replaceChildren(el("p", { class: "error", text: String(error) }));
    }
  });
  refreshCurl();
  const details = el("details", { class: "model", "data-model": model.name },
    el("summary", { text: `${model.name} (version ${model.version}, ${model.form})` }), form);
  return details;
}

function renderForms(status) {
  const container = document.getElementById("forms");
  const wanted = status.models.filter((m) => m.ready && m.default);
  const keys = new Set(wanted.map((m) => `${m.name}/${m.version}/${m.form}`));
  for (const [key, node] of forms) if (!keys.has(key)) { node.remove(); forms.delete(key); }
  for (const model of wanted) {
    const key = `${model.name}/${model.version}/${model.form}`;
    if (!forms.has(key)) {
      const node = makeForm(model);
      forms.set(key, node);
      container.append(node);
    }
  }
}

async function poll() {
  const alert = document.getElementById("status-error");
  try {
    const response = await fetch("/ui/status", { cache: "no-store", headers: authorized() });
    if (response.status === 401) {
      throw new Error(token() ? "the inference token was refused (401)"
        : "the server wants an inference token: enter it above (401)");
    }
    if (!response.ok) throw new Error(`GET /ui/status answered ${response.status}`);
    const now = { t: Date.now(), status: await response.json() };
    history.push(now);
    if (history.length > HISTORY) history.shift();
    const then = windowStart(now);
    renderServer(now, then);
    renderModels(now, then);
    renderForms(now.status);
    renderChart();
    alert.hidden = true;
  } catch (error) {
    alert.textContent = `cannot read the server's status: ${error.message}`;
    alert.hidden = false;
  }
}

function setUpToken() {
  const input = document.getElementById("token");
  input.value = token();
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
    else sessionStorage.removeItem(TOKEN_KEY);
    poll();
  });
}

setUpToken();
poll();
setInterval(poll, POLL_MS);
