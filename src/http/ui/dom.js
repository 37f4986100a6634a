// Small DOM helpers. Every name and payload from the broker goes in as a
// text node (never innerHTML), so a queue called "<script>" is just text.

/** h("tag.class#id", {attr, onclick}, ...children) */
export function h(spec, attrs, ...children) {
  const [tagAndClasses, id] = spec.split("#");
  const [tag, ...classes] = tagAndClasses.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  if (id) el.id = id;
  // Anything but a plain object is a child, 0 and "" included.
  const isChild = typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs);
  if (attrs !== undefined && attrs !== null && isChild) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

/** Replace an element's children; null/false/undefined are skipped (the
 * DOM's own replaceChildren would show them as "null"). */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** A table: columns [{label, num, cell(row) → node|text}], rows. */
export function table(columns, rows, empty = "Nothing here") {
  return h(
    "table",
    h("thead", h("tr", columns.map((c) => h(c.num ? "th.num" : "th", c.label)))),
    h(
      "tbody",
      rows.length === 0
        ? h("tr", h("td.empty", { colspan: columns.length }, empty))
        : rows.map((r) => h("tr", columns.map((c) => h(c.num ? "td.num" : "td", c.cell(r))))),
    ),
  );
}

/** A message above the page: ok (green) or error (red). */
export function flash(text, error = false) {
  const box = document.getElementById("flash");
  const msg = h(error ? "div.msg.error" : "div.msg", text);
  box.replaceChildren(msg);
  if (!error) setTimeout(() => msg.remove(), 4000);
}

export function clearFlash() {
  document.getElementById("flash").replaceChildren();
}

export const dash = "—";

export function num(v) {
  return v === undefined || v === null ? dash : Number(v).toLocaleString("en");
}

export function rate(details) {
  if (!details || typeof details.rate !== "number") return dash;
  return details.rate.toFixed(1) + "/s";
}

/** Labelled input inside a form. */
export function field(label, input) {
  return h("label", h("span", label), input);
}

/** Run an API action from a button: errors go to the flash. */
export function action(fn, done) {
  return async (ev) => {
    if (ev) ev.preventDefault();
    try {
      const r = await fn();
      if (done) flash(typeof done === "function" ? done(r) : done);
    } catch (e) {
      flash(e.message, true);
    }
  };
}

/** A button that asks for a second click before it acts (no blocking dialogs). */
export function confirmButton(label, fn) {
  const b = h("button.danger", { type: "button" }, label);
  let armed = false;
  b.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      b.textContent = `Confirm: ${label.toLowerCase()}`;
      setTimeout(() => {
        armed = false;
        b.textContent = label;
      }, 5000);
      return;
    }
    armed = false;
    b.textContent = label;
    await fn();
  });
  return b;
}

/** A vhost picker filled from /api/vhosts. */
export function vhostSelect(vhosts, selected) {
  return h(
    "select",
    { name: "vhost" },
    vhosts.map((v) => h("option", { value: v.name, selected: v.name === selected }, v.name)),
  );
}
