// MQTT.js driven line by line from mqttd's MQTT 5 interop tests.
//
//   node mqttjs5_client.mjs URL [--ca FILE] [--options JSON]
//
// Connects to URL with protocolVersion 5 plus the given client options (e.g.
// {"properties": {"topicAliasMaximum": 5}}), then reads one JSON command per stdin line and
// prints one JSON event per stdout line:
//
//   {"cmd":"subscribe","id":1,"filter":"t","qos":1,"properties":{...},"nl":false}
//       -> {"event":"subscribed","id":1,"granted":[1]}  (granted = SUBACK reason codes)
//   {"cmd":"publish","id":2,"topic":"t","payload":"x","qos":1,"properties":{...}}
//       -> {"event":"published","id":2,"acks":{"puback":16},"sent":{"topic":"t",
//           "topicAlias":null},"error":null}
//          acks: the reason code of each acknowledgement MQTT.js received for this message
//          (MQTT.js hides 0x10 "No matching subscribers" from the callback: it counts as
//          success); sent: the PUBLISH as MQTT.js wrote it (topic "" when it sent only a
//          Topic Alias; QoS 1 and 2 only, the packet id ties it to the command);
//          error: {"message","code"} when MQTT.js reports the publish as failed.
//   {"cmd":"end"} -> DISCONNECT, then {"event":"ended"} and exit 0.
//
// Unprompted: {"event":"connected","sessionPresent":…,"reasonCode":…,"properties":{…}},
// {"event":"message","topic":resolved topic,"wireTopic":topic as received (empty when only
// a Topic Alias was sent),"payload":…,"qos":…,"retain":…,"properties":{…}},
// {"event":"disconnect","reasonCode":…} for a server DISCONNECT, {"event":"error",…}.
// Binary values (correlationData; a payload to publish) travel as {"hex": "…"}.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import mqtt from "mqtt";

const [url] = process.argv.slice(2);
const flag = (name) => process.argv.indexOf(name);
const options = {
  connectTimeout: 10000,
  reconnectPeriod: 0,
  clean: true,
  protocolVersion: 5,
};
if (flag("--ca") > 0) options.ca = readFileSync(process.argv[flag("--ca") + 1]);
if (flag("--options") > 0) Object.assign(options, JSON.parse(process.argv[flag("--options") + 1]));

const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

// Buffers (correlation data, binary payloads) to {"hex": …} and back.
const toJson = (value) => {
  if (Buffer.isBuffer(value)) return { hex: value.toString("hex") };
  if (Array.isArray(value)) return value.map(toJson);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v)]));
  }
  return value;
};
const fromJson = (value) => {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    if (typeof value.hex === "string" && Object.keys(value).length === 1) {
      return Buffer.from(value.hex, "hex");
    }
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fromJson(v)]));
  }
  return value;
};
const errorJson = (error) =>
  error ? { message: String(error.message || error), code: error.code ?? null } : null;

const client = mqtt.connect(url, options);
// Reason codes of the acknowledgements received, by packet id (packetreceive comes before
// the callback that completes the publish).
const acks = new Map();
// The topic and Topic Alias of each QoS 1/2 PUBLISH as written, by packet id (copied: MQTT.js
// may change its packet object after writing it, e.g. to store it for a resend).
const sent = new Map();
client.on("packetsend", (packet) => {
  if (packet.cmd === "publish" && packet.messageId !== undefined) {
    sent.set(packet.messageId, {
      topic: String(packet.topic),
      topicAlias: (packet.properties && packet.properties.topicAlias) ?? null,
    });
  }
});
client.on("packetreceive", (packet) => {
  if (["puback", "pubrec", "pubcomp"].includes(packet.cmd)) {
    const seen = acks.get(packet.messageId) || {};
    seen[packet.cmd] = packet.reasonCode ?? 0;
    acks.set(packet.messageId, seen);
  } else if (packet.cmd === "disconnect") {
    say({ event: "disconnect", reasonCode: packet.reasonCode ?? 0 });
  }
});
client.on("error", (error) => say({ event: "error", ...errorJson(error) }));
client.on("connect", (connack) => {
  say({
    event: "connected",
    sessionPresent: connack.sessionPresent,
    reasonCode: connack.reasonCode ?? 0,
    properties: toJson(connack.properties || {}),
  });
});
client.on("message", (topic, payload, packet) => {
  say({
    event: "message",
    topic,
    wireTopic: String(packet.topic),
    payload: payload.toString("utf8"),
    qos: packet.qos,
    retain: packet.retain,
    properties: toJson(packet.properties || {}),
  });
});

const commands = {
  subscribe(command) {
    const opts = { qos: command.qos ?? 1, nl: Boolean(command.nl) };
    if (command.properties) opts.properties = fromJson(command.properties);
    client.subscribe(command.filter, opts, (error, granted, suback) => {
      // the SUBACK's reason codes (also when one is a refusal, which MQTT.js reports as error)
      const codes = suback ? suback.granted : (granted || []).map((g) => g.qos);
      say({ event: "subscribed", id: command.id, granted: codes, error: errorJson(error) });
    });
  },
  publish(command) {
    const opts = { qos: command.qos ?? 1, retain: Boolean(command.retain) };
    if (command.properties) opts.properties = fromJson(command.properties);
    client.publish(command.topic, fromJson(command.payload), opts, (error, packet) => {
      const messageId = packet && packet.messageId;
      const seen = acks.get(messageId) || {};
      const wire = sent.get(messageId) || null;
      acks.delete(messageId);
      sent.delete(messageId);
      say({ event: "published", id: command.id, acks: seen, sent: wire, error: errorJson(error) });
    });
  },
  end() {
    client.end(false, {}, () => {
      say({ event: "ended" });
      process.exit(0);
    });
  },
};

createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  const run = commands[command.cmd];
  if (run === undefined) say({ event: "error", message: "unknown command " + command.cmd });
  else run(command);
});
