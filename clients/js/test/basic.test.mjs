// Subscribe and receive, publish and ack, duplicate messageIds, per-topic handlers and the async
// iterator, against a real gateway (history on).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { MicroSocket, MicroSocketError, connect } from '../microsocket.js';
import { WebSocketImpl, httpPublish, startGateway, uniqueTopic, waitUntil } from './helpers.mjs';

let gw;
const sockets = [];
function open(opts) {
  const ms = new MicroSocket({ WebSocket: WebSocketImpl, ...opts });
  sockets.push(ms);
  return ms;
}

before(async () => {
  gw = await startGateway();
});
after(async () => {
  for (const s of sockets) s.close();
  const code = await gw.stop();
  assert.equal(code, 0, `the gateway must exit cleanly on SIGTERM; stderr:\n${gw.stderr()}`);
});

test('subscribe over /ws: ready with a sessionId, then an HTTP publish is delivered with seqNo 1', async () => {
  const topic = uniqueTopic('basic');
  const states = [];
  const ms = open({ url: `${gw.ws}/ws`, topics: [topic] });
  ms.on('state', (s) => states.push(s.state));
  const got = [];
  ms.onMessage(topic, (d) => got.push(d));
  const ready = await ms.ready;
  assert.equal(typeof ready.sessionId, 'string');
  assert.ok(ready.sessionId.length > 0);
  assert.equal(ms.sessionId, ready.sessionId);
  assert.deepEqual(states, ['connecting', 'open', 'ready']);
  const ans = await httpPublish(gw.http, topic, { price: 101.5 });
  assert.equal(ans.seqNo, 1);
  await waitUntil(() => got.length === 1, 'the delivery', 5_000, () => JSON.stringify(got));
  assert.deepEqual(got[0], { topic, seqNo: 1, messageId: ans.messageId, data: { price: 101.5 }, qos: 0 });
  assert.deepEqual(ms.lastSeqPerTopic, { [topic]: 1 });
});

test('a /ws/sub/{topic} micro socket receives its topic and refuses others with SINGLE_TOPIC', async () => {
  const topic = uniqueTopic('single');
  const ms = open({ url: `${gw.ws}/ws/sub/${encodeURIComponent(topic)}` });
  assert.equal(ms.singleTopic, topic);
  await ms.ready;
  const got = [];
  ms.on('message', (d) => got.push(d));
  await httpPublish(gw.http, topic, 'a');
  await httpPublish(gw.http, topic, 'b');
  await waitUntil(() => got.length === 2, 'two deliveries', 5_000, () => JSON.stringify(got));
  assert.deepEqual(got.map((d) => [d.seqNo, d.data]), [[1, 'a'], [2, 'b']]);
  await assert.rejects(ms.subscribe('other-topic'), (e) => e instanceof MicroSocketError && e.code === 'SINGLE_TOPIC');
  assert.deepEqual(ms.topics, [topic], 'a refused subscribe is not kept');
});

test('publish resolves with the ack (ok, seqNo); a repeated messageId is a duplicate, delivered once', async () => {
  const topic = uniqueTopic('pub');
  const sub = open({ url: `${gw.ws}/ws`, topics: [topic] });
  const pub = await connect({ url: `${gw.ws}/ws`, WebSocket: WebSocketImpl });
  sockets.push(pub);
  await sub.ready;
  const got = [];
  sub.onMessage(topic, (d) => got.push(d));

  const a = await pub.publish(topic, { n: 1 });
  assert.equal(a.status, 'ok');
  assert.equal(a.seqNo, 1);
  assert.match(a.messageId, /^[0-9a-f]{12}-1$/, 'generated messageIds: a random prefix and a counter');
  const b = await pub.publish(topic, { n: 2 }, { messageId: 'order-42' });
  assert.deepEqual(b, { status: 'ok', seqNo: 2, messageId: 'order-42' });
  const again = await pub.publish(topic, { n: 2 }, { messageId: 'order-42' });
  assert.deepEqual(again, { status: 'duplicate', seqNo: 2, messageId: 'order-42' });
  const c = await pub.publish(topic, { n: 3 });
  assert.equal(c.seqNo, 3, 'the duplicate took no seqNo');

  await waitUntil(() => got.length === 3, 'three deliveries', 5_000, () => JSON.stringify(got));
  assert.deepEqual(got.map((d) => [d.seqNo, d.data.n]), [[1, 1], [2, 2], [3, 3]]);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(got.length, 3, 'the duplicate publish is not delivered again');
});

test('publish errors reject with the gateway code; unanswered ones time out; closed sockets refuse', async () => {
  const ms = await connect({ url: `${gw.ws}/ws`, WebSocket: WebSocketImpl, requestTimeoutMs: 300 });
  sockets.push(ms);
  await assert.rejects(ms.publish('x'.repeat(300), 1), (e) => e.code === 'BAD_REQUEST' && e.messageId !== undefined);
  await assert.rejects(ms.publish('', 1), (e) => e.code === 'BAD_ARGUMENT');
  await assert.rejects(ms.publish('t', undefined), (e) => e.code === 'BAD_ARGUMENT');
  // A publish that never reaches an open connection (the socket reconnects forever) times out.
  const lonely = open({ url: 'ws://127.0.0.1:9/ws', requestTimeoutMs: 200, retry: { baseMs: 50, maxMs: 100 } });
  await assert.rejects(lonely.publish('t', 1), (e) => e.code === 'TIMEOUT' && /within 200 ms/.test(e.message));
  lonely.close();
  await assert.rejects(lonely.publish('t', 1), (e) => e.code === 'CLOSED');
  await assert.rejects(lonely.ready, (e) => e.code === 'CLOSED');
});

test('subscribe() later, unsubscribe(), and the async iterator per topic', async () => {
  const t1 = uniqueTopic('iter');
  const t2 = uniqueTopic('iter');
  const ms = await connect({ url: `${gw.ws}/ws`, WebSocket: WebSocketImpl });
  sockets.push(ms);
  assert.deepEqual(await ms.subscribe([t1, t2]), [t1, t2]);
  const it = ms.messages(t1);
  for (let i = 1; i <= 5; i++) await httpPublish(gw.http, t1, { i });
  await httpPublish(gw.http, t2, 'other');
  const seen = [];
  for await (const d of it) {
    seen.push(d.data.i);
    if (seen.length === 5) break;
  }
  assert.deepEqual(seen, [1, 2, 3, 4, 5]);
  assert.deepEqual(await ms.unsubscribe(t2), [t2]);
  assert.deepEqual(ms.topics, [t1]);
  assert.deepEqual(Object.keys(ms.lastSeqPerTopic), [t1]);
  // Subscribing with fromSeq replays the history first.
  const late = await connect({ url: `${gw.ws}/ws`, WebSocket: WebSocketImpl });
  sockets.push(late);
  const got = [];
  late.onMessage(t1, (d) => got.push(d.seqNo));
  await late.subscribe(t1, { fromSeq: 2 });
  await waitUntil(() => got.length === 4, 'the replayed history 2..5', 5_000, () => JSON.stringify(got));
  assert.deepEqual(got, [2, 3, 4, 5]);
});

test('the frame event shows every frame both ways (what the /docs playground logs)', async () => {
  const ms = open({ url: `${gw.ws}/ws` });
  const frames = [];
  ms.on('frame', (f) => frames.push(`${f.dir} ${JSON.parse(f.text).type}`));
  await ms.ready;
  assert.ok(ms.send({ type: 'ping' }));
  await waitUntil(() => frames.includes('in pong'), 'a pong', 5_000, () => frames.join(', '));
  assert.deepEqual(frames.slice(0, 2), ['out setup', 'in ready']);
});

test('constructor errors are clear', () => {
  assert.throws(() => new MicroSocket({}), /url is required/);
  assert.throws(() => new MicroSocket({ url: 'ftp://x/ws', WebSocket: WebSocketImpl }), /ws: or wss:/);
  assert.throws(() => new MicroSocket({ url: 'ws://x/ws', WebSocket: WebSocketImpl, qos: 2 }), /qos must be 0 or 1/);
  assert.throws(() => new MicroSocket({ url: 'ws://x/ws', WebSocket: 42 }), /no WebSocket constructor/);
});
