// The web UI's entry: login, navigation and hash routing (#/queues,
// #/queues/{vhost}/{name}, ...). Each page is a function that fills `main`
// and may return a refresh function, called every few seconds until the
// route changes.

import { login, logout, currentUser, credentials, isAdmin } from "./api.js";
import { h, flash, clearFlash } from "./dom.js";
import * as pages from "./pages.js";
import * as queue from "./queue.js";
import * as admin from "./admin.js";

const REFRESH_MS = 5000;
let timer = null;
let generation = 0;

const routes = [
  [/^\/?$/, pages.overview],
  [/^\/overview$/, pages.overview],
  [/^\/queues$/, pages.queues],
  [/^\/queues\/([^/]*)\/([^/]*)$/, queue.queuePage],
  [/^\/exchanges$/, pages.exchanges],
  [/^\/exchanges\/([^/]*)\/([^/]*)$/, pages.exchangePage],
  [/^\/connections$/, pages.connections],
  [/^\/users$/, admin.users, true],
  [/^\/vhosts$/, admin.vhosts, true],
  [/^\/permissions$/, admin.permissions, true],
  [/^\/policies$/, admin.policies, true],
  [/^\/definitions$/, admin.definitions, true],
];

function nav(path) {
  const links = [
    ["#/", "Overview"],
    ["#/queues", "Queues"],
    ["#/exchanges", "Exchanges"],
    ["#/connections", "Connections"],
  ];
  if (isAdmin()) {
    links.push(["#/users", "Users"], ["#/vhosts", "Vhosts"], ["#/permissions", "Permissions"],
      ["#/policies", "Policies"], ["#/definitions", "Definitions"]);
  }
  const current = "#/" + (path.split("/")[1] || "");
  document.getElementById("nav").replaceChildren(
    ...links.map(([href, label]) => h("a", { href, class: href === current ? "active" : null }, label)),
  );
  const me = currentUser();
  document.getElementById("who").replaceChildren(
    me ? h("span", me.name, h("button", { type: "button", onclick: () => { logout(); location.hash = "#/login"; } }, "Log out")) : "",
  );
}

function loginPage(main) {
  document.getElementById("nav").replaceChildren();
  document.getElementById("who").replaceChildren();
  const user = h("input", { name: "username", autocomplete: "username", required: true });
  const pass = h("input", { name: "password", type: "password", autocomplete: "current-password" });
  const error = h("p.error-text");
  main.replaceChildren(
    h("form.box.login", {
      onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await login(user.value, pass.value);
          const back = sessionStorage.getItem("hopper.after-login") || "#/";
          sessionStorage.removeItem("hopper.after-login");
          const target = back === "#/login" ? "#/" : back;
          // Same hash: no hashchange event comes, so render here.
          if (location.hash === target) render();
          else location.hash = target;
        } catch (e) {
          error.textContent = e.status === 401 ? "Login failed: " + e.message : e.message;
        }
      },
    },
    h("h1", "Log in to Hopper"),
    h("label", "Username", user),
    h("label", "Password", pass),
    h("button.primary", { type: "submit" }, "Log in"),
    error),
  );
  user.focus();
}

async function render() {
  const gen = ++generation;
  clearInterval(timer);
  timer = null;
  clearFlash();
  const main = document.getElementById("main");
  const path = decodeURI(location.hash.replace(/^#/, "")) || "/";
  if (path === "/login" || !credentials()) {
    if (path !== "/login") sessionStorage.setItem("hopper.after-login", location.hash || "#/");
    loginPage(main);
    return;
  }
  nav(path);
  const rawPath = location.hash.replace(/^#/, "") || "/";
  for (const [re, page, adminOnly] of routes) {
    const m = rawPath.match(re);
    if (!m) continue;
    if (adminOnly && !isAdmin()) {
      main.replaceChildren(h("p", "This page is for administrators."));
      return;
    }
    const args = m.slice(1).map(decodeURIComponent);
    main.replaceChildren(h("p.muted", "Loading…"));
    try {
      const refresh = await page(main, ...args);
      if (gen === generation && typeof refresh === "function") {
        timer = setInterval(() => {
          refresh().catch((e) => flash(e.message, true));
        }, REFRESH_MS);
      }
    } catch (e) {
      if (gen === generation) main.replaceChildren(h("p.error-text", e.message));
    }
    return;
  }
  main.replaceChildren(h("p", "No such page."));
}

window.addEventListener("hashchange", render);
render();
