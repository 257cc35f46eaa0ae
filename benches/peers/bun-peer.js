// The reference peer: a Bun server (uWebSockets inside: ws.subscribe / server.publish) that speaks
// the same Micro Socket protocol subset the benchmarks use, so every report can show subsocket and
// the best single-core server side by side. Run: bun benches/peers/bun-peer.js --port 9200
//
// Implemented: /ws and /ws/sub/{topic}; setup -> ready; subscribe/unsubscribe (topic or topics)
// -> subscribed/unsubscribed; publish -> ack {messageId, status, seqNo} and a `message` delivery
// built once per publish (server.publish sends the same bytes to every subscriber); ping -> pong;
// POST /publish/{topic}; GET /stats; GET /healthz. Not implemented (not needed for benchmarks):
// auth, replay/resume, dedup, QoS 1. Run with --deflate for permessage-deflate.
const args = process.argv.slice(2);
const port = Number(args[args.indexOf('--port') + 1] || 9200);
// --deflate: permessage-deflate for clients that offer it (uWebSockets' shared compressor, no
// context takeover), and every delivery published compressed (`server.publish(..., true)`).
const deflate = args.includes('--deflate');
const seq = new Map();
let ids = 0, conns = 0, subs = 0;
const boot = Date.now().toString(36);

function publish(server, topic, messageId, payloadText) {
  const s = (seq.get(topic) || 0) + 1;
  seq.set(topic, s);
  const frame = '{"type":"message","topic":' + JSON.stringify(topic) + ',"seqNo":' + s +
    ',"messageId":' + JSON.stringify(messageId) + ',"data":' + payloadText + '}';
  server.publish(topic, frame, deflate);
  return s;
}

// The payload must pass through byte for byte: cut it out of the request text instead of
// re-serializing the parsed value (which may change whitespace or number formatting).
function rawPayload(text) {
  const i = text.indexOf('"payload":');
  if (i < 0) return 'null';
  let j = i + 10, depth = 0, inStr = false, esc = false, start = j;
  while (text[start] === ' ') start++;
  for (j = start; j < text.length; j++) {
    const c = text[j];
    if (inStr) { if (esc) esc = false; else if (c === '\\') esc = true; else if (c === '"') inStr = false; continue; }
    if (c === '"') { inStr = true; if (depth === 0 && j !== start) break; continue; }
    if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') { if (depth === 0) break; depth--; if (depth === 0) { j++; break; } }
    else if (c === ',' && depth === 0) break;
  }
  return text.slice(start, j).trim();
}

const server = Bun.serve({
  port, hostname: '127.0.0.1',
  async fetch(req, server) {
    const url = new URL(req.url);
    if (url.pathname === '/ws' || url.pathname.startsWith('/ws/sub/')) {
      const single = url.pathname.startsWith('/ws/sub/') ? decodeURIComponent(url.pathname.slice(8)) : null;
      if (server.upgrade(req, { data: { single } })) return;
      return new Response('upgrade failed', { status: 400 });
    }
    if (req.method === 'POST' && url.pathname.startsWith('/publish/')) {
      const topic = decodeURIComponent(url.pathname.slice(9));
      const body = (await req.text()).trim();
      const messageId = req.headers.get('idempotency-key') || boot + '-' + (++ids);
      const s = publish(server, topic, messageId, body);
      return Response.json({ seqNo: s, messageId, status: 'ok' });
    }
    if (url.pathname === '/stats') return Response.json({ connections: conns, subscriptions: subs, topics: seq.size });
    if (url.pathname === '/healthz') return Response.json({ status: 'ok' });
    return new Response('not found', { status: 404 });
  },
  websocket: {
    maxPayloadLength: 64 * 1024,
    perMessageDeflate: deflate,
    backpressureLimit: 1024 * 1024,
    closeOnBackpressureLimit: true,
    open(ws) {
      conns++;
      if (ws.data.single) { ws.subscribe(ws.data.single); subs++; ws.send('{"type":"subscribed","topic":' + JSON.stringify(ws.data.single) + '}'); }
    },
    close(ws) { conns--; subs -= ws.subscriptions.length; },
    message(ws, text) {
      let m;
      try { m = JSON.parse(text); } catch (_) { ws.send('{"type":"error","code":"BAD_REQUEST","message":"malformed JSON"}'); return; }
      switch (m.type) {
        case 'subscribe': case 'unsubscribe': {
          const list = m.topics || [m.topic];
          for (const t of list) {
            if (m.type === 'subscribe') { if (!ws.isSubscribed(t)) { ws.subscribe(t); subs++; } }
            else if (ws.isSubscribed(t)) { ws.unsubscribe(t); subs--; }
          }
          const key = m.topics ? '"topics":' + JSON.stringify(list) : '"topic":' + JSON.stringify(m.topic);
          ws.send('{"type":"' + m.type + 'd",' + key + '}');
          break;
        }
        case 'publish': {
          const messageId = m.messageId || boot + '-' + (++ids);
          const s = publish(server, m.topic, messageId, rawPayload(text));
          ws.send('{"type":"ack","messageId":' + JSON.stringify(messageId) + ',"status":"ok","seqNo":' + s + '}');
          break;
        }
        case 'setup': ws.send('{"type":"ready","sessionId":"' + boot + '-' + (++ids) + '"}'); break;
        case 'ping': ws.send('{"type":"pong"}'); break;
        case 'ack': break;
        default: ws.send('{"type":"error","code":"BAD_REQUEST","message":"unknown type"}');
      }
    },
  },
});
console.log('bun-peer listening on ws://127.0.0.1:' + server.port);
