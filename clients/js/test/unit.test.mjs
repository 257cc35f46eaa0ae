// The client's delivery logic against a scripted gateway (an injected WebSocket class): gaps and
// replay, REPLAY_UNAVAILABLE, QoS 1 acks and redeliveries, signatures, backoff. The same logic
// runs against the real gateway in the other files; here the frames are chosen exactly.
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { test } from 'node:test';
import { MicroSocket, backoffDelay, rawDataText } from '../microsocket.js';
import { sleep, waitUntil } from './helpers.mjs';

/** A WebSocket stand-in: records what the client sends; `push` plays gateway frames. */
class FakeWS {
  static last = null;
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWS.last = this;
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.();
    }, 0);
  }
  send(text) {
    const m = JSON.parse(text);
    this.sent.push(m);
    if (m.type === 'setup') this.push({ type: 'ready', sessionId: 's1' });
    if (m.type === 'ping') this.push({ type: 'pong' });
  }
  push(obj) {
    setTimeout(() => this.onmessage?.({ data: typeof obj === 'string' ? obj : JSON.stringify(obj) }), 0);
  }
  close() {
    this.readyState = 3;
  }
  sentOf(type) {
    return this.sent.filter((m) => m.type === type);
  }
}

const msg = (topic, seqNo, extra = {}) => ({ type: 'message', topic, seqNo, messageId: `m${seqNo}`, ...extra, data: { n: seqNo } });

async function socket(opts = {}) {
  const ms = new MicroSocket({ url: 'ws://gw.test/ws', WebSocket: FakeWS, topics: ['t'], heartbeatMs: 0, ...opts });
  await ms.ready;
  const got = [];
  const lost = [];
  ms.on('message', (d) => got.push(d.seqNo));
  ms.on('lost', (e) => lost.push(e));
  return { ms, ws: FakeWS.last, got, lost };
}

test('a gap is held back and asked for with replay; the replay fills it in order, overlaps dropped', async () => {
  const { ms, ws, got, lost } = await socket();
  ws.push(msg('t', 1));
  ws.push(msg('t', 2));
  ws.push(msg('t', 5));
  ws.push(msg('t', 6));
  await waitUntil(() => ws.sentOf('replay').length === 1, 'a replay request');
  assert.deepEqual(ws.sentOf('replay')[0], { type: 'replay', topic: 't', fromSeq: 3 });
  assert.deepEqual(got, [1, 2], '5 and 6 wait for 3 and 4');
  for (const s of [3, 4, 5, 6]) ws.push(msg('t', s));
  ws.push(msg('t', 7));
  await waitUntil(() => got.length === 7, 'seven deliveries', 2_000, () => JSON.stringify(got));
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(lost, []);
  assert.equal(ms.stats.duplicates, 2);
  ms.close();
});

test('REPLAY_UNAVAILABLE with oldestSeq: exactly the missing seqNos are reported lost', async () => {
  const { ms, ws, got, lost } = await socket();
  ws.push(msg('t', 1));
  ws.push(msg('t', 9));
  await waitUntil(() => ws.sentOf('replay').length === 1, 'a replay request');
  ws.push({ type: 'error', code: 'REPLAY_UNAVAILABLE', topic: 't', oldestSeq: 6, message: 'gone' });
  for (const s of [6, 7, 8]) ws.push(msg('t', s));
  await waitUntil(() => got.length === 5, 'deliveries', 2_000, () => JSON.stringify(got));
  assert.deepEqual(got, [1, 6, 7, 8, 9]);
  assert.deepEqual(lost, [{ topic: 't', fromSeq: 2, toSeq: 5, reason: 'unavailable', message: 'gone' }]);
  assert.equal(ms.stats.lost, 4);
  ms.close();
});

test('REPLAY_UNAVAILABLE without oldestSeq: the next delivery closes the gap and reports it', async () => {
  const { ms, ws, got, lost } = await socket();
  ws.push(msg('t', 1));
  ws.push(msg('t', 4));
  await waitUntil(() => ws.sentOf('replay').length === 1, 'a replay request');
  ws.push({ type: 'error', code: 'REPLAY_UNAVAILABLE', topic: 't', message: 'nothing held' });
  await waitUntil(() => got.length === 2, 'deliveries', 2_000, () => JSON.stringify(got));
  assert.deepEqual(got, [1, 4]);
  assert.deepEqual(lost.map((l) => [l.fromSeq, l.toSeq, l.reason]), [[2, 3, 'unavailable']]);
  assert.equal(ws.sentOf('replay').length, 1, 'not asked again');
  ms.close();
});

test('a gap nobody fills is asked for twice, then reported lost (timeout) and the stream goes on', async () => {
  const { ms, ws, got, lost } = await socket({ recoveryTimeoutMs: 50 });
  ws.push(msg('t', 1));
  ws.push(msg('t', 3));
  await waitUntil(() => lost.length === 1, 'the timeout', 2_000);
  assert.equal(ws.sentOf('replay').length, 2);
  assert.deepEqual(got, [1, 3]);
  assert.deepEqual(lost.map((l) => [l.fromSeq, l.toSeq, l.reason]), [[2, 2, 'timeout']]);
  ms.close();
});

test('QoS 1: every delivery is acked, a redelivery too, but the application sees it once', async () => {
  const { ms, ws, got } = await socket();
  ws.push(msg('t', 1, { qos: 1 }));
  ws.push(msg('t', 1, { qos: 1 }));
  ws.push(msg('t', 2));
  await waitUntil(() => got.length === 2, 'deliveries');
  await sleep(20);
  assert.deepEqual(got, [1, 2]);
  assert.deepEqual(ws.sentOf('ack'), [
    { type: 'ack', messageId: 'm1', topic: 't', seqNo: 1 },
    { type: 'ack', messageId: 'm1', topic: 't', seqNo: 1 },
  ]);
  assert.equal(ms.stats.acksSent, 2);
  ms.close();
});

test('resume after a reconnect: lastSeqPerTopic sent, replay joins the stream, resumed keeps the session', async () => {
  const { ms, ws, got } = await socket();
  ws.push(msg('t', 1));
  ws.push(msg('t', 2));
  await waitUntil(() => got.length === 2, 'deliveries');
  const readies = [];
  ms.on('ready', (r) => readies.push(r));
  ws.onclose({ code: 1006, reason: '' });
  await waitUntil(() => FakeWS.last !== ws && FakeWS.last.sent.length === 1, 'a resume on the new connection', 3_000);
  const ws2 = FakeWS.last;
  assert.deepEqual(ws2.sent[0], { type: 'resume', sessionId: 's1', lastSeqPerTopic: { t: 2 } });
  ws2.push(msg('t', 4)); // live, ahead of the replay: held back
  ws2.push(msg('t', 3));
  ws2.push(msg('t', 4));
  ws2.push({ type: 'resumed', sessionId: 's1' });
  await waitUntil(() => readies.length === 1, 'ready again');
  assert.deepEqual(readies[0], { sessionId: 's1', resumed: true });
  assert.deepEqual(got, [1, 2, 3, 4]);
  assert.equal(ws2.sentOf('replay').length, 0, 'resume filled the gap: no replay');
  ms.close();
});

test('signatures: a valid HMAC-SHA256 delivers; a forged, unsigned or unknown-key one is reported, not delivered', async () => {
  const keyHex = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff';
  const sign = (topic, seqNo, dataText, key = keyHex) =>
    createHmac('sha256', Buffer.from(key, 'hex')).update(`${topic}\n${seqNo}\n${dataText}`).digest('hex');
  const { ms, ws, got, lost } = await socket({ signingKeys: { k1: keyHex } });
  const errors = [];
  ms.on('error', (e) => errors.push(e.code));
  const frame = (seqNo, dataText, sig, kid = 'k1') =>
    `{"type":"message","topic":"t","seqNo":${seqNo},"messageId":"m${seqNo}","kid":"${kid}","sig":"${sig}","data":${dataText}}`;
  const d1 = '{"price": 1.50, "note":"a \\"data\\": b"}'; // spacing and escapes kept as sent
  ws.push(frame(1, d1, sign('t', 1, d1)));
  ws.push(frame(2, '{"n":2}', sign('t', 2, '{"n":3}'))); // forged
  ws.push(`{"type":"message","topic":"t","seqNo":3,"messageId":"m3","data":{"n":3}}`); // unsigned
  ws.push(frame(4, '[4]', sign('t', 4, '[4]'), 'k9')); // unknown key
  ws.push(frame(5, '"five"', sign('t', 5, '"five"')));
  await waitUntil(() => got.length === 2 && lost.length === 3, 'two deliveries, three rejections', 2_000,
    () => JSON.stringify({ got, lost }));
  assert.deepEqual(got, [1, 5]);
  assert.deepEqual(lost.map((l) => [l.fromSeq, l.reason]), [[2, 'bad-signature'], [3, 'bad-signature'], [4, 'bad-signature']]);
  assert.match(lost[1].message, /not signed/);
  assert.match(lost[2].message, /unknown key id/);
  assert.deepEqual(errors, ['BAD_SIGNATURE', 'BAD_SIGNATURE', 'BAD_SIGNATURE']);
  ms.close();
});

test('rawDataText finds the top-level data value, not a "data": inside a string or nested object', () => {
  assert.equal(rawDataText('{"type":"message","topic":"\\"data\\":x","seqNo":1,"data": {"data":[1, 2]} }'), '{"data":[1, 2]}');
  assert.equal(rawDataText('{"type":"message","data":"x"}'), '"x"');
  assert.equal(rawDataText('{"type":"message"}'), null);
});

test('backoffDelay: full jitter between 0 and min(maxMs, baseMs * 2^(attempt-1))', () => {
  const retry = { baseMs: 100, maxMs: 1000 };
  assert.equal(backoffDelay(1, retry, () => 0.999999), 99);
  assert.equal(backoffDelay(3, retry, () => 0.5), 200);
  assert.equal(backoffDelay(10, retry, () => 0.999999), 999);
  assert.equal(backoffDelay(4, retry, () => 0), 0);
  assert.equal(backoffDelay(2000, retry, () => 0.5), 500, 'huge attempts stay at the cap');
});

test('tokenProvider is called before every connection attempt and its token goes in ?token=', async () => {
  let n = 0;
  const ms = new MicroSocket({ url: 'ws://gw.test/ws/sub/prices', WebSocket: FakeWS, heartbeatMs: 0, tokenProvider: async () => `tok${++n}`, retry: { baseMs: 1, maxMs: 2 } });
  await ms.ready;
  assert.equal(new URL(FakeWS.last.url).searchParams.get('token'), 'tok1');
  assert.deepEqual(FakeWS.last.sent[0], { type: 'setup', token: 'tok1' }, 'no topics in setup: the URL names it');
  FakeWS.last.onclose({ code: 1006, reason: '' });
  await waitUntil(() => n === 2 && FakeWS.last.readyState === 1, 'a second attempt');
  assert.equal(new URL(FakeWS.last.url).searchParams.get('token'), 'tok2');
  ms.close();
});

test('BACKBONE_UNAVAILABLE (a cluster could not store in time): the same publish is sent again, then resolves', async () => {
  const { ms, ws } = await socket({ random: () => 0 });
  const done = ms.publish('t', { x: 1 }, { messageId: 'pub-1', timeoutMs: 5000 });
  await waitUntil(() => ws.sentOf('publish').length === 1, 'the publish');
  ws.push({ type: 'error', code: 'BACKBONE_UNAVAILABLE', message: 'not stored in time', topic: 't', messageId: 'pub-1' });
  await waitUntil(() => ws.sentOf('publish').length === 2, 'the same publish again');
  const [a, b] = ws.sentOf('publish');
  assert.deepEqual(a, b, 'byte for byte the same publish, same messageId');
  ws.push({ type: 'ack', messageId: 'pub-1', status: 'duplicate', seqNo: 7 });
  assert.deepEqual(await done, { status: 'duplicate', seqNo: 7, messageId: 'pub-1' });
  // Other errors still reject at once.
  const refused = ms.publish('t', 1, { messageId: 'pub-2' });
  await waitUntil(() => ws.sentOf('publish').length === 3, 'the second publish');
  ws.push({ type: 'error', code: 'FORBIDDEN', message: 'no', topic: 't', messageId: 'pub-2' });
  await assert.rejects(refused, (e) => e.code === 'FORBIDDEN');
  ms.close();
});

test('resume: a topic with no delivery yet is not in lastSeqPerTopic, so it is subscribed again after resumed (a cluster node that did not keep the session restores only what is listed)', async () => {
  const { ms, ws, got } = await socket({ topics: ['t', 'quiet'] });
  ws.push(msg('t', 1));
  await waitUntil(() => got.length === 1, 'a delivery on t');
  ws.onclose({ code: 1006, reason: '' });
  await waitUntil(() => FakeWS.last !== ws && FakeWS.last.sent.length === 1, 'a resume', 3_000);
  const ws2 = FakeWS.last;
  assert.deepEqual(ws2.sent[0], { type: 'resume', sessionId: 's1', lastSeqPerTopic: { t: 1 } });
  ws2.push({ type: 'resumed', sessionId: 's1' });
  await waitUntil(() => ws2.sentOf('subscribe').length === 1, 'the unlisted topic asked for again');
  assert.deepEqual(ws2.sentOf('subscribe')[0], { type: 'subscribe', topics: ['quiet'] });
  ms.close();
});

test('resume on a topic with no delivery yet: live messages ahead of the replay wait for resumed, then go out in order once', async () => {
  // A /ws/sub socket is subscribed before the gateway reads its resume: live 6 comes first, then
  // the replay of 1..6 the session kept unacknowledged (QoS 1), then `resumed`.
  const { ms, ws, got } = await socket({ topics: ['t'] });
  ws.onclose({ code: 1006, reason: '' });
  await waitUntil(() => FakeWS.last !== ws && FakeWS.last.sent.length === 1, 'a resume', 3_000);
  const ws2 = FakeWS.last;
  assert.deepEqual(ws2.sent[0], { type: 'resume', sessionId: 's1', lastSeqPerTopic: {} });
  ws2.push(msg('t', 6, { qos: 1 }));
  for (let s = 1; s <= 6; s++) ws2.push(msg('t', s, { qos: 1 }));
  await sleep(20);
  assert.deepEqual(got, [], 'held until resumed');
  ws2.push({ type: 'resumed', sessionId: 's1' });
  ws2.push(msg('t', 7, { qos: 1 }));
  await waitUntil(() => got.length === 7, 'deliveries after resumed', 2_000, () => JSON.stringify(got));
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7]);
  assert.equal(ws2.sentOf('ack').length, 8, 'every QoS 1 frame acked, the duplicate too');
  assert.equal(ws2.sentOf('replay').length, 0);
  ms.close();
});

test('SLOW_CONSUMER with a range (the drop policy): a dropped event, the range asked for with replay, filled in order', async () => {
  const { ms, ws, got, lost } = await socket();
  const dropped = [];
  const errors = [];
  ms.on('dropped', (e) => dropped.push(e));
  ms.on('error', (e) => errors.push(e));
  ws.push(msg('t', 1));
  ws.push(msg('t', 2));
  ws.push({ type: 'error', code: 'SLOW_CONSUMER', message: 'seqNo 3 to 5 were dropped', topic: 't', fromSeq: 3, toSeq: 5 });
  await waitUntil(() => ws.sentOf('replay').length === 1, 'a replay request');
  assert.deepEqual(ws.sentOf('replay')[0], { type: 'replay', topic: 't', fromSeq: 3 });
  assert.deepEqual(dropped, [{ topic: 't', fromSeq: 3, toSeq: 5, message: 'seqNo 3 to 5 were dropped' }]);
  for (const s of [3, 4, 5, 6]) ws.push(msg('t', s));
  await waitUntil(() => got.length === 6, 'six deliveries', 2_000, () => JSON.stringify(got));
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(lost, []);
  assert.deepEqual(errors, [], 'not an error of the socket');
  assert.equal(ms.state, 'ready');
  ms.close();
});
