// subscribe(topic, {latest: true}): the newest held message first, then live, and nothing
// reported lost for the older ones the application never asked for.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { MicroSocket } from '../microsocket.js';
import { WebSocketImpl, httpPublish, startGateway, uniqueTopic, waitUntil, sleep } from './helpers.mjs';

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

test('latest: the current value first, then live, nothing lost', async () => {
  const topic = uniqueTopic('latest');
  for (let i = 1; i <= 3; i++) await httpPublish(gw.http, topic, { px: i });
  const ms = new MicroSocket({ url: `${gw.ws}/ws`, WebSocket: WebSocketImpl });
  sockets.push(ms);
  const got = [];
  const lost = [];
  ms.onMessage(topic, (m) => got.push([m.seqNo, m.data.px]));
  ms.on('lost', (e) => lost.push(e));
  await ms.ready;
  await ms.subscribe(topic, { latest: true });
  await waitUntil(() => got.length === 1, 'the latest value', 5_000);
  await httpPublish(gw.http, topic, { px: 4 });
  await waitUntil(() => got.length === 2, 'the live one', 5_000);
  await sleep(100);
  assert.deepEqual(got, [[3, 3], [4, 4]]);
  assert.deepEqual(lost, []);
  await assert.rejects(ms.subscribe('x', { latest: true, fromSeq: 1 }), /exclude/);
});
