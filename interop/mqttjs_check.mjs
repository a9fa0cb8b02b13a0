// MQTT.js (the browser and Node.js client) against messs over WebSocket: for each URL given
// (ws://... and wss://...), at MQTT 3.1.1 and 5.0: publish/subscribe at QoS 0, 1 and 2, a
// retained message read by a later subscriber, and a will published when a client's
// connection is cut. Usage: node mqttjs_check.mjs CA_FILE URL...
// Exits non-zero with the reason on the first failure.
import fs from "node:fs";
import mqtt from "mqtt";

const [caFile, ...urls] = process.argv.slice(2);
const ca = fs.readFileSync(caFile);
const WAIT_MS = 5000;

function connect(url, version, extra = {}) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, {
      protocolVersion: version,
      ca,
      reconnectPeriod: 0,
      connectTimeout: WAIT_MS,
      clientId: `mqttjs-${version}-${Math.random().toString(16).slice(2, 10)}`,
      ...extra,
    });
    client.once("connect", () => resolve(client));
    client.once("error", reject);
  });
}

function nextMessage(client, topic) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nothing on ${topic} in ${WAIT_MS} ms`)), WAIT_MS);
    client.on("message", function handler(t, payload, packet) {
      if (t !== topic) return;
      clearTimeout(timer);
      client.removeListener("message", handler);
      resolve({ payload: payload.toString(), packet });
    });
  });
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

async function run(url, version) {
  const base = `interop/mqttjs/${version}/${process.pid}`;
  const sub = await connect(url, version);
  const pub = await connect(url, version);
  for (const qos of [0, 1, 2]) {
    const topic = `${base}/q${qos}`;
    await sub.subscribeAsync(topic, { qos });
    const got = nextMessage(sub, topic);
    await pub.publishAsync(topic, `hello-${qos}`, { qos });
    const m = await got;
    check(m.payload === `hello-${qos}`, `QoS ${qos}: got ${m.payload}`);
    check(m.packet.qos === qos, `QoS ${qos}: delivered at QoS ${m.packet.qos}`);
  }
  // Retained: a later subscriber gets it, flagged.
  const retained = `${base}/ret`;
  await pub.publishAsync(retained, "kept", { qos: 1, retain: true });
  const late = await connect(url, version);
  const got = nextMessage(late, retained);
  await late.subscribeAsync(retained, { qos: 1 });
  const m = await got;
  check(m.payload === "kept" && m.packet.retain, `retained: got ${m.payload} retain=${m.packet.retain}`);
  await pub.publishAsync(retained, "", { qos: 1, retain: true });
  // Will: a client whose connection is cut has its will published.
  const willTopic = `${base}/will`;
  await sub.subscribeAsync(willTopic, { qos: 1 });
  const mortal = await connect(url, version, {
    will: { topic: willTopic, payload: "died", qos: 1, retain: false },
  });
  const will = nextMessage(sub, willTopic);
  mortal.stream.destroy();
  const w = await will;
  check(w.payload === "died", `will: got ${w.payload}`);
  mortal.end(true);
  for (const c of [sub, pub, late]) await c.endAsync();
  const name = version === 5 ? "mqttv5" : "mqttv311";
  console.log(`interop: MQTT.js ${name} over ${url.split(":")[0]}: publish/subscribe QoS 0-2, retained, will: ok`);
}

try {
  for (const url of urls) {
    for (const version of [4, 5]) {
      await run(url, version);
    }
  }
  process.exit(0);
} catch (e) {
  console.error(`interop: MQTT.js: FAIL: ${e.message ?? e}`);
  process.exit(1);
}
