// Several micro sockets are independent (auth gateway: one with a bad token gives up, one cut by
// the network reconnects, the third keeps delivering); QoS 1 acks and redelivery; signatures.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { MicroSocket } from '../microsocket.js';
import {
  HISTORY_TOML, WebSocketImpl, assertExactlyOnceInOrder, jwtHs256, sleep, startGateway, startProxy, uniqueTopic, waitUntil,
} from './helpers.mjs';

const SECRET = randomBytes(32).toString('hex');
const SIGNING_KEY = randomBytes(32).toString('hex');
const keyFile = join(tmpdir(), `microsocket-signing-${process.pid}.hex`);
writeFileSync(keyFile, `${SIGNING_KEY}\n`);

let gw;
const cleanup = [];
before(async () => {
  gw = await startGateway({
    toml: `qos1_redeliver_ms = 300
qos1_topics = ["payments.*"]

[auth]
mode = "jwt"
hs256_secret = "${SECRET}"

[signing]
key_id = "k1"
key_hex_file = "${keyFile}"
${HISTORY_TOML}`,
  });
});
after(async () => {
  for (const f of cleanup.reverse()) await f();
  if (gw) assert.equal(await gw.stop(), 0, `clean exit; stderr:\n${gw.stderr()}`);
});

const token = (sub, read, write = []) => jwtHs256(SECRET, { sub, read, write });

function open(opts) {
  const ms = new MicroSocket({ WebSocket: WebSocketImpl, signingKeys: { k1: SIGNING_KEY }, retry: { baseMs: 50, maxMs: 200 }, ...opts });
  cleanup.push(() => ms.close());
  return ms;
}

test('three micro sockets: a bad token gives up, a cut one reconnects, the healthy one never misses a beat', async () => {
  const prices = uniqueTopic('prices');
  const alerts = uniqueTopic('alerts');
  const proxy = await startProxy(gw.port);
  cleanup.push(() => proxy.close());

  const healthy = open({ url: `${gw.ws}/ws/sub/${prices}`, tokenProvider: async () => token('desk', [prices]) });
  const flaky = open({ url: `${proxy.ws}/ws/sub/${alerts}`, tokenProvider: async () => token('desk', [alerts]) });
  const forged = open({ url: `${gw.ws}/ws/sub/${prices}`, token: jwtHs256('not-the-secret', { sub: 'mallory', read: ['*'] }) });
  const publisher = open({ url: `${gw.ws}/ws`, token: token('feed', [], [prices, alerts]) });
  const seen = { healthy: [], flaky: [] };
  healthy.onMessage(prices, (d) => seen.healthy.push(d.seqNo));
  flaky.onMessage(alerts, (d) => seen.flaky.push(d.seqNo));
  let gaveUp = null;
  forged.on('gave-up', (e) => (gaveUp = e));
  await Promise.all([healthy.ready, flaky.ready, publisher.ready]);

  const N = 120;
  for (let i = 1; i <= N; i++) {
    await Promise.all([publisher.publish(prices, { i }), publisher.publish(alerts, { i })]);
    if (i === 40 || i === 80) proxy.cut();
    // The healthy socket is never behind by more than what is in flight.
    if (i % 20 === 0) await waitUntil(() => seen.healthy.length === i, `healthy at ${i}`, 2_000, () => `${seen.healthy.length}`);
  }
  await waitUntil(() => seen.flaky.length === N && seen.healthy.length === N, 'both streams complete', 10_000,
    () => JSON.stringify({ healthy: seen.healthy.length, flaky: seen.flaky.length, flakyState: flaky.state }));
  assertExactlyOnceInOrder(seen.healthy, 1, N, 'healthy');
  assertExactlyOnceInOrder(seen.flaky, 1, N, 'flaky');
  assert.equal(healthy.stats.reconnects, 0, 'the healthy socket never reconnected');
  assert.ok(flaky.stats.reconnects >= 2);

  await waitUntil(() => gaveUp !== null, 'the forged token to give up', 5_000, () => forged.state);
  assert.equal(gaveUp.code, 'GAVE_UP');
  assert.equal(gaveUp.lastError.code, 'UNAUTHORIZED', gaveUp.message);
  assert.equal(gaveUp.lastError.closeCode, 1008);
  await assert.rejects(forged.ready, (e) => e.code === 'GAVE_UP');
});

test('FORBIDDEN: publishing outside the token\'s write rules rejects that publish only', async () => {
  const topic = uniqueTopic('orders');
  const ms = open({ url: `${gw.ws}/ws`, token: token('reader', [topic]) });
  await ms.ready;
  await assert.rejects(ms.publish(topic, 1), (e) => e.code === 'FORBIDDEN' && e.messageId !== undefined);
  assert.equal(ms.state, 'ready');
});

test('QoS 1: the subscriber acks each delivery, so nothing is redelivered; a raw socket that does not ack gets it again', async () => {
  const topic = `payments.${uniqueTopic('q')}`;
  const sub = open({ url: `${gw.ws}/ws`, token: token('payee', [topic]), topics: [topic] });
  const pub = open({ url: `${gw.ws}/ws`, token: token('payer', [], [topic]) });
  const frames = [];
  sub.on('frame', (f) => f.dir === 'in' && JSON.parse(f.text).type === 'message' && frames.push(JSON.parse(f.text)));
  const got = [];
  sub.onMessage(topic, (d) => got.push(d));
  await Promise.all([sub.ready, pub.ready]);

  // A raw WebSocket that never acks, as the control: the gateway must send it again.
  const raw = new WebSocketImpl(`${gw.ws}/ws/sub/${topic}?token=${token('lazy', [topic])}`);
  const rawFrames = [];
  raw.onmessage = (e) => rawFrames.push(JSON.parse(e.data));
  await waitUntil(() => rawFrames.some((m) => m.type === 'subscribed'), 'the raw socket subscribed');

  const ans = await pub.publish(topic, { amount: 10 }, { qos: 1 });
  assert.equal(ans.status, 'ok');
  await waitUntil(() => rawFrames.filter((m) => m.type === 'message').length >= 2, 'a redelivery to the socket that did not ack', 5_000,
    () => JSON.stringify(rawFrames));
  const [d1, d2] = rawFrames.filter((m) => m.type === 'message');
  assert.deepEqual(d2, d1, 'the redelivery is the same message (same seqNo)');
  assert.equal(d1.qos, 1);
  raw.close();

  await sleep(900); // three redelivery periods
  assert.equal(got.length, 1);
  assert.deepEqual({ ...got[0], messageId: undefined }, { topic, seqNo: 1, messageId: undefined, data: { amount: 10 }, qos: 1 });
  assert.equal(sub.stats.acksSent, frames.length, 'every QoS 1 frame was acked');
  assert.equal(frames.length, 1, `acked at once: no redelivery (${frames.length} frames)`);
});

test('QoS 1 over a cut connection: an unacked delivery comes back after resume and is handed over once', async () => {
  const topic = `payments.${uniqueTopic('r')}`;
  const proxy = await startProxy(gw.port);
  cleanup.push(() => proxy.close());
  const sub = open({ url: `${proxy.ws}/ws/sub/${topic}`, tokenProvider: async () => token('payee', [topic]) });
  const pub = open({ url: `${gw.ws}/ws`, token: token('payer', [], [topic]) });
  const got = [];
  sub.onMessage(topic, (d) => got.push(d.seqNo));
  const frames = [];
  sub.on('frame', (f) => frames.push(`${f.dir} ${f.text.slice(0, 140)}`));
  sub.on('state', (st) => frames.push(`state ${st.state}`));
  await Promise.all([sub.ready, pub.ready]);
  for (let i = 1; i <= 30; i++) {
    await pub.publish(topic, { i });
    if (i === 10 || i === 20) {
      await waitUntil(() => sub.state === 'ready', 'the subscriber ready before the cut', 5_000, () => sub.state);
      proxy.cut();
    }
  }
  await waitUntil(() => got.length >= 30, 'thirty QoS 1 deliveries', 10_000,
    () => JSON.stringify({ got, state: sub.state, stats: sub.stats, frames: frames.slice(-25) }));
  await sleep(700);
  assertExactlyOnceInOrder(got, 1, 30, 'qos 1 across cuts');
  assert.ok(sub.stats.resumed >= 2, `resumed (${sub.stats.resumed})`);
});

test('signatures: deliveries carry kid/sig; the right key verifies them, a wrong key rejects every one', async () => {
  const topic = uniqueTopic('signed');
  const pub = open({ url: `${gw.ws}/ws`, token: token('feed', [], [topic]) });
  const good = open({ url: `${gw.ws}/ws/sub/${topic}`, token: token('a', [topic]) });
  const bad = open({ url: `${gw.ws}/ws/sub/${topic}`, token: token('b', [topic]), signingKeys: { k1: randomBytes(32).toString('hex') } });
  const rawFrames = [];
  good.on('frame', (f) => f.dir === 'in' && f.text.includes('"type":"message"') && rawFrames.push(f.text));
  const got = [];
  const badLost = [];
  good.onMessage(topic, (d) => got.push(d.data));
  bad.on('lost', (e) => badLost.push(e));
  bad.on('error', () => {});
  let badGot = 0;
  bad.onMessage(topic, () => badGot++);
  await Promise.all([pub.ready, good.ready, bad.ready]);
  const payloads = [{ a: 1 }, 'text with "quotes" and \\ and ünïcode', [1, 2.5, null], 42];
  for (const p of payloads) await pub.publish(topic, p);
  await waitUntil(() => got.length === payloads.length && badLost.length === payloads.length, 'all deliveries', 5_000,
    () => JSON.stringify({ got, badLost }));
  assert.deepEqual(got, payloads);
  assert.match(rawFrames[0], /"kid":"k1","sig":"[0-9a-f]{64}","data":/);
  assert.equal(badGot, 0);
  assert.deepEqual(badLost.map((l) => l.reason), payloads.map(() => 'bad-signature'));
});
