/* Charts: each <canvas data-chart data-url data-metric> is drawn from its JSON
 * endpoint, then kept live from the WebSocket: Telemetry.summary(frame) folds
 * each tick's per-series statistics into the current bucket (the dashboard's
 * subscription), Telemetry.ingest(points) raw points (other pages and scripts).
 * Tuned for streaming: parsing off, LTTB decimation, no animation, bounded points. */
(function () {
  "use strict";

  var MAX_POINTS = 1500; // per series; older points are dropped first
  var MAX_LIVE_VALUES = 5000; // raw values kept per live bucket for exact percentiles
  // Redraw a chart at most this often while points stream: a canvas redraw per
  // animation frame kept headless Chromium at half a core at 2,000 points/s.
  var MIN_REDRAW_MS = 250;
  var COLORS = { p50: "#58a6ff", p95: "#d29922", p99: "#f85149" };
  var PALETTE = ["#58a6ff", "#3fb950", "#d2a8ff", "#f0883e", "#56d4dd", "#e3b341", "#ff7b72", "#a5d6ff", "#7ee787", "#ffa657"];
  var SEVERITY = { warning: "#d29922", critical: "#f85149" };
  var charts = new Map(); // canvas id -> state

  function colorFor(name) {
    var h = 0;
    for (var i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
    return PALETTE[h % PALETTE.length];
  }

  // Labels and number formats of each metric kind, from the server's registry (metrics/kinds.py).
  var KINDS = JSON.parse(document.body.dataset.metricKinds || "{}");

  function format(metric, v) {
    if (v === null || v === undefined || isNaN(v)) return "–";
    var kind = KINDS[metric];
    if (!kind) return String(v);
    var shown = v * kind.scale;
    var places = kind.coarse_decimals !== null && shown >= kind.coarse_from ? kind.coarse_decimals : kind.decimals;
    return shown.toLocaleString("en-US", { minimumFractionDigits: places, maximumFractionDigits: places }) + kind.suffix;
  }

  function quantile(sorted, q) {
    var pos = q * (sorted.length - 1), lo = Math.floor(pos), hi = Math.min(lo + 1, sorted.length - 1);
    return sorted[lo] * (1 - (pos - lo)) + sorted[hi] * (pos - lo);
  }

  /* Vertical marks where alerts opened (severity colour) and resolved (green, dashed). */
  var alertMarks = {
    id: "alertMarks",
    afterDatasetsDraw: function (chart, args, opts) {
      var x = chart.scales.x, area = chart.chartArea, ctx = chart.ctx;
      if (!x || x.type !== "time" || !opts.marks) return;
      ctx.save();
      opts.marks.forEach(function (m) {
        [[m.started, SEVERITY[m.severity] || SEVERITY.warning, []], [m.resolved, "#3fb950", [4, 3]]].forEach(function (e) {
          if (!e[0] || e[0] < x.min || e[0] > x.max) return;
          var px = x.getPixelForValue(e[0]);
          ctx.strokeStyle = e[1];
          ctx.fillStyle = e[1];
          ctx.setLineDash(e[2]);
          ctx.lineWidth = 1.5;
          ctx.beginPath();
          ctx.moveTo(px, area.top);
          ctx.lineTo(px, area.bottom);
          ctx.stroke();
          ctx.beginPath();
          ctx.moveTo(px - 4, area.top);
          ctx.lineTo(px + 4, area.top);
          ctx.lineTo(px, area.top + 6);
          ctx.fill();
        });
      });
      ctx.restore();
    },
  };

  /* Horizontal dashed lines at the warning and critical thresholds. */
  var thresholdLines = {
    id: "thresholdLines",
    afterDatasetsDraw: function (chart, args, opts) {
      var t = opts.thresholds, y = chart.scales.y, area = chart.chartArea, ctx = chart.ctx;
      if (!t || !y) return;
      ctx.save();
      ctx.setLineDash([6, 4]);
      ctx.font = "11px system-ui, sans-serif";
      [["warning", t.warning], ["critical", t.critical]].forEach(function (l) {
        if (l[1] === null || l[1] < y.min || l[1] > y.max) return;
        var py = y.getPixelForValue(l[1]);
        ctx.strokeStyle = ctx.fillStyle = SEVERITY[l[0]];
        ctx.beginPath();
        ctx.moveTo(area.left, py);
        ctx.lineTo(area.right, py);
        ctx.stroke();
        ctx.fillText(l[0] + " " + format(opts.metric, l[1]), area.left + 4, py - 3);
      });
      ctx.restore();
    },
  };

  function baseOptions(state) {
    var grid = { color: "rgba(139,152,169,0.15)" };
    var ticks = { color: "#8b98a9" };
    return {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      normalized: true,
      parsing: state.kind === "compare" ? true : false,
      interaction: { mode: "index", intersect: false },
      scales: {
        x: state.kind === "compare" ? { grid: grid, ticks: ticks } : {
          type: "time", grid: grid, ticks: { color: "#8b98a9", maxRotation: 0, autoSkipPadding: 20 },
          time: {
            tooltipFormat: "yyyy-MM-dd HH:mm:ss",
            displayFormats: { second: "HH:mm:ss", minute: "HH:mm", hour: "HH:mm", day: "MMM d" },
          },
        },
        y: {
          beginAtZero: true, stacked: state.kind === "stacked", grid: grid,
          ticks: { color: "#8b98a9", callback: function (v) { return format(state.metric, v); } },
        },
      },
      plugins: {
        legend: {
          display: state.kind !== "compare",
          labels: { color: "#e6edf3", boxWidth: 12, filter: function (item) { return item.text !== ""; } },
        },
        tooltip: { filter: function (item) { return item.dataset.key !== "expected_lo"; }, callbacks: { label: function (c) { return c.dataset.label + ": " + format(state.metric, c.parsed.y); } } },
        decimation: { enabled: state.kind !== "compare", algorithm: "lttb", samples: 300, threshold: 400 },
        alertMarks: { marks: [] },
        thresholdLines: { thresholds: null, metric: state.metric },
      },
    };
  }

  function create(canvas) {
    var services = canvas.dataset.services;
    var state = {
      canvas: canvas,
      kind: canvas.dataset.chart,
      metric: canvas.dataset.metric,
      url: canvas.dataset.url,
      rangeMs: Number(canvas.dataset.rangeSeconds) * 1000,
      services: services ? new Set(services.split(",")) : null,
      fitThresholds: canvas.dataset.chart === "compare" || (services && services.split(",").length === 1),
      bucketMs: 60000,
      lastServerX: 0,
      live: new Map(),
      pending: new Set(), // live buckets with values not yet drawn
      p95: new Map(), // live bucket -> {sum, count}: count-weighted p95 of the summary ticks in it
      bars: new Map(),
      dirty: false,
      drawnAt: 0,
    };
    state.chart = new Chart(canvas, {
      type: state.kind === "compare" ? "bar" : "line",
      data: { labels: [], datasets: [] },
      options: baseOptions(state),
      plugins: [alertMarks, thresholdLines],
    });
    charts.set(canvas.id, state);
    load(state);
    return state;
  }

  function lineDataset(key, label, data, kind) {
    var color = COLORS[key] || colorFor(key);
    return {
      key: key, label: label, data: data, borderColor: color,
      backgroundColor: kind === "stacked" ? color + "55" : color,
      fill: kind === "stacked" ? "stack" : false,
      borderWidth: 1.5, pointRadius: 0, tension: 0, spanGaps: false,
    };
  }

  /* The anomaly baseline's expected band (median +- k MAD), filled behind the lines. */
  function bandDatasets(band) {
    var label = "expected (" + band.statistic + ", k=" + band.k + ")";
    var common = { borderWidth: 0, pointRadius: 0, tension: 0, spanGaps: false, order: 10 };
    return [
      Object.assign({ key: "expected_hi", label: label, data: band.data, fill: "+1", backgroundColor: "rgba(139,152,169,0.18)" }, common),
      Object.assign({ key: "expected_lo", label: "", data: band.data.map(function (p) { return { x: p.x, y: p.lo }; }), fill: false }, common),
    ];
  }

  function load(state) {
    return fetch(state.url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (body) {
        apply(state, body);
        document.dispatchEvent(new CustomEvent("telemetry-fetch-ok"));
      })
      .catch(function (err) {
        document.dispatchEvent(new CustomEvent("telemetry-fetch-failed", { detail: String(err) }));
      });
  }

  function apply(state, body) {
    var chart = state.chart;
    state.bucketMs = (body.bucket_seconds || 60) * 1000;
    state.live = new Map();
    state.pending = new Set();
    state.p95 = new Map();
    chart.options.plugins.alertMarks.marks = body.alerts || [];
    // Throughput thresholds are per service: a line across a stack of services would mislead.
    chart.options.plugins.thresholdLines.thresholds = state.kind === "stacked" ? null : body.thresholds;
    if (state.fitThresholds && body.thresholds && body.thresholds.direction === "above") {
      chart.options.scales.y.suggestedMax = body.thresholds.warning * 1.1;
    }
    if (state.kind === "compare") {
      state.bars = new Map();
      (body.bars || []).forEach(function (b) { state.bars.set(b.service, { sum: b.sum, count: b.count }); });
    } else {
      chart.data.datasets = body.datasets.map(function (d) { return lineDataset(d.key, d.label, d.data, state.kind); });
      if (body.expected) chart.data.datasets.unshift.apply(chart.data.datasets, bandDatasets(body.expected));
      state.lastServerX = 0;
      body.datasets.forEach(function (d) {
        if (d.data.length) state.lastServerX = Math.max(state.lastServerX, d.data[d.data.length - 1].x);
      });
      if (body.live) {
        // The current bucket arrives as raw values: live points join them, so it stays exact.
        state.lastServerX = body.live.x - state.bucketMs;
        state.live.set(body.live.x, body.live.values.slice(0, MAX_LIVE_VALUES));
        drawBucket(state, body.live.x);
      }
    }
    render(state);
  }

  /* Live points ---------------------------------------------------------- */

  function matches(state, p) {
    return p.metric_type === state.metric && (!state.services || state.services.has(p.service));
  }

  function upsert(data, x, y, c) {
    for (var i = data.length - 1; i >= 0 && i >= data.length - 3; i--) {
      if (data[i].x === x) { data[i].y = y; if (c !== undefined) data[i].c = c; return; }
      if (data[i].x < x) break;
    }
    if (data.length && data[data.length - 1].x > x) return; // older than what is drawn: the next catch-up has it
    data.push(c === undefined ? { x: x, y: y } : { x: x, y: y, c: c });
  }

  function addPercentile(state, p, ts) {
    var b = Math.floor(ts / state.bucketMs) * state.bucketMs;
    if (b <= state.lastServerX) return; // a bucket the server already summarised (a late point)
    var bucket = state.live.get(b);
    if (!bucket) { bucket = []; state.live.set(b, bucket); }
    if (bucket.length < MAX_LIVE_VALUES) bucket.push(p.value);
    else bucket[Math.floor(Math.random() * MAX_LIVE_VALUES)] = p.value;
    state.pending.add(b); // sorted once per redraw, not once per point
  }

  /* Exact percentiles of a live bucket from its raw values. */
  function drawBucket(state, b) {
    var values = state.live.get(b);
    if (!values || !values.length) return;
    var sorted = values.slice().sort(function (a, c) { return a - c; });
    if (!state.chart.data.datasets.length) {
      state.chart.data.datasets = ["p50", "p95", "p99"].map(function (k) { return lineDataset(k, k.toUpperCase(), [], "line"); });
    }
    state.chart.data.datasets.forEach(function (d) {
      var q = { p50: 0.5, p95: 0.95, p99: 0.99 }[d.key];
      if (q !== undefined) upsert(d.data, b, quantile(sorted, q));
    });
  }

  /* A count-weighted average per service and bucket: one point (n = 1) or one summary tick (n = count). */
  function addAverage(state, service, ts, mean, n) {
    var b = Math.floor(ts / state.bucketMs) * state.bucketMs;
    var ds = state.chart.data.datasets.find(function (d) { return d.key === service; });
    if (!ds) {
      ds = lineDataset(service, service, [], state.kind);
      state.chart.data.datasets.push(ds);
      state.chart.data.datasets.sort(function (a, c) { return a.key < c.key ? -1 : 1; });
    }
    var last = ds.data.length ? ds.data[ds.data.length - 1] : null;
    if (last && last.x === b && last.c) upsert(ds.data, b, (last.y * last.c + mean * n) / (last.c + n), last.c + n);
    else upsert(ds.data, b, mean, n);
  }

  function addBar(state, service, mean, n) {
    var bar = state.bars.get(service) || { sum: 0, count: 0 };
    bar.sum += mean * n;
    bar.count += n;
    state.bars.set(service, bar);
  }

  /* The summary ticks' p95 in a live bucket: their count-weighted mean, an estimate (a
   * p95 of several series and ticks is not a mean of p95s), drawn on the P95 line until
   * the next catch-up redraws the bucket from the server. P50 and P99 wait for that too. */
  function addSummaryP95(state, s, ts) {
    var b = Math.floor(ts / state.bucketMs) * state.bucketMs;
    if (b <= state.lastServerX) return;
    var acc = state.p95.get(b);
    if (!acc) {
      acc = { sum: 0, count: 0 };
      var raw = state.live.get(b); // the bucket's exact values from the last load count as one tick
      if (raw && raw.length) {
        var sorted = raw.slice().sort(function (a, c) { return a - c; });
        acc = { sum: quantile(sorted, 0.95) * raw.length, count: raw.length };
      }
      state.p95.set(b, acc);
    }
    acc.sum += s.p95 * s.count;
    acc.count += s.count;
    if (!state.chart.data.datasets.length) {
      state.chart.data.datasets = ["p50", "p95", "p99"].map(function (k) { return lineDataset(k, k.toUpperCase(), [], "line"); });
    }
    var ds = state.chart.data.datasets.find(function (d) { return d.key === "p95"; });
    if (ds) upsert(ds.data, b, acc.sum / acc.count);
  }

  /* One {"type": "summary"} frame: each series' statistics for the tick, folded into the tick's bucket. */
  function summary(frame) {
    var ts = Date.parse(frame.start);
    charts.forEach(function (state) {
      var changed = false;
      frame.series.forEach(function (s) {
        if (!s.count || !matches(state, s)) return;
        if (state.kind === "percentiles") addSummaryP95(state, s, ts);
        else if (state.kind === "stacked") addAverage(state, s.service, ts, s.mean, s.count);
        else addBar(state, s.service, s.mean, s.count);
        changed = true;
      });
      if (changed) schedule(state);
    });
  }

  function ingest(points) {
    charts.forEach(function (state) {
      var changed = false;
      points.forEach(function (p) {
        if (!matches(state, p)) return;
        var ts = Date.parse(p.timestamp);
        if (state.kind === "percentiles") addPercentile(state, p, ts);
        else if (state.kind === "stacked") addAverage(state, p.service, ts, p.value, 1);
        else addBar(state, p.service, p.value, 1);
        changed = true;
      });
      if (changed) schedule(state);
    });
  }

  function alert(a) {
    var mark = {
      id: a.id, service: a.service, severity: a.severity, state: a.state,
      started: a.started_at ? Date.parse(a.started_at) : null, resolved: a.resolved_at ? Date.parse(a.resolved_at) : null,
    };
    charts.forEach(function (state) {
      if (!matches(state, { metric_type: a.metric_type, service: a.service })) return;
      var marks = state.chart.options.plugins.alertMarks.marks;
      var i = marks.findIndex(function (m) { return m.id === a.id; });
      if (i >= 0) marks[i] = mark; else marks.push(mark);
      schedule(state);
    });
  }

  /* Drawing ---------------------------------------------------------------- */

  function schedule(state) {
    if (state.dirty) return;
    state.dirty = true;
    var wait = Math.max(0, state.drawnAt + MIN_REDRAW_MS - performance.now());
    setTimeout(function () {
      requestAnimationFrame(function () { state.dirty = false; render(state); });
    }, wait);
  }

  function render(state) {
    var chart = state.chart, now = Date.now(), empty;
    state.drawnAt = performance.now();
    state.pending.forEach(function (b) { drawBucket(state, b); });
    state.pending.clear();
    if (state.kind === "compare") {
      var names = Array.from(state.bars.keys()).sort();
      chart.data.labels = names;
      chart.data.datasets = [{
        label: "Average error rate", key: "avg", borderWidth: 0,
        data: names.map(function (n) { var b = state.bars.get(n); return b.count ? b.sum / b.count : 0; }),
        backgroundColor: names.map(function (n, i) { return PALETTE[i % PALETTE.length]; }),
      }];
      empty = !names.length;
    } else {
      var from = now - state.rangeMs;
      chart.data.datasets.forEach(function (d) {
        var drop = 0;
        while (drop < d.data.length && d.data[drop].x < from - state.bucketMs) drop++;
        drop = Math.max(drop, d.data.length - MAX_POINTS);
        if (drop > 0) d.data.splice(0, drop);
      });
      state.live.forEach(function (v, b) { if (b < from - state.bucketMs) state.live.delete(b); });
      state.p95.forEach(function (v, b) { if (b < from - state.bucketMs) state.p95.delete(b); });
      chart.options.scales.x.min = from;
      chart.options.scales.x.max = now;
      if (state.kind === "stacked") {
        chart.data.datasets.forEach(function (d, i) {
          d.borderColor = PALETTE[i % PALETTE.length];
          d.backgroundColor = d.borderColor + "55";
        });
      }
      empty = !chart.data.datasets.some(function (d) { return d.data.length; });
    }
    chart.update("none");
    var placeholder = state.canvas.parentNode.querySelector(".chart-empty");
    if (placeholder) placeholder.hidden = !empty;
    describe(state, empty);
  }

  /* The numbers as text: a visually hidden table next to the canvas. */
  function describe(state, empty) {
    var box = document.getElementById(state.canvas.getAttribute("aria-describedby"));
    if (!box) return;
    var now = Date.now();
    if (box.dataset.at && now - Number(box.dataset.at) < 1000 && !empty) return; // at most once a second
    box.dataset.at = String(now);
    if (empty) { box.textContent = "No data in this range."; return; }
    var rows = [];
    if (state.kind === "compare") {
      state.chart.data.labels.forEach(function (name, i) {
        rows.push([name, format(state.metric, state.chart.data.datasets[0].data[i])]);
      });
      box.innerHTML = "";
      table(box, ["Service", "Average"], rows);
      return;
    }
    state.chart.data.datasets.forEach(function (d) {
      if (!d.data.length || !d.label) return;
      var ys = d.data.map(function (p) { return p.y; });
      var last = d.data[d.data.length - 1];
      rows.push([d.label, format(state.metric, last.y), new Date(last.x).toISOString().slice(11, 19) + " UTC",
        format(state.metric, Math.min.apply(null, ys)), format(state.metric, Math.max.apply(null, ys))]);
    });
    box.innerHTML = "";
    table(box, ["Series", "Latest", "At", "Min", "Max"], rows);
  }

  function table(box, head, rows) {
    var t = document.createElement("table"), tr = document.createElement("tr");
    head.forEach(function (h) { var th = document.createElement("th"); th.textContent = h; tr.appendChild(th); });
    t.appendChild(tr);
    rows.forEach(function (r) {
      var row = document.createElement("tr");
      r.forEach(function (c) { var td = document.createElement("td"); td.textContent = c; row.appendChild(td); });
      t.appendChild(row);
    });
    box.appendChild(t);
  }

  /* Lifecycle: charts appear with their fragment and go when it is swapped out. */
  function init(root) {
    charts.forEach(function (state, id) {
      if (!document.body.contains(state.canvas)) { state.chart.destroy(); charts.delete(id); }
    });
    (root || document).querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (!charts.has(canvas.id) || charts.get(canvas.id).canvas !== canvas) create(canvas);
    });
  }

  function refetchAll() {
    return Promise.all(Array.from(charts.values()).map(load));
  }

  function tick() {
    charts.forEach(function (state) { if (state.kind !== "compare") schedule(state); });
  }

  window.Telemetry = Object.assign(window.Telemetry || {}, {
    charts: charts, init: init, ingest: ingest, summary: summary, alert: alert, refetchAll: refetchAll, tick: tick,
    chart: function (id) { var s = charts.get(id); return s && s.chart; },
  });
})();
