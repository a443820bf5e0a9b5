/*! recsql.js - browser tracker for recsql. No dependencies, ES2017, never throws into the page. */
(function (global) {
  'use strict';

  var previous = global.recsql;
  if (previous && previous.__recsql) return; // loaded twice: keep the first instance

  var VERSION = '0.1.0';
  var AID_KEY = 'recsql_aid';
  var UID_KEY = 'recsql_uid';
  var SID_KEY = 'recsql_sid';
  var QUEUE_KEY = 'recsql_queue';
  var MAX_QUEUE = 1000; // bound what we keep in memory and localStorage
  var MAX_BATCH = 1000; // the server refuses larger batches (413)
  var BEACON_BYTES = 60000; // browsers cap a beacon's queued bytes at 64 KiB
  var SESSION_IDLE_MS = 30 * 60 * 1000;
  var REQUEST_TIMEOUT_MS = 10000;
  var BACKOFF_BASE_MS = 1000;
  var BACKOFF_CAP_MS = 30000;
  var RETRY_AFTER_CAP_MS = 10 * 60 * 1000;

  var cfg = { endpoint: '', key: null, userId: null, batchSize: 20, flushInterval: 1000 };
  var state = {
    ready: false,
    queue: [], // unsent events, oldest first; the batch in flight stays here until it is confirmed
    sending: false,
    timer: null,
    attempt: 0, // consecutive failed sends; > 0 means a backoff retry is scheduled
    holdUntil: 0, // the server asked us (429 / Retry-After) not to send before this time
    waiters: [],
    batchLimit: MAX_BATCH, // lowered after a 413 (request too large)
    aid: null,
    listening: false,
  };

  function warn() {
    try {
      var args = Array.prototype.slice.call(arguments);
      args.unshift('[recsql]');
      if (global.console && console.warn) console.warn.apply(console, args);
    } catch (e) { /* nothing left to report with */ }
  }

  // Every public entry point goes through guard(): an error is logged, never thrown to the host.
  function guard(name, fn, fallback) {
    return function () {
      try {
        return fn.apply(null, arguments);
      } catch (err) {
        warn(name + ' failed:', err);
        return typeof fallback === 'function' ? fallback() : fallback;
      }
    };
  }

  function storage(kind) {
    try { return global[kind] || null; } catch (e) { return null; } // access itself may throw
  }
  function load(key, kind) {
    try { var s = storage(kind || 'localStorage'); return s ? s.getItem(key) : null; } catch (e) { return null; }
  }
  function save(key, value, kind) {
    try {
      var s = storage(kind || 'localStorage');
      if (!s) return;
      if (value === null) s.removeItem(key); else s.setItem(key, value);
    } catch (e) { /* full, disabled or private mode: the in-memory queue still works */ }
  }

  function uuid() {
    try {
      var c = global.crypto;
      if (c && typeof c.randomUUID === 'function') return c.randomUUID();
      var b = new Uint8Array(16);
      if (c && typeof c.getRandomValues === 'function') c.getRandomValues(b);
      else for (var i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
      b[6] = (b[6] & 0x0f) | 0x40;
      b[8] = (b[8] & 0x3f) | 0x80;
      var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join('');
      return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
    } catch (e) {
      return 'r' + Date.now().toString(36) + Math.random().toString(36).slice(2);
    }
  }

  function cookie(name) {
    try {
      var parts = (global.document && document.cookie ? document.cookie : '').split(/;\s*/);
      for (var i = 0; i < parts.length; i++) {
        var eq = parts[i].indexOf('=');
        if (eq > 0 && parts[i].slice(0, eq) === name) return decodeURIComponent(parts[i].slice(eq + 1));
      }
    } catch (e) { /* no cookies here */ }
    return null;
  }

  function isId(v) { return typeof v === 'string' && v.length > 0 && v.length <= 256; }

  // The server's cookie wins (it is what the server already knows us by), then our own copy.
  function anonymousId() {
    var id = cookie(AID_KEY);
    if (!isId(id)) id = state.aid || load(AID_KEY);
    if (!isId(id)) id = uuid();
    if (id !== state.aid) { state.aid = id; save(AID_KEY, id); }
    return id;
  }

  // One session per tab, renewed after 30 minutes without events.
  function sessionId() {
    var now = Date.now();
    var s = null;
    try { s = JSON.parse(load(SID_KEY, 'sessionStorage') || 'null'); } catch (e) { s = null; }
    if (!s || !isId(s.id) || typeof s.at !== 'number' || now - s.at > SESSION_IDLE_MS) s = { id: uuid(), at: now };
    s.at = now;
    save(SID_KEY, JSON.stringify(s), 'sessionStorage');
    return s.id;
  }

  function queueKey() { return QUEUE_KEY + ':' + cfg.endpoint; }
  function persist() { save(queueKey(), state.queue.length ? JSON.stringify(state.queue) : null); }

  function restore() {
    var stored = null;
    try { stored = JSON.parse(load(queueKey()) || 'null'); } catch (e) { stored = null; }
    if (!Array.isArray(stored)) return;
    var seen = {};
    state.queue.forEach(function (ev) { seen[ev.eventId] = true; });
    var restored = stored.filter(function (ev) {
      return ev && typeof ev === 'object' && isId(ev.eventId) && !seen[ev.eventId];
    });
    state.queue = restored.concat(state.queue);
    trim();
  }

  function trim() {
    if (state.queue.length > MAX_QUEUE) {
      warn('queue full; dropping the ' + (state.queue.length - MAX_QUEUE) + ' oldest events');
      state.queue = state.queue.slice(state.queue.length - MAX_QUEUE);
    }
  }

  function removeSent(batch) {
    var sent = {};
    batch.forEach(function (ev) { sent[ev.eventId] = true; });
    state.queue = state.queue.filter(function (ev) { return !sent[ev.eventId]; });
    persist();
  }

  function url(path, withKey) {
    var u = cfg.endpoint + path;
    return withKey && cfg.key ? u + '?key=' + encodeURIComponent(cfg.key) : u;
  }

  function headers() {
    var h = { 'Content-Type': 'application/json', 'X-Anonymous-Id': anonymousId() };
    if (cfg.key) h.Authorization = 'Bearer ' + cfg.key;
    return h;
  }

  // POST JSON; resolves to {status, body, retryAfter} or {status: 0} on a network error or timeout.
  function post(path, payload) {
    if (typeof global.fetch !== 'function') return Promise.resolve({ status: 0 });
    var ctrl = typeof global.AbortController === 'function' ? new AbortController() : null;
    var timeout = ctrl ? setTimeout(function () { ctrl.abort(); }, REQUEST_TIMEOUT_MS) : null;
    return Promise.resolve().then(function () { // a synchronous throw becomes a failed send
      return global.fetch(url(path, false), {
        method: 'POST',
        headers: headers(),
        body: JSON.stringify(payload),
        credentials: 'same-origin',
        signal: ctrl ? ctrl.signal : undefined,
      });
    }).then(function (res) {
      return res.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        return { status: res.status, body: body, retryAfter: res.headers.get('Retry-After') };
      });
    }).catch(function () {
      return { status: 0 };
    }).then(function (r) {
      if (timeout) clearTimeout(timeout);
      return r;
    });
  }

  function retryAfterMs(header) {
    if (!header) return 0;
    var secs = Number(header);
    var ms = isFinite(secs) ? secs * 1000 : Date.parse(header) - Date.now();
    return isFinite(ms) && ms > 0 ? Math.min(ms, RETRY_AFTER_CAP_MS) : 0;
  }

  function backoffMs(attempt) {
    var ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, attempt - 1));
    return Math.round(ceiling / 2 + Math.random() * ceiling / 2); // jitter keeps clients apart
  }

  function errorText(body) {
    var e = body && body.error;
    return e ? e.code + ': ' + e.message : 'no error body';
  }

  // Send one batch: 'sent' (stored, duplicates or rejected ones dropped), 0 to resend smaller batches
  // now, or the delay in ms before a retry.
  function sendBatch(batch) {
    return post('/v1/events', { events: batch }).then(function (r) {
      if (r.status >= 200 && r.status < 300) {
        var results = r.body && Array.isArray(r.body.results) ? r.body.results : [];
        results.forEach(function (res) {
          if (res && res.status === 'rejected') {
            var ev = batch[res.index] || {};
            warn('event ' + ev.eventType + ' ' + ev.productId + ' rejected: ' + errorText(res));
          }
        });
        return 'sent';
      }
      if (r.status === 413 && batch.length > 1) {
        state.batchLimit = Math.ceil(batch.length / 2); // too many bytes: try smaller batches at once
        return 0;
      }
      if (r.status === 0 || r.status === 408 || r.status === 429 || r.status >= 500) {
        state.attempt += 1;
        var wait = retryAfterMs(r.retryAfter);
        var delay = Math.max(wait, backoffMs(state.attempt));
        if (wait || r.status === 429) state.holdUntil = Date.now() + delay; // the server asked: flush() waits too
        return delay;
      }
      warn('dropping ' + batch.length + ' events: HTTP ' + r.status + ' ' + errorText(r.body));
      return 'sent';
    });
  }

  function batchSize() {
    return Math.max(1, Math.min(MAX_BATCH, Math.floor(cfg.batchSize) || 20));
  }

  function clearTimer() {
    if (state.timer) { clearTimeout(state.timer); state.timer = null; }
  }

  function schedule(ms) {
    if (state.timer) return;
    state.timer = setTimeout(function () { state.timer = null; safeRun(); }, ms);
  }

  function settle(ok) {
    var waiters = state.waiters;
    state.waiters = [];
    waiters.forEach(function (resolve) { resolve(ok); });
  }

  // Send the queue batch by batch until it is empty or a send fails (then a backoff retry is scheduled).
  function run() {
    if (state.sending || !state.ready) return;
    var hold = state.holdUntil - Date.now();
    if (hold > 0) { schedule(hold); settle(false); return; }
    clearTimer();
    if (!state.queue.length) { settle(true); return; }
    state.sending = true;
    var batch = state.queue.slice(0, Math.min(batchSize(), state.batchLimit));
    sendBatch(batch).then(function (outcome) {
      state.sending = false;
      if (outcome === 'sent') {
        state.attempt = 0;
        state.holdUntil = 0;
        removeSent(batch);
        run();
      } else if (outcome === 0) {
        run();
      } else {
        clearTimer();
        schedule(outcome);
        settle(false);
      }
    }).catch(function (err) {
      state.sending = false;
      warn('send failed:', err);
      settle(false);
    });
  }

  var safeRun = guard('send', run);

  // Page is going away: hand what is queued to the browser, which delivers it after we are gone.
  function beacon() {
    if (!state.ready || !state.queue.length) return;
    var nav = global.navigator;
    if (!nav || typeof nav.sendBeacon !== 'function' || typeof global.Blob !== 'function') return;
    var chunks = [];
    var size = batchSize();
    for (var i = 0; i < state.queue.length; i += size) chunks.push(state.queue.slice(i, i + size));
    while (chunks.length) {
      var chunk = chunks.shift();
      var payload = { events: chunk };
      if (cfg.key) payload.key = cfg.key;
      var blob = new Blob([JSON.stringify(payload)], { type: 'text/plain;charset=UTF-8' });
      if (blob.size > BEACON_BYTES && chunk.length > 1) {
        var half = Math.ceil(chunk.length / 2);
        chunks.unshift(chunk.slice(0, half), chunk.slice(half));
        continue;
      }
      var ok = false;
      try {
        ok = nav.sendBeacon(url('/v1/events', true), blob);
      } catch (e) { ok = false; }
      if (!ok) break; // the rest stays in localStorage for the next page load
      removeSent(chunk);
    }
  }

  function listen() {
    if (state.listening) return;
    state.listening = true;
    try {
      var onHide = guard('beacon', beacon);
      if (global.document) {
        document.addEventListener('visibilitychange', function () {
          if (document.visibilityState === 'hidden') onHide();
        });
      }
      global.addEventListener('pagehide', onHide);
      global.addEventListener('online', guard('online', function () { state.attempt = 0; run(); }));
    } catch (e) { warn('cannot listen for page hide:', e); }
  }

  function timestamp(ts) {
    if (ts instanceof Date && !isNaN(ts.getTime())) return ts.toISOString();
    if (typeof ts === 'number' && isFinite(ts)) return ts;
    if (typeof ts === 'string' && ts) return ts;
    return new Date().toISOString();
  }

  function track(eventType, productId, props) {
    if (typeof productId === 'number' && isFinite(productId)) productId = String(productId);
    if (!isId(eventType) || !isId(productId)) {
      warn('track(eventType, productId) needs two non-empty strings; got', eventType, productId);
      return;
    }
    var p = props && typeof props === 'object' ? props : {};
    var ev = {
      eventId: uuid(),
      eventType: eventType,
      productId: productId,
      anonymousId: anonymousId(),
      timestamp: timestamp(p.timestamp),
      sessionId: isId(p.sessionId) ? p.sessionId : sessionId(),
    };
    if (cfg.userId) ev.userId = cfg.userId;
    if (typeof p.value === 'number' && isFinite(p.value)) ev.value = p.value;
    else if (p.value !== undefined && p.value !== null) warn('ignoring non-numeric value', p.value);
    if (isId(p.recommendationId)) ev.recommendationId = p.recommendationId;
    if (p.properties && typeof p.properties === 'object' && !Array.isArray(p.properties)) {
      try {
        ev.properties = JSON.parse(JSON.stringify(p.properties));
      } catch (e) {
        warn('ignoring properties that cannot be sent as JSON:', e);
      }
    }
    state.queue.push(ev);
    trim();
    if (state.ready) persist(); // before init the storage key (per endpoint) is not known yet
    if (!state.ready || state.attempt > 0) return; // before init, or a backoff retry is already due
    if (state.queue.length >= cfg.batchSize) run();
    else schedule(cfg.flushInterval);
  }

  function init(options) {
    var o = options && typeof options === 'object' ? options : {};
    if (typeof o.endpoint === 'string' && o.endpoint.replace(/\/+$/, '') !== cfg.endpoint) {
      if (state.ready) save(queueKey(), null); // the queue moves to the new endpoint's key
      cfg.endpoint = o.endpoint.replace(/\/+$/, '');
    }
    if (o.key === null || typeof o.key === 'string') cfg.key = o.key || null;
    if (typeof o.batchSize === 'number' && o.batchSize >= 1) cfg.batchSize = Math.min(MAX_BATCH, Math.floor(o.batchSize));
    if (typeof o.flushInterval === 'number' && o.flushInterval >= 0) cfg.flushInterval = o.flushInterval;
    if (isId(o.userId)) cfg.userId = o.userId;
    else if (o.userId === undefined && !cfg.userId && isId(load(UID_KEY))) cfg.userId = load(UID_KEY);
    if (cfg.userId) save(UID_KEY, cfg.userId);
    var aid = anonymousId();
    state.queue.forEach(function (ev) { // events tracked before init
      if (!ev.anonymousId) ev.anonymousId = aid;
      if (!ev.userId && cfg.userId) ev.userId = cfg.userId;
    });
    restore();
    persist();
    state.ready = true;
    listen();
    if (state.queue.length) schedule(0);
  }

  function flush() {
    return new Promise(function (resolve) {
      if (!state.ready) { resolve(state.queue.length === 0); return; }
      if (!state.queue.length && !state.sending) { resolve(true); return; }
      if (state.holdUntil > Date.now()) { resolve(false); return; } // the server asked us to wait
      state.waiters.push(resolve);
      if (!state.sending) run(); // an explicit flush does not wait out a network-error backoff
    }).catch(function () { return false; });
  }

  // Tie the anonymous history to userId; later events carry userId. Resolves to the server's answer or null.
  function identify(userId) {
    if (!isId(userId)) {
      warn('identify(userId) needs a non-empty string; got', userId);
      return Promise.resolve(null);
    }
    cfg.userId = userId;
    save(UID_KEY, userId);
    var aid = anonymousId();
    var attempt = 0;
    function tryOnce() {
      return post('/v1/identify', { userId: userId, anonymousId: aid }).then(function (r) {
        if (r.status >= 200 && r.status < 300) return r.body;
        if ((r.status === 0 || r.status === 429 || r.status >= 500) && ++attempt < 4) {
          return new Promise(function (res) {
            setTimeout(res, Math.max(retryAfterMs(r.retryAfter), backoffMs(attempt)));
          }).then(tryOnce);
        }
        warn('identify failed: HTTP ' + r.status + ' ' + errorText(r.body));
        return null;
      });
    }
    return flush().then(tryOnce).catch(function (err) { warn('identify failed:', err); return null; });
  }

  // Forget the signed-in user (sign out); the anonymous id stays.
  function reset() {
    cfg.userId = null;
    save(UID_KEY, null);
  }

  function helper(type, build) {
    return guard(type, function (productId, arg) { track(type, productId, build ? build(arg) : undefined); });
  }

  var api = {
    __recsql: true,
    version: VERSION,
    init: guard('init', init),
    track: guard('track', track),
    flush: guard('flush', flush, function () { return Promise.resolve(false); }),
    identify: guard('identify', identify, function () { return Promise.resolve(null); }),
    reset: guard('reset', reset),
    anonymousId: guard('anonymousId', anonymousId, null),
    userId: guard('userId', function () { return cfg.userId; }, null),
    pending: guard('pending', function () { return state.queue.length; }, 0),
    trackViewEvent: helper('view'),
    trackClickEvent: helper('click', function (recommendationId) { return { recommendationId: recommendationId }; }),
    trackAddToCartEvent: helper('add_to_cart'),
    trackRemoveFromCartEvent: helper('remove_from_cart'),
    trackPurchaseEvent: helper('purchase', function (value) { return { value: value }; }),
    trackRatingEvent: helper('rating', function (rating) { return { value: rating }; }),
    trackWishlistEvent: helper('wishlist'),
  };

  global.recsql = api;

  // Calls made before the script loaded, by the snippet `window.recsql = window.recsql || []; recsql.push([...])`.
  try {
    if (Array.isArray(previous)) {
      previous.forEach(function (call) {
        if (Array.isArray(call) && typeof api[call[0]] === 'function') api[call[0]].apply(null, call.slice(1));
      });
    }
  } catch (e) { warn('replaying queued calls failed:', e); }
})(typeof window !== 'undefined' ? window : this);
