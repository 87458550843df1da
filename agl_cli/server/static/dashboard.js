// The agl dashboard. No framework and no build step: the page asks the daemon for a
// summary and pages of data (all aggregated on the server), then follows its event
// stream and redraws only what changed.
//
// The token: `agl dashboard` opens this page as `/#code=...`, with a one-time sign-in
// code that the page trades for the token (the token itself would be on the browser's
// command line); a printed address is `/#token=...`. A fragment never leaves the browser
// (not to the server, not in a Referer); the page takes it out of the address bar, keeps
// the token in this tab's session storage, and sends it as a bearer header. The rollout
// whose dialog is open is in the fragment too (`#rollout=ID`), so that a link opens it.
// EventSource cannot send headers, so the stream is read with fetch() and the small
// parser below.
"use strict";

const TOKEN_KEY = "agl-token";
const ROLLOUT_KEY = "rollout"; // the fragment's name for the rollout whose dialog is open
const SIGN_IN = "/dashboard/sign-in";
const PAGE = 25;
const PANEL_SECONDS = 5;
const AVERAGE_OF = 10; // buckets in the chart's moving average
const MODES = ["train", "val", "test"];
const STATES = ["queued", "claimed", "completed", "failed", "cancelled"];

const state = {
  token: null,
  lastSeq: 0, // the newest rollout the page has seen
  olderThan: null, // the rollouts table shows a page before this seq; null: the newest, live
  unseen: 0, // rollouts arrived while an older page is shown
  failuresOffset: 0,
  clockSkew: 0, // the daemon's clock minus the browser's, in seconds
  summary: null,
  stream: null, // the AbortController of the open stream
  panelsTimer: null,
  opening: 0, // counts the loads begun: a load retrying gives up once another has begun
  opener: null, // what had the focus when the rollout dialog opened
  openerRows: null, // the rows it was in
};

const $ = (id) => document.getElementById(id);
const numbers = new Intl.NumberFormat();

class Refused extends Error {}
// An answer other than success or 401: `reason` is the daemon's, `message` also names the path.
class Failed extends Error {
  constructor(path, status, reason) {
    super(`${path}: ${status} ${reason}`);
    Object.assign(this, { status, reason });
  }
}
class AnotherDaemon extends Error {}

// --- talking to the daemon -------------------------------------------------------------------

function headers() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

async function api(path, init = {}) {
  const response = await fetch(path, { cache: "no-store", ...init, headers: { ...headers(), ...init.headers } });
  if (response.status === 401) {
    throw new Refused(reasonOf(await bodyOf(response), NOT_VALID));
  }
  if (!response.ok) {
    throw new Failed(path, response.status, reasonOf(await bodyOf(response), response.statusText));
  }
  return exactJSON(await response.text());
}

// JSON whose integers too long for a JavaScript number (a seed, a hash in an input or in
// metadata) are kept as written, so that the dialog shows them as the daemon keeps them:
// JSON.parse would round 9223372036854775807 to ...808. Browsers without JSON.rawJSON round.
function exactJSON(text) {
  if (typeof JSON.rawJSON !== "function") return JSON.parse(text);
  return JSON.parse(text, (_key, value, context) =>
    typeof value === "number" && !Number.isSafeInteger(value) && /^-?\d+$/.test(context?.source ?? "")
      ? JSON.rawJSON(context.source)
      : value,
  );
}

const NOT_VALID = "The bearer token is not valid."; // what the daemon says, should its 401 have no JSON

// An answer's JSON, or null if it has none.
async function bodyOf(response) {
  try {
    return await response.json();
  } catch (_) {
    return null;
  }
}

// The daemon's reason for a refusal, as one sentence whatever the shape of its answer: that
// of a body which does not validate lists every problem found, which no one would read here.
function reasonOf(body, otherwise) {
  return typeof body?.detail === "string" ? body.detail : otherwise;
}

// Server-sent events from a fetch() body: `onEvent(name, data, id)` for each event.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { name: "message", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (event.data.length) onEvent(event.name, event.data.join("\n"), event.id);
        event = { name: "message", data: [], id: null };
        continue;
      }
      if (line.startsWith(":")) continue; // a comment: the daemon's keep-alive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "event") event.name = text;
      else if (field === "data") event.data.push(text);
      else if (field === "id") event.id = text;
    }
  }
}

async function follow() {
  let delay = 1;
  for (;;) {
    const controller = new AbortController();
    state.stream = controller;
    try {
      const response = await fetch(`/v1/dashboard/stream?since=${state.lastSeq}`, {
        headers: headers(),
        signal: controller.signal,
        cache: "no-store",
      });
      if (response.status === 401) throw new Refused(reasonOf(await bodyOf(response), NOT_VALID));
      if (!response.ok) throw new Error(`the stream answered ${response.status}`);
      setConnection("Live", "live");
      delay = 1;
      await readEvents(response, (name, data) => {
        if (name === "rollouts") addRollouts(JSON.parse(data));
        else if (name === "summary") {
          const summary = JSON.parse(data);
          if (anotherDaemon(summary)) throw new AnotherDaemon();
          showSummary(summary);
        }
      });
      setConnection("The daemon closed the stream; reconnecting…", "down");
    } catch (error) {
      if (error instanceof Refused) return refuse(error.message);
      if (error instanceof AnotherDaemon) {
        controller.abort();
        return open(); // which reads everything again, and follows from there
      }
      if (controller.signal.aborted) return;
      setConnection(`Disconnected; retrying in ${delay} s…`, "down");
    }
    await new Promise((resolve) => setTimeout(resolve, delay * 1000));
    delay = Math.min(delay * 2, 10);
  }
}

function setConnection(text, kind) {
  const element = $("connection");
  element.textContent = text;
  element.className = `connection ${kind || ""}`;
}

// What went wrong, in two kinds: reading from the daemon (said until the next good read),
// and what the user did (a 409: someone else was first), said until they act again or
// dismiss it, so that a refresh every few seconds does not take it away unread. Each is a
// list of what to show: text, and the elements that isolate an id in it.
const problems = { read: [], action: [] };

function showProblem(error, what = "read from the daemon") {
  problems.read = problemText(error, what);
  showProblems();
}

function showActionProblem(error, what) {
  problems.action = problemText(error, what);
  showProblems();
}

// `what`: text, or a list of text and elements.
function problemText(error, what) {
  return error ? ["The dashboard could not ", ...[what].flat(), `: ${error.message}`] : [];
}

function showProblems() {
  const said = [problems.action, problems.read].filter((parts) => parts.length);
  $("problem-text").replaceChildren(...said.flatMap((parts, i) => (i ? [" ", ...parts] : parts)));
  $("problem").hidden = !said.length;
}

// A failure of `what`: a refused token asks for another, anything else is said (by `show`).
function sayFailure(error, what, show = showProblem) {
  if (error instanceof Refused) refuse(error.message);
  else show(error, what);
}

// --- the token ---------------------------------------------------------------------------------

async function takeToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has("token") || fragment.has("code")) {
    history.replaceState(null, "", address(fragment.get(ROLLOUT_KEY))); // a rollout named stays
  }
  if (fragment.has("token")) sessionStorage.setItem(TOKEN_KEY, fragment.get("token"));
  if (fragment.has("code")) {
    const token = await redeem(fragment.get("code"));
    if (token !== null) sessionStorage.setItem(TOKEN_KEY, token);
  }
  state.token = sessionStorage.getItem(TOKEN_KEY);
}

const NOT_A_CODE = "This sign-in link is not one the daemon gave: run agl dashboard again, or paste the token.";

// The token for a sign-in code; a code is good once, for a minute.
async function redeem(code) {
  const response = await fetch(SIGN_IN, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ code }),
    cache: "no-store",
  });
  const body = await bodyOf(response);
  if (response.status === 401 || response.status === 422) throw new Refused(reasonOf(body, NOT_A_CODE));
  if (!response.ok) throw new Error(`${response.status} ${reasonOf(body, response.statusText)}`);
  return body.token;
}

// Whether `token` can be sent at all: a header holds no line break and no character past
// Latin-1 (a curly quote pasted with it, say), and fetch() throws on one it cannot hold.
function sendable(token) {
  try {
    new Headers({ Authorization: `Bearer ${token}` });
    return true;
  } catch (_) {
    return false;
  }
}

const UNSENDABLE =
  "This token holds a character no token has (a curly quote, perhaps): paste the token again as it is in its file.";

function refuse(reason) {
  showLogin(
    state.token
      ? `The daemon refused this token (${reason}) Nothing is shown without the right one.`
      : "This daemon needs its token to show anything.",
  );
}

function showLogin(reason) {
  state.opening += 1; // a load that is retrying stops
  if (state.stream) state.stream.abort();
  clearInterval(state.panelsTimer);
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  $("board").hidden = true;
  $("login").hidden = false;
  $("daemon").textContent = "";
  setConnection("Not signed in", "down");
  $("login-reason").textContent = reason;
  $("token").focus();
}

// --- the summary: counts, rates, chart -----------------------------------------------------------

// Whether `summary` comes from another daemon than the one the page shows: restarted, and
// its store may have started over (a `--memory` one) or gone back to an older backup
// (`agl restore`), so the rollouts shown and the stream's position may not be in it.
function anotherDaemon(summary) {
  return state.summary !== null && state.summary.status.started_time !== summary.status.started_time;
}

// Forget where the page stood in the rollouts, to read them again from the newest.
function startOver() {
  Object.assign(state, { lastSeq: 0, olderThan: null, unseen: 0, failuresOffset: 0 });
  $("rollouts-newest").textContent = "Newest";
}

function showSummary(summary) {
  const previous = state.summary;
  state.summary = summary;
  state.clockSkew = summary.time - Date.now() / 1000;
  const status = summary.status;
  $("daemon").textContent =
    `agl ${status.version} · ${status.store} store · ${status.address || "embedded"} · up ${duration(status.uptime)}`;
  showPaused(status.paused);
  const total = STATES.reduce((sum, name) => sum + (status.tasks[name] || 0), 0);
  const progress = $("progress");
  if (!progress.children.length) {
    for (const name of STATES) {
      const bar = document.createElement("span");
      bar.className = name;
      progress.append(bar);
    }
  }
  STATES.forEach((name, index) => {
    const count = status.tasks[name] || 0;
    $(`count-${name}`).textContent = numbers.format(count);
    progress.children[index].style.width = total ? `${(100 * count) / total}%` : "0";
  });
  $("rate-claims").textContent = status.rates.claims_per_second.toFixed(1);
  $("rate-rollouts").textContent = status.rates.rollouts_per_second.toFixed(1);
  $("rate-seconds").textContent = Math.round(status.rates.seconds);
  $("count-rollouts").textContent = numbers.format(status.rollouts);
  $("count-duplicates").textContent = numbers.format(status.duplicates);
  // with --forget-tasks the counts above go down as tasks are deleted: say how many went
  $("forgotten").hidden = !status.forget_tasks && !status.forgotten;
  $("count-forgotten").textContent = numbers.format(status.forgotten);
  showSpace(status.database, status.store);
  drawChart(summary.rewards);
  if (
    previous &&
    (previous.status.tasks.failed !== status.tasks.failed ||
      previous.status.resources !== status.resources ||
      previous.status.latest_resources_id !== status.latest_resources_id)
  ) {
    refreshPanels();
  }
}

function showSpace(space, store) {
  const shown = $("database-size");
  shown.textContent = size(space.bytes);
  const parts =
    store === "memory"
      ? ["in memory"]
      : [
          `${size(space.free_bytes)} of it free inside (agl compact gives it back)`,
          `log ${size(space.log_bytes)}`,
          `${size(space.disk_free_bytes)} free on disk`,
        ];
  if (space.max_bytes !== null) parts.push(`at most ${size(space.max_bytes)} (--max-db-size)`);
  shown.title = parts.join("; ");
}

function showPaused(paused) {
  $("paused").hidden = !paused;
  const toggle = $("pause-toggle");
  toggle.hidden = false;
  toggle.dataset.paused = String(paused);
  toggle.textContent = paused ? "Resume the queue" : "Pause the queue";
}

// `agl pause` or `agl resume`, whichever the queue's state calls for.
async function togglePause() {
  const toggle = $("pause-toggle");
  const action = toggle.dataset.paused === "true" ? "resume" : "pause";
  toggle.disabled = true;
  showActionProblem(null);
  try {
    showPaused((await api(`/v1/queue/${action}`, { method: "POST" })).paused);
  } catch (error) {
    sayFailure(error, `${action} the queue`, showActionProblem);
  } finally {
    toggle.disabled = false;
  }
}

const SVG = "http://www.w3.org/2000/svg";
// In the SVG's units, which are the screen's pixels: the chart takes its panel's width (see
// chartWidth), so that its labels keep their size on a phone.
const CHART = { width: 640, minWidth: 280, height: 260, left: 48, right: 12, top: 12, bottom: 28, limit: 1e307 };
const chart = { svg: null, grid: null, xAxis: null, lines: new Map() };

function svg(name, attributes = {}, parent = null) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (parent) parent.append(element);
  return element;
}

function modeName(mode) {
  return mode || "none";
}

function modeClass(mode) {
  return `mode-${MODES.includes(mode) ? mode : "none"}`;
}

// The chart is built once; each summary only moves its paths and rewrites its tick labels.
function drawChart(rewards) {
  if (!chart.svg) {
    chart.svg = svg("svg", {
      role: "img",
      "aria-labelledby": "chart-title chart-note",
    });
    chart.grid = svg("g", { class: "axis" }, chart.svg);
    chart.xAxis = svg("g", { class: "axis" }, chart.svg);
    chart.plot = svg("g", {}, chart.svg);
    // in HTML over the plot, not in the SVG, whose text never wraps: on a phone it would be cut
    chart.empty = textElement("p", "No rewards yet: the chart starts with the first rewarded rollout.");
    chart.empty.className = "empty-chart";
    $("chart").append(chart.svg, chart.empty);
  }
  const width = chartWidth();
  chart.svg.setAttribute("viewBox", `0 0 ${width} ${CHART.height}`);
  const lines = rewards.lines.map((line) => ({ ...line, average: movingAverage(line) }));
  const values = lines
    .flatMap((line) => line.means.concat(line.average))
    .filter((v) => v !== null)
    .map(drawable);
  chart.empty.hidden = values.length > 0;
  const times = lines.flatMap((line) => line.times);
  const x0 = Math.min(...times);
  const x1 = Math.max(...times) + rewards.width;
  let [y0, y1] = values.length ? [Math.min(0, ...values), Math.max(1, ...values)] : [0, 1];
  if (y1 - y0 < 1e-9) y1 = y0 + 1;
  const plotHeight = CHART.height - CHART.top - CHART.bottom;
  const y = (v) => CHART.top + (1 - (drawable(v) - y0) / (y1 - y0)) * plotHeight;

  chart.grid.replaceChildren();
  const step = niceStep((y1 - y0) / 5);
  const marks = ticks(y0, y1, step).map((tick) => {
    const label = svg("text", { y: y(tick) + 4, "text-anchor": "end" }, chart.grid);
    label.textContent = tickLabel(tick, step);
    return { tick, label };
  });
  // the plot starts right of the widest label, should one be wider than the usual margin
  const widest = Math.max(0, ...marks.map(({ label }) => label.getComputedTextLength()));
  const left = Math.max(CHART.left, Math.ceil(widest) + 10);
  for (const { tick, label } of marks) {
    label.setAttribute("x", left - 6);
    svg("line", { x1: left, x2: width - CHART.right, y1: y(tick), y2: y(tick), class: "grid-line" }, chart.grid);
  }
  const plotWidth = width - left - CHART.right;
  const x = (t) => left + (times.length ? ((t - x0) / (x1 - x0 || 1)) * plotWidth : 0);
  chart.xAxis.replaceChildren();
  if (times.length) {
    const parts = width < 480 ? 2 : 4; // room for a clock's time every 100 px or so
    for (let i = 0; i <= parts; i++) {
      const t = x0 + ((x1 - x0) * i) / parts;
      const anchor = i === 0 ? "start" : i === parts ? "end" : "middle";
      svg("text", { x: x(t), y: CHART.height - 8, "text-anchor": anchor }, chart.xAxis).textContent = clock(t);
    }
  }

  const seen = new Set();
  const legend = [];
  for (const line of lines) {
    const key = modeName(line.mode);
    seen.add(key);
    let drawn = chart.lines.get(key);
    if (!drawn) {
      const group = svg("g", { class: modeClass(line.mode), "data-mode": key }, chart.plot);
      drawn = {
        group,
        means: svg("path", { class: `means line-${key}` }, group),
        average: svg("path", { class: `average average-${key}` }, group),
      };
      chart.lines.set(key, drawn);
    }
    const middle = (t) => x(t + rewards.width / 2);
    drawn.means.setAttribute("d", dots(line.times, line.means, middle, y));
    drawn.average.setAttribute("d", path(line.times, line.average, middle, y));
    const latest = line.average.filter((v) => v !== null).pop();
    const count = line.rollouts.reduce((a, b) => a + b, 0);
    legend.push({ key, mode: line.mode, latest, count });
  }
  for (const [key, drawn] of chart.lines) {
    if (!seen.has(key)) {
      drawn.group.remove();
      chart.lines.delete(key);
    }
  }
  showLegend(legend, rewards.width);
}

// The chart's panel's width (the chart's default while the panel is not laid out).
function chartWidth() {
  const shown = $("chart").clientWidth;
  return shown ? Math.max(CHART.minWidth, Math.round(shown)) : CHART.width;
}

// A value as the chart draws it: within ±1e307, so that the span of its axis, and each
// step of it, is a number (a reward of 1.7e308 less one of -1.7e308 is not).
function drawable(value) {
  return Math.min(Math.max(value, -CHART.limit), CHART.limit);
}

function movingAverage(line) {
  // Each point: the mean of the last AVERAGE_OF buckets' means, weighted by the rollouts
  // that had a reward (those without one are not in the mean). Each mean is weighted by
  // its share of them, so that no sum of products outgrows a number (rewards near 1e308).
  const out = [];
  for (let i = 0; i < line.means.length; i++) {
    const window = [];
    for (let j = Math.max(0, i - AVERAGE_OF + 1); j <= i; j++) {
      if (line.means[j] !== null) window.push(j);
    }
    const weight = window.reduce((sum, j) => sum + line.rewarded[j], 0);
    out.push(weight ? window.reduce((sum, j) => sum + line.means[j] * (line.rewarded[j] / weight), 0) : null);
  }
  return out;
}

function path(times, values, x, y) {
  let d = "";
  let pen = "M";
  values.forEach((value, i) => {
    if (value === null) {
      pen = "M";
      return;
    }
    d += `${pen}${x(times[i]).toFixed(1)},${y(value).toFixed(1)}`;
    pen = "L";
  });
  // A single point still shows: a dot-sized stroke.
  return /^M[^L]*$/.test(d) ? d + "h0.01" : d;
}

// One dot per bucket: a zero-length stroke that the round line cap draws as a dot.
function dots(times, values, x, y) {
  return values
    .map((value, i) => (value === null ? "" : `M${x(times[i]).toFixed(1)},${y(value).toFixed(1)}h0.01`))
    .join("");
}

function showLegend(items, width) {
  const legend = $("legend");
  legend.replaceChildren(
    ...items.map((item) => {
      const entry = document.createElement("li");
      entry.className = modeClass(item.mode);
      entry.dataset.mode = item.key;
      const average = item.latest === undefined ? "no reward yet" : `moving average ${round(item.latest)}`;
      entry.textContent = `${item.key}: ${average} (${counting(item.count, "rollout")})`;
      return entry;
    }),
  );
  $("chart-note").textContent = items.length
    ? `Mean reward per ${duration(width)} of arrival (dots) and its moving average over ${AVERAGE_OF} of them (line), one line per mode.`
    : "";
}

// The multiples of `step` from `low` to `high` (each a product, not a sum that drifts).
function ticks(low, high, step) {
  const out = [];
  for (let k = Math.ceil(low / step); k * step <= high + step / 1e6; k++) out.push(k * step);
  return out;
}

// A tick's label, with the decimals its step needs; past a million, or with a step under a
// ten-thousandth, in exponent form (1e300's ticks read "8e+299", not 300 digits).
function tickLabel(value, step) {
  if (value === 0) return "0";
  const places = -Math.floor(Math.log10(step) + 1e-9); // 0.2: 1; 5: 0; 200: -2
  if (Math.abs(value) < 1e6 && places <= 4) return value.toFixed(Math.max(0, places));
  const digits = Math.floor(Math.log10(Math.abs(value)) + 1e-9) + places; // after the first
  return value.toExponential(Math.min(Math.max(0, digits), 4)).replace(/\.?0+e/, "e"); // 1.0e+300: 1e+300
}

function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  const scaled = raw / power;
  return (scaled <= 1 ? 1 : scaled <= 2 ? 2 : scaled <= 5 ? 5 : 10) * power;
}

// --- rollouts ------------------------------------------------------------------------------------

async function loadRollouts() {
  const before = state.olderThan === null ? "" : `&before=${state.olderThan}`;
  // one more than a page: whether there is an older one to go to
  const page = await api(`/v1/dashboard/rollouts?limit=${PAGE + 1}${before}`);
  if (state.olderThan === null) state.lastSeq = Math.max(state.lastSeq, page.last_seq);
  const shown = page.rollouts.slice(0, PAGE);
  const body = $("rollouts").tBodies[0];
  body.replaceChildren(...shown.map((line) => rolloutRow(line, false)));
  const empty = $("rollouts-empty");
  empty.hidden = shown.length > 0;
  empty.textContent =
    state.olderThan !== null
      ? "No older rollouts." // deleted meanwhile
      : page.last_seq > 0 // the last sequence number given out: some came, and retention deleted them
        ? "No rollout is kept: --rollout-retention deleted every one that came (the chart keeps their rewards)."
        : "No rollouts yet.";
  $("rollouts-newest").disabled = state.olderThan === null;
  $("rollouts-older").disabled = page.rollouts.length <= PAGE;
  state.oldestShown = shown.length ? shown[shown.length - 1].seq : null;
}

function addRollouts(event) {
  state.lastSeq = Math.max(state.lastSeq, event.last_seq);
  if (state.olderThan !== null) {
    state.unseen += event.rollouts.length;
    $("rollouts-newest").textContent = `Newest (${numbers.format(state.unseen)} new)`;
    return;
  }
  const body = $("rollouts").tBodies[0];
  const fresh = event.rollouts.slice(-PAGE).reverse();
  body.prepend(...fresh.map((line) => rolloutRow(line, true)));
  if (body.rows.length > PAGE) $("rollouts-older").disabled = false; // the rows dropped are older
  while (body.rows.length > PAGE) body.deleteRow(-1);
  $("rollouts-empty").hidden = body.rows.length > 0;
  state.oldestShown = body.rows.length ? Number(body.rows[body.rows.length - 1].dataset.seq) : null;
}

function rolloutRow(line, fresh) {
  const row = document.createElement("tr");
  row.dataset.seq = line.seq;
  row.dataset.rolloutId = line.rollout_id;
  if (fresh) row.className = "new";
  cell(row, String(line.seq));
  cell(row, "").append(detailButton(line.rollout_id));
  cell(row, modeName(line.mode));
  cell(row, line.reward === null ? "–" : round(line.reward), "number reward");
  cell(row, line.unsolicited ? "unsolicited" : line.attempt === null ? "–" : String(line.attempt), "number");
  cell(row, line.duration === null ? "–" : duration(line.duration), "number");
  cell(row, clock(line.received_time));
  return row;
}

function cell(row, text, className) {
  const element = row.insertCell();
  element.textContent = text;
  if (className) element.className = className;
  return element;
}

function detailButton(rolloutId) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link";
  button.append(shortId(rolloutId));
  button.title = rolloutId;
  button.setAttribute("aria-label", `Show rollout ${rolloutId}`);
  button.addEventListener("click", () => showDetail(rolloutId));
  return button;
}

// --- the panels that change slowly: failures, workers, resources --------------------------------

async function refreshPanels() {
  if (document.hidden || state.token === null) return;
  try {
    const [failures, workers, resources] = await Promise.all([
      api(`/v1/dashboard/failures?limit=${PAGE}&offset=${state.failuresOffset}`),
      api(`/v1/dashboard/workers?limit=${PAGE}`),
      api(`/v1/dashboard/resources?limit=10`),
    ]);
    showFailures(failures);
    showWorkers(workers);
    showResources(resources);
    showProblem(null);
  } catch (error) {
    sayFailure(error);
  }
}

function showFailures(page) {
  redraw(
    $("failures").tBodies[0],
    page.tasks.map(({ task, attempts }) => {
      const row = document.createElement("tr");
      row.dataset.rolloutId = task.rollout_id;
      cell(row, "").append(detailButton(task.rollout_id));
      const status = statusCell(row, task.status);
      const action = ACTIONS[task.status];
      if (action) status.append(" ", taskButton(task.rollout_id, action));
      cell(row, modeName(task.mode));
      cell(row, "").append(attemptList(attempts));
      cell(row, task.last_claim_time ? ago(task.last_claim_time) : "–");
      return row;
    }),
  );
  $("failures-empty").hidden = page.tasks.length > 0 || state.failuresOffset > 0;
  $("failures-newer").disabled = state.failuresOffset === 0;
  $("failures-older").disabled = !page.has_more;
}

// Replace the rows of a panel refreshed every few seconds, keeping the keyboard's place: the
// control focused among the old rows is found again among the new ones by its label
// (`Retry r-1`), else by its row (the Retry pressed is a Cancel now: its row's first button).
function redraw(body, rows) {
  const focused = body.contains(document.activeElement) ? document.activeElement : null;
  body.replaceChildren(...rows);
  if (focused) sameControl(focused, body)?.focus({ preventScroll: true });
}

// The control in `root` that stands where `control` (no longer shown) stood.
function sameControl(control, root) {
  const label = control.getAttribute("aria-label");
  const buttons = [...root.querySelectorAll("button")];
  const row = control.closest("tr")?.dataset.rolloutId;
  return (
    buttons.find((button) => button.getAttribute("aria-label") === label) ||
    buttons.find((button) => row !== undefined && button.closest("tr")?.dataset.rolloutId === row)
  );
}

// What a task's button does, by its status: queue it again (it failed or was cancelled),
// as `agl tasks retry` does, or take it out of play (it is queued or claimed), as
// `agl tasks cancel` does, once asked for a yes. A completed task has none.
const RETRY = { verb: "retry", label: "Retry", title: "Queue it again, at the back of the queue" };
const CANCEL = {
  verb: "cancel",
  label: "Cancel",
  title: "Take it out of play: it is not handed out again",
  // a native dialog holds text only: the id is isolated by characters there
  ask: (id) => `Cancel \u2068${id}\u2069? It is not handed out again (a result that still comes is kept).`,
};
const ACTIONS = { failed: RETRY, cancelled: RETRY, queued: CANCEL, claimed: CANCEL };

function taskButton(rolloutId, action) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "task-action";
  button.textContent = action.label;
  button.setAttribute("aria-label", `${action.label} ${rolloutId}`);
  button.title = action.title;
  button.addEventListener("click", async () => {
    if (action.ask && !confirm(action.ask(rolloutId))) return;
    button.disabled = true;
    showActionProblem(null);
    const body = JSON.stringify({ rollout_ids: [rolloutId] });
    try {
      const headers = { "Content-Type": "application/json" };
      await api(`/v1/tasks/${action.verb}`, { method: "POST", headers, body });
      await refreshPanels();
    } catch (error) {
      await refreshPanels(); // someone may have changed it first: show the list as it is
      sayFailure(error, [`${action.verb} `, shortId(rolloutId)], showActionProblem);
    }
  });
  return button;
}

function attemptList(attempts) {
  const list = document.createElement("ul");
  list.className = "history";
  for (const attempt of attempts) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.className = `status ${attempt.status}`;
    label.textContent = attempt.status;
    item.append(`#${attempt.sequence_id} `, label);
    if (attempt.worker_id) item.append(" on ", shown(attempt.worker_id));
    item.title = `${attempt.attempt_id}, started ${clock(attempt.start_time)}`;
    list.append(item);
  }
  return list;
}

function statusCell(row, status) {
  const element = cell(row, status);
  element.className = `status ${status}`;
  return element;
}

function showWorkers(page) {
  redraw(
    $("workers").tBodies[0],
    page.workers.map((worker) => {
      const row = document.createElement("tr");
      cell(row, "", "text").append(shown(worker.worker_id));
      statusCell(row, worker.status);
      cell(row, worker.last_heartbeat_time ? ago(worker.last_heartbeat_time) : "never");
      const current = cell(row, worker.current_rollout_id ? "" : "–");
      if (worker.current_rollout_id) current.append(detailButton(worker.current_rollout_id));
      return row;
    }),
  );
  $("workers-empty").hidden = page.workers.length > 0;
}

function showResources(page) {
  redraw(
    $("resources").tBodies[0],
    page.resources.map((bundle) => {
      const row = document.createElement("tr");
      // ids and names are whatever was published: each isolated, so that a right-to-left
      // character in one reorders nothing of the page's own words around it
      const name = cell(row, "", "text");
      name.append(shown(bundle.resources_id));
      if (bundle.resources_id === page.latest_id) name.append(" (latest)");
      cell(row, String(bundle.version), "number");
      cell(row, clock(bundle.update_time, true));
      const contents = cell(row, "", "text");
      Object.entries(bundle.resources).forEach(([key, resource], i) => {
        if (i) contents.append(", ");
        contents.append(shown(key), ": ", shown(String(resource.resource_type), ...ROOMY));
        if (resource.model) contents.append(" ", shown(String(resource.model), ...ROOMY));
      });
      return row;
    }),
  );
  $("resources-empty").hidden = page.resources.length > 0;
}

// --- one rollout ---------------------------------------------------------------------------------

// The address of this page with the dialog of `rolloutId` open (null: none open).
function address(rolloutId) {
  const page = location.pathname + location.search;
  return rolloutId === null ? page : `${page}#${new URLSearchParams({ [ROLLOUT_KEY]: rolloutId })}`;
}

// The rollout the address names, or null.
function linkedRollout() {
  return new URLSearchParams(location.hash.slice(1)).get(ROLLOUT_KEY);
}

// Opening a rollout's dialog is a step in the tab's history: Back closes it, Forward opens it
// again, and the address is a link to it.
function showLinked() {
  const rolloutId = linkedRollout();
  if (rolloutId !== null) showDetail(rolloutId);
  else if ($("detail").open) $("detail").close();
}

// Closed by Escape or its button, the dialog's step is taken back (or, arrived at by a link,
// taken out of the address); closed by Back, the address names no rollout already.
function forgetLinked() {
  if (linkedRollout() === null) return;
  if (history.state?.[ROLLOUT_KEY] !== undefined) history.back();
  else history.replaceState(null, "", address(null));
}

async function showDetail(rolloutId) {
  const dialog = $("detail");
  const body = $("detail-body");
  if (linkedRollout() !== rolloutId) history.pushState({ [ROLLOUT_KEY]: rolloutId }, "", address(rolloutId));
  $("detail-title").replaceChildren(rolloutId.trim() ? shown(rolloutId, ...ROOMY) : shortId(rolloutId));
  body.replaceChildren(paragraph("Loading…"));
  if (!dialog.open) {
    state.opener = document.activeElement;
    state.openerRows = state.opener.closest("tbody") || document; // rows are redrawn, not their tbody
    dialog.showModal();
  }
  try {
    // in the query: in a path, the browser would take an id of "." or ".." for a segment to resolve
    renderDetail(body, await api(`/v1/dashboard/rollout?rollout_id=${encodeURIComponent(rolloutId)}`));
  } catch (error) {
    if (error instanceof Refused) {
      dialog.close();
      refuse(error.message);
    } else {
      // an unknown id (a link from another daemon, say): the daemon's sentence is enough
      body.replaceChildren(paragraph(error instanceof Failed && error.status === 404 ? error.reason : error.message));
    }
  }
}

function renderDetail(body, detail) {
  const parts = [];
  const result = detail.result;
  const task = detail.task ? detail.task.task : null;
  const facts = [
    ["Status", task ? task.status : "unsolicited"],
    ["Mode", modeName(detail.mode)],
    ["Reward", result && result.final_reward !== null ? round(result.final_reward) : "–"],
    ["Attempts", task ? String(task.num_claims) : "–"],
    ["Queued", task ? clock(task.create_time, true) : "–"],
    [
      "Received",
      result
        ? clock(result.received_time, true)
        : task && task.status === "completed"
          ? "deleted since (retention)" // a task completes with its result: only retention takes it
          : "not yet",
    ],
  ];
  parts.push(definitionList(facts));
  parts.push(heading("Input"), pre(JSON.stringify(detail.input, null, 2)));
  if (detail.task && detail.task.attempts.length) {
    parts.push(
      heading("Attempts"),
      table(
        ["#", "Attempt", "Status", "Worker", "Started", "Took"],
        ["", "text", "", "text"],
        detail.task.attempts.map((a) => [
          String(a.sequence_id),
          a.attempt_id,
          a.status,
          a.worker_id ? shown(a.worker_id) : "–",
          clock(a.start_time),
          a.end_time ? duration(a.end_time - a.start_time) : "–",
        ]),
      ),
    );
  }
  if (result) {
    parts.push(heading(`Triplets (${howMany(result.triplets.length, result.triplets_total, "first")})`));
    parts.push(
      result.triplets.length
        ? table(
            ["#", "Prompt tokens", "Response tokens", "Reward", "Prompt", "Response"],
            ["", "", "", "", "preview", "preview"],
            result.triplets.map((t, i) => [
              String(i + 1),
              t.prompt_tokens === null ? "–" : numbers.format(t.prompt_tokens),
              t.response_tokens === null ? "–" : numbers.format(t.response_tokens),
              t.reward === null ? "–" : round(t.reward),
              t.prompt,
              t.response,
            ]),
            "triplets",
          )
        : paragraph("None were reported."),
    );
  }
  parts.push(heading(`Spans (${howMany(detail.spans.length, detail.spans_total, "first")})`));
  parts.push(detail.spans.length ? waterfall(detail.spans) : paragraph("No spans or trace."));
  if (result) {
    parts.push(heading(`Logs (${howMany(result.logs.length, result.logs_total, "last")} ${plural(result.logs_total, "line")})`));
    parts.push(result.logs.length ? pre(result.logs.join("\n")) : paragraph("No logs."));
    parts.push(heading("Metadata"), pre(JSON.stringify(result.metadata, null, 2)));
  }
  body.replaceChildren(...parts);
}

function waterfall(spans) {
  const starts = spans.map((s) => s.start_time).filter((t) => t !== null);
  const ends = spans.map((s) => s.end_time ?? s.start_time).filter((t) => t !== null);
  const t0 = Math.min(...starts);
  const total = Math.max(...ends) - t0 || 1;
  const rows = spans.map((span) => {
    const start = span.start_time;
    const took = start !== null && span.end_time !== null ? span.end_time - start : null;
    const bar = document.createElement("div");
    bar.className = "waterfall-bar";
    bar.setAttribute("aria-hidden", "true");
    if (start !== null) {
      const piece = document.createElement("span");
      piece.style.left = `${(100 * (start - t0)) / total}%`;
      piece.style.width = `${(100 * (took || 0)) / total}%`;
      if (span.status === "ERROR") piece.className = "error";
      bar.append(piece);
    }
    return [span.name, start === null ? "–" : `+${duration(start - t0)}`, took === null ? "–" : duration(took), span.status || "–", bar];
  });
  return table(["Span", "Start", "Took", "Status", "Timeline"], ["text"], rows, "waterfall");
}

// A table in a box that scrolls sideways should it be wider than the dialog; `columns`: the
// class of each column's cells (`text` wraps anywhere, `preview` too, in smaller type).
function table(headers, columns, rows, className = "") {
  const element = document.createElement("table");
  element.className = `grid ${className}`;
  const head = element.createTHead().insertRow();
  for (const text of headers) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = text;
    head.append(th);
  }
  const body = element.createTBody();
  for (const values of rows) {
    const row = body.insertRow();
    values.forEach((value, i) => {
      const td = row.insertCell();
      if (columns[i]) td.className = columns[i];
      if (value instanceof Node) td.append(value);
      else td.textContent = value;
    });
  }
  return scrolling(element);
}

function scrolling(element) {
  const box = document.createElement("div");
  box.className = "table-scroll";
  box.append(element);
  return box;
}

function definitionList(pairs) {
  const list = document.createElement("dl");
  list.className = "facts";
  for (const [term, value] of pairs) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }
  return list;
}

function textElement(tag, text) {
  const element = document.createElement(tag);
  element.textContent = text;
  return element;
}

const heading = (text) => textElement("h3", text);
const pre = (text) => textElement("pre", text);
const paragraph = (text) => textElement("p", text);

// --- formatting ----------------------------------------------------------------------------------

function round(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(3);
}

// Bytes as `agl status` says them: 812 B, 4.1 kB, 181.2 MB, 20.3 GB.
function size(bytes) {
  let value = bytes;
  for (const unit of ["B", "kB", "MB", "GB"]) {
    if (Math.abs(value) < 1000) return unit === "B" ? `${value.toFixed(0)} B` : `${value.toFixed(1)} ${unit}`;
    value /= 1000;
  }
  return `${numbers.format(Math.round(value * 10) / 10)} TB`;
}

function duration(seconds) {
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.round((seconds % 86400) / 3600)} h`;
}

function clock(epoch, withDate = false) {
  const moment = new Date(epoch * 1000);
  return withDate ? moment.toLocaleString() : moment.toLocaleTimeString();
}

function ago(epoch) {
  const seconds = Math.max(0, Date.now() / 1000 + state.clockSkew - epoch);
  return `${duration(seconds)} ago`;
}

// "1 rollout", "2 rollouts".
function counting(count, noun) {
  return `${numbers.format(count)} ${plural(count, noun)}`;
}

function plural(count, noun) {
  return count === 1 ? noun : `${noun}s`;
}

// How many a list holds, saying so when the daemon sent only part of it ("first 500 of 600").
function howMany(shown, total, which) {
  return shown < total ? `${which} ${numbers.format(shown)} of ${numbers.format(total)}` : numbers.format(total);
}

// An id as the page shows it: a placeholder if it is blank, else as `shown` shows it.
function shortId(id) {
  if (!id.trim()) return id ? "(blank id)" : "(empty id)";
  return shown(id);
}

// What someone chose (an id, a name) as the page shows it, isolated (a right-to-left mark in
// it reorders nothing around it); if longer than `head` + `tail` + 1 characters, only its
// first `head` and last `tail` (code points: an emoji is not cut in two), so that no name
// makes the page long, with the whole in its title and in a copy of it (`copyWhole`).
function shown(text, head = 17, tail = 4) {
  const points = [...text];
  if (points.length <= head + tail + 1) return isolated(text);
  const element = document.createElement("bdi");
  element.className = "shortened";
  element.title = text;
  element.append(isolated(points.slice(0, head).join("")), "…", isolated(points.slice(-tail).join("")));
  return element;
}

const ROOMY = [40, 8]; // a model's or a resource type's name, an id as a heading: read, unlike ids in rows

// A copy of a selection that holds nothing but (part of) one shortened name is the whole
// name: the part shown would find nothing where it is pasted (`agl tasks show`, a search).
function copyWhole(event) {
  const selection = getSelection();
  if (!selection.rangeCount || selection.isCollapsed) return;
  const range = selection.getRangeAt(0);
  const touched = [...document.querySelectorAll(".shortened")].filter((element) => range.intersectsNode(element));
  const text = selection.toString().trim();
  if (touched.length !== 1 || !text || !touched[0].textContent.includes(text)) return;
  event.clipboardData.setData("text/plain", touched[0].title);
  event.preventDefault();
}

// Text in a <bdi>: its direction stays inside, by markup rather than by isolate characters
// around it, which a copy of it would carry (and `agl tasks show` would not find).
function isolated(text) {
  return textElement("bdi", text);
}

// --- start ---------------------------------------------------------------------------------------

async function open() {
  if (state.token !== null && !sendable(state.token)) return showLogin(UNSENDABLE); // which forgets it
  $("login").hidden = true;
  setConnection("Connecting…");
  const opening = ++state.opening;
  // Until the daemon answers, as the stream does after a disconnect: it may be starting, or
  // restarting (a new daemon found by the stream is read again here).
  for (let delay = 1; ; delay = Math.min(delay * 2, 10)) {
    try {
      const summary = await api("/v1/dashboard");
      if (anotherDaemon(summary)) startOver();
      $("board").hidden = false; // first, so that the chart is drawn to its panel's width
      showSummary(summary);
      await loadRollouts();
      await refreshPanels();
      if (!$("detail").open) showLinked(); // a rollout the address names
      break;
    } catch (error) {
      if (error instanceof Refused) return refuse(error.message);
      showProblem(error);
      setConnection(`The daemon did not answer; retrying in ${delay} s…`, "down");
    }
    await new Promise((resolve) => setTimeout(resolve, delay * 1000));
    if (opening !== state.opening) return;
  }
  clearInterval(state.panelsTimer);
  state.panelsTimer = setInterval(refreshPanels, PANEL_SECONDS * 1000);
  follow();
}

function wire() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem(TOKEN_KEY, state.token);
    open();
  });
  $("rollouts-older").addEventListener("click", () => {
    if (state.oldestShown === null) return;
    state.olderThan = state.oldestShown;
    loadRollouts().catch(showProblem);
  });
  $("rollouts-newest").addEventListener("click", () => {
    state.olderThan = null;
    state.unseen = 0;
    $("rollouts-newest").textContent = "Newest";
    loadRollouts().catch(showProblem);
  });
  $("failures-older").addEventListener("click", () => {
    state.failuresOffset += PAGE;
    refreshPanels();
  });
  $("failures-newer").addEventListener("click", () => {
    state.failuresOffset = Math.max(0, state.failuresOffset - PAGE);
    refreshPanels();
  });
  $("detail-close").addEventListener("click", () => $("detail").close());
  window.addEventListener("popstate", () => state.token !== null && showLinked());
  $("detail").addEventListener("close", () => {
    forgetLinked();
    // the browser gives focus back to the button that opened it, unless a refresh has
    // redrawn its panel since: then to the one that stands in its place
    const opener = state.opener;
    if (opener && !opener.isConnected) sameControl(opener, state.openerRows)?.focus();
  });
  $("pause-toggle").addEventListener("click", togglePause);
  $("problem-dismiss").addEventListener("click", () => {
    Object.assign(problems, { read: [], action: [] });
    showProblems();
  });
  document.addEventListener("visibilitychange", refreshPanels);
  document.addEventListener("copy", copyWhole);
}

wire();
takeToken().then(open, (error) =>
  showLogin(error instanceof Refused ? error.message : `The dashboard could not sign in (${error.message}).`),
);
