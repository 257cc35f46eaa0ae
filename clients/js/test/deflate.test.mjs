// The client over compressed connections (permessage-deflate, RFC 7692): with the `ws` package,
// which offers it by default, deliveries above the gateway's threshold arrive compressed (built
// once per publish) and large client publishes go compressed the other way; the application sees
// exactly the same messages as over a plain connection. Node's built-in WebSocket (undici, Node
// >= 20.20 here) offers it as well and is held to the same.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WS from 'ws';
import { MicroSocket } from '../microsocket.js';
import { WebSocketImpl, httpPublish, startGateway, uniqueTopic, waitUntil } from './helpers.mjs';

let gw;
const sockets = [];

before(async () => {
  gw = await startGateway();
});
after(async () => {
  for (const s of sockets) s.close();
  const code = await gw.stop();
  assert.equal(code, 0, `the gateway must exit cleanly on SIGTERM; stderr:\n${gw.stderr()}`);
});

async function stats() {
  const res = await fetch(`${gw.http}/stats`);
  return res.json();
}

/** A JSON document of about `n` bytes that compresses like real data (varied numbers). */
function ticks(n) {
  const rows = [];
  let x = 64_000_00;
  for (let i = 0; JSON.stringify(rows).length < n; i++) {
    x += ((i * 7919) % 41) - 20;
    rows.push({ sym: i % 3 ? 'BTC-USD' : 'ETH-USD', bid: x / 100, ask: (x + 3) / 100, size: (i * 37) % 1000 / 100 });
  }
  return rows;
}

/** The `ws` class with the extension negotiated on every socket recorded, for the assertions. */
const opened = [];
class RecordingWS extends WS {
  constructor(url, protocols) {
    super(url, protocols); // perMessageDeflate is on by default in `ws`
    this.on('open', () => opened.push(this.extensions));
  }
}

test('ws: deliveries come compressed (once per publish) and the application gets them intact', async () => {
  const topic = uniqueTopic('deflate');
  const before = await stats();
  const got = [];
  const clients = [];
  for (let i = 0; i < 3; i++) {
    const ms = new MicroSocket({ url: `${gw.ws}/ws`, topics: [topic], WebSocket: RecordingWS });
    sockets.push(ms);
    clients.push(ms);
    ms.onMessage(topic, (m) => got.push([i, m]));
    await ms.ready;
  }
  assert.equal(opened.length, 3);
  for (const ext of opened) {
    assert.match(ext, /^permessage-deflate/, `the gateway answered the ws offer: ${ext}`);
  }
  const big = ticks(4096);
  const small = { price: 1 };
  const a = await httpPublish(gw.http, topic, big);
  const b = await httpPublish(gw.http, topic, small);
  await waitUntil(() => got.length === 6, 'both deliveries on the three clients', 5_000, () => JSON.stringify(got).slice(0, 400));
  for (let i = 0; i < 3; i++) {
    const mine = got.filter(([j]) => j === i).map(([, m]) => m);
    assert.deepEqual(mine.map((m) => m.seqNo), [a.seqNo, b.seqNo]);
    assert.deepEqual(mine[0].data, big);
    assert.deepEqual(mine[1].data, small);
  }
  const after = await stats();
  assert.equal(after.deflateNegotiated - before.deflateNegotiated, 3);
  assert.equal(after.deflateBuilt - before.deflateBuilt, 1, 'the big publish compressed once, the small one not at all');
  assert.equal(after.deliveriesDeflated - before.deliveriesDeflated, 3);
});

test('ws: a large publish from the client goes compressed and is delivered as sent', async () => {
  const topic = uniqueTopic('deflate-in');
  const before = await stats();
  const pub = new MicroSocket({ url: `${gw.ws}/ws`, WebSocket: RecordingWS });
  const sub = new MicroSocket({ url: `${gw.ws}/ws`, topics: [topic], WebSocket: RecordingWS });
  sockets.push(pub, sub);
  const got = [];
  sub.onMessage(topic, (m) => got.push(m));
  await Promise.all([pub.ready, sub.ready]);
  const body = ticks(8192); // above ws's 1 KiB threshold: sent compressed
  const ans = await pub.publish(topic, body);
  assert.equal(ans.status, 'ok');
  await waitUntil(() => got.length === 1, 'the delivery', 5_000);
  assert.deepEqual(got[0].data, body);
  const after = await stats();
  assert.ok(after.deflateBytesIn - before.deflateBytesIn > 8000,
    `the gateway inflated the publish: deflateBytesIn grew by ${after.deflateBytesIn - before.deflateBytesIn}`);
});

test("Node's built-in WebSocket (undici) negotiates it too, and gets the delivery compressed and intact", async () => {
  const topic = uniqueTopic('deflate-native');
  const before = await stats();
  const ms = new MicroSocket({ url: `${gw.ws}/ws`, topics: [topic], WebSocket: WebSocketImpl });
  sockets.push(ms);
  const got = [];
  ms.onMessage(topic, (m) => got.push(m));
  await ms.ready;
  const big = ticks(4096);
  await httpPublish(gw.http, topic, big);
  await waitUntil(() => got.length === 1, 'the delivery', 5_000);
  assert.deepEqual(got[0].data, big);
  const after = await stats();
  assert.equal(after.deflateNegotiated - before.deflateNegotiated, 1, `node ${process.version}: the built-in WebSocket offered permessage-deflate`);
  assert.equal(after.deliveriesDeflated - before.deliveriesDeflated, 1);
});
