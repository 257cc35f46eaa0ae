// Test helpers: a real gateway per test file, a TCP proxy that can cut connections, HS256 JWTs,
// HTTP publishes, and "wait until" with a clear failure message.
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export const WebSocketImpl = globalThis.WebSocket;
if (typeof WebSocketImpl !== 'function') {
  throw new Error('no global WebSocket: run Node 20 with --experimental-websocket (Node >= 22 has it)');
}

/** The gateway binary: $SUBSOCKET_BIN, else target/ci/subsocket, else target/release/subsocket. */
export function gatewayBin() {
  const candidates = [process.env.SUBSOCKET_BIN, join(REPO, 'target/ci/subsocket'), join(REPO, 'target/release/subsocket')];
  const bin = candidates.find((p) => p && existsSync(p));
  if (!bin) throw new Error(`no gateway binary (tried ${candidates.filter(Boolean).join(', ')}): cargo build --profile ci --bins`);
  return bin;
}

/** History for every topic: what replay, subscribe-with-fromSeq and resume need. */
export const HISTORY_TOML = `
[history]
[[history.rules]]
pattern = "*"
max_messages = 5000
`;

/**
 * Starts the gateway on 127.0.0.1 (port 0 = any free one) with the given TOML, two cores.
 * Resolves once it printed "subsocket listening on ws://HOST:PORT".
 * @returns {Promise<{port: number, http: string, ws: string, stop: () => Promise<number|null>, stderr: () => string, config: string}>}
 */
export async function startGateway({ toml = HISTORY_TOML, port = 0, extraArgs = [] } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'microsocket-test-'));
  const config = join(dir, 'gateway.toml');
  writeFileSync(config, toml);
  const child = spawn(gatewayBin(), ['--bind', `127.0.0.1:${port}`, '--cores', '2', '--config', config, '--log', 'warn', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise((r) => child.on('exit', (code) => r(code)));
  const listening = await new Promise((resolveLine, reject) => {
    const timer = setTimeout(() => reject(new Error(`the gateway did not start within 30 s; stderr:\n${err}`)), 30_000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /subsocket listening on ws:\/\/([^ /]+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolveLine(m[1]);
      }
    });
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`the gateway exited (${code}) before listening; stderr:\n${err}`));
    });
  });
  const p = Number(listening.split(':').pop());
  return {
    port: p,
    http: `http://127.0.0.1:${p}`,
    ws: `ws://127.0.0.1:${p}`,
    config,
    stderr: () => err,
    /** SIGTERM; resolves with the exit code (0 = clean), SIGKILL after 10 s. */
    stop: async () => {
      if (child.exitCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

/** Whether this gateway build accepts a configuration (unknown keys are refused at start). */
export async function gatewayAccepts(toml) {
  try {
    const gw = await startGateway({ toml });
    await gw.stop();
    return { ok: true };
  } catch (e) {
    return { ok: false, why: String(e.message).split('\n').slice(0, 4).join(' ') };
  }
}

/**
 * A TCP proxy in front of the gateway; `cut()` destroys every connection through it at once,
 * like a network failure (the client sees close 1006, the gateway a reset).
 */
export async function startProxy(targetPort) {
  const socks = new Set();
  const server = net.createServer((client) => {
    const up = net.connect(targetPort, '127.0.0.1');
    socks.add(client);
    socks.add(up);
    client.pipe(up);
    up.pipe(client);
    const gone = () => {
      client.destroy();
      up.destroy();
      socks.delete(client);
      socks.delete(up);
    };
    client.on('error', gone).on('close', gone);
    up.on('error', gone).on('close', gone);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  return {
    port,
    ws: `ws://127.0.0.1:${port}`,
    connections: () => socks.size / 2,
    cut: () => {
      for (const s of socks) s.resetAndDestroy ? s.resetAndDestroy() : s.destroy();
      socks.clear();
    },
    close: () => {
      for (const s of socks) s.destroy();
      return new Promise((r) => server.close(r));
    },
  };
}

/**
 * POST /publish/{topic} on a connection of its own (`Connection: close`); returns the JSON answer.
 * Not `fetch`: Node's fetch and its WebSocket share one connection pool, and the WebSocket would
 * then try its upgrade on a kept-alive HTTP connection, which the gateway refuses.
 */
export function httpPublish(base, topic, payload, headers = {}) {
  const body = Buffer.from(JSON.stringify(payload));
  return new Promise((resolveAnswer, reject) => {
    const req = http.request(`${base}/publish/${encodeURIComponent(topic)}`, {
      method: 'POST',
      agent: false,
      timeout: 5_000,
      headers: { 'content-type': 'application/json', 'content-length': body.length, connection: 'close', ...headers },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`POST /publish/${topic} answered ${res.statusCode}: ${text}`));
        else resolveAnswer(JSON.parse(text));
      });
    });
    req.on('timeout', () => req.destroy(new Error(`POST /publish/${topic}: no answer within 5 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** An HS256 JWT. */
export function jwtHs256(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

export function uniqueTopic(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}

/** Polls `cond` every 20 ms; throws `what` (and `detail()`) after `ms`. */
export async function waitUntil(cond, what, ms = 10_000, detail = () => '') {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${detail() ? `: ${detail()}` : ''}`);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Checks that `seqs` is exactly from..to in order; throws a message naming the first problem. */
export function assertExactlyOnceInOrder(seqs, from, to, what) {
  const want = to - from + 1;
  for (let i = 0; i < seqs.length; i++) {
    if (seqs[i] !== from + i) {
      const seen = new Set();
      const dup = seqs.find((s) => seen.has(s) || !seen.add(s));
      throw new Error(`${what}: position ${i} holds seqNo ${seqs[i]}, expected ${from + i}` +
        (dup !== undefined ? ` (seqNo ${dup} was delivered twice)` : ' (a gap or a reordering)') +
        `; got ${seqs.length} of ${want}`);
    }
  }
  if (seqs.length !== want) throw new Error(`${what}: ${seqs.length} messages delivered, expected ${want} (${from}..${to})`);
}
