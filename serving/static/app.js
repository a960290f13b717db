// The Flywheel explorer page: plain JavaScript over the public API (no build step, no
// dependencies). State: the last query shown (user, scene, request id), nothing else.
"use strict";

// Shoppers of `make run`'s demo traffic: the synthetic shop (u<n>) and the simulator (sim-<n>).
const EXAMPLES = ["u1", "u2", "u3", "sim-1", "sim-2"];
const ACTIONS = ["view", "click", "add_to_cart", "purchase"];
const $ = (id) => document.getElementById(id);
let current = null; // {user, scene, requestId}

function setStatus(text, state) {
  const status = $("status");
  status.textContent = text;
  status.dataset.state = state || "info";
}

function randomHex(bytes) {
  const values = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(values, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function call(url, options) {
  let response;
  try {
    response = await fetch(url, { headers: { accept: "application/json" }, ...options });
  } catch (error) {
    return { status: 0, body: { detail: `network error: ${error.message}` } };
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = { detail: `not JSON (${response.statusText})` };
  }
  return { status: response.status, body };
}

// The API's error detail as one line: a string, validation errors, or an event rejection.
function detailOf(body) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => `${(e.loc || []).slice(-1)[0]}: ${e.msg}`).join("; ");
  }
  if (detail && detail.message) return detail.message;
  return JSON.stringify(body);
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function fillChips(list, values) {
  list.replaceChildren(...values.map((value) => element("li", value, "chip")));
  if (!values.length) list.replaceChildren(element("li", "none", "meta"));
}

async function show() {
  const user = $("user").value.trim();
  const scene = $("scene").value;
  const item = $("item").value.trim();
  if (!user) return setStatus("enter a shopper id", "error");
  if (scene === "product" && !item) return setStatus("the product scene needs an item id", "error");
  const params = new URLSearchParams({ user_id: user, scene, k: $("k").value || "10" });
  if (scene === "product") params.set("item_id", item);
  setStatus(`loading ${user}…`, "info");
  const [rec] = await Promise.all([
    call(`../v1/recommendations?${params}`),
    refreshFeatures(user),
  ]);
  if (rec.status !== 200) {
    current = null;
    $("list").hidden = true;
    $("strategy").textContent = "";
    $("list-meta").textContent = "";
    return setStatus(`recommendations: HTTP ${rec.status}: ${detailOf(rec.body)}`, "error");
  }
  renderList(rec.body);
  setStatus(`${rec.body.items.length} items for ${user} (${scene})`, "ok");
}

function renderList(body) {
  current = { user: body.user_id, scene: body.scene, requestId: body.request_id };
  $("strategy").textContent = body.strategy;
  $("strategy").dataset.strategy = body.strategy;
  $("list-meta").textContent =
    `request ${body.request_id}` + (body.diversified ? " · diversified" : "");
  const rows = body.items.map((item, index) => {
    const row = element("tr");
    row.dataset.itemId = item.item_id;
    row.append(
      element("td", String(index + 1)),
      element("td", item.item_id, "item"),
      element("td", item.score.toFixed(3), "score"),
      element("td", item.reason, `reason ${item.reason}`),
    );
    const cell = element("td");
    const button = element("button", "click", "click");
    button.type = "button";
    button.addEventListener("click", () => sendClick(item.item_id, index + 1, row));
    cell.append(button);
    row.append(cell);
    return row;
  });
  $("list").tBodies[0].replaceChildren(...rows);
  $("list").hidden = false;
}

async function sendClick(itemId, position, row) {
  if (!current) return;
  const event = {
    event_id: `web-${randomHex(12)}`,
    user_id: current.user,
    item_id: itemId,
    action: "click",
    ts: Date.now(),
    scene: current.scene,
    request_id: current.requestId,
    position,
  };
  setStatus(`sending a click on ${itemId}…`, "info");
  const sent = await call("../v1/events", {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json" },
    body: JSON.stringify(event),
  });
  if (sent.status !== 202) {
    return setStatus(`click on ${itemId} refused: HTTP ${sent.status}: ${detailOf(sent.body)}`,
      "error");
  }
  row.classList.add("clicked");
  const status = `click on ${itemId} accepted (${sent.body.accepted} event, ${event.event_id}); ` +
    "the job learns from it: features refresh in a moment";
  setStatus(status, "ok");
  $("status").dataset.eventId = event.event_id;
  const user = current.user;
  for (const delay of [1500, 4000]) setTimeout(() => refreshFeatures(user), delay);
}

async function refreshFeatures(user) {
  const got = await call(`../v1/users/${encodeURIComponent(user)}/features`);
  if ($("user").value.trim() !== user) return; // another shopper is shown meanwhile
  if (got.status !== 200) {
    $("features").hidden = true;
    $("features-missing").hidden = false;
    $("features-missing").textContent = `HTTP ${got.status}: ${detailOf(got.body)}`;
    return;
  }
  renderFeatures(got.body.features);
}

function renderFeatures(f) {
  $("features-missing").hidden = true;
  const totals = Object.entries(f.totals || {}).map(([a, n]) => `${a} ${n}`).join(" · ");
  const norm = f.factors ? Math.hypot(...f.factors).toFixed(3) : "no factors yet";
  const summary = [
    ["events", String(f.n_events ?? "?")],
    ["last event", f.max_ts ? new Date(f.max_ts).toLocaleString() : "-"],
    ["totals", totals || "-"],
    ["late events", String(f.late ?? 0)],
    ["user vector norm", norm],
  ];
  $("summary").replaceChildren(...summary.flatMap(([k, v]) => [element("dt", k), element("dd", v)]));
  renderWindows(f.windows || {});
  fillChips($("recent"), [...(f.recent || [])].reverse());
  const categories = Object.entries(f.categories || {}).sort((a, b) => b[1] - a[1]);
  fillChips($("categories"), categories.map(([c, n]) => `${c} ×${n}`));
  fillChips($("purchased"), [...(f.purchased || [])].reverse());
  $("features").hidden = false;
}

function renderWindows(windows) {
  const extra = new Set();
  for (const counts of Object.values(windows)) {
    for (const action of Object.keys(counts)) if (!ACTIONS.includes(action)) extra.add(action);
  }
  const columns = [...ACTIONS, ...extra];
  const head = element("tr");
  head.append(element("th", "window"), ...columns.map((a) => element("th", a)));
  $("windows").tHead.replaceChildren(head);
  const rows = Object.entries(windows).map(([name, counts]) => {
    const row = element("tr");
    row.dataset.window = name;
    const seconds = parseInt(name, 10);
    const label = seconds % 3600 === 0 ? `${seconds / 3600} h` : name;
    row.append(element("th", label), ...columns.map((a) => element("td", String(counts[a] || 0))));
    return row;
  });
  $("windows").tBodies[0].replaceChildren(...rows);
}

function pick(user) {
  $("user").value = user;
  show();
}

function init() {
  $("examples").replaceChildren(...EXAMPLES.map((user) => {
    const chip = element("button", user, "chip");
    chip.type = "button";
    chip.addEventListener("click", () => pick(user));
    return chip;
  }));
  $("new-shopper").addEventListener("click", () => pick(`new-${randomHex(4)}`));
  $("scene").addEventListener("change", () => {
    $("item-label").hidden = $("scene").value !== "product";
  });
  $("query").addEventListener("submit", (event) => {
    event.preventDefault();
    show();
  });
  const params = new URLSearchParams(location.search);
  if (params.get("scene")) $("scene").value = params.get("scene");
  $("item-label").hidden = $("scene").value !== "product";
  if (params.get("item_id")) $("item").value = params.get("item_id");
  if (params.get("user_id")) pick(params.get("user_id"));
}

init();
