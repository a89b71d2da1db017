// The "try it" page: pick a user (or a new one with interests), see the ranked list, act on it
// through POST /v1/events and watch the list change.
"use strict";

(() => {
  const { api, el, showError, clearError, newId, fmt } = vidrec;
  const $ = (id) => document.getElementById(id);
  const HISTORY_SHOWN = 15;
  const ACTIONS = [  // symbol, name, event type, watch fraction (symbols every font has)
    ["▶", "Play", "view", 1.0], ["♥", "Like", "like", 1.0],
    ["»", "Skip", "skip", 0.05], ["×", "Dislike", "dislike", 0.3],
  ];
  const STAGE_WORDS = {  // docs/api.md, "degraded"
    hydrate: "the user's history (hydrate)", retrieve: "candidate retrieval (retrieve)",
    score: "the ranker (score)", items: "video details (items)",
  };
  const state = { user: null, interests: [], chosen: new Set(), busy: false };

  const errorBox = $("error");
  const note = (text) => { $("note").textContent = text; };
  const k = () => {
    const v = Number.parseInt($("k").value, 10);
    return Number.isFinite(v) ? v : 10;
  };

  function query(params) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      for (const v of [].concat(value)) if (v !== undefined && v !== "") q.append(key, v);
    }
    return q.toString();
  }

  // ---- the list ---------------------------------------------------------------------
  async function refresh() {
    if (!state.user) return;
    const path = `/v1/users/${encodeURIComponent(state.user)}/recommendations?` +
      query({ k: k(), interests: state.interests });
    const started = performance.now();
    const user = encodeURIComponent(state.user);
    const [recs, history, taste] = await Promise.all([
      api(path),
      api(`/v1/users/${user}/history?limit=${HISTORY_SHOWN}`),
      api(`/v1/users/${user}/profile?limit=8`),
    ]);
    renderRecs(recs, performance.now() - started);
    renderHistory(history);
    renderTaste(taste);
  }

  // The user's strongest tags, with how each moved since the previous refresh (a like raises
  // its tags, a dislike pushes them down).
  function renderTaste(body) {
    const same = Boolean(state.taste) && state.taste.user === body.user_id;
    const before = same ? state.taste.weights : {};
    const weights = {};
    const row = ({ tag, weight }) => {
      weights[tag] = weight;
      const moved = same ? weight - (before[tag] ?? 0) : 0;
      const arrow = moved > 1e-3 ? el("strong", { class: "up" }, ` ↑${fmt(moved, 2)}`)
        : moved < -1e-3 ? el("strong", { class: "down" }, ` ↓${fmt(-moved, 2)}`) : null;
      return el("li", { "data-tag": tag }, el("span", { class: "tag" }, `#${tag}`),
        ` ${fmt(weight, 2)}`, arrow);
    };
    const liked = body.liked.map(row);
    const disliked = body.disliked.map(row);
    $("taste").replaceChildren(...(liked.length ? liked
      : [el("li", { class: "muted" }, "No tags yet.")]));
    $("taste-down").replaceChildren(...disliked);
    $("taste-down-title").classList.toggle("hidden", !disliked.length);
    state.taste = { user: body.user_id, weights };
  }

  function renderRecs(body, ms) {
    // Experiments (arm, request_id) appear once the gateway sends them; events then carry
    // request_id and position so that plays are attributed to the list that showed the item.
    state.requestId = body.request_id || null;
    const facts = [el("span", {}, "user ", el("strong", {}, body.user_id)),
                   el("span", {}, `${body.items.length} videos`),
                   el("span", {}, `model ${body.model_version || "–"}`)];
    if (body.arm) facts.push(el("span", { "data-testid": "arm" }, `arm ${body.arm}`));
    if (state.interests.length) facts.push(el("span", {}, `interests ${state.interests.join(", ")}`));
    facts.push(el("span", {}, `${Math.round(ms)} ms`));
    $("summary").replaceChildren(...facts);

    const banner = $("degraded");
    if (body.degraded && body.degraded.length) {
      const parts = body.degraded.map((stage) => STAGE_WORDS[stage] || stage);
      banner.textContent = `Degraded answer: ${parts.join(", ")} did not answer (down or too ` +
        "slow), so this list was made without it. The console (/console) shows which part.";
      banner.classList.remove("hidden");
    } else {
      banner.classList.add("hidden");
    }
    $("cards").replaceChildren(...body.items.map(card));
  }

  function card(item, i) {
    const buttons = ACTIONS.map(([symbol, name, type, fraction]) => el("button", {
      type: "button", "data-action": type, "aria-label": `${name}: ${item.title}`,
      onclick: (e) => act(item, i, type, fraction, e.currentTarget),
    }, el("span", { "aria-hidden": "true" }, symbol), ` ${name}`));
    return el("li", { class: "card", "data-item-id": item.item_id },
      el("h3", {}, el("span", { class: "rank" }, `${i + 1}.`),
        el("button", { type: "button", class: "linklike", onclick: () => openItem(item.item_id) },
          item.title || item.item_id)),
      el("div", { class: "facts" },
        el("span", {}, `score ${fmt(item.score)}`),
        item.source ? el("span", { class: "badge", title: "candidate source" },
          `from ${item.source}`) : null,
        el("span", {}, `id ${item.item_id}`)),
      el("div", {}, item.tags.map((t) => el("span", { class: "tag" }, `#${t}`))),
      el("ul", { class: "reasons" }, item.reasons.map((r) => el("li", {}, r))),
      el("div", { class: "actions" }, buttons));
  }

  function renderHistory(body) {
    const items = body.items.slice().reverse();  // newest first
    const list = $("history");
    if (!items.length) {
      list.replaceChildren(el("li", { class: "muted" }, "Nothing yet."));
      return;
    }
    list.replaceChildren(...items.map((h) => el("li", { "data-item-id": h.item_id },
      el("button", { type: "button", class: "linklike", onclick: () => openItem(h.item_id) },
        h.title || h.item_id),
      el("div", { class: "muted small" }, h.type === "import" ? "from the dataset"
        : `${h.type}${h.timestamp ? ", " + new Date(h.timestamp * 1000).toLocaleTimeString() : ""}`))));
  }

  // ---- actions ----------------------------------------------------------------------
  async function act(item, position, type, fraction, button) {
    if (state.busy) return;
    state.busy = true;
    const cardNode = button.closest(".card");
    cardNode.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    try {
      const event = { event_id: newId("page-"), user_id: state.user, item_id: item.item_id,
                      type, timestamp: Date.now() / 1000, watch_fraction: fraction };
      if (state.requestId) Object.assign(event, { request_id: state.requestId, position });
      await api("/v1/events", { method: "POST", body: event });
      note(`Sent ${type} on “${item.title}”; the list is refreshed.`);
      await refresh();
      clearError(errorBox);
      $("cards").querySelector(".actions button")?.focus();  // the next action is one key away
    } catch (err) {
      showError(errorBox, err);
      cardNode.querySelectorAll("button").forEach((b) => { b.disabled = false; });
    } finally {
      state.busy = false;
    }
  }

  async function show(user, interests = []) {
    state.user = user;
    state.interests = interests;
    clearError(errorBox);
    note(`Loading ${user}…`);
    try {
      await refresh();
      note("");
      history.replaceState(null, "", `?${query({ user, interests })}`);
    } catch (err) {
      note("");
      showError(errorBox, err);
    }
  }

  // ---- picking a user ---------------------------------------------------------------
  $("user-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const user = $("user-id").value.trim();
    if (user) show(user);
  });

  $("random-user").addEventListener("click", async () => {
    clearError(errorBox);
    try {
      const body = await api("/v1/users?random=true&limit=1");
      if (!body.users.length) throw new Error("the served bundle lists no users to pick from");
      $("user-id").value = body.users[0].user_id;
      await show(body.users[0].user_id);
    } catch (err) {
      showError(errorBox, err);
    }
  });

  let suggestTimer = 0;
  $("user-id").addEventListener("input", () => {
    clearTimeout(suggestTimer);
    const prefix = $("user-id").value.trim();
    suggestTimer = setTimeout(async () => {
      try {
        const body = await api(`/v1/users?${query({ q: prefix, limit: 20 })}`);
        $("user-suggestions").replaceChildren(...body.users.map((u) => el("option", {
          value: u.user_id, label: `${u.user_id} (${u.interactions} watched)` })));
      } catch (_) { /* suggestions are a convenience; the search itself reports errors */ }
    }, 200);
  });

  // ---- a new user with interests ----------------------------------------------------
  async function loadTags(filter = "") {
    try {
      const body = await api(`/v1/tags?${query({ q: filter, limit: 60 })}`);
      const chips = body.tags.map(({ tag, items }) => el("button", {
        type: "button", class: "chip", "data-tag": tag,
        "aria-pressed": state.chosen.has(tag) ? "true" : "false",
        title: `${items} videos`, onclick: (e) => toggleTag(tag, e.currentTarget),
      }, `#${tag}`));
      $("tag-chips").replaceChildren(...(chips.length ? chips
        : [el("span", { class: "muted small" }, "No tag matches.")]));
    } catch (err) {
      showError(errorBox, err);
    }
  }

  function toggleTag(tag, chip) {
    if (state.chosen.has(tag)) state.chosen.delete(tag); else state.chosen.add(tag);
    chip.setAttribute("aria-pressed", state.chosen.has(tag) ? "true" : "false");
    $("chosen").textContent = state.chosen.size
      ? `Interests: ${[...state.chosen].map((t) => "#" + t).join(" ")}`
      : "No interests chosen yet.";
  }

  let tagTimer = 0;
  $("tag-filter").addEventListener("input", () => {
    clearTimeout(tagTimer);
    tagTimer = setTimeout(() => loadTags($("tag-filter").value.trim()), 200);
  });
  $("new-user").addEventListener("toggle", () => {
    if ($("new-user").open && !$("tag-chips").children.length) loadTags();
  });
  $("start-new").addEventListener("click", () => {
    if (!state.chosen.size) {
      showError(errorBox, "Choose at least one interest first (or pick a known user above).");
      return;
    }
    const user = newId("new-");
    $("user-id").value = user;
    show(user, [...state.chosen]);
  });

  // ---- an item's page: similar videos -----------------------------------------------
  const dialog = $("item-dialog");
  $("item-close").addEventListener("click", () => dialog.close());

  async function openItem(itemId) {
    const box = $("item-error");
    clearError(box);
    $("item-title").textContent = itemId;
    $("item-tags").replaceChildren();
    $("similar").replaceChildren(el("li", { class: "muted" }, "Loading…"));
    if (!dialog.open) dialog.showModal();
    try {
      const body = await api(`/v1/items/${encodeURIComponent(itemId)}/similar?k=10`);
      $("item-title").textContent = body.title || itemId;
      $("item-tags").replaceChildren(...body.tags.map((t) => el("span", { class: "tag" }, `#${t}`)));
      $("similar").replaceChildren(...body.items.map((s) => el("li", { "data-item-id": s.item_id },
        el("button", { type: "button", class: "linklike", onclick: () => openItem(s.item_id) },
          s.title || s.item_id), " ",
        el("span", { class: "badge" }, s.source), " ",
        el("span", { class: "muted small" }, `similarity ${fmt(s.score)}`))));
      if (!body.items.length) {
        $("similar").replaceChildren(el("li", { class: "muted" }, "No similar videos."));
      }
    } catch (err) {
      $("similar").replaceChildren();
      showError(box, err);
    }
  }

  // ---- start: ?user=...&interests=... reopens a list ---------------------------------
  const params = new URLSearchParams(location.search);
  if (params.get("user")) {
    $("user-id").value = params.get("user");
    show(params.get("user"), params.getAll("interests"));
  }
})();
