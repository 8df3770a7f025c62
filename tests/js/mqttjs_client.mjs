// MQTT.js interop client for mqttd's tests.
//
//   node mqttjs_client.mjs subscribe URL TOPIC_FILTER [--ca FILE] [--v31]
//       connects, subscribes at QoS 1, prints {"event":"ready"}, then prints
//       {"event":"message",...} for the first message and exits 0.
//   node mqttjs_client.mjs publish URL TOPIC PAYLOAD [--ca FILE] [--v31]
//       connects, publishes at QoS 1, waits for the PUBACK, prints {"event":"published"}, exits 0.
// Any error prints {"event":"error",...} and exits 1. One JSON object per stdout line.
import { readFileSync } from "node:fs";
import mqtt from "mqtt";

const [mode, url, topic, payload] = process.argv.slice(2);
const flag = (name) => process.argv.indexOf(name);
const options = { connectTimeout: 10000, reconnectPeriod: 0, clean: true };
if (flag("--ca") > 0) options.ca = readFileSync(process.argv[flag("--ca") + 1]);
if (flag("--v31") > 0) {
  options.protocolId = "MQIsdp";
  options.protocolVersion = 3;
}

const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const fail = (error) => {
  say({ event: "error", message: String(error && error.message ? error.message : error) });
  process.exit(1);
};

const client = mqtt.connect(url, options);
client.on("error", fail);
client.on("connect", () => {
  if (mode === "subscribe") {
    client.subscribe(topic, { qos: 1 }, (error, granted) => {
      if (error) return fail(error);
      say({ event: "ready", granted: granted.map((g) => g.qos) });
    });
  } else if (mode === "publish") {
    client.publish(topic, payload, { qos: 1 }, (error) => {
      if (error) return fail(error);
      say({ event: "published" });
      client.end(false, {}, () => process.exit(0));
    });
  } else {
    fail("unknown mode " + mode);
  }
});
client.on("message", (receivedTopic, body, packet) => {
  say({
    event: "message",
    topic: receivedTopic,
    payload: body.toString("utf8"),
    length: body.length,
    qos: packet.qos,
  });
  client.end(false, {}, () => process.exit(0));
});
