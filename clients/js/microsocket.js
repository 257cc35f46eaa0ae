// microsocket.js — a Micro Socket client for browsers and Node (>= 20), one ES module, no
// dependencies, no build step. The protocol is ../../docs/protocol.md (the contract:
// PROTOCOL.md); usage is in README.md next to this file.
//
// One MicroSocket is one connection with one purpose (prices, risk alerts, payments): its own
// URL, token, topics, QoS and retry policy. Several in one page or process share nothing, so one
// failing, backing off or throttled leaves the others alone.
//
// What it guarantees to the application, per topic: every message it hands over is handed over
// once, in seqNo order. Duplicates (a QoS 1 redelivery, a replay overlapping the live stream, a
// resume after a reconnect) are dropped by (topic, seqNo); a gap is filled by `replay`; after a
// reconnect `resume` (or, when the session is gone, `subscribe` with `fromSeq`) recovers what was
// missed; and what cannot be recovered is reported by a `lost` event naming the exact seqNos.
//
// Layout of this file: errors and small helpers; backoff; signatures; MicroSocket (connection
// life cycle, then requests, then deliveries).

/**
 * @typedef {'idle'|'connecting'|'open'|'ready'|'reconnecting'|'closed'|'gave-up'} ConnectionState
 *
 * @typedef {object} RetryPolicy
 * @property {number} [baseMs=250] first backoff cap; the cap doubles per failed attempt
 * @property {number} [maxMs=15000] largest backoff cap
 * @property {number} [maxAttempts=Infinity] failed attempts in a row before giving up
 * @property {(err: MicroSocketError) => boolean} [giveUp] true: stop reconnecting after this error
 *   (default: FORBIDDEN always, UNAUTHORIZED unless a tokenProvider can bring a fresh token)
 *
 * @typedef {object} MicroSocketOptions
 * @property {string} url `ws(s)://host/ws` or `ws(s)://host/ws/sub/{topic}`
 * @property {string} [token] sent as `?token=` on the upgrade (browsers cannot set headers)
 * @property {() => (string|Promise<string>)} [tokenProvider] called before every connection
 *   attempt, so a reconnect uses a fresh token; wins over `token`
 * @property {string[]} [topics] topics to subscribe (on `/ws`; a `/ws/sub/{topic}` URL implies its own)
 * @property {0|1} [qos=0] default QoS of `publish`
 * @property {RetryPolicy} [retry]
 * @property {Record<string, string|Uint8Array|CryptoKey>} [signingKeys] kid -> HMAC-SHA256 key
 *   (hex string, bytes or a CryptoKey); when set, every delivery must carry a valid signature
 * @property {number} [requestTimeoutMs=10000] how long publish/subscribe wait for their answer
 * @property {number} [recoveryTimeoutMs=5000] how long a gap may wait for replay/resume to fill it
 * @property {number} [connectTimeoutMs=10000] a connection attempt not open by then has failed
 * @property {number} [heartbeatMs=20000] application ping interval; no frame for 2.5x this long
 *   counts as a dead connection (0: off)
 * @property {typeof WebSocket} [WebSocket] the WebSocket constructor (default: the global one)
 * @property {() => number} [random] source of randomness for backoff jitter (default Math.random)
 *
 * @typedef {object} Delivery
 * @property {string} topic
 * @property {number} seqNo
 * @property {string} messageId
 * @property {unknown} data the payload, parsed
 * @property {0|1} qos
 *
 * @typedef {object} PublishResult
 * @property {'ok'|'duplicate'} status `duplicate`: the gateway already had this messageId
 * @property {number} seqNo the message's seqNo (for a duplicate, the original's)
 * @property {string} messageId
 *
 * @typedef {object} LostEvent
 * @property {string} topic
 * @property {number} fromSeq first seqNo never handed to the application
 * @property {number} toSeq last seqNo never handed to the application (inclusive)
 * @property {'unavailable'|'restart'|'timeout'|'bad-signature'} reason `unavailable`: no longer
 *   held by the gateway; `restart`: the topic's numbering started again (gateway restart; then
 *   fromSeq..toSeq are the old numbers after the last one delivered, toSeq may be unknown: null);
 *   `timeout`: replay did not fill the gap in time; `bad-signature`: failed verification
 * @property {string} [message] the gateway's explanation, when it gave one
 */

/** An error from the gateway (its `code`) or from the client (`TIMEOUT`, `CLOSED`, …). */
export class MicroSocketError extends Error {
  /**
   * @param {string} code a stable word: the gateway's error code, or one of the client's
   *   (`TIMEOUT`, `CLOSED`, `GAVE_UP`, `CONNECT_FAILED`, `TOKEN_PROVIDER`, `BAD_SIGNATURE`,
   *   `NOT_CONNECTED`, `BAD_ARGUMENT`)
   * @param {string} message
   * @param {{topic?: string, messageId?: string, closeCode?: number, cause?: unknown}} [detail]
   */
  constructor(code, message, detail = {}) {
    super(`${code}: ${message}`, detail.cause === undefined ? undefined : { cause: detail.cause });
    this.name = 'MicroSocketError';
    /** @type {string} */
    this.code = code;
    /** @type {string|undefined} */
    this.topic = detail.topic;
    /** @type {string|undefined} */
    this.messageId = detail.messageId;
    /** @type {number|undefined} the WebSocket close code, for a closed connection */
    this.closeCode = detail.closeCode;
  }
}

const WS_OPEN = 1;
const DEFAULT_RETRY = { baseMs: 250, maxMs: 15_000, maxAttempts: Infinity };

function randomHex(bytes) {
  const b = new Uint8Array(bytes);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function hexToBytes(hex) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) return null;
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Backoff

/**
 * The delay before reconnect attempt `attempt` (1 = the first retry): "full jitter", a uniform
 * random value between 0 and min(maxMs, baseMs * 2^(attempt-1)).
 * @param {number} attempt
 * @param {{baseMs?: number, maxMs?: number}} [retry]
 * @param {() => number} [random]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, retry = {}, random = Math.random) {
  const base = retry.baseMs ?? DEFAULT_RETRY.baseMs;
  const max = retry.maxMs ?? DEFAULT_RETRY.maxMs;
  const cap = Math.min(max, base * 2 ** Math.min(Math.max(attempt - 1, 0), 30));
  return Math.floor(random() * cap);
}

// ---------------------------------------------------------------------------------------------
// Signatures

/**
 * The exact text of the top-level `"data"` value of a delivery frame, as the gateway signed it.
 * A small scanner (strings and nesting only): `data` is the frame's last field, but a topic or a
 * messageId could contain the characters `"data":`, so a plain search is not enough.
 * @param {string} text the frame
 * @returns {string|null}
 */
export function rawDataText(text) {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      const start = i;
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === '\\') i++;
      if (depth === 1 && text.slice(start, i + 1) === '"data"') {
        let j = i + 1;
        while (j < text.length && /\s/.test(text[j])) j++;
        if (text[j] !== ':') continue;
        j++;
        let end = text.length - 1;
        while (end > j && text[end] !== '}') end--;
        return text.slice(j, end).trim();
      }
    } else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
  }
  return null;
}

/**
 * Checks a delivery's `sig`: HMAC-SHA256 over `topic + "\n" + seqNo + "\n" + <data as sent>`.
 * @param {string} text the frame
 * @param {{topic: string, seqNo: number, kid?: string, sig?: string}} msg the parsed frame
 * @param {(kid: string) => Promise<CryptoKey|null>} keyFor
 * @returns {Promise<string|null>} null when valid, else why not
 */
export async function verifySignature(text, msg, keyFor) {
  if (typeof msg.sig !== 'string' || typeof msg.kid !== 'string') return 'the delivery is not signed';
  const key = await keyFor(msg.kid);
  if (!key) return `unknown key id ${JSON.stringify(msg.kid)}`;
  const sig = hexToBytes(msg.sig);
  if (!sig) return 'the signature is not hex';
  const data = rawDataText(text);
  if (data === null) return 'the delivery has no data field';
  const signed = new TextEncoder().encode(`${msg.topic}\n${msg.seqNo}\n${data}`);
  const ok = await globalThis.crypto.subtle.verify('HMAC', key, sig, signed);
  return ok ? null : 'the signature does not match';
}

// ---------------------------------------------------------------------------------------------
// MicroSocket

/**
 * Per-topic delivery state.
 * @typedef {object} TopicState
 * @property {number|null} last seqNo last handed to the application (null: none yet, so the first
 *   delivery sets the baseline)
 * @property {Map<number, {msg: any}>} ahead deliveries past a gap, held until it is filled
 * @property {any} recovery timer of a replay/resume in flight for this topic (null: none)
 * @property {number} recoveryTries replays sent for the current gap
 * @property {boolean} lossReported REPLAY_UNAVAILABLE said the gap cannot be filled: the next
 *   delivery closes it (and reports it) instead of asking again
 */

export class MicroSocket {
  /** @param {MicroSocketOptions} options */
  constructor(options) {
    if (!options || typeof options.url !== 'string') {
      throw new MicroSocketError('BAD_ARGUMENT', 'new MicroSocket({url, …}): url is required');
    }
    let url;
    try {
      url = new URL(options.url, globalThis.location?.href);
    } catch (e) {
      throw new MicroSocketError('BAD_ARGUMENT', `url ${JSON.stringify(options.url)} is not a URL`, { cause: e });
    }
    if (url.protocol === 'http:') url.protocol = 'ws:';
    if (url.protocol === 'https:') url.protocol = 'wss:';
    if (url.protocol !== 'ws:' && url.protocol !== 'wss:') {
      throw new MicroSocketError('BAD_ARGUMENT', `url must be ws: or wss:, got ${url.protocol}`);
    }
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== 'function') {
      throw new MicroSocketError('BAD_ARGUMENT',
        'no WebSocket constructor: pass {WebSocket} (Node 20: run with --experimental-websocket; Node >= 22 has one)');
    }
    if (options.qos !== undefined && options.qos !== 0 && options.qos !== 1) {
      throw new MicroSocketError('BAD_ARGUMENT', `qos must be 0 or 1, got ${JSON.stringify(options.qos)}`);
    }
    this._WS = WS;
    this._url = url;
    /** The single topic of a `/ws/sub/{topic}` URL (subscribed by the gateway itself), or null. */
    const m = /\/ws\/sub\/(.+)$/.exec(url.pathname);
    this.singleTopic = m ? decodeURIComponent(m[1]) : null;
    this._token = options.token ?? null;
    this._tokenProvider = options.tokenProvider ?? null;
    this._qos = options.qos ?? 0;
    this._retry = { ...DEFAULT_RETRY, ...(options.retry ?? {}) };
    this._requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this._recoveryTimeoutMs = options.recoveryTimeoutMs ?? 5_000;
    this._heartbeatMs = options.heartbeatMs ?? 20_000;
    this._connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this._random = options.random ?? Math.random;
    this._signingKeys = options.signingKeys ?? null;
    /** @type {Map<string, Promise<CryptoKey|null>>} */
    this._importedKeys = new Map();

    /** @type {ConnectionState} */
    this.state = 'idle';
    /** The session to resume after a reconnect (from `ready`, kept by `resumed`). */
    this.sessionId = null;
    /** Counters, for tests and dashboards. */
    this.stats = { delivered: 0, duplicates: 0, acksSent: 0, replaysSent: 0, reconnects: 0, resumed: 0, lost: 0 };

    /** Topics wanted, in order: re-subscribed (or resumed) after every reconnect. */
    this._topics = new Set(options.topics ?? []);
    if (this.singleTopic !== null) this._topics.add(this.singleTopic);
    /** @type {Map<string, TopicState>} */
    this._state = new Map();
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    /** @type {Map<string, Set<(d: Delivery) => void>>} */
    this._topicHandlers = new Map();
    /** messageId -> pending publish */
    this._publishes = new Map();
    /** topic -> FIFO of pending subscribe/unsubscribe requests */
    this._subRequests = new Map();
    this._idPrefix = randomHex(6);
    this._idCounter = 0;

    this._ws = null;
    this._attempt = 0;
    this._everReady = false;
    this._closedByUser = false;
    this._lastError = null;
    this._reconnectTimer = null;
    this._heartbeatTimer = null;
    this._lastFrameAt = 0;
    this._resuming = false;
    this._pendingSetupReady = null;
    this._pongWaiter = null;
    this._frameChain = Promise.resolve();

    this._readyWaiters = [];
    /** Resolved at the first `ready` (or `resumed`); rejected when the socket ends before. */
    this.ready = new Promise((resolve, reject) => this._readyWaiters.push({ resolve, reject }));
    this.ready.catch(() => {}); // a rejection nobody awaited is not an unhandled one

    queueMicrotask(() => this._connect());
  }

  // --- events ----------------------------------------------------------------------------

  /**
   * Listens to an event; returns a function that removes the listener.
   * Events: `state` ({state, attempt?, delayMs?, error?}), `connecting`, `open`, `ready`
   * ({sessionId, resumed}), `reconnecting` ({attempt, delayMs, error}), `closed`, `gave-up`
   * (MicroSocketError), `message` (Delivery), `lost` (LostEvent), `dropped` ({topic, fromSeq,
   * toSeq, message}: the gateway's `drop` policy skipped that range while this socket was behind;
   * the client asks for it with `replay`, and what cannot come back is reported `lost`), `error` (MicroSocketError: a
   * gateway error that answers no pending request, a failed handler, …), `frame` ({dir: 'in'|'out',
   * text}).
   * @param {string} event
   * @param {Function} fn
   * @returns {() => void}
   */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  /** Like `on`, for one event only. */
  once(event, fn) {
    const off = this.on(event, (...a) => {
      off();
      fn(...a);
    });
    return off;
  }

  _emit(event, value) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(value);
      } catch (e) {
        if (event !== 'error') this._emit('error', new MicroSocketError('HANDLER', `a '${event}' listener threw: ${e?.message ?? e}`, { cause: e }));
        else console.error('microsocket: an error listener threw', e);
      }
    }
  }

  _setState(state, detail = {}) {
    this.state = state;
    this._emit('state', { state, ...detail });
    this._emit(state, detail.value ?? detail);
  }

  // --- connection life cycle -------------------------------------------------------------

  async _connect() {
    if (this._closedByUser) return;
    this._setState('connecting', { attempt: this._attempt });
    let token = this._token;
    if (this._tokenProvider) {
      try {
        token = await this._tokenProvider();
      } catch (e) {
        return this._failed(new MicroSocketError('TOKEN_PROVIDER', `the token provider failed: ${e?.message ?? e}`, { cause: e }));
      }
      if (this._closedByUser) return;
    }
    const url = new URL(this._url);
    if (token) url.searchParams.set('token', token);
    let ws;
    try {
      ws = new this._WS(url.href);
    } catch (e) {
      return this._failed(new MicroSocketError('CONNECT_FAILED', `cannot open ${this._url.href}: ${e?.message ?? e}`, { cause: e }));
    }
    this._ws = ws;
    this._lastError = null;
    this._resuming = false;
    this._pendingSetupReady = null;
    this._pongWaiter = null;
    ws.onopen = () => {
      clearTimeout(connectTimer);
      opened = true;
      if (this._ws !== ws) return;
      this._lastFrameAt = Date.now();
      this._setState('open');
      this._startHeartbeat();
      if (this._everReady && this.sessionId) {
        // Everything known goes in lastSeqPerTopic; topics never delivered yet are in the
        // session (re-subscribed live by the gateway) or subscribed again if it expired.
        this._resuming = true;
        const lastSeqPerTopic = this.lastSeqPerTopic;
        this._resumeListed = new Set(Object.keys(lastSeqPerTopic));
        for (const t of Object.keys(lastSeqPerTopic)) this._startRecovery(t);
        this._sendNow({ type: 'resume', sessionId: this.sessionId, lastSeqPerTopic });
      } else {
        this._sendSetup(token);
      }
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._lastFrameAt = Date.now();
      const text = typeof ev.data === 'string' ? ev.data : String(ev.data);
      if (this._signingKeys) {
        // Verification is asynchronous (WebCrypto); frames still go through one at a time, in order.
        this._frameChain = this._frameChain.then(() => this._onFrame(text)).catch((e) => this._emit('error', e));
      } else {
        this._onFrame(text);
      }
    };
    // Browsers follow an error with a close event; Node 20's WebSocket does not after a failed
    // connection attempt (it stays CONNECTING), and a silent network may never answer at all:
    // both count as a closed connection after a short wait.
    let opened = false;
    const failIfStuck = (ms, why) => setTimeout(() => {
      if (this._ws === ws && !opened) this._drop(1006, why);
    }, ms);
    const connectTimer = failIfStuck(this._connectTimeoutMs, `not open within ${this._connectTimeoutMs} ms`);
    ws.onerror = () => {
      if (!opened) failIfStuck(100, 'the connection failed');
    };
    ws.onclose = (ev) => {
      clearTimeout(connectTimer);
      if (this._ws !== ws) return;
      this._onClose(ev.code, ev.reason);
    };
  }

  _sendSetup(token) {
    const setup = { type: 'setup' };
    if (token) setup.token = token;
    const topics = [...this._topics].filter((t) => t !== this.singleTopic);
    if (topics.length) setup.topics = topics;
    this._sendNow(setup);
  }

  /** The connection ended (closed by the gateway, the network, or a dead heartbeat). */
  _onClose(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._stopHeartbeat();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    }
    for (const st of this._state.values()) this._clearRecovery(st);
    // Requests not answered yet go out again once the next connection is ready.
    for (const q of this._subRequests.values()) for (const r of q) r.sent = false;
    for (const p of this._publishes.values()) p.sent = false;
    if (this._closedByUser) return;
    const err = this._lastError ?? new MicroSocketError('CLOSED',
      `the connection closed (code ${code}${reason ? `, ${reason}` : ''})`, { closeCode: code });
    if (err.closeCode === undefined) err.closeCode = code;
    this._failed(err);
  }

  /** One connection attempt failed or a connection ended: back off and retry, or give up. */
  _failed(err) {
    this._ws = null;
    if (this._closedByUser) return;
    this._attempt += 1;
    const giveUp = this._retry.giveUp ?? ((e) => e.code === 'FORBIDDEN' || (e.code === 'UNAUTHORIZED' && !this._tokenProvider));
    let why = null;
    if (this._attempt > this._retry.maxAttempts) why = `${this._retry.maxAttempts} attempts in a row failed`;
    else if (giveUp(err)) why = 'the retry policy gives up on this error';
    if (why) {
      const gaveUp = new MicroSocketError('GAVE_UP', `${why}; last error: ${err.message}`, { cause: err, closeCode: err.closeCode });
      gaveUp.lastError = err;
      this._finish('gave-up', gaveUp);
      return;
    }
    const delayMs = backoffDelay(this._attempt, this._retry, this._random);
    this.stats.reconnects += 1;
    this._setState('reconnecting', { attempt: this._attempt, delayMs, error: err });
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      this._connect();
    }, delayMs);
  }

  /** Ends the socket for good: `closed` (asked for) or `gave-up`. */
  _finish(state, err) {
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._stopHeartbeat();
    for (const st of this._state.values()) this._clearRecovery(st);
    for (const w of this._readyWaiters.splice(0)) w.reject(err);
    for (const p of [...this._publishes.values()]) p.fail(err);
    this._rejectSubRequests(err);
    if (state === 'gave-up') this._setState('gave-up', { error: err, value: err });
    else this._setState('closed');
    this._emit('end', err);
  }

  _startHeartbeat() {
    this._stopHeartbeat();
    if (!this._heartbeatMs) return;
    this._heartbeatTimer = setInterval(() => {
      if (Date.now() - this._lastFrameAt > 2.5 * this._heartbeatMs) {
        this._lastError = new MicroSocketError('HEARTBEAT', `no frame from the gateway for ${Date.now() - this._lastFrameAt} ms`);
        this._drop(4000, 'heartbeat timeout');
        return;
      }
      this._sendNow({ type: 'ping' });
    }, this._heartbeatMs);
  }

  _stopHeartbeat() {
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
  }

  /** Closes the current socket without waiting for its close handshake, then reconnects. */
  _drop(code, reason) {
    const ws = this._ws;
    if (!ws) return;
    try {
      // Only 1000 and 3000-4999 may be sent by a client.
      if (code === 1000 || (code >= 3000 && code <= 4999)) ws.close(code, reason);
      else ws.close();
    } catch {
      // Already closing; the handlers are detached below either way.
    }
    this._onClose(code, reason);
  }

  /**
   * Drops the current connection and goes through the reconnect path at once (backoff attempt
   * 1): resume, and recovery of whatever was missed. For a stuck network, or to test recovery.
   */
  reconnect() {
    if (this._closedByUser || this.state === 'gave-up') return;
    if (this._ws) this._drop(4001, 'reconnect requested');
  }

  /** Closes for good: pending publishes and subscribes are rejected with `CLOSED`. */
  close() {
    if (this._closedByUser) return;
    this._closedByUser = true;
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000, 'client closed');
      } catch {
        // Not open yet: nothing to close politely.
      }
    }
    this._finish('closed', new MicroSocketError('CLOSED', 'the MicroSocket was closed'));
  }

  /** Async disposal (`await using` where supported). */
  async [Symbol.asyncDispose ?? Symbol.for('Symbol.asyncDispose')]() {
    this.close();
  }

  // --- sending ---------------------------------------------------------------------------

  _sendNow(obj) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WS_OPEN) return false;
    const text = typeof obj === 'string' ? obj : JSON.stringify(obj);
    try {
      ws.send(text);
    } catch {
      return false;
    }
    this._emit('frame', { dir: 'out', text });
    return true;
  }

  /** True between `ready` and the next disconnect. */
  get isReady() {
    return this.state === 'ready';
  }

  /**
   * Sends one protocol message as it is (an object, or a JSON text) on the open connection.
   * For tools such as the /docs playground; applications use the methods below.
   * @param {object|string} msg
   * @returns {boolean} false when the connection is not open
   */
  send(msg) {
    return this._sendNow(msg);
  }

  /** The last seqNo handed to the application per topic (topics with none yet are absent). */
  get lastSeqPerTopic() {
    const out = {};
    for (const [t, st] of this._state) if (st.last !== null) out[t] = st.last;
    return out;
  }

  /** Topics this socket wants (subscribed again after every reconnect). */
  get topics() {
    return [...this._topics];
  }

  /**
   * Publishes and waits for the gateway's `ack`. The messageId (generated when absent) makes it
   * safe to retry: a publish still unanswered when the connection drops is sent again after the
   * reconnect with the same messageId, and the gateway answers `duplicate` if it already had it.
   * @param {string} topic
   * @param {unknown} payload any JSON value
   * @param {{qos?: 0|1, messageId?: string, timeoutMs?: number}} [opts]
   * @returns {Promise<PublishResult>} rejected with a MicroSocketError (the gateway's code,
   *   `TIMEOUT`, `CLOSED`, `GAVE_UP`)
   */
  publish(topic, payload, opts = {}) {
    if (typeof topic !== 'string' || topic === '') {
      return Promise.reject(new MicroSocketError('BAD_ARGUMENT', 'publish(topic, payload): topic must be a non-empty string'));
    }
    if (payload === undefined) {
      return Promise.reject(new MicroSocketError('BAD_ARGUMENT', 'publish(topic, payload): payload must be a JSON value', { topic }));
    }
    if (this._closedByUser || this.state === 'gave-up') {
      return Promise.reject(new MicroSocketError('CLOSED', 'the MicroSocket is closed', { topic }));
    }
    const qos = opts.qos ?? this._qos;
    const messageId = opts.messageId ?? `${this._idPrefix}-${++this._idCounter}`;
    if (this._publishes.has(messageId)) {
      return Promise.reject(new MicroSocketError('BAD_ARGUMENT', `a publish with messageId ${messageId} is already waiting`, { topic, messageId }));
    }
    const frame = { type: 'publish', topic, messageId, payload };
    if (qos === 1) frame.qos = 1;
    const text = JSON.stringify(frame);
    const timeoutMs = opts.timeoutMs ?? this._requestTimeoutMs;
    return new Promise((resolve, reject) => {
      const p = {
        topic,
        text,
        sent: false,
        timer: setTimeout(() => p.fail(new MicroSocketError('TIMEOUT',
          `no ack for messageId ${messageId} on ${topic} within ${timeoutMs} ms`, { topic, messageId })), timeoutMs),
        retry: null,
        done: (v) => {
          clearTimeout(p.timer);
          clearTimeout(p.retry);
          this._publishes.delete(messageId);
          resolve(v);
        },
        fail: (e) => {
          clearTimeout(p.timer);
          clearTimeout(p.retry);
          this._publishes.delete(messageId);
          reject(e);
        },
      };
      this._publishes.set(messageId, p);
      if (this.isReady) p.sent = this._sendNow(text);
    });
  }

  /**
   * Subscribes (and keeps the subscription across reconnects). With `fromSeq`, the gateway first
   * sends the held messages from that seqNo on, then the live stream, with no gap or duplicate.
   * With `latest: true` (a subsocket extension), the newest held message of each topic comes
   * first, then live: the current price before the next tick, in one round trip. A reconnect
   * later resumes from what was delivered, as always.
   * @param {string|string[]} topics
   * @param {{fromSeq?: number, latest?: boolean}} [opts]
   * @returns {Promise<string[]>} the topics, once the gateway answered `subscribed`
   */
  subscribe(topics, opts = {}) {
    const list = Array.isArray(topics) ? topics : [topics];
    if (!list.length || list.some((t) => typeof t !== 'string' || t === '')) {
      return Promise.reject(new MicroSocketError('BAD_ARGUMENT', 'subscribe(topics): topics must be non-empty strings'));
    }
    if (opts.latest && opts.fromSeq !== undefined) {
      return Promise.reject(new MicroSocketError('BAD_ARGUMENT', 'subscribe(topics, opts): fromSeq and latest exclude each other'));
    }
    for (const t of list) {
      this._topics.add(t);
      if (opts.fromSeq !== undefined) {
        const st = this._topicState(t);
        st.last = Math.max(0, opts.fromSeq - 1);
        st.ahead.clear();
      }
    }
    return this._request('subscribe', list, opts.fromSeq, opts.latest === true);
  }

  /**
   * Unsubscribes and forgets the topics' seqNo tracking.
   * @param {string|string[]} topics
   * @returns {Promise<string[]>}
   */
  unsubscribe(topics) {
    const list = Array.isArray(topics) ? topics : [topics];
    for (const t of list) {
      this._topics.delete(t);
      const st = this._state.get(t);
      if (st) this._clearRecovery(st);
      this._state.delete(t);
    }
    return this._request('unsubscribe', list);
  }

  _request(type, list, fromSeq, latest = false) {
    if (this._closedByUser || this.state === 'gave-up') {
      return Promise.reject(new MicroSocketError('CLOSED', 'the MicroSocket is closed'));
    }
    return new Promise((resolve, reject) => {
      const req = {
        type,
        topics: list,
        left: new Set(list),
        text: JSON.stringify({
          type,
          ...(list.length === 1 ? { topic: list[0] } : { topics: list }),
          ...(fromSeq !== undefined ? { fromSeq } : {}),
          ...(latest ? { latest: true } : {}),
        }),
        timer: null,
        sent: false,
        done: () => finish(null),
        fail: (e) => finish(e),
      };
      const finish = (err) => {
        clearTimeout(req.timer);
        for (const t of list) {
          const q = this._subRequests.get(t);
          if (q) {
            const i = q.indexOf(req);
            if (i >= 0) q.splice(i, 1);
            if (!q.length) this._subRequests.delete(t);
          }
        }
        if (err) {
          if (type === 'subscribe') for (const t of list) if (t !== this.singleTopic) this._topics.delete(t);
          reject(err);
        } else resolve(list);
      };
      for (const t of list) {
        if (!this._subRequests.has(t)) this._subRequests.set(t, []);
        this._subRequests.get(t).push(req);
      }
      req.timer = setTimeout(() => req.fail(new MicroSocketError('TIMEOUT',
        `no answer to ${type} ${list.join(', ')} within ${this._requestTimeoutMs} ms`, { topic: list[0] })), this._requestTimeoutMs);
      if (this.isReady) req.sent = this._sendNow(req.text);
    });
  }

  _rejectSubRequests(err) {
    const all = new Set();
    for (const q of this._subRequests.values()) for (const r of q) all.add(r);
    for (const r of all) r.fail(err);
  }

  // --- receiving -------------------------------------------------------------------------

  /**
   * Handles deliveries of one topic; returns a function that removes the handler.
   * @param {string} topic
   * @param {(d: Delivery) => void} handler
   * @returns {() => void}
   */
  onMessage(topic, handler) {
    let set = this._topicHandlers.get(topic);
    if (!set) this._topicHandlers.set(topic, (set = new Set()));
    set.add(handler);
    return () => set.delete(handler);
  }

  /**
   * The deliveries of one topic (or of all, without `topic`) as an async iterator, from now on.
   * It ends when the socket is closed or gives up; leaving the loop removes it.
   * @param {string} [topic]
   * @returns {AsyncIterableIterator<Delivery>}
   */
  messages(topic) {
    const queue = [];
    let wake = null;
    let ended = false;
    const push = (d) => {
      queue.push(d);
      if (wake) wake();
    };
    const offMsg = topic === undefined ? this.on('message', push) : this.onMessage(topic, push);
    const offEnd = this.on('end', () => {
      ended = true;
      if (wake) wake();
    });
    const stop = () => {
      ended = true;
      offMsg();
      offEnd();
      if (wake) wake();
    };
    if (this._closedByUser || this.state === 'gave-up') stop();
    return {
      [Symbol.asyncIterator]() {
        return this;
      },
      next: async () => {
        while (!queue.length && !ended) await new Promise((r) => (wake = r));
        wake = null;
        if (queue.length) return { value: queue.shift(), done: false };
        return { value: undefined, done: true };
      },
      return: async () => {
        stop();
        return { value: undefined, done: true };
      },
    };
  }

  async _onFrame(text) {
    this._emit('frame', { dir: 'in', text });
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      this._emit('error', new MicroSocketError('BAD_FRAME', `the gateway sent a frame that is not JSON: ${text.slice(0, 200)}`));
      return;
    }
    switch (m?.type) {
      case 'message':
        return this._onDelivery(m, text);
      case 'ready':
        return this._onReady(m);
      case 'resumed':
        return this._onResumed(m);
      case 'subscribed':
      case 'unsubscribed':
        return this._onSubscribed(m);
      case 'ack':
        return this._onAck(m);
      case 'error':
        return this._onError(m);
      case 'pong':
        if (this._pongWaiter) {
          const then = this._pongWaiter;
          this._pongWaiter = null;
          then();
        }
        return;
      default:
        this._emit('error', new MicroSocketError('BAD_FRAME', `unknown frame type ${JSON.stringify(m?.type)}`));
    }
  }

  _onReady(m) {
    if (this._pendingSetupReady) {
      const then = this._pendingSetupReady;
      this._pendingSetupReady = null;
      then(m);
      return;
    }
    this.sessionId = m.sessionId ?? this.sessionId;
    this._becameReady(false);
  }

  _becameReady(resumed) {
    this._attempt = 0;
    this._lastError = null;
    this._everReady = true;
    this._setState('ready', { value: { sessionId: this.sessionId, resumed } });
    for (const w of this._readyWaiters.splice(0)) w.resolve({ sessionId: this.sessionId, resumed });
    // Requests made while not connected, and publishes not answered before a disconnect.
    const reqs = new Set();
    for (const q of this._subRequests.values()) for (const r of q) reqs.add(r);
    for (const r of reqs) if (!r.sent) r.sent = this._sendNow(r.text);
    for (const p of this._publishes.values()) p.sent = this._sendNow(p.text);
  }

  _onResumed(m) {
    if (!this._resuming) return;
    this._resuming = false;
    this.sessionId = m.sessionId ?? this.sessionId;
    this.stats.resumed += 1;
    // `resume` restores the topics it lists. One that never had a delivery is not listed: the
    // gateway that kept the session restores it too, but another node of a cluster (which
    // resumes statelessly) does not know it. Asking again is harmless where it is subscribed.
    const listed = this._resumeListed ?? new Set();
    const unlisted = [...this._topics].filter((t) => t !== this.singleTopic && !listed.has(t));
    if (unlisted.length) this._sendNow(JSON.stringify({ type: 'subscribe', topics: unlisted }));
    this._releaseHeld();
    // `resumed` follows the last replayed message: a gap still open now needs a replay.
    for (const [t, st] of this._state) {
      this._clearRecovery(st);
      if (st.ahead.size) this._startRecovery(t);
    }
    this._becameReady(true);
  }

  /** The resume is over: topics with no baseline hand over what they held, lowest seqNo first. */
  _releaseHeld() {
    for (const [t, st] of this._state) {
      if (st.last === null && st.ahead.size) this._drain(t, st);
    }
  }

  /**
   * The session is gone: a new one (setup), and every topic subscribed again from where it was
   * (`fromSeq`), or live when nothing was delivered yet. `ready` is announced once a `ping` sent
   * behind those requests is answered: the gateway handles one connection's frames in order, so
   * by then every subscription is in place (their replays may still be on their way).
   */
  _fallbackAfterExpiredSession() {
    const setup = { type: 'setup' };
    const token = new URL(this._ws?.url ?? this._url.href).searchParams.get('token');
    if (token) setup.token = token;
    const live = [];
    let sessionId = null;
    this._pendingSetupReady = (m) => {
      sessionId = m.sessionId ?? null;
    };
    this._sendNow(setup);
    for (const t of this._topics) {
      const st = this._state.get(t);
      if (st && st.last !== null) {
        this._startRecovery(t);
        this._sendNow({ type: 'subscribe', topic: t, fromSeq: st.last + 1 });
      } else if (t !== this.singleTopic) live.push(t);
    }
    if (live.length) this._sendNow({ type: 'subscribe', topics: live });
    this._pongWaiter = () => {
      this._resuming = false;
      this._releaseHeld();
      this.sessionId = sessionId;
      this._becameReady(false);
    };
    this._sendNow({ type: 'ping' });
  }

  _onSubscribed(m) {
    const list = Array.isArray(m.topics) ? m.topics : typeof m.topic === 'string' ? [m.topic] : [];
    for (const t of list) {
      const q = this._subRequests.get(t);
      const req = q?.find((r) => `${r.type}d` === m.type && r.sent && r.left.has(t));
      if (!req) continue;
      req.left.delete(t);
      if (!req.left.size) req.done();
    }
  }

  _onAck(m) {
    const p = this._publishes.get(m.messageId);
    if (!p) return;
    p.done({ status: m.status, seqNo: m.seqNo, messageId: m.messageId });
  }

  _onError(m) {
    const err = new MicroSocketError(m.code ?? 'ERROR', m.message ?? '', { topic: m.topic, messageId: m.messageId });
    if (m.code === 'SESSION_EXPIRED' && this._resuming) {
      // Not an application error: the client recovers by subscribing again from fromSeq.
      this._fallbackAfterExpiredSession();
      return;
    }
    if (m.code === 'REPLAY_UNAVAILABLE' && typeof m.topic === 'string') {
      this._onReplayUnavailable(m.topic, m);
      return;
    }
    if (m.code === 'SLOW_CONSUMER' && typeof m.topic === 'string' && Number.isInteger(m.fromSeq) && Number.isInteger(m.toSeq)) {
      // The gateway's `drop` policy skipped fromSeq..toSeq for this socket (it was behind):
      // not an end. Asked for again with replay while the gateway still holds them; what it
      // no longer holds comes back as REPLAY_UNAVAILABLE and is reported `lost`.
      this._emit('dropped', { topic: m.topic, fromSeq: m.fromSeq, toSeq: m.toSeq, message: m.message });
      const st = this._state.get(m.topic);
      if (st && st.last !== null && m.toSeq > st.last && this._topics.has(m.topic)) this._startRecovery(m.topic, true);
      return;
    }
    if (m.code === 'BACKBONE_UNAVAILABLE' && this._publishes.has(m.messageId)) {
      // A cluster's backbone did not store it in time. The same messageId again is safe (a
      // second store is answered `duplicate` with the original seqNo): send it again after a
      // jittered pause, until the publish's own timeout gives up.
      const p = this._publishes.get(m.messageId);
      clearTimeout(p.retry);
      p.retry = setTimeout(() => {
        if (this._publishes.get(m.messageId) === p && this.isReady) p.sent = this._sendNow(p.text);
      }, 250 + Math.floor(this._random() * 750));
      return;
    }
    if (typeof m.messageId === 'string' && this._publishes.has(m.messageId)) {
      this._publishes.get(m.messageId).fail(err);
      return;
    }
    if (typeof m.topic === 'string') {
      const req = this._subRequests.get(m.topic)?.find((r) => r.sent);
      if (req) {
        req.fail(err);
        return;
      }
    }
    // Answers no request: kept as the reason of a close that may follow (UNAUTHORIZED on the
    // upgrade, FORBIDDEN on /ws/sub, SLOW_CONSUMER, an expired token).
    this._lastError = err;
    this._emit('error', err);
  }

  // --- deliveries: order, duplicates, gaps -----------------------------------------------

  _topicState(topic) {
    let st = this._state.get(topic);
    if (!st) {
      st = { last: null, ahead: new Map(), recovery: null, recoveryTries: 0, lossReported: false };
      this._state.set(topic, st);
    }
    return st;
  }

  async _keyFor(kid) {
    if (!this._importedKeys.has(kid)) {
      const raw = Object.prototype.hasOwnProperty.call(this._signingKeys, kid) ? this._signingKeys[kid] : undefined;
      let p;
      if (raw === undefined) p = Promise.resolve(null);
      else if (typeof raw === 'object' && raw !== null && raw.type === 'secret' && raw.algorithm) p = Promise.resolve(raw);
      else {
        const bytes = typeof raw === 'string' ? hexToBytes(raw) : raw;
        if (!bytes) throw new MicroSocketError('BAD_ARGUMENT', `signingKeys[${JSON.stringify(kid)}] is not a hex string, bytes or a CryptoKey`);
        p = globalThis.crypto.subtle.importKey('raw', bytes, { name: 'HMAC', hash: 'SHA-256' }, false, ['verify']);
      }
      this._importedKeys.set(kid, p);
    }
    return this._importedKeys.get(kid);
  }

  async _onDelivery(m, text) {
    const { topic, seqNo } = m;
    if (typeof topic !== 'string' || !Number.isInteger(seqNo)) {
      this._emit('error', new MicroSocketError('BAD_FRAME', `a delivery without topic or seqNo: ${text.slice(0, 200)}`));
      return;
    }
    if (!this._topics.has(topic)) {
      // In flight when the topic was unsubscribed (or subscribed by a raw `send`): not tracked.
      if (m.qos === 1 && this._sendNow({ type: 'ack', messageId: m.messageId, topic, seqNo })) this.stats.acksSent += 1;
      return;
    }
    let badSignature = null;
    if (this._signingKeys) badSignature = await verifySignature(text, m, (kid) => this._keyFor(kid));
    const st = this._topicState(topic);
    if (badSignature) {
      this._emit('error', new MicroSocketError('BAD_SIGNATURE', `${topic} #${seqNo}: ${badSignature}; not delivered`, { topic, messageId: m.messageId }));
      if (st.last === null || seqNo > st.last) st.ahead.set(seqNo, { msg: null, why: badSignature });
      this._drain(topic, st);
    } else {
      this._accept(topic, st, m);
    }
    if (m.qos === 1) {
      // After the message was handed over (or found to be a duplicate, or reported lost):
      // acknowledged exactly when the gateway need not send it again.
      if (this._sendNow({ type: 'ack', messageId: m.messageId, topic, seqNo })) this.stats.acksSent += 1;
    }
  }

  _accept(topic, st, m) {
    const s = m.seqNo;
    if (st.last === null && this._resuming) {
      // No baseline yet and a resume out: a /ws/sub socket is subscribed before the gateway
      // reads the resume, so live messages can come ahead of the replay of older ones the
      // session kept (unacknowledged QoS 1). Held until `resumed` (see _releaseHeld).
      if (st.ahead.has(s)) this.stats.duplicates += 1;
      else st.ahead.set(s, { msg: m });
      return;
    }
    if (st.last === null) {
      // The first delivery of a topic is its baseline (or a lower one held during a resume).
      st.last = Math.min(s, ...st.ahead.keys()) - 1;
      st.lossReported = false;
    } else if (s <= st.last) {
      if (st.lossReported && !st.ahead.size) {
        // After REPLAY_UNAVAILABLE a seqNo going back means the numbering restarted (a gateway
        // restart): the old numbers after `last` are lost; tracking begins again at `s`.
        st.lossReported = false;
        this._lost({ topic, fromSeq: st.last + 1, toSeq: null, reason: 'restart',
          message: `the topic's seqNo went back from ${st.last} to ${s}: the gateway's numbering restarted` });
        st.last = s - 1;
      } else {
        this.stats.duplicates += 1;
        return;
      }
    }
    if (st.ahead.has(s)) {
      this.stats.duplicates += 1;
      return;
    }
    if (s === st.last + 1) st.lossReported = false; // nothing was lost after all
    st.ahead.set(s, { msg: m });
    this._drain(topic, st);
  }

  /** Hands over every held delivery that is next in order; asks for the rest of a gap. */
  _drain(topic, st) {
    if (st.last === null) {
      // No baseline yet: held while a resume is out (see _accept), else the lowest held sets it.
      if (this._resuming || !st.ahead.size) return;
      st.last = Math.min(...st.ahead.keys()) - 1;
    }
    for (;;) {
      const next = st.ahead.get(st.last + 1);
      if (next) {
        st.ahead.delete(st.last + 1);
        st.last += 1;
        if (next.msg) this._deliver(next.msg);
        else {
          this._lost({ topic, fromSeq: st.last, toSeq: st.last, reason: 'bad-signature', message: next.why });
        }
        continue;
      }
      if (!st.ahead.size) break;
      if (st.lossReported) {
        // The gateway said the gap cannot be filled: report it and move on.
        const first = Math.min(...st.ahead.keys());
        this._lost({ topic, fromSeq: st.last + 1, toSeq: first - 1, reason: 'unavailable', message: st.lossMessage });
        st.lossReported = false;
        st.last = first - 1;
        continue;
      }
      break;
    }
    if (st.ahead.size) {
      if (!st.recovery) this._startRecovery(topic, true);
    } else if (st.recovery && !this._resuming) {
      this._clearRecovery(st);
    }
  }

  _deliver(m) {
    /** @type {Delivery} */
    const d = { topic: m.topic, seqNo: m.seqNo, messageId: m.messageId, data: m.data, qos: m.qos === 1 ? 1 : 0 };
    this.stats.delivered += 1;
    const handlers = this._topicHandlers.get(m.topic);
    if (handlers) {
      for (const h of [...handlers]) {
        try {
          h(d);
        } catch (e) {
          this._emit('error', new MicroSocketError('HANDLER', `the handler of ${m.topic} threw: ${e?.message ?? e}`, { topic: m.topic, cause: e }));
        }
      }
    }
    this._emit('message', d);
  }

  _lost(ev) {
    this.stats.lost += ev.toSeq === null ? 1 : ev.toSeq - ev.fromSeq + 1;
    this._emit('lost', ev);
  }

  /**
   * A replay or resume is in flight for `topic` (or a gap was just seen): give it
   * recoveryTimeoutMs. With `ask`, send a replay for the gap now.
   */
  _startRecovery(topic, ask = false) {
    const st = this._topicState(topic);
    this._clearRecovery(st);
    if (ask && st.last !== null) {
      st.recoveryTries += 1;
      this.stats.replaysSent += 1;
      this._sendNow({ type: 'replay', topic, fromSeq: st.last + 1 });
    }
    st.recovery = setTimeout(() => {
      st.recovery = null;
      if (!st.ahead.size || this._state.get(topic) !== st) return;
      if (st.recoveryTries < 2) {
        this._startRecovery(topic, true);
        return;
      }
      const first = Math.min(...st.ahead.keys());
      st.recoveryTries = 0;
      this._lost({ topic, fromSeq: st.last + 1, toSeq: first - 1, reason: 'timeout',
        message: `replay did not fill the gap within ${this._recoveryTimeoutMs} ms (twice)` });
      st.last = first - 1;
      this._drain(topic, st);
    }, this._recoveryTimeoutMs);
  }

  _clearRecovery(st) {
    clearTimeout(st.recovery);
    st.recovery = null;
    if (!st.ahead.size) st.recoveryTries = 0;
  }

  _onReplayUnavailable(topic, m) {
    const st = this._topicState(topic);
    if (st.last === null) {
      this._emit('error', new MicroSocketError('REPLAY_UNAVAILABLE', m.message ?? '', { topic }));
      return;
    }
    this._clearRecovery(st);
    st.lossMessage = m.message;
    if (Number.isInteger(m.oldestSeq) && m.oldestSeq > st.last + 1) {
      // Exactly known: everything before oldestSeq is gone; the gateway sends the rest.
      this._lost({ topic, fromSeq: st.last + 1, toSeq: m.oldestSeq - 1, reason: 'unavailable', message: m.message });
      st.last = m.oldestSeq - 1;
      st.lossReported = false;
      this._drain(topic, st);
      return;
    }
    // Known only once the next delivery shows where the stream goes on.
    st.lossReported = true;
    this._drain(topic, st);
  }
}

/**
 * Opens one MicroSocket and resolves when it is ready.
 * @param {MicroSocketOptions} options
 * @returns {Promise<MicroSocket>}
 */
export async function connect(options) {
  const ms = new MicroSocket(options);
  try {
    await ms.ready;
  } catch (e) {
    ms.close();
    throw e;
  }
  return ms;
}

export default MicroSocket;
