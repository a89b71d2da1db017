// The operator's console: readiness, live charts from GET /stats, the bundle's offline metrics,
// and the admin reload (the token is read from the form when sent, never kept).
"use strict";

(() => {
  const { api, el, showError, clearError, fmt } = vidrec;
  const $ = (id) => document.getElementById(id);
  const errorBox = $("error");
  const READY_EVERY_S = 5;
  const PARTS = [["feature_store", "Feature store"], ["retrieval", "Retrieval"],
                 ["ranking", "Ranking"]];
  const MAIN_STAGES = ["hydrate", "retrieve", "score", "items"];  // the ones with I/O

  const failures = new Map();  // source -> message; the banner lists what currently fails
  function report(source, err) {
    if (err) failures.set(source, err.message || String(err)); else failures.delete(source);
    if (failures.size) showError(errorBox, [...failures.values()].join(" — "));
    else clearError(errorBox);
  }

  // ---- readiness --------------------------------------------------------------------
  async function readiness() {
    let body;
    try {
      // /readyz answers 503 with the same body when a part is down: read it either way.
      const response = await fetch("/readyz", { headers: { Accept: "application/json" } });
      body = await response.json();
      report("ready", null);
    } catch (err) {
      report("ready", new Error(`cannot read /readyz: ${err.message}`));
      return;
    }
    const tiles = [["Gateway", body.ready, body.ready ? "ready" : "not ready"]];
    for (const [key, name] of PARTS) tiles.push([name, body[key], body[key] ? "ready" : "down"]);
    $("ready").replaceChildren(...tiles.map(([name, up, text]) => el("div", {
      class: `ready ${up ? "up" : "down"}`, "data-part": name },
      el("div", {}, name), el("div", { class: "state" }, up ? `● ${text}` : `✕ ${text}`))));
    $("ready-note").textContent = `bundle ${body.bundle || "–"} · checked ` +
      new Date().toLocaleTimeString();
  }

  // ---- live charts ------------------------------------------------------------------
  let statsEvery = 5;
  async function stats() {
    let body;
    try {
      body = await api("/stats");
      report("stats", null);
    } catch (err) {
      report("stats", err);
      return;
    }
    statsEvery = body.interval_s || 5;
    const samples = body.samples;
    const windowS = body.window_s || 600;
    const pts = (f) => samples.map((s) => [s.t, f(s)]);
    if (!samples.length) {
      $("live-note").textContent = `The first point comes after ${statsEvery} s of running.`;
      return;
    }
    const last = samples[samples.length - 1];
    $("live-note").textContent = `One point per ${statsEvery} s, last ${Math.round(windowS / 60)}` +
      ` minutes of this gateway process. Now: ${fmt(last.requests_per_s, 1)} requests/s, ` +
      `recommendation p99 ${fmt(last.recommendation_ms.p99, 1)} ms, ` +
      `${last.degraded_total} degraded.`;
    charts.draw($("chart-rps"), [
      { name: "all API requests", points: pts((s) => s.requests_per_s) },
      { name: "recommendations", points: pts((s) => s.recommendations_per_s) },
      { name: "events", points: pts((s) => s.events_per_s) },
      { name: "5xx errors", points: pts((s) => s.errors_per_s) },
    ], { windowS });
    charts.draw($("chart-latency"), [
      { name: "p50", points: pts((s) => s.recommendation_ms.p50) },
      { name: "p99", points: pts((s) => s.recommendation_ms.p99) },
    ], { windowS });
    const stageNames = [...new Set(samples.flatMap((s) => Object.keys(s.stages)))]
      .sort((a, b) => (MAIN_STAGES.indexOf(a) + 1 || 99) - (MAIN_STAGES.indexOf(b) + 1 || 99));
    charts.draw($("chart-stages"), stageNames.filter((n) => MAIN_STAGES.includes(n)).map((n) => ({
      name: n, points: pts((s) => (s.stages[n] ? s.stages[n].p99_ms : null)) })), { windowS });
    charts.draw($("chart-degraded"), [
      { name: "degraded answers", step: statsEvery, points: pts((s) => s.degraded_total) },
    ], { windowS, bars: true });
    stageTable(samples, stageNames);
  }

  function stageTable(samples, names) {
    const lastWith = (n) => [...samples].reverse().find((s) => s.stages[n] && s.stages[n].count > 0);
    const degradedIn = (n) => samples.reduce((sum, s) => sum + ((s.degraded || {})[n] || 0), 0);
    $("stage-table").replaceChildren(
      el("thead", {}, el("tr", {}, ["stage", "calls", "p50 ms", "p99 ms",
                                    "degraded (window)"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, names.map((n) => {
        const s = lastWith(n);
        const v = s ? s.stages[n] : null;
        return el("tr", {}, el("th", { scope: "row" }, n), el("td", {}, v ? v.count : 0),
          el("td", {}, v ? fmt(v.p50_ms, 2) : "–"), el("td", {}, v ? fmt(v.p99_ms, 2) : "–"),
          el("td", {}, degradedIn(n)));
      })));
  }

  // ---- experiments: the active one's per-arm numbers (GET /v1/experiments/{name}) ----
  const pct = (v) => (v === null || v === undefined ? "–" : `${fmt(v * 100, 2)}%`);
  const ci = (c) => (c ? ` [${pct(c[0])}, ${pct(c[1])}]` : "");
  async function experiments() {
    let status, body;
    try {
      status = await api("/v1/experiments");
      if (status.active) body = await api(`/v1/experiments/${encodeURIComponent(status.active)}`);
      report("experiments", null);
    } catch (err) {
      report("experiments", new Error(`cannot read the experiments: ${err.message}`));
      return;
    }
    $("arms").hidden = !status.active && !status.error;
    $("arms-facts").textContent = status.error
      ? `The experiments file was refused: ${status.error}`
      : body ? `${body.experiment}: ${body.impressions} answers, control "${body.control}", ` +
               `CTR@${body.ctr_k}, tests at p < ${body.alpha}` : "";
    if (!body) { $("arms-table").replaceChildren(); return; }
    const head = ["arm", "share (expected)", "answers", "plays", "completions", "likes",
                  "dislikes", `CTR@${body.ctr_k} [95% CI]`, "vs control (p)",
                  "mean watch", "p99 ms", "guardrail"];
    $("arms-table").replaceChildren(
      el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, body.arms.map((a) => {
        const vs = a.vs_control;
        const flag = a.guardrail && a.guardrail.flagged ? `⚠ ${a.guardrail.reasons.join("; ")}`
          : a.control ? "control" : "ok";
        return el("tr", { "data-arm": a.arm },
          el("th", { scope: "row" }, a.arm + (a.control ? " (control)" : "")),
          el("td", {}, `${pct(a.observed_share)} (${pct(a.expected_share)})`),
          el("td", {}, a.impressions), el("td", {}, a.plays), el("td", {}, a.completions),
          el("td", {}, a.likes), el("td", {}, a.dislikes),
          el("td", {}, pct(a.ctr.value) + ci(a.ctr.ci95)),
          el("td", {}, vs ? `${vs.ctr.difference === null ? "–" : pct(vs.ctr.difference)} ` +
                            `(p ${vs.ctr.p_value === null ? "–" : fmt(vs.ctr.p_value, 4)})` : "–"),
          el("td", {}, a.watch_fraction.mean === null ? "–" : fmt(a.watch_fraction.mean, 2)),
          el("td", {}, a.latency_ms.p99 === null ? "–" : fmt(a.latency_ms.p99, 1)),
          el("td", {}, flag));
      })));
  }

  // ---- offline metrics --------------------------------------------------------------
  async function offline() {
    let body;
    try {
      body = await api("/v1/bundle");
    } catch (err) {
      $("bundle-facts").textContent = `No offline metrics: ${err.message}`;
      return;
    }
    const m = body.manifest || {};
    $("bundle-facts").textContent = `bundle ${body.version}` +
      (m.dataset ? ` · dataset ${m.dataset}` : "") +
      (body.metrics ? ` · ${body.metrics.protocol}, ${body.metrics.users_evaluated} users` : "");
    const metrics = body.metrics;
    if (metrics && metrics.models) {
      const cols = [...new Set(Object.values(metrics.models).flatMap((r) => Object.keys(r)))];
      const best = Object.fromEntries(cols.map((c) => [c,
        Math.max(...Object.values(metrics.models).map((r) => r[c] ?? -Infinity))]));
      $("metrics-table").replaceChildren(
        el("caption", { class: "muted small" }, "metrics.json (best in bold)"),
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "model"),
          cols.map((c) => el("th", { scope: "col" }, c)))),
        el("tbody", {}, Object.entries(metrics.models).map(([name, row]) => el("tr", {},
          el("th", { scope: "row" }, name),
          cols.map((c) => el("td", {}, row[c] === best[c] ? el("strong", {}, fmt(row[c], 4))
            : fmt(row[c], 4)))))));
    } else {
      $("metrics-table").replaceChildren(el("caption", {}, "This bundle has no metrics.json."));
    }
    const recallDoc = body.retrieval && body.retrieval.recall_of_test_item;
    if (recallDoc) {
      const caps = body.retrieval.caps || {};
      // Bundles with the candidate ranker record {union, by_source: {...}}; older ones a flat
      // {union, ann, ...} mapping. Either way: one row per source, then the whole union.
      const recall = recallDoc.by_source
        ? { ...recallDoc.by_source, union: recallDoc.union } : recallDoc;
      if (recallDoc.by_source) caps.union = Object.values(caps).reduce((a, b) => a + b, 0);
      $("recall-table").replaceChildren(
        el("thead", {}, el("tr", {}, ["source", "candidates asked", "recall"].map(
          (h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, Object.entries(recall).map(([source, r]) => el("tr", {},
          el("th", { scope: "row" }, source), el("td", {}, caps[source] ?? "–"),
          el("td", {}, fmt(r, 4))))));
    } else {
      $("recall-table").replaceChildren(el("caption", {}, "This bundle has no retrieval.json."));
    }
    if (body.chart) {
      $("metrics-png").src = `/v1/bundle/metrics.png?v=${encodeURIComponent(body.version)}`;
      $("metrics-png").classList.remove("hidden");
    }
  }

  // ---- admin ------------------------------------------------------------------------
  $("reload-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = $("admin-result");
    const button = e.target.querySelector("button");
    const bundle = $("reload-bundle").value.trim();
    button.disabled = true;
    out.textContent = "Reloading… requests keep being answered meanwhile.";
    try {
      const body = await api("/admin/reload", { method: "POST", token: $("admin-token").value,
                                                 body: bundle ? { bundle } : {} });
      out.textContent = `Reloaded: ${Object.entries(body).map(([k, v]) => `${k} ${v}`).join(", ")}.`;
      offline();
      readiness();
    } catch (err) {
      out.textContent = `Reload failed: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  });

  // ---- polling while the page is open -----------------------------------------------
  async function loop(fn, every) {
    await fn();
    setTimeout(() => loop(fn, every), (typeof every === "function" ? every() : every) * 1000);
  }
  loop(readiness, READY_EVERY_S);
  loop(stats, () => statsEvery);
  loop(experiments, READY_EVERY_S);
  offline();
})();
