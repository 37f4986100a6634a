// Administrators' pages: users, virtual hosts, permissions, policies and
// definitions export/import.

import { api, get, enc } from "./api.js";
import { h, fill, table, field, action, confirmButton, vhostSelect, flash } from "./dom.js";

export async function users(main) {
  const holder = h("div");
  const refresh = async () => {
    const list = await get("/users");
    fill(holder, table([
      { label: "Name", cell: (u) => u.name },
      { label: "Tags", cell: (u) => (u.tags || []).map((t) => h("span.tag", t)) },
      { label: "", cell: (u) => confirmButton("Delete", action(async () => {
        await api("DELETE", `/users/${enc(u.name)}`);
        await refresh();
      }, "User deleted")) },
    ], list));
  };
  const name = h("input", { name: "name", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "new-password" });
  const tags = h("input", { name: "tags", placeholder: "administrator, management, monitoring, policymaker" });
  fill(main, h("h1", "Users"), holder, h("h2", "Add or update a user"),
    h("form.box", {
      onsubmit: action(async () => {
        const body = { tags: tags.value };
        if (password.value) body.password = password.value;
        else body.password_hash = "";
        await api("PUT", `/users/${enc(name.value)}`, body);
        await refresh();
      }, "User saved"),
    }, field("Name", name), field("Password", password), field("Tags", tags), h("button.primary", { type: "submit" }, "Save user")));
  await refresh();
  return refresh;
}

export async function vhosts(main) {
  const holder = h("div");
  const refresh = async () => {
    const list = await get("/vhosts");
    fill(holder, table([
      { label: "Name", cell: (v) => v.name },
      { label: "Description", cell: (v) => v.description || "" },
      { label: "", cell: (v) => confirmButton("Delete", action(async () => {
        await api("DELETE", `/vhosts/${enc(v.name)}`);
        await refresh();
      }, "Virtual host deleted")) },
    ], list));
  };
  const name = h("input", { name: "name", required: true });
  fill(main, h("h1", "Virtual hosts"), holder, h("h2", "Add a virtual host"),
    h("form.box", {
      onsubmit: action(async () => {
        await api("PUT", `/vhosts/${enc(name.value)}`, {});
        await refresh();
      }, "Virtual host added"),
    }, field("Name", name), h("button.primary", { type: "submit" }, "Add virtual host")));
  await refresh();
  return refresh;
}

export async function permissions(main) {
  const holder = h("div");
  const refresh = async () => {
    const list = await get("/permissions");
    fill(holder, table([
      { label: "User", cell: (p) => p.user },
      { label: "Virtual host", cell: (p) => p.vhost },
      { label: "Configure", cell: (p) => p.configure },
      { label: "Write", cell: (p) => p.write },
      { label: "Read", cell: (p) => p.read },
      { label: "", cell: (p) => confirmButton("Clear", action(async () => {
        await api("DELETE", `/permissions/${enc(p.vhost)}/${enc(p.user)}`);
        await refresh();
      }, "Permissions cleared")) },
    ], list));
  };
  const [userList, vhostList] = await Promise.all([get("/users"), get("/vhosts")]);
  const user = h("select", { name: "user" }, userList.map((u) => h("option", { value: u.name }, u.name)));
  const vh = vhostSelect(vhostList, "/");
  const conf = h("input", { name: "configure", value: ".*" });
  const write = h("input", { name: "write", value: ".*" });
  const read = h("input", { name: "read", value: ".*" });
  fill(main, h("h1", "Permissions"), holder, h("h2", "Set permissions"),
    h("form.box", {
      onsubmit: action(async () => {
        await api("PUT", `/permissions/${enc(vh.value)}/${enc(user.value)}`, { configure: conf.value, write: write.value, read: read.value });
        await refresh();
      }, "Permissions set"),
    }, field("User", user), field("Virtual host", vh), field("Configure", conf), field("Write", write), field("Read", read),
    h("button.primary", { type: "submit" }, "Set permissions")));
  await refresh();
  return refresh;
}

export async function policies(main) {
  const holder = h("div");
  const refresh = async () => {
    const list = await get("/policies");
    fill(holder, table([
      { label: "Virtual host", cell: (p) => p.vhost },
      { label: "Name", cell: (p) => p.name },
      { label: "Pattern", cell: (p) => p.pattern },
      { label: "Apply to", cell: (p) => p["apply-to"] },
      { label: "Priority", num: true, cell: (p) => p.priority },
      { label: "Definition", cell: (p) => JSON.stringify(p.definition) },
      { label: "", cell: (p) => confirmButton("Delete", action(async () => {
        await api("DELETE", `/policies/${enc(p.vhost)}/${enc(p.name)}`);
        await refresh();
      }, "Policy deleted")) },
    ], list, "No policies"));
  };
  const vh = vhostSelect(await get("/vhosts"), "/");
  const name = h("input", { name: "name", required: true });
  const pattern = h("input", { name: "pattern", value: ".*" });
  const applyTo = h("select", { name: "apply-to" }, ["queues", "exchanges", "all"].map((a) => h("option", { value: a }, a)));
  const priority = h("input", { name: "priority", type: "number", value: "0" });
  const definition = h("textarea", { name: "definition", placeholder: '{"max-length": 1000}' });
  fill(main, h("h1", "Policies"), holder, h("h2", "Add or update a policy"),
    h("form.box", {
      onsubmit: action(async () => {
        let def;
        try {
          def = JSON.parse(definition.value || "{}");
        } catch (e) {
          throw new Error("The definition is not valid JSON: " + e.message);
        }
        await api("PUT", `/policies/${enc(vh.value)}/${enc(name.value)}`, {
          pattern: pattern.value, "apply-to": applyTo.value, priority: Number(priority.value), definition: def,
        });
        await refresh();
      }, "Policy saved"),
    }, field("Virtual host", vh), field("Name", name), field("Pattern", pattern), field("Apply to", applyTo),
    field("Priority", priority), field("Definition (JSON)", definition), h("button.primary", { type: "submit" }, "Save policy")));
  await refresh();
  return refresh;
}

// What an import would do, by kind: the key that names an object, and whether
// the import replaces an existing one (RabbitMQ's merge: users, permissions,
// policies are overwritten; queues, exchanges, bindings that exist are kept).
const KINDS = [
  ["users", (o) => o.name, true],
  ["vhosts", (o) => o.name, true],
  ["permissions", (o) => `${o.user} @ ${o.vhost}`, true],
  ["policies", (o) => `${o.vhost} / ${o.name}`, true],
  ["queues", (o) => `${o.vhost} / ${o.name}`, false],
  ["exchanges", (o) => `${o.vhost} / ${o.name}`, false],
  ["bindings", (o) => `${o.vhost} / ${o.source} → ${o.destination_type} ${o.destination} (${o.routing_key})${Object.keys(o.arguments || {}).length ? " " + canonical(o.arguments) : ""}`, false],
];

/** JSON with sorted keys, so equal objects compare equal. */
function canonical(v) {
  if (Array.isArray(v)) return "[" + v.map(canonical).join(",") + "]";
  if (v && typeof v === "object") {
    return "{" + Object.keys(v).sort().map((k) => JSON.stringify(k) + ":" + canonical(v[k])).join(",") + "}";
  }
  return JSON.stringify(v);
}

/** Compare a definitions document with the broker's current definitions. */
export function diffDefinitions(current, incoming) {
  return KINDS.map(([kind, key, replaces]) => {
    const have = new Map((current[kind] || []).map((o) => [key(o), canonical(o)]));
    const added = [];
    const differ = [];
    let same = 0;
    for (const o of incoming[kind] || []) {
      const k = key(o);
      if (!have.has(k)) added.push(k);
      else if (have.get(k) !== canonical(o)) differ.push(k);
      else same += 1;
    }
    return { kind, replaces, added, differ, same };
  });
}

function diffTable(rows) {
  const list = (names) => (names.length > 20 ? names.slice(0, 20).join(", ") + ` … (+${names.length - 20})` : names.join(", "));
  return table([
    { label: "Kind", cell: (r) => r.kind },
    { label: "New", num: true, cell: (r) => r.added.length },
    { label: "Different", num: true, cell: (r) => r.differ.length },
    { label: "Same", num: true, cell: (r) => r.same },
    { label: "Details", cell: (r) => [
      r.added.length ? h("div", "new: ", list(r.added)) : null,
      r.differ.length ? h("div", r.replaces ? "replaced: " : "exist, kept as they are: ", list(r.differ)) : null,
    ] },
  ], rows);
}

export async function definitions(main) {
  const file = h("input", { type: "file", name: "file", accept: "application/json,.json" });
  const text = h("textarea", { name: "definitions", placeholder: "…or paste a definitions JSON document here" });
  const preview = h("div#definitions-diff");
  const read = async () => {
    const body = file.files.length ? await file.files[0].text() : text.value;
    try {
      return [body, JSON.parse(body)];
    } catch (e) {
      throw new Error("Not a JSON document: " + e.message);
    }
  };
  fill(main,
    h("h1", "Definitions"),
    h("div.box", h("p", "Users, virtual hosts, permissions, policies, queues, exchanges and bindings, as RabbitMQ's definitions file."),
      h("button.primary", {
        type: "button",
        onclick: action(async () => {
          const defs = await get("/definitions");
          const blob = new Blob([JSON.stringify(defs, null, 2)], { type: "application/json" });
          const a = h("a", { href: URL.createObjectURL(blob), download: `hopper-definitions-${new Date().toISOString().slice(0, 10)}.json` });
          document.body.append(a);
          a.click();
          a.remove();
        }),
      }, "Download definitions")),
    h("h2", "Import"),
    h("form.box", {
      onsubmit: action(async () => {
        const [body] = await read();
        await api("POST", "/definitions", body);
        fill(preview);
        flash("Definitions imported");
      }),
    }, field("File", file), text,
    h("div.toolbar",
      h("button", {
        type: "button",
        onclick: action(async () => {
          const [, incoming] = await read();
          const current = await get("/definitions");
          fill(preview, h("p.muted", "What importing this document would change (nothing is changed yet):"),
            diffTable(diffDefinitions(current, incoming)));
        }),
      }, "Preview changes"),
      h("button.primary", { type: "submit" }, "Import definitions")),
    preview),
  );
}
