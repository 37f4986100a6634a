// One queue's page: its figures, bindings and consumers; get messages
// (RabbitMQ's, which takes or requeues), browse (Hopper's, which changes
// nothing), move to an exchange (Hopper's), publish, purge, delete.

import { api, get, enc } from "./api.js";
import { h, fill, table, num, dash, field, action, confirmButton, flash } from "./dom.js";
import { publishForm, bindingsTable } from "./pages.js";

function messagesTable(list, showPosition) {
  return table([
    showPosition ? { label: "#", num: true, cell: (m) => m.position } : null,
    { label: "Exchange", cell: (m) => (m.exchange === "" ? "(AMQP default)" : m.exchange) },
    { label: "Routing key", cell: (m) => m.routing_key },
    { label: "Redelivered", cell: (m) => String(m.redelivered) },
    { label: "Properties", cell: (m) => h("pre.payload", JSON.stringify(m.properties, null, 1)) },
    { label: "Payload", cell: (m) => h("pre.payload", m.payload) },
    { label: "Bytes", num: true, cell: (m) => num(m.payload_bytes) },
    { label: "Encoding", cell: (m) => m.payload_encoding },
  ].filter(Boolean), list, "No messages");
}

export async function queuePage(main, vhost, name) {
  const path = `/queues/${enc(vhost)}/${enc(name)}`;
  const figures = h("div.cards#queue-figures");
  const info = h("p");
  const bindings = h("div#bindings");
  const consumers = h("div#consumers");
  const refresh = async () => {
    const [q, bs, cs] = await Promise.all([get(path), get(path + "/bindings"), get(`/consumers/${enc(vhost)}`)]);
    fill(info, h("span.tag", q.type), h("span.tag", q.durable ? "durable" : "transient"),
      q.auto_delete ? h("span.tag", "auto-delete") : null, q.exclusive ? h("span.tag", "exclusive") : null,
      h("span.tag", q.state), Object.keys(q.arguments || {}).length ? h("span.muted", " arguments " + JSON.stringify(q.arguments)) : null,
    );
    fill(figures, ...[["ready", q.messages_ready], ["unacked", q.messages_unacknowledged], ["total", q.messages],
        ["consumers", q.consumers], ["bytes ready", q.message_bytes_ready]].map(([l, v]) =>
        h("div.card", h("div.label", l), h("div.value", { "data-figure": l }, num(v)))),
    );
    fill(bindings, bindingsTable(bs));
    fill(consumers, table([
      { label: "Consumer tag", cell: (c) => c.consumer_tag },
      { label: "Channel", cell: (c) => (c.channel_details || {}).name || dash },
      { label: "Ack required", cell: (c) => String(c.ack_required) },
      { label: "Exclusive", cell: (c) => String(c.exclusive) },
      { label: "Prefetch", num: true, cell: (c) => num(c.prefetch_count) },
    ], cs.filter((c) => c.queue && c.queue.name === name), "No consumers"));
  };

  // Get messages (RabbitMQ's semantics: requeue marks them redelivered).
  const getCount = h("input", { name: "get_count", type: "number", min: "1", value: "1" });
  const ackmode = h("select", { name: "ackmode" },
    h("option", { value: "ack_requeue_true" }, "Nack message, requeue true"),
    h("option", { value: "ack_requeue_false" }, "Automatic ack (removes them)"),
    h("option", { value: "reject_requeue_false" }, "Reject, requeue false"));
  const gotten = h("div#got");
  const getForm = h("form.box#get", {
    onsubmit: action(async () => {
      const list = await api("POST", path + "/get", { count: Number(getCount.value), ackmode: ackmode.value, encoding: "auto", truncate: 50000 });
      fill(gotten, messagesTable(list, false));
      await refresh();
    }),
  }, field("Messages", getCount), field("Ack mode", ackmode), h("button.primary", { type: "submit" }, "Get messages"), gotten);

  // Browse (Hopper only): nothing changes in the queue.
  const offset = h("input", { name: "offset", type: "number", min: "0", value: "0" });
  const browseCount = h("input", { name: "browse_count", type: "number", min: "1", max: "500", value: "20" });
  const search = h("input", { name: "search", type: "search", placeholder: "text in body, routing key, message or correlation id" , size: "36" });
  const browsed = h("div#browsed");
  const browse = async () => {
    const params = new URLSearchParams({ offset: Number(offset.value), count: Number(browseCount.value), truncate: 50000 });
    if (search.value) params.set("search", search.value);
    const res = await get(`${path}/browse?${params}`);
    const more = res.next_offset < res.ready;
    fill(browsed,
      h("p.muted",
        search.value
          ? `${res.count} message(s) containing "${search.value}" among ${res.scanned} looked at from position ${res.offset} (of ${res.ready} ready).`
          : `Showing ${res.count} of ${res.ready} ready messages from position ${res.offset}.`,
        " Browsing leaves them as they are. ",
        more ? h("button#browse-next", {
          type: "button",
          onclick: action(async () => {
            offset.value = res.next_offset;
            await browse();
          }),
        }, `Next from position ${res.next_offset}`) : null),
      messagesTable(res.messages, true),
    );
  };
  const browseForm = h("form.box#browse", { onsubmit: action(browse) },
    field("From position", offset), field("Messages", browseCount), field("Containing", search),
    h("button.primary", { type: "submit" }, "Browse messages"), browsed);

  // Move (Hopper only): re-publish to an exchange, then remove here.
  const moveCount = h("input", { name: "move_count", type: "number", min: "1", value: "1" });
  const moveX = h("input", { name: "move_exchange", placeholder: "empty: back where they died (x-death), else their own exchange" , size: "40" });
  const moveKey = h("input", { name: "move_routing_key", placeholder: "empty: keep each message's key" });
  const moveForm = h("form.box#move", {
    onsubmit: action(async () => {
      const body = { count: Number(moveCount.value) };
      if (moveX.value !== "") body.exchange = moveX.value;
      if (moveKey.value !== "") body.routing_key = moveKey.value;
      const res = await api("POST", path + "/move", body);
      await refresh();
      if (res.error) throw new Error(`Moved ${res.moved}, then stopped: ${res.reason}`);
      return res;
    }, (res) => `Moved ${res.moved} message(s).`),
  }, field("Messages", moveCount), field("To exchange", moveX), field("Routing key", moveKey), h("button.primary", { type: "submit" }, "Move messages"));

  const danger = h("div.box",
    confirmButton("Purge", action(async () => {
      await api("DELETE", path + "/contents");
      await refresh();
    }, "Queue purged")), " ",
    confirmButton("Delete queue", async () => {
      try {
        await api("DELETE", path);
        location.hash = "#/queues";
        flash("Queue deleted");
      } catch (e) {
        flash(e.message, true);
      }
    }),
  );

  fill(main, h("h1", "Queue ", h("span#queue-name", name), h("span.muted", ` in ${vhost}`)), info, figures,
    h("h2", "Bindings"), bindings,
    h("h2", "Consumers"), consumers,
    h("h2", "Get messages"), getForm,
    h("h2", "Browse messages"), browseForm,
    h("h2", "Move messages"), moveForm,
    h("h2", "Publish a message"), publishForm(vhost, "", name),
    h("h2", "Purge or delete"), danger,
  );
  await refresh();
  return refresh;
}
