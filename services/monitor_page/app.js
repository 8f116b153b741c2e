// revetl monitor page: polls /api/state and updates the page in place.
// No framework and no build step; the charts are hand-drawn SVG over a ring of
// the samples this tab has seen (the last 10 minutes).
"use strict";

(() => {
  const POLL_MS = 2000;
  const FETCH_TIMEOUT_MS = 5000;
  const WINDOW_S = 600;
  const MIN_SPAN_S = 60;
  const RATE_SPAN_S = 10;
  const FRESHNESS_SLO_S = 5;
  const FRESHNESS_BAD_S = 60;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#0969da", "#bc4c00", "#8250df", "#1b7c83"];
  const STAGE_TITLES = {
    debezium: "Debezium",
    clickhouse: "ClickHouse",
    worker: "Worker",
  };

  const samples = [];
  let polls = 0;
  let failingSince = null;

  const byId = (id) => document.getElementById(id);

  // ---- formatting -------------------------------------------------------

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  function fmtInt(n) {
    return isNum(n) ? Math.round(n).toLocaleString("en-US") : "–";
  }

  function fmtSeconds(s) {
    if (!isNum(s)) return "–";
    if (s === 0) return "0 s";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 10) return `${s.toFixed(2)} s`;
    if (s < 120) return `${s.toFixed(1)} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function fmtBytes(b) {
    if (!isNum(b)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = b;
    let i = 0;
    while (Math.abs(value) >= 1024 && i < units.length - 1) {
      value /= 1024;
      i += 1;
    }
    const digits = i === 0 || value >= 100 ? 0 : 1;
    return `${value.toFixed(digits)} ${units[i]}`;
  }

  function fmtRate(r) {
    if (!isNum(r)) return "–";
    if (r === 0) return "0";
    if (r < 1) return r.toFixed(2);
    return r < 10 ? r.toFixed(1) : fmtInt(r);
  }

  function fmtLag(value, unit) {
    return unit === "bytes" ? fmtBytes(value) : fmtInt(value);
  }

  function fmtClock(epochS) {
    const d = new Date(epochS * 1000);
    return d.toLocaleTimeString("en-GB", { hour12: false });
  }

  // ---- small DOM helpers ------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      node.append(child);
    }
    return node;
  }

  function setText(id, text) {
    const node = byId(id);
    if (node && node.textContent !== text) node.textContent = text;
  }

  function setCount(id, value) {
    setText(id, fmtInt(value));
    const node = byId(id);
    if (node) node.dataset.value = isNum(value) ? String(value) : "";
  }

  function pill(node, level, text) {
    node.className = `pill pill-${level}`;
    node.textContent = text;
    node.dataset.state = level;
  }

  // ---- samples and rates ------------------------------------------------

  function stageLag(state, name) {
    const stage = (state.stages || []).find((s) => s.name === name);
    return stage && isNum(stage.lag) ? stage.lag : null;
  }

  function record(state) {
    const worker = state.worker || {};
    const latency = worker.latency_seconds || {};
    const t = isNum(state.time) ? state.time : Date.now() / 1000;
    if (samples.length && t <= samples[samples.length - 1].t) return;
    samples.push({
      t,
      freshness: isNum(state.freshness_seconds) ? state.freshness_seconds : null,
      p50: isNum(latency.p50) ? latency.p50 : null,
      p95: isNum(latency.p95) ? latency.p95 : null,
      p99: isNum(latency.p99) ? latency.p99 : null,
      debezium: stageLag(state, "debezium"),
      clickhouse: stageLag(state, "clickhouse"),
      worker: stageLag(state, "worker"),
      events: isNum(worker.events) ? worker.events : null,
      upserts: isNum(worker.upserts) ? worker.upserts : null,
      rankChanges: isNum(worker.rank_changes) ? worker.rank_changes : null,
    });
    while (samples.length && samples[0].t < t - WINDOW_S) samples.shift();
  }

  // Per-second rate of a counter at sample i, over the last RATE_SPAN_S seconds.
  function rateAt(i, key) {
    const now = samples[i];
    let j = i - 1;
    while (j > 0 && now.t - samples[j].t < RATE_SPAN_S) j -= 1;
    if (j < 0) return null;
    const then = samples[j];
    if (!isNum(now[key]) || !isNum(then[key]) || now.t <= then.t) return null;
    const delta = now[key] - then[key];
    return delta < 0 ? null : delta / (now.t - then.t);
  }

  function latestRate(key) {
    return samples.length > 1 ? rateAt(samples.length - 1, key) : null;
  }

  // ---- charts -----------------------------------------------------------

  // A round step giving about four gridlines: 1, 2 or 5 times a power of ten, or
  // for bytes a power of two times a power of 1024 (so the labels read 16 KiB).
  function niceStep(max, binary) {
    if (!(max > 0)) return binary ? 256 : 0.25;
    const raw = max / 4;
    if (binary) {
      const exp = 1024 ** Math.floor(Math.log(raw) / Math.log(1024));
      let step = exp;
      while (step < raw) step *= 2;
      return step;
    }
    const exp = 10 ** Math.floor(Math.log10(raw));
    return [1, 2, 5, 10].find((s) => raw <= s * exp) * exp;
  }

  function relLabel(ageS) {
    if (ageS < 1) return "now";
    if (ageS < 60) return `−${Math.round(ageS)} s`;
    return `−${Math.round(ageS / 60)} min`;
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function drawChart(id, series, format, threshold, binary) {
    const svg = byId(id);
    if (!svg) return;
    const width = Math.max(svg.clientWidth || 600, 200);
    const height = Math.max(svg.clientHeight || 170, 100);
    const pad = { left: 64, right: 12, top: 10, bottom: 22 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.replaceChildren();

    const tEnd = samples.length ? samples[samples.length - 1].t : Date.now() / 1000;
    const tFirst = samples.length ? samples[0].t : tEnd;
    const span = Math.min(WINDOW_S, Math.max(MIN_SPAN_S, tEnd - tFirst));
    const tStart = tEnd - span;
    const values = series.flatMap((s) => s.points.map((p) => p[1]).filter(isNum));
    const top = Math.max(0, ...values);
    const withLine = isNum(threshold) && threshold > top && threshold <= top * 1.5;
    const step = niceStep(withLine ? threshold : top, Boolean(binary));
    const ticks = Math.max(1, Math.ceil((withLine ? threshold : top) / step - 1e-9));
    const yMax = step * ticks;
    const x = (t) => pad.left + ((t - tStart) / span) * plotW;
    const y = (v) => pad.top + plotH - (v / yMax) * plotH;

    for (let k = 0; k <= ticks; k += 1) {
      const v = step * k;
      svg.append(svgEl("line", {
        class: k === 0 ? "axis" : "gridline",
        x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v),
      }));
      svg.append(svgEl("text", {
        x: pad.left - 6, y: y(v) + 4, "text-anchor": "end",
      }, format(v)));
    }
    const stepS = [10, 30, 60, 120, 300].find((s) => span / s <= 5) || 300;
    for (let age = 0; age <= span + 0.001; age += stepS) {
      svg.append(svgEl("text", {
        x: x(tEnd - age), y: height - 6,
        "text-anchor": age === 0 ? "end" : age + stepS > span ? "start" : "middle",
      }, relLabel(age)));
    }
    if (isNum(threshold) && threshold <= yMax) {
      svg.append(svgEl("line", {
        class: "threshold",
        x1: pad.left, x2: width - pad.right, y1: y(threshold), y2: y(threshold),
      }));
    }
    if (!values.length) {
      svg.append(svgEl("text", {
        class: "nodata", x: pad.left + plotW / 2, y: pad.top + plotH / 2,
        "text-anchor": "middle",
      }, "no data yet"));
    }
    series.forEach((s, i) => drawSeries(svg, s, COLORS[i % COLORS.length], x, y));
    drawLegend(id, series, format);
  }

  function drawSeries(svg, s, color, x, y) {
    let d = "";
    let penDown = false;
    let lonely = null;
    for (const [t, v] of s.points) {
      if (!isNum(v)) {
        penDown = false;
        continue;
      }
      const cmd = penDown ? "L" : "M";
      d += `${cmd}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      lonely = penDown ? null : [x(t), y(v)];
      penDown = true;
    }
    if (d) {
      const attrs = { class: "series", d, stroke: color };
      if (s.dashed) attrs["stroke-dasharray"] = "7 4";
      svg.append(svgEl("path", attrs));
    }
    if (lonely) {
      svg.append(svgEl("circle", { cx: lonely[0], cy: lonely[1], r: 2.5, fill: color }));
    }
  }

  function drawLegend(id, series, format) {
    const legend = document.querySelector(`[data-legend-for="${id}"]`);
    if (!legend) return;
    legend.replaceChildren(...series.map((s, i) => {
      const last = [...s.points].reverse().find((p) => isNum(p[1]));
      const item = el("span", {}, `${s.name} `, el("b", { text: last ? format(last[1]) : "–" }));
      item.style.setProperty("--swatch", COLORS[i % COLORS.length]);
      return item;
    }));
  }

  function pointsOf(key) {
    return samples.map((s) => [s.t, s[key]]);
  }

  function ratePoints(key) {
    return samples.map((s, i) => [s.t, i ? rateAt(i, key) : null]);
  }

  function drawCharts() {
    drawChart("chart-freshness", [{ name: "freshness", points: pointsOf("freshness") }],
      fmtSeconds, FRESHNESS_SLO_S);
    drawChart("chart-latency", [
      { name: "p50", points: pointsOf("p50") },
      { name: "p95", points: pointsOf("p95") },
      { name: "p99", points: pointsOf("p99") },
    ], fmtSeconds);
    drawChart("chart-lag", [
      { name: "ClickHouse (revetl-clickhouse)", points: pointsOf("clickhouse") },
      { name: "worker (revetl-worker)", points: pointsOf("worker") },
    ], fmtInt);
    drawChart("chart-slot", [{ name: "slot revetl", points: pointsOf("debezium") }],
      fmtBytes, null, true);
    drawChart("chart-throughput", [
      { name: "events/s", points: ratePoints("events") },
      { name: "upserts/s", points: ratePoints("upserts"), dashed: true },
      { name: "rank changes/s", points: ratePoints("rankChanges") },
    ], fmtRate);
  }

  // ---- sections ---------------------------------------------------------

  function renderOverall(state) {
    const components = state.components || [];
    const sick = components.filter((c) => !c.healthy);
    const errors = state.errors || [];
    const node = byId("overall");
    if (!components.length) pill(node, "unknown", "no components reported");
    else if (sick.length) {
      pill(node, "bad", `${sick.length} unhealthy: ${sick.map((c) => c.name).join(", ")}`);
    } else if (errors.length) pill(node, "warn", `healthy · ${errors.length} collection errors`);
    else pill(node, "ok", "all healthy");

    const updated = byId("updated-at");
    updated.textContent = fmtClock(state.time);
    updated.dataset.epoch = String(state.time);
    updated.setAttribute("datetime", new Date(state.time * 1000).toISOString());
  }

  function renderComponents(components) {
    const box = byId("components");
    const seen = new Set();
    box.querySelectorAll(".empty").forEach((n) => n.remove());
    for (const c of components) {
      seen.add(c.name);
      let card = box.querySelector(`[data-component="${CSS.escape(c.name)}"]`);
      if (!card) {
        card = el("div", { class: "component", "data-component": c.name },
          el("div", { class: "name", text: c.name }),
          el("div", { class: "state" }),
          el("div", { class: "detail" }));
        box.append(card);
      }
      card.dataset.healthy = String(Boolean(c.healthy));
      card.querySelector(".state").textContent = c.state || (c.healthy ? "healthy" : "down");
      const detail = card.querySelector(".detail");
      detail.textContent = c.detail || "";
      detail.title = c.detail || "";
    }
    box.querySelectorAll("[data-component]").forEach((card) => {
      if (!seen.has(card.dataset.component)) card.remove();
    });
    if (!components.length) box.replaceChildren(el("p", { class: "empty", text: "No components reported." }));
  }

  function renderStages(stages) {
    const items = [el("li", {}, el("div", { class: "stage-end" }, "shop",
      el("small", { text: "source Postgres" })))];
    for (const s of stages) {
      const waiting = isNum(s.lag) && s.lag > 0 && s.unit !== "bytes";
      items.push(el("li", { "data-stage": s.name, "data-waiting": String(waiting) },
        el("div", { class: "stage" },
          el("span", { class: "stage-name", text: STAGE_TITLES[s.name] || s.name }),
          el("span", { class: "stage-lag" }, fmtLag(s.lag, s.unit),
            el("small", { text: s.unit === "bytes" ? " slot lag" : " messages behind" })),
          el("span", { class: "stage-detail", text: s.detail || "" }))));
    }
    items.push(el("li", {}, el("div", { class: "stage-end" }, "product DB",
      el("small", { text: "ranks and discounts" }))));
    byId("stages").replaceChildren(...items);
  }

  function renderTiles(state) {
    const worker = state.worker || {};
    const latency = worker.latency_seconds || {};
    const fresh = state.freshness_seconds;
    setText("freshness", fmtSeconds(fresh));
    byId("freshness").dataset.value = isNum(fresh) ? String(fresh) : "";
    const level = !isNum(fresh) ? "unknown"
      : fresh <= FRESHNESS_SLO_S ? "ok" : fresh <= FRESHNESS_BAD_S ? "warn" : "bad";
    byId("freshness").closest(".tile").dataset.level = level;

    setText("latency-p50", fmtSeconds(latency.p50));
    setText("latency-p95", fmtSeconds(latency.p95));
    setText("latency-p99", fmtSeconds(latency.p99));
    const measured = latency.count === 1 ? "measurement" : "measurements";
    setText("latency-count", latency.count > 0
      ? `from ${fmtInt(latency.count)} ${measured}` : "nothing measured yet");
    setCount("events", worker.events);
    setText("events-rate", fmtRate(latestRate("events")));

    const dead = state.dead_letters || {};
    for (const stage of ["clickhouse", "worker"]) {
      setCount(`dead-letters-${stage}`, dead[stage]);
      byId(`dead-letters-${stage}`).classList.toggle("nonzero", dead[stage] > 0);
    }
  }

  function renderWorker(worker) {
    pill(byId("worker-state"), worker.up ? "ok" : "bad", worker.up ? "up" : "down");
    setCount("worker-events", worker.events);
    setCount("upserts", worker.upserts);
    setCount("rank-changes", worker.rank_changes);
    setCount("worker-dead-letters", worker.dead_letters);
    setCount("batches", worker.batches);
    setCount("retries", worker.retries);
    setText("upserts-rate", fmtRate(latestRate("upserts")));
    setCount("latency-samples", (worker.latency_seconds || {}).count);
  }

  function renderTable(id, rows, columns, emptyText) {
    const body = byId(id);
    if (!rows.length) {
      body.replaceChildren(el("tr", {}, el("td", {
        colspan: String(columns), class: "empty", text: emptyText,
      })));
      return;
    }
    body.replaceChildren(...rows);
  }

  function renderConnectors(connectors) {
    const rows = connectors.map((c) => el("tr", {
      "data-connector": c.connector, "data-task": String(c.task),
    },
    el("td", { text: c.connector }),
    el("td", { text: String(c.task) }),
    el("td", { class: c.up ? "state-ok" : "state-bad", text: c.state || (c.up ? "RUNNING" : "DOWN") })));
    renderTable("connectors", rows, 3, "No connector reported.");
  }

  function renderConsumers(consumers) {
    const rows = consumers.map((c) => el("tr", { "data-table": c.table },
      el("td", { text: c.table }),
      el("td", {
        class: `num ${c.last_poll_age_seconds > 60 ? "state-bad" : ""}`,
        text: isNum(c.last_poll_age_seconds) ? `${fmtSeconds(c.last_poll_age_seconds)} ago` : "–",
      }),
      el("td", { class: "num", text: fmtInt(c.messages_read) }),
      el("td", { class: `num ${c.exceptions > 0 ? "state-bad" : ""}`, text: fmtInt(c.exceptions) })));
    renderTable("clickhouse-consumers", rows, 4, "No Kafka-engine consumer reported.");
  }

  function renderErrors(errors) {
    const list = byId("errors");
    if (!errors.length) {
      list.replaceChildren(el("li", { class: "empty", text: "None." }));
      return;
    }
    list.replaceChildren(...errors.map((e) => el("li", { text: String(e) })));
  }

  function render(state) {
    record(state);
    renderOverall(state);
    renderComponents(state.components || []);
    renderStages(state.stages || []);
    renderTiles(state);
    renderWorker(state.worker || {});
    renderConnectors(state.connectors || []);
    renderConsumers(state.clickhouse_consumers || []);
    renderErrors(state.errors || []);
    drawCharts();
  }

  // ---- polling ----------------------------------------------------------

  function showConnection(ok, message) {
    const node = byId("connection");
    node.hidden = ok;
    node.textContent = ok ? "" : message;
    document.body.classList.toggle("stale", !ok);
  }

  async function poll() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch("api/state", {
        cache: "no-store", signal: controller.signal,
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const state = await response.json();
      render(state);
      polls += 1;
      document.body.dataset.polls = String(polls);
      failingSince = null;
      showConnection(true, "");
    } catch (err) {
      failingSince = failingSince || new Date();
      showConnection(false,
        `monitor unreachable since ${fmtClock(failingSince / 1000)} (${err.message}); retrying`);
      pill(byId("overall"), "unknown", "no fresh data");
    } finally {
      clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    }
  }

  window.addEventListener("resize", drawCharts);
  document.body.dataset.polls = "0";
  drawCharts();
  poll();
})();
