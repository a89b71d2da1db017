// What both pages share: calling the API with every failure turned into words, and building
// DOM nodes without innerHTML (titles and tags come from the catalogue: never parsed as HTML).
"use strict";

const vidrec = (() => {
  class ApiError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }

  // FastAPI's 422 body: {"detail": [{"loc": [...], "msg": "..."}]}; others: {"detail": "..."}.
  function describe(status, body, text) {
    const detail = body && body.detail;
    if (Array.isArray(detail)) {
      return detail.map((d) => {
        const where = (d.loc || []).filter((p) => !["body", "query", "path"].includes(p));
        return `${where.join(".") || "request"}: ${d.msg}`;
      }).join("; ");
    }
    if (typeof detail === "string") return detail;
    if (status === 503) return "a part of vidrec is unavailable right now; try again shortly";
    return (text || "").slice(0, 200) || `HTTP ${status}`;
  }

  async function api(path, { method = "GET", body, token } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError(`cannot reach the vidrec server (${err.message}); is it running?`, 0);
    }
    const text = await response.text();
    let parsed = null;
    try { parsed = text ? JSON.parse(text) : null; } catch (_) { parsed = null; }
    if (!response.ok) {
      const what = `${method} ${path.split("?")[0]} answered ${response.status}`;
      throw new ApiError(`${what}: ${describe(response.status, parsed, text)}`, response.status);
    }
    return parsed;
  }

  // el("li", {class: "x", onclick: f}, "text", child, ...)
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function showError(box, err) {
    box.textContent = err instanceof Error ? err.message : String(err);
    box.classList.remove("hidden");
  }

  function clearError(box) {
    box.textContent = "";
    box.classList.add("hidden");
  }

  // crypto.randomUUID exists only on https or localhost; getRandomValues everywhere.
  function newId(prefix) {
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function fmt(x, digits = 3) {
    return typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "–";
  }

  return { api, ApiError, el, showError, clearError, newId, fmt };
})();
