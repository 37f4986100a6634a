// Talking to the management API: HTTP Basic with the credentials the user
// logged in with, kept in sessionStorage (gone when the tab closes).

const KEY = "hopper.auth";
const USER = "hopper.user";

export function credentials() {
  return sessionStorage.getItem(KEY);
}

export function currentUser() {
  try {
    return JSON.parse(sessionStorage.getItem(USER) || "null");
  } catch (_) {
    return null;
  }
}

export function isAdmin() {
  const u = currentUser();
  return !!u && (u.tags || []).includes("administrator");
}

export function logout() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(USER);
}

/** An error answer of the API: status and RabbitMQ's `reason`. */
export class ApiError extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status;
  }
}

async function call(method, path, body, auth) {
  const headers = { Authorization: "Basic " + auth };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const res = await fetch("/api" + path, init);
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch (_) {
      data = text;
    }
  }
  if (!res.ok) {
    const reason = (data && (data.reason || data.error)) || res.statusText;
    throw new ApiError(res.status, `${res.status}: ${reason}`);
  }
  return data;
}

/** Log in: check the credentials against /api/whoami and keep them. */
export async function login(user, password) {
  const auth = btoa(unescape(encodeURIComponent(`${user}:${password}`)));
  const me = await call("GET", "/whoami", undefined, auth);
  sessionStorage.setItem(KEY, auth);
  sessionStorage.setItem(USER, JSON.stringify(me));
  return me;
}

export function api(method, path, body) {
  const auth = credentials();
  if (!auth) return Promise.reject(new ApiError(401, "not logged in"));
  return call(method, path, body, auth).catch((e) => {
    if (e.status === 401 && !path.startsWith("/whoami")) {
      // Credentials no longer valid (user deleted, password changed).
      if (e.message.includes("Not_Authorized") || e.message.includes("Not management user")) {
        logout();
        location.hash = "#/login";
      }
    }
    throw e;
  });
}

export const get = (path) => api("GET", path);

/** A name as one path segment (`/` → `%2F`). */
export const enc = (s) => encodeURIComponent(s);
