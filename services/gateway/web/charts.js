// Small SVG charts drawn by hand: a few dozen points per series, redrawn every few seconds.
// (A charting library would be larger than the whole console and would have to be vendored.)
"use strict";

const charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 480, H = 200, PAD = { l: 46, r: 10, t: 10, b: 26 };
  const COLORS = ["--c1", "--c2", "--c3", "--c4", "--c5", "--c6", "--c7", "--c8"];

  function color(i) {
    return getComputedStyle(document.documentElement).getPropertyValue(COLORS[i % COLORS.length])
      .trim() || "#333";
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= v);
  }

  function label(v) {
    return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  // series: [{name, points: [[t, value|null], ...]}]; bars: draw the first series as bars.
  // The time axis runs from the oldest point (at most windowS ago, at least a minute) to now.
  function draw(figure, series, { bars = false, windowS = 600, summary = "" } = {}) {
    const now = Date.now() / 1000;
    const oldest = Math.min(...series.flatMap((s) => s.points.map((p) => p[0])), now);
    const spanS = Math.min(windowS, Math.max(60, now - oldest));
    const x = (t) => PAD.l + (W - PAD.l - PAD.r) * (1 - Math.min(1, (now - t) / spanS));
    const values = series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null);
    const top = niceMax(Math.max(0, ...values));
    const y = (v) => H - PAD.b - (H - PAD.t - PAD.b) * (v / top);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
                              "aria-label": summary || figure.querySelector("figcaption").textContent });
    for (let i = 0; i <= 4; i += 1) {  // grid and y labels
      const v = (top * i) / 4;
      root.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v), stroke: "#e3e7ed" }));
      root.append(svg("text", { x: PAD.l - 6, y: y(v) + 4, "text-anchor": "end",
                                "font-size": 11, fill: "#5b6675" }, label(v)));
    }
    const span = spanS >= 120 ? `−${Math.round(spanS / 60)} min` : `−${Math.round(spanS)} s`;
    root.append(svg("text", { x: PAD.l, y: H - 8, "font-size": 11, fill: "#5b6675" }, span));
    root.append(svg("text", { x: W - PAD.r, y: H - 8, "font-size": 11, fill: "#5b6675",
                              "text-anchor": "end" }, "now"));
    series.forEach((s, i) => {
      const pts = s.points.filter((p) => p[1] !== null && now - p[0] <= spanS);
      if (bars) {
        const width = Math.max(2, ((W - PAD.l - PAD.r) / Math.max(1, spanS / (s.step || 5))) - 1);
        for (const [t, v] of pts.filter((p) => p[1] > 0)) {
          root.append(svg("rect", { x: x(t) - width, y: y(v), width, height: y(0) - y(v),
                                    fill: color(i), "data-value": v }));
        }
        return;
      }
      if (!pts.length) return;
      const d = pts.map(([t, v], j) => `${j ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`);
      root.append(svg("path", { d: d.join(" "), fill: "none", stroke: color(i),
                                "stroke-width": 2, "data-series": s.name }));
      if (pts.length === 1) {
        root.append(svg("circle", { cx: x(pts[0][0]), cy: y(pts[0][1]), r: 3, fill: color(i) }));
      }
    });
    const legend = vidrec.el("div", { class: "legend" }, series.map((s, i) => {
      const swatch = vidrec.el("i", { "aria-hidden": "true" });
      swatch.style.background = color(i);
      return vidrec.el("span", {}, swatch, s.name);
    }));
    figure.querySelector("svg")?.remove();
    figure.querySelector(".legend")?.remove();
    figure.append(root, legend);
  }

  return { draw };
})();
