// mqttd dashboard: the broker's $SYS figures, live, over MQTT-over-WebSocket.
//
// Connects back to the broker that served the page (wss:// over https, ws:// over http; query
// parameters ?path=/mqtt and ?mqttVersion=3|4 as on the demo page), subscribes to $SYS/# at
// QoS 0 and shows the latest values as tiles; rates are computed from successive counter values
// (the broker publishes them every broker.sys_interval_s), and the last WINDOW_S seconds are
// drawn with uPlot. Reconnects by itself with a growing delay.
"use strict";

(function () {
  const WINDOW_S = 15 * 60; // charts keep the last 15 minutes
  const SYS = "$SYS/broker/";
  const params = new URLSearchParams(window.location.search);
  const secure = window.location.protocol === "https:";
  const host = window.location.hostname;
  const port = Number(window.location.port) || (secure ? 443 : 80);
  const path = params.get("path") || "/mqtt";
  const forcedVersion = Number(params.get("mqttVersion")) || null;
  const clientId = "dash-" + Math.random().toString(36).slice(2, 10);

  const $ = (id) => document.getElementById(id);
  const statusEl = $("status");
  const statusText = $("status-text");

  let client = null;
  let retryDelayMs = 1000;
  let retryTimer = null;
  const values = {}; // topic (without the $SYS/broker/ prefix) -> latest payload
  const counters = {}; // topic -> {value, at}: the last two readings make a rate
  const rates = {}; // topic -> per-second rate from the last two readings
  let sampleTimer = null;
  let lastUptime = null;

  $("endpoint").textContent = (secure ? "wss://" : "ws://") + window.location.host + path +
    " · client id " + clientId;

  function setState(state, text) {
    statusEl.dataset.state = state;
    statusText.textContent = text;
  }

  // --- formatting ---------------------------------------------------------------------------
  const integer = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });
  const decimal = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return decimal.format(n) + " " + units[i];
  }

  function duration(seconds) {
    const d = Math.floor(seconds / 86400);
    const h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = Math.floor(seconds % 60);
    if (d) return d + "d " + h + "h " + m + "m";
    if (h) return h + "h " + m + "m " + s + "s";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function show(id, text, raw) {
    const el = $(id);
    if (el.textContent !== text) {
      el.textContent = text;
      el.dataset.fresh = "true";
      setTimeout(function () { el.dataset.fresh = "false"; }, 600);
    }
    if (raw !== undefined) el.dataset.value = String(raw);
  }

  // --- charts -------------------------------------------------------------------------------
  function makeChart(elementId, series) {
    const el = $(elementId);
    const data = [[]].concat(series.map(() => []));
    const options = {
      width: Math.max(el.clientWidth, 240),
      height: 180,
      scales: { x: { time: true } },
      series: [{}].concat(series.map((s) => ({
        label: s.label, stroke: s.color, width: 2, scale: s.scale || "y",
        value: (u, v) => (v == null ? "–" : s.format ? s.format(v) : decimal.format(v)),
      }))),
      axes: [{}].concat(
        [{ scale: "y", size: 64, values: (u, ticks) => ticks.map((t) => (series[0].format || decimal.format)(t)) }],
        series.some((s) => s.scale === "ms") ? [{ scale: "ms", side: 1, size: 48, grid: { show: false } }] : []
      ),
    };
    return { plot: new uPlot(options, data, el), data: data, el: el };
  }

  const charts = {
    clients: makeChart("chart-clients", [
      { label: "connected", color: "#1463c9", format: (v) => integer.format(v) },
      { label: "total (with offline sessions)", color: "#8a94a0", format: (v) => integer.format(v) },
    ]),
    messages: makeChart("chart-messages", [
      { label: "in", color: "#1f9d55" },
      { label: "out", color: "#1463c9" },
    ]),
    bytes: makeChart("chart-bytes", [
      { label: "in", color: "#1f9d55", format: bytes },
      { label: "out", color: "#1463c9", format: bytes },
    ]),
    health: makeChart("chart-health", [
      { label: "dropped /s", color: "#c8322d" },
      { label: "commit ms", color: "#d68b00", scale: "ms" },
    ]),
  };

  function push(chart, now, points) {
    chart.data[0].push(now);
    points.forEach((v, i) => chart.data[i + 1].push(v));
    while (chart.data[0].length && chart.data[0][0] < now - WINDOW_S) {
      chart.data.forEach((column) => column.shift());
    }
    chart.plot.setData(chart.data);
  }

  window.addEventListener("resize", function () {
    Object.values(charts).forEach((c) => c.plot.setSize({ width: Math.max(c.el.clientWidth, 240), height: 180 }));
  });

  // --- figures ------------------------------------------------------------------------------
  const RATE_TOPICS = [
    "publish/messages/received", "publish/messages/sent", "bytes/received", "bytes/sent",
    "publish/messages/dropped",
  ];

  function number(topic) {
    const n = Number(values[topic]);
    return Number.isFinite(n) ? n : null;
  }

  function onValue(topic, payload) {
    values[topic] = payload;
    if (RATE_TOPICS.includes(topic)) {
      const now = performance.now() / 1000;
      const value = Number(payload);
      const previous = counters[topic];
      if (previous && now > previous.at && value >= previous.value) {
        rates[topic] = (value - previous.value) / (now - previous.at);
      }
      counters[topic] = { value: value, at: now };
    }
    if (topic === "uptime") {
      const seconds = parseInt(payload, 10);
      if (lastUptime !== null && seconds > lastUptime) {
        $("interval").textContent = (seconds - lastUptime) + " s";
      }
      lastUptime = seconds;
    }
    // One update of the broker is many messages in a row: render once they have arrived.
    if (sampleTimer === null) sampleTimer = setTimeout(render, 100);
  }

  function rateText(topic, format) {
    const rate = rates[topic];
    return rate === undefined ? "–" : (format || decimal.format)(rate);
  }

  function render() {
    sampleTimer = null;
    document.querySelectorAll("dd[data-topic]").forEach(function (el) {
      const topic = el.dataset.topic.slice(SYS.length);
      if (values[topic] !== undefined) show(el.id, integer.format(Number(values[topic])), values[topic]);
    });
    show("msg-in-rate", rateText("publish/messages/received"), rates["publish/messages/received"]);
    show("msg-out-rate", rateText("publish/messages/sent"), rates["publish/messages/sent"]);
    show("bytes-in-rate", rateText("bytes/received", bytes), rates["bytes/received"]);
    show("bytes-out-rate", rateText("bytes/sent", bytes), rates["bytes/sent"]);
    if (values["mqttd/store/commit_latency_ms"] !== undefined) {
      show("store-latency", decimal.format(Number(values["mqttd/store/commit_latency_ms"])) + " ms");
    } else if (values["mqttd/version"] !== undefined) {
      show("store-latency", "no store");
    }
    if (values["heap/current"] !== undefined) show("heap", bytes(Number(values["heap/current"])));
    if (lastUptime !== null) show("uptime", duration(lastUptime), lastUptime);
    if (values["version"] !== undefined) show("version", values["version"].replace(/^mqttd version /, ""));
    const loads = ["1min", "5min", "15min"].map((w) => values["load/publish/received/" + w]);
    if (loads.every((v) => v !== undefined)) show("load", loads.map((v) => decimal.format(Number(v))).join(" · "));

    const now = Date.now() / 1000;
    push(charts.clients, now, [number("clients/connected"), number("clients/total")]);
    push(charts.messages, now, [rates["publish/messages/received"] ?? null, rates["publish/messages/sent"] ?? null]);
    push(charts.bytes, now, [rates["bytes/received"] ?? null, rates["bytes/sent"] ?? null]);
    push(charts.health, now, [rates["publish/messages/dropped"] ?? null, number("mqttd/store/commit_latency_ms")]);
  }

  // --- connection ---------------------------------------------------------------------------
  function scheduleReconnect(reason) {
    const seconds = Math.round(retryDelayMs / 1000);
    setState("disconnected", "Disconnected (" + reason + "), retrying in " + seconds + " s");
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, retryDelayMs);
    retryDelayMs = Math.min(retryDelayMs * 2, 30000);
  }

  function connect() {
    setState("connecting", "Connecting…");
    client = new Paho.Client(host, port, path, clientId);
    const thisClient = client;
    client.onConnectionLost = function (response) {
      if (thisClient !== client) return;
      scheduleReconnect(response.errorMessage || "connection lost");
    };
    client.onMessageArrived = function (message) {
      if (message.destinationName.startsWith(SYS)) {
        onValue(message.destinationName.slice(SYS.length), message.payloadString);
      }
    };
    const options = {
      useSSL: secure,
      timeout: 10,
      keepAliveInterval: 30,
      cleanSession: true,
      onSuccess: function () {
        retryDelayMs = 1000;
        setState("connected", "Connected");
        client.subscribe("$SYS/#", {
          qos: 0,
          onFailure: function (response) {
            setState("disconnected", "$SYS/# refused: " + (response.errorMessage || "no access"));
          },
        });
      },
      onFailure: function (response) {
        if (thisClient !== client) return;
        scheduleReconnect(response.errorMessage || "connect failed");
      },
    };
    if (forcedVersion === 3 || forcedVersion === 4) {
      options.mqttVersion = forcedVersion;
      options.mqttVersionExplicit = true;
    }
    try {
      client.connect(options);
    } catch (error) {
      scheduleReconnect(String(error.message || error));
    }
  }

  connect();
})();
