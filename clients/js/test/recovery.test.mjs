// Disconnects: a network cut in the middle of a stream (every message exactly once, in order),
// the gateway closing every socket and coming back (backoff, caps, numbering restart), giving up.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { MicroSocket, MicroSocketError } from '../microsocket.js';
import {
  HISTORY_TOML, WebSocketImpl, assertExactlyOnceInOrder, httpPublish, sleep, startGateway, startProxy, uniqueTopic, waitUntil,
} from './helpers.mjs';

let gw;
/** Sessions end with their connection: every reconnect takes the SESSION_EXPIRED path. */
let noSessions;
const cleanup = [];
before(async () => {
  gw = await startGateway();
  noSessions = await startGateway({ toml: `session_ttl_ms = 0\n${HISTORY_TOML}` });
});
after(async () => {
  for (const f of cleanup.reverse()) await f();
  for (const g of [gw, noSessions]) {
    if (!g) continue;
    const code = await g.stop();
    assert.equal(code, 0, `the gateway must exit cleanly on SIGTERM; stderr:\n${g.stderr()}`);
  }
});

for (const [endpoint, path] of [['/ws', 'resume'], ['/ws/sub/{topic}', 'resume'], ['/ws', 'subscribe with fromSeq'], ['/ws/sub/{topic}', 'subscribe with fromSeq']]) {
  test(`${endpoint}, recovered by ${path}: the network cut twice mid-stream; every message arrives exactly once and in order`, async () => {
    const target = path === 'resume' ? gw : noSessions;
    const topic = uniqueTopic('cut');
    const proxy = await startProxy(target.port);
    cleanup.push(() => proxy.close());
    const url = endpoint === '/ws' ? `${proxy.ws}/ws` : `${proxy.ws}/ws/sub/${encodeURIComponent(topic)}`;
    const ms = new MicroSocket({
      url, WebSocket: WebSocketImpl, topics: endpoint === '/ws' ? [topic] : [], retry: { baseMs: 50, maxMs: 200 },
    });
    cleanup.push(() => ms.close());
    const seqs = [];
    const lost = [];
    const states = [];
    ms.onMessage(topic, (d) => {
      assert.equal(d.data.i, d.seqNo, 'the payload matches its seqNo');
      seqs.push(d.seqNo);
    });
    ms.on('lost', (e) => lost.push(e));
    ms.on('state', (s) => states.push(s.state));
    await ms.ready;

    const N = 300;
    const cuts = new Set([80, 190]);
    for (let i = 1; i <= N; i++) {
      const ans = await httpPublish(target.http, topic, { i });
      assert.equal(ans.seqNo, i);
      if (cuts.has(i)) {
        await waitUntil(() => seqs.length >= i - 20, `deliveries to catch up before cut at ${i}`, 5_000, () => `${seqs.length}`);
        proxy.cut();
      }
    }
    await waitUntil(() => seqs.length >= N, `all ${N} deliveries`, 15_000,
      () => `got ${seqs.length}, last ${seqs.at(-1)}, state ${ms.state}, lost ${JSON.stringify(lost)}`);
    await sleep(150); // anything late (a duplicate) would show up now
    assertExactlyOnceInOrder(seqs, 1, N, endpoint);
    assert.deepEqual(lost, [], 'nothing reported lost');
    assert.ok(ms.stats.reconnects >= 2, `reconnected after each cut (reconnects: ${ms.stats.reconnects})`);
    assert.equal(states.filter((s) => s === 'ready').length, 3, `ready three times: ${states.join(' ')}`);
    assert.deepEqual(ms.lastSeqPerTopic, { [topic]: N });
    assert.equal(ms.state, 'ready');
    if (path === 'resume') assert.ok(ms.stats.resumed >= 2, `resumed after each cut (resumed: ${ms.stats.resumed})`);
    else assert.equal(ms.stats.resumed, 0, 'the gateway keeps no sessions here');
  });
}

test('a publish unanswered when the connection drops is sent again with its messageId: one seqNo', async () => {
  const topic = uniqueTopic('republish');
  const proxy = await startProxy(gw.port);
  cleanup.push(() => proxy.close());
  const ms = new MicroSocket({ url: `${proxy.ws}/ws`, WebSocket: WebSocketImpl, topics: [topic], retry: { baseMs: 20, maxMs: 50 } });
  cleanup.push(() => ms.close());
  const got = [];
  ms.onMessage(topic, (d) => got.push(d.seqNo));
  await ms.ready;
  // Cut right after the publish frame left: the gateway may or may not have it; either way the
  // resend after the reconnect carries the same messageId, so it is stored once.
  const p = ms.publish(topic, { once: true }, { messageId: 'pay-1' });
  proxy.cut();
  const ans = await p;
  assert.equal(ans.seqNo, 1);
  assert.ok(ans.status === 'ok' || ans.status === 'duplicate', ans.status);
  await waitUntil(() => got.length === 1, 'the delivery', 5_000);
  await sleep(200);
  assert.deepEqual(got, [1]);
  const next = await httpPublish(gw.http, topic, { after: true });
  assert.equal(next.seqNo, 2, 'the retried publish took exactly one seqNo');
});

test('the gateway closes every socket and is gone a while: backoff with full jitter under the caps, then ready again; the numbering restart is reported', async () => {
  const gw2 = await startGateway();
  let current = gw2;
  cleanup.push(() => current.stop());
  const topic = uniqueTopic('restart');
  const retry = { baseMs: 100, maxMs: 400 };
  const ms = new MicroSocket({ url: `${gw2.ws}/ws`, WebSocket: WebSocketImpl, topics: [topic], retry });
  cleanup.push(() => ms.close());
  const got = [];
  const lost = [];
  const reconnecting = [];
  ms.onMessage(topic, (d) => got.push(d.data));
  ms.on('lost', (e) => lost.push(e));
  ms.on('reconnecting', (r) => reconnecting.push(r));
  await ms.ready;
  for (const v of ['a', 'b', 'c']) await httpPublish(gw2.http, topic, v);
  await waitUntil(() => got.length === 3, 'three deliveries', 5_000);

  assert.equal(await gw2.stop(), 0, 'SIGTERM: the gateway closes every connection (1001) and exits');
  await waitUntil(() => reconnecting.length >= 5, 'five reconnect attempts while the gateway is down', 10_000,
    () => JSON.stringify(reconnecting.map((r) => [r.attempt, r.delayMs])));
  const first = reconnecting[0];
  assert.equal(first.attempt, 1);
  assert.equal(first.error.closeCode, 1001, `the first close is the gateway's going-away: ${first.error.message}`);
  for (const r of reconnecting) {
    const cap = Math.min(retry.maxMs, retry.baseMs * 2 ** (r.attempt - 1));
    assert.ok(r.delayMs >= 0 && r.delayMs < cap, `attempt ${r.attempt}: delay ${r.delayMs} within [0, ${cap})`);
  }
  assert.deepEqual(reconnecting.map((r) => r.attempt), reconnecting.map((_, i) => i + 1), 'attempts count up');
  assert.ok(new Set(reconnecting.map((r) => r.delayMs)).size > 1, 'jittered delays differ');

  // Back on the same port: a fresh gateway (no sessions, no history, numbering from 1).
  current = await startGateway({ port: gw2.port });
  await waitUntil(() => ms.state === 'ready', 'ready again after the restart', 10_000, () => ms.state);
  const n = reconnecting.length;
  await httpPublish(current.http, topic, 'd');
  await waitUntil(() => got.length === 4, 'the first message after the restart', 5_000, () => JSON.stringify({ got, lost }));
  assert.deepEqual(got, ['a', 'b', 'c', 'd']);
  assert.equal(lost.length, 1, JSON.stringify(lost));
  assert.equal(lost[0].reason, 'restart');
  assert.equal(lost[0].fromSeq, 4);
  assert.deepEqual(ms.lastSeqPerTopic, { [topic]: 1 });
  // A later disconnect starts counting again from attempt 1.
  await current.stop();
  await waitUntil(() => reconnecting.length > n, 'a reconnect after the second stop', 5_000);
  assert.equal(reconnecting[n].attempt, 1);
});

test('maxAttempts: the socket gives up with GAVE_UP naming the last error; ready rejects', async () => {
  const ms = new MicroSocket({ url: 'ws://127.0.0.1:9/ws', WebSocket: WebSocketImpl, retry: { baseMs: 10, maxMs: 20, maxAttempts: 3 } });
  const states = [];
  ms.on('state', (s) => states.push(s.state));
  const err = await ms.ready.then(() => null, (e) => e);
  assert.ok(err instanceof MicroSocketError);
  assert.equal(err.code, 'GAVE_UP');
  assert.match(err.message, /3 attempts in a row failed/);
  assert.equal(ms.state, 'gave-up');
  assert.equal(states.filter((s) => s === 'connecting').length, 4, `first try + 3 retries: ${states.join(' ')}`);
  await assert.rejects(ms.publish('t', 1), (e) => e.code === 'CLOSED');
});
