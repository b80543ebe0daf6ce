// natsgw status page: reads /status.json every 2 s and fills the page. Plain JavaScript, no
// build step, no dependencies. Every value is written as text (textContent), never as HTML.
"use strict";

const COLUMNS = [
  "tenant", "calls", "calls_per_second", "errors", "published", "published_bytes",
  "delivered", "delivered_bytes", "dropped", "open_streams", "streams", "stored_messages",
  "stored_bytes", "consumers", "consumer_pending", "consumer_ack_pending",
];
const BYTES = new Set(["published_bytes", "delivered_bytes", "stored_bytes"]);

function human(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return (unit === 0 ? String(value) : value.toFixed(1)) + " " + units[unit];
}

function shown(column, value) {
  if (value === undefined || value === null) return "";
  if (BYTES.has(column)) return human(value);
  return String(value);
}

function fillList(id, entries) {
  const list = document.getElementById(id);
  list.replaceChildren();
  for (const [name, value] of entries) {
    const term = document.createElement("dt");
    term.textContent = name;
    const detail = document.createElement("dd");
    detail.textContent = String(value);
    if (name === "connected" && value === false) detail.className = "bad";
    list.append(term, detail);
  }
}

function row(tenant, className) {
  const tr = document.createElement("tr");
  tr.className = className;
  tr.dataset.tenant = tenant.tenant;
  for (const column of COLUMNS) {
    const td = document.createElement("td");
    td.textContent = shown(column, tenant[column]);
    tr.append(td);
  }
  return tr;
}

function render(status) {
  fillList("gateway", [["uptime (s)", status.uptime_seconds], ...Object.entries(status.gateway)]);
  fillList("nats", Object.entries(status.nats));
  const body = document.getElementById("tenants");
  body.replaceChildren(
    ...status.tenants.map((tenant) => row(tenant, "tenant")),
    row(status.other, "other"),
  );
  document.getElementById("names-note").textContent = status.tenant_names
    ? "Tenant names shown (NATSGW_STATUS_TENANT_NAMES=true)."
    : "Tenants show as pseudonyms; NATSGW_STATUS_TENANT_NAMES=true shows their names.";
  document.getElementById("jetstream-note").textContent = status.jetstream_note || "";
  document.getElementById("updated").textContent = "as of " + status.generated_at;
  document.getElementById("error").hidden = true;
}

async function refresh() {
  try {
    const answer = await fetch("/status.json", { cache: "no-store" });
    if (!answer.ok) throw new Error("/status.json answered " + answer.status);
    render(await answer.json());
  } catch (error) {
    const box = document.getElementById("error");
    box.textContent = "Could not load /status.json: " + error.message;
    box.hidden = false;
  }
}

refresh();
setInterval(refresh, 2000);
