// Overview, queue and exchange lists, an exchange's page, connections and
// channels. Each page fills `main` and returns its refresh function.

import { api, get, enc } from "./api.js";
import { h, fill, table, flash, num, rate, dash, field, action, confirmButton, vhostSelect } from "./dom.js";

const HISTORY = 120; // points kept per chart (10 minutes at 5 s)

function card(label, value) {
  return h("div.card", h("div.label", label), h("div.value", value));
}

function chart(title, labels, colors) {
  const el = h("div.chart");
  const opts = {
    title,
    width: 560,
    height: 220,
    series: [{}, ...labels.map((label, i) => ({ label, stroke: colors[i], width: 2 }))],
    axes: [{}, { size: 60 }],
    scales: {
      // At least a minute wide, so the first points do not span years.
      x: { time: true, range: (u, min, max) => [Math.min(min ?? Date.now() / 1000, (max ?? Date.now() / 1000) - 60), max ?? Date.now() / 1000] },
      y: { range: (u, min, max) => [0, Math.max(1, max ?? 1)] },
    },
  };
  const data = [[], ...labels.map(() => [])];
  const plot = new window.uPlot(opts, data, el);
  return {
    el,
    push(values) {
      data[0].push(Date.now() / 1000);
      values.forEach((v, i) => data[i + 1].push(typeof v === "number" ? v : null));
      if (data[0].length > HISTORY) data.forEach((a) => a.shift());
      plot.setData(data);
    },
  };
}

const r = (stats, key) => stats && stats[key + "_details"] ? stats[key + "_details"].rate : undefined;

/** The durability figures (`store_stats`): "—" for any the broker does not report. */
function durability(s) {
  s = s || {};
  const lat = s.confirm_latency_us || {};
  const us = (v) => (typeof v === "number" ? v.toLocaleString("en") + " µs" : dash);
  const bytes = (v) => (typeof v === "number" ? (v / 1048576).toFixed(1) + " MiB" : dash);
  return [
    card("fsyncs", num(s.fsyncs)),
    card("fsyncs/s", rate(s.fsyncs_details)),
    card("messages per fsync", typeof s.messages_per_fsync === "number" ? s.messages_per_fsync.toFixed(1) : dash),
    card("confirm latency p50", us(lat.p50)),
    card("confirm latency p99", us(lat.p99)),
    card("paged out", bytes(s.paged_out_bytes)),
  ];
}

export async function overview(main) {
  const rates = chart("Message rates (/s)", ["publish", "deliver/get", "ack", "confirm", "redeliver"],
    ["#d9480f", "#1c7ed6", "#2b8a3e", "#7048e8", "#e67700"]);
  const depth = chart("Queued messages", ["total", "ready", "unacked"], ["#1d2330", "#1c7ed6", "#e67700"]);
  const totals = h("div.cards#totals");
  const store = h("div.cards#durability");
  const node = h("p.muted");
  fill(main, h("h1", "Overview"), node, totals,
    h("h2", "Charts"), h("div.charts", rates.el, depth.el),
    h("h2", "Durability"), store,
  );
  const refresh = async () => {
    const o = await get("/overview");
    const ms = o.message_stats || {};
    const qt = o.queue_totals || {};
    const ot = o.object_totals || {};
    node.textContent = `${o.product_name || "Hopper"} ${o.product_version || ""} · node ${o.node} · RabbitMQ-compatible ${o.rabbitmq_version}`;
    fill(totals, card("messages", num(qt.messages)), card("ready", num(qt.messages_ready)),
      card("unacked", num(qt.messages_unacknowledged)), card("queues", num(ot.queues)),
      card("exchanges", num(ot.exchanges)), card("connections", num(ot.connections)),
      card("channels", num(ot.channels)), card("consumers", num(ot.consumers)),
    );
    fill(store, ...durability(o.store_stats));
    rates.push([r(ms, "publish"), r(ms, "deliver_get"), r(ms, "ack"), r(ms, "confirm"), r(ms, "redeliver")]);
    depth.push([qt.messages, qt.messages_ready, qt.messages_unacknowledged]);
  };
  await refresh();
  return refresh;
}

export function queueLink(vhost, name) {
  return h("a", { href: `#/queues/${enc(vhost)}/${enc(name)}` }, name);
}

export async function queues(main) {
  const filter = h("input", { type: "search", placeholder: "Filter by name", name: "filter" });
  const holder = h("div#queue-table");
  let list = [];
  const draw = () => {
    const f = filter.value.toLowerCase();
    const rows = list.filter((q) => q.name.toLowerCase().includes(f));
    fill(holder, table([
      { label: "Virtual host", cell: (q) => q.vhost },
      { label: "Name", cell: (q) => queueLink(q.vhost, q.name) },
      { label: "Type", cell: (q) => q.type },
      { label: "State", cell: (q) => q.state },
      { label: "Ready", num: true, cell: (q) => num(q.messages_ready) },
      { label: "Unacked", num: true, cell: (q) => num(q.messages_unacknowledged) },
      { label: "Total", num: true, cell: (q) => num(q.messages) },
      { label: "Consumers", num: true, cell: (q) => num(q.consumers) },
      { label: "Incoming", num: true, cell: (q) => rate((q.message_stats || {}).publish_details) },
      { label: "Deliver/get", num: true, cell: (q) => rate((q.message_stats || {}).deliver_get_details) },
      { label: "Ack", num: true, cell: (q) => rate((q.message_stats || {}).ack_details) },
    ], rows, list.length ? "No queue matches the filter" : "No queues"));
  };
  filter.addEventListener("input", draw);
  const vhosts = await get("/vhosts");
  const name = h("input", { name: "name", required: true });
  const durable = h("select", { name: "durable" }, h("option", { value: "true" }, "durable"), h("option", { value: "false" }, "transient"));
  const vh = vhostSelect(vhosts, "/");
  const refresh = async () => {
    list = await get("/queues");
    draw();
  };
  fill(main, h("h1", "Queues"), h("div.toolbar", filter), holder,
    h("h2", "Add a queue"),
    h("form.box", {
      onsubmit: action(async () => {
        await api("PUT", `/queues/${enc(vh.value)}/${enc(name.value)}`, { durable: durable.value === "true", auto_delete: false, arguments: {} });
        await refresh();
      }, "Queue declared"),
    }, field("Virtual host", vh), field("Name", name), field("Durability", durable), h("button.primary", { type: "submit" }, "Add queue")),
  );
  await refresh();
  return refresh;
}

function exchangeLabel(name) {
  return name === "" ? "(AMQP default)" : name;
}

export async function exchanges(main) {
  const filter = h("input", { type: "search", placeholder: "Filter by name", name: "filter" });
  const holder = h("div");
  let list = [];
  const draw = () => {
    const f = filter.value.toLowerCase();
    fill(holder, table([
      { label: "Virtual host", cell: (x) => x.vhost },
      { label: "Name", cell: (x) => h("a", { href: `#/exchanges/${enc(x.vhost)}/${enc(x.name || "amq.default")}` }, exchangeLabel(x.name)) },
      { label: "Type", cell: (x) => x.type },
      { label: "Features", cell: (x) => [x.durable ? "durable" : "transient", x.auto_delete ? " auto-delete" : "", x.internal ? " internal" : ""].join("") },
      { label: "In", num: true, cell: (x) => rate((x.message_stats || {}).publish_in_details) },
      { label: "Out", num: true, cell: (x) => rate((x.message_stats || {}).publish_out_details) },
    ], list.filter((x) => x.name.toLowerCase().includes(f)), "No exchanges"));
  };
  filter.addEventListener("input", draw);
  const refresh = async () => {
    list = await get("/exchanges");
    draw();
  };
  fill(main, h("h1", "Exchanges"), h("div.toolbar", filter), holder);
  await refresh();
  return refresh;
}

/** Publish a message to `exchange` (the UI's form for the API's publish). */
export function publishForm(vhost, exchange, routingKey = "") {
  const key = h("input", { name: "routing_key", value: routingKey });
  const mode = h("select", { name: "delivery_mode" }, h("option", { value: "2" }, "2 - persistent"), h("option", { value: "1" }, "1 - transient"));
  const headers = h("input", { name: "headers", placeholder: '{"x-header": "value"}' });
  const props = h("input", { name: "properties", placeholder: '{"content_type": "text/plain"}' });
  const payload = h("textarea", { name: "payload" });
  return h("form.box#publish", {
    onsubmit: action(async () => {
      const properties = props.value.trim() ? JSON.parse(props.value) : {};
      properties.delivery_mode = Number(mode.value);
      if (headers.value.trim()) properties.headers = JSON.parse(headers.value);
      return api("POST", `/exchanges/${enc(vhost)}/${enc(exchange || "amq.default")}/publish`, {
        routing_key: key.value, payload: payload.value, payload_encoding: "string", properties,
      });
    }, (res) => (res && res.routed ? "Message published." : "Message published, but not routed to any queue.")),
  },
  field("Routing key", key), field("Delivery mode", mode), field("Headers (JSON)", headers), field("Properties (JSON)", props),
  field("Payload", payload), h("button.primary", { type: "submit" }, "Publish message"));
}

export function bindingsTable(list) {
  return table([
    { label: "From", cell: (b) => exchangeLabel(b.source) },
    { label: "To", cell: (b) => (b.destination_type === "queue" ? queueLink(b.vhost, b.destination) : b.destination) },
    { label: "Routing key", cell: (b) => b.routing_key },
    { label: "Arguments", cell: (b) => (Object.keys(b.arguments || {}).length ? JSON.stringify(b.arguments) : "") },
  ], list, "No bindings");
}

export async function exchangePage(main, vhost, name) {
  const path = `/exchanges/${enc(vhost)}/${enc(name)}`;
  const x = await get(path);
  const bindings = h("div");
  const refresh = async () => {
    fill(bindings, bindingsTable(await get(path + "/bindings/source")));
  };
  fill(main, h("h1", "Exchange ", exchangeLabel(x.name), h("span.muted", ` in ${x.vhost}`)),
    h("p", h("span.tag", x.type), x.durable ? h("span.tag", "durable") : h("span.tag", "transient"),
      x.internal ? h("span.tag", "internal") : null),
    h("h2", "Bindings from this exchange"), bindings,
    h("h2", "Publish a message"), publishForm(vhost, x.name),
    x.name === "" || x.name.startsWith("amq.") ? null : h("h2", "Delete"),
    x.name === "" || x.name.startsWith("amq.") ? null : confirmButton("Delete exchange", action(async () => {
      await api("DELETE", path);
      location.hash = "#/exchanges";
    }, "Exchange deleted")),
  );
  await refresh();
  return refresh;
}

export async function connections(main) {
  const conns = h("div#connections");
  const chans = h("div#channels");
  const refresh = async () => {
    const [cs, chs] = await Promise.all([get("/connections"), get("/channels")]);
    fill(conns, table([
      { label: "Name", cell: (c) => c.name },
      { label: "User", cell: (c) => c.user },
      { label: "Virtual host", cell: (c) => c.vhost },
      { label: "Client", cell: (c) => ((c.client_properties || {}).product || dash) },
      { label: "State", cell: (c) => c.state },
      { label: "Channels", num: true, cell: (c) => num(c.channels) },
      { label: "", cell: (c) => confirmButton("Close", action(async () => {
        await api("DELETE", `/connections/${enc(c.name)}`);
        await refresh();
      }, "Connection closed")) },
    ], cs, "No connections"));
    fill(chans, table([
      { label: "Channel", cell: (c) => c.name },
      { label: "User", cell: (c) => c.user },
      { label: "Virtual host", cell: (c) => c.vhost },
      { label: "Mode", cell: (c) => (c.confirm ? "confirm" : "") },
      { label: "Prefetch", num: true, cell: (c) => num(c.prefetch_count) },
      { label: "Consumers", num: true, cell: (c) => num(c.consumer_count) },
      { label: "Unacked", num: true, cell: (c) => num(c.messages_unacknowledged) },
      { label: "Unconfirmed", num: true, cell: (c) => num(c.messages_unconfirmed) },
    ], chs, "No channels"));
  };
  fill(main, h("h1", "Connections"), conns, h("h2", "Channels"), chans);
  await refresh();
  return refresh;
}
