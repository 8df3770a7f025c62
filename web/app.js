// mqttd web page: subscribe over MQTT-over-WebSocket to the broker that served this page.
//
// The page connects back to its own origin: wss:// when it was loaded over https, ws:// over
// http, at the WebSocket path (default /mqtt). Query parameters: ?filter=/a/+/b&qos=1 preset the
// subscription, ?mqttVersion=3 forces MQTT 3.1 (4 = 3.1.1, the default), ?path=/mqtt.
// Reconnects by itself with a growing delay, and subscribes again after each (re)connect.
"use strict";

(function () {
  const MAX_MESSAGES = 200;
  const params = new URLSearchParams(window.location.search);
  const secure = window.location.protocol === "https:";
  const host = window.location.hostname;
  const port = Number(window.location.port) || (secure ? 443 : 80);
  const path = params.get("path") || "/mqtt";
  const forcedVersion = Number(params.get("mqttVersion")) || null; // 3 = MQTT 3.1, 4 = 3.1.1
  const clientId = "web-" + Math.random().toString(36).slice(2, 10);

  const $ = (id) => document.getElementById(id);
  const statusEl = $("status");
  const statusText = $("status-text");
  const subscriptionEl = $("subscription");
  const messagesEl = $("messages");
  const countEl = $("count");
  const emptyEl = $("empty");

  let client = null;
  let connected = false;
  let retryDelayMs = 1000;
  let retryTimer = null;
  let received = 0;
  // The subscription the user asked for; re-established after every reconnect.
  let wanted = { filter: params.get("filter") || $("filter").value, qos: Number(params.get("qos") || 1) };
  let active = null; // the filter currently subscribed on this connection

  $("filter").value = wanted.filter;
  $("sub-qos").value = String(wanted.qos);
  $("endpoint").textContent =
    (secure ? "wss://" : "ws://") + window.location.host + path +
    " · client id " + clientId +
    (forcedVersion === 3 ? " · MQTT 3.1" : forcedVersion === 4 ? " · MQTT 3.1.1" : "");

  function setState(state, text) {
    statusEl.dataset.state = state;
    statusText.textContent = text;
    $("publish").disabled = state !== "connected";
  }

  function scheduleReconnect(reason) {
    connected = false;
    active = null;
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
    client.onMessageArrived = showMessage;
    const options = {
      useSSL: secure,
      timeout: 10,
      keepAliveInterval: 30,
      cleanSession: true,
      onSuccess: function () {
        connected = true;
        retryDelayMs = 1000;
        setState("connected", "Connected");
        subscribe();
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

  function subscribe() {
    if (!connected) return;
    const target = wanted;
    const subscribeNow = function () {
      subscriptionEl.dataset.state = "pending";
      subscriptionEl.textContent = "Subscribing to " + target.filter + " …";
      client.subscribe(target.filter, {
        qos: target.qos,
        onSuccess: function (response) {
          active = target.filter;
          const granted = response && response.grantedQos !== undefined ? response.grantedQos : target.qos;
          subscriptionEl.dataset.state = "subscribed";
          subscriptionEl.textContent = "Subscribed to " + target.filter + " (granted QoS " + granted + ")";
        },
        onFailure: function (response) {
          subscriptionEl.dataset.state = "failed";
          subscriptionEl.textContent = "Subscription to " + target.filter + " refused" +
            (response && response.errorMessage ? ": " + response.errorMessage : "");
        },
      });
    };
    if (active && active !== target.filter) {
      const previous = active;
      active = null;
      client.unsubscribe(previous, { onSuccess: subscribeNow, onFailure: subscribeNow });
    } else {
      subscribeNow();
    }
  }

  function decodePayload(bytes) {
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch (error) {
      const hex = Array.from(bytes.slice(0, 64), (b) => b.toString(16).padStart(2, "0")).join(" ");
      return "(" + bytes.length + " bytes, not UTF-8) " + hex + (bytes.length > 64 ? " …" : "");
    }
  }

  function tag(text, className) {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    return span;
  }

  function showMessage(message) {
    received += 1;
    const bytes = message.payloadBytes;
    const item = document.createElement("li");
    item.className = "fresh message";
    item.dataset.topic = message.destinationName;
    item.dataset.qos = String(message.qos);
    item.dataset.retained = String(message.retained);
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.append(
      tag(message.destinationName, "topic"),
      tag("QoS " + message.qos, "tag qos"),
      tag(message.retained ? "retained" : "live", "tag retained"),
      tag(new Date().toLocaleTimeString(), "time"),
      tag(bytes.length + " B", "size"),
    );
    const payload = document.createElement("pre");
    payload.className = "payload";
    payload.textContent = decodePayload(bytes);
    item.append(meta, payload);
    messagesEl.prepend(item);
    while (messagesEl.children.length > MAX_MESSAGES) messagesEl.lastElementChild.remove();
    countEl.textContent = String(received);
    emptyEl.hidden = true;
  }

  $("subscribe-form").addEventListener("submit", function (event) {
    event.preventDefault();
    wanted = { filter: $("filter").value.trim(), qos: Number($("sub-qos").value) };
    subscribe();
  });

  $("publish-form").addEventListener("submit", function (event) {
    event.preventDefault();
    if (!connected) return;
    const message = new Paho.Message($("pub-payload").value);
    message.destinationName = $("pub-topic").value.trim();
    message.qos = Number($("pub-qos").value);
    message.retained = $("pub-retain").checked;
    try {
      client.send(message);
    } catch (error) {
      subscriptionEl.textContent = "Publish failed: " + (error.message || error);
    }
  });

  $("clear").addEventListener("click", function () {
    messagesEl.replaceChildren();
    received = 0;
    countEl.textContent = "0";
    emptyEl.hidden = false;
  });

  connect();
})();
