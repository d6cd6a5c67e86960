/* Live page: one /ws/metrics connection in summary mode (one frame a second with
 * each series' count, mean, min, max, last and p95, whatever the ingest rate) feeds the charts and
 * tells HTMX fragments (cards, matrix, alerts) to refresh, debounced.
 * Reconnects with backoff and catches up (re-fetches chart data) afterwards. */
(function () {
  "use strict";

  var REFRESH_DELAY = 1500; // matrix and alerts refresh at most this often while points stream
  // The cards average the whole range, reading every raw point not yet rolled
  // up (a minute or two of ingest): at 2,000 points/s that was the dashboard's
  // largest cost on the server, so they refresh on Grafana's 5 s floor.
  var SUMMARY_DELAY = 5000;
  var ALERT_DELAY = 250;
  var SUMMARY_INTERVAL = 1; // seconds between the server's summary frames
  var CATCH_UP_EVERY = 5 * 60 * 1000; // long-range charts: redraw summarised buckets from the server
  var ws = null, attempt = 0, everConnected = false, reconnectTimer = null;
  var timers = {};

  function indicator(state, text) {
    var el = document.getElementById("connection");
    if (!el) return;
    el.dataset.state = state;
    el.querySelector(".connection-text").textContent = text;
  }

  function banner(show) {
    var el = document.getElementById("unreachable");
    if (el) el.hidden = !show;
  }

  function fire(name, delay) {
    if (timers[name]) {
      if (delay > 0) return; // already due
      clearTimeout(timers[name]); // a catch-up does not wait for a pending 5 s refresh
    }
    timers[name] = setTimeout(function () {
      timers[name] = null;
      document.body.dispatchEvent(new CustomEvent(name));
    }, delay);
  }

  function currentServices() {
    var body = document.querySelector(".dashboard-body");
    var raw = body ? body.dataset.services : "";
    return raw ? raw.split(",") : null;
  }

  function subscribe() {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ action: "subscribe", mode: "summary", interval: SUMMARY_INTERVAL, services: currentServices() }));
    }
  }

  function onMessage(event) {
    var msg;
    try { msg = JSON.parse(event.data); } catch (e) { return; }
    if (msg.type === "summary") {
      if (msg.series.length) {
        window.Telemetry.summary(msg);
        pointsArrived();
      }
    } else if (msg.type === "metrics") {
      window.Telemetry.ingest(msg.data);
      pointsArrived();
    } else if (msg.type === "metric") {
      window.Telemetry.ingest([msg.data]);
      pointsArrived();
    } else if (msg.type === "alert") {
      window.Telemetry.alert(msg.data);
      fire("telemetry-alerts", ALERT_DELAY);
    } else if (msg.type === "lag") {
      catchUp(); // the server dropped updates for us: redraw from the server instead of showing a gap
    }
  }

  function pointsArrived() {
    fire("telemetry-refresh", REFRESH_DELAY);
    fire("telemetry-summary", SUMMARY_DELAY);
  }

  function catchUp() {
    window.Telemetry.refetchAll();
    fire("telemetry-refresh", 0);
    fire("telemetry-summary", 0);
  }

  function connect() {
    reconnectTimer = null;
    var path = document.body.dataset.wsPath || "/ws/metrics";
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
    indicator(everConnected ? "reconnecting" : "connecting", everConnected ? "Reconnecting…" : "Connecting…");
    try { ws = new WebSocket(url); } catch (e) { scheduleReconnect(); return; }
    ws.onopen = function () {
      attempt = 0;
      indicator("live", "Live");
      banner(false);
      subscribe();
      if (everConnected) catchUp();
      everConnected = true;
    };
    ws.onmessage = onMessage;
    ws.onclose = function () { ws = null; scheduleReconnect(); };
    ws.onerror = function () { /* onclose follows */ };
  }

  function scheduleReconnect() {
    if (reconnectTimer) return;
    attempt += 1;
    var delay = Math.min(15000, 500 * Math.pow(2, attempt - 1)) * (0.8 + Math.random() * 0.4);
    indicator(attempt > 2 ? "offline" : "reconnecting",
      (attempt > 2 ? "Offline, retrying in " : "Reconnecting in ") + Math.round(delay / 1000) + " s");
    if (attempt > 2) checkServer();
    reconnectTimer = setTimeout(connect, delay);
  }

  function checkServer() {
    fetch(document.body.dataset.healthUrl || "/metrics/health", { cache: "no-store" })
      .then(function () { banner(false); })
      .catch(function () { banner(true); });
  }

  function start() {
    window.Telemetry.init(document);
    document.body.addEventListener("htmx:afterSettle", function (e) {
      window.Telemetry.init(e.target);
      if (e.target.classList && e.target.classList.contains("dashboard-body")) subscribe();
    });
    document.body.addEventListener("htmx:sendError", function () { banner(true); });
    document.body.addEventListener("htmx:responseError", function (e) {
      if (e.detail.xhr && e.detail.xhr.status >= 500) banner(true);
    });
    document.body.addEventListener("htmx:afterRequest", function (e) {
      if (e.detail.successful) banner(false);
    });
    document.addEventListener("telemetry-fetch-failed", function () { banner(true); });
    document.addEventListener("telemetry-fetch-ok", function () { if (ws) banner(false); });
    setInterval(window.Telemetry.tick, 10000); // slide the window even when nothing arrives
    setInterval(window.Telemetry.refetchAll, CATCH_UP_EVERY);
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
