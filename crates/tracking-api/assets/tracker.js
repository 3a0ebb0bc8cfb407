/*! tracking-api browser tracker, served by the API at /v1/tracker.js (contract: README, "A first event") */
(() => {
  'use strict';
  const w = window, d = document, stub = w.tracking;
  // Loaded twice: the first copy owns the queue.
  if (stub && stub.l) return;
  const KEY = '_tracking', // localStorage: events waiting for a later page
    PAYLOAD = 61440, // bytes a payload may have (60 KiB)
    QUOTA = 65536, // bytes of keepalive fetches and beacons a page may have in flight
    PROPS = 8192, // bytes of props the API accepts
    BATCH = 500, // events a payload may have (the API's default batch limit)
    COUNT = 10, // queued events that trigger a send at once
    DELAY = 500, // ms before a send otherwise
    TIMEOUT = 10000, // ms a request may take before it counts as failed
    MAX_BACKOFF = 30000, // ms between retries, at most
    KEEP = 1000, // events held (in memory and in localStorage), at most
    KEEP_BYTES = 500000; // and their bytes

  const me = d.currentScript || d.querySelector('script[src*="/v1/tracker.js"]');
  const at = me && me.getAttribute('data-endpoint');
  const url = at ? new URL(at, location.href) : new URL('/v1/events', me ? me.src : location.href);
  if (url.pathname == '/') url.pathname = '/v1/events';
  const endpoint = url.href;

  // Events are kept as their JSON text `s` and its UTF-8 size `n`, oldest first.
  let queue = [],
    sending = null, // the payload in flight (fetch)
    keep = 0, // bytes of our keepalive fetches and beacons the browser may still count
    timer = 0,
    backoff = 0,
    down = false, // the last attempt failed: the API is unreachable for now
    hidden = false, // the page was hidden: what fails waits in localStorage
    gone = false, // pagehide: no timer may fire any more, send at once, by beacon
    ready = false,
    dropped = 0; // events given up and not reported yet

  const size = s => encodeURIComponent(s).replace(/%../g, '.').length;
  const item = s => ({s, n: size(s)});
  const text = p => '{"events":[' + p.map(i => i.s).join(',') + ']}';

  // Drops the oldest events beyond the bounds; counts them.
  const bound = list => {
    let b = 0, i = list.length;
    while (i-- > 0) if ((b += list[i].n) > KEEP_BYTES || list.length - i > KEEP) break;
    dropped += i + 1;
    return list.slice(i + 1);
  };

  const id = () => {
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    return [...b].map((x, i) => ([4, 6, 8, 10].includes(i) ? '-' : '') + (x + 256).toString(16).slice(1)).join('');
  };

  const event = (type, props) => item(JSON.stringify({
    type, props, event_id: id(), ts: Date.now(),
    url: location.href.slice(0, 2048), referrer: d.referrer.slice(0, 2048) || undefined,
  }));

  // Never sendable: over a payload, or props the API refuses (over 8 KiB).
  const big = (it, props) => it.n + 13 > PAYLOAD || size(JSON.stringify(props) || '') > PROPS;

  const add = (type, props) => {
    try {
      const it = event(type, props);
      if (big(it, props)) dropped++;
      else queue = bound(queue.concat(it));
    } catch (e) {
      dropped++; // props that JSON cannot carry
    }
  };

  // Takes the oldest events that fit `max` bytes and `batch` events.
  const cut = (max, batch = BATCH) => {
    let i = 0, b = 12;
    while (i < queue.length && i < batch && b + queue[i].n + 1 <= max) b += queue[i++].n + 1;
    const p = queue.splice(0, i);
    p.b = b;
    return p;
  };

  const later = ms => {
    if (!timer) timer = setTimeout(flush, ms);
  };

  // While visible: one keepalive fetch at a time, so that a browser without
  // the visitor cookie sends its first payload alone and the rest wait for the
  // answer that sets it, and the quota is never exceeded.
  const flush = () => {
    clearTimeout(timer);
    timer = 0;
    if (sending || !queue.length) return;
    // Events given up (and not reported yet) are reported to the API, in
    // room kept for the report in the next payload (with a batch limit of
    // 1, the report goes alone).
    const r = dropped && event('tracker_dropped', {events: dropped});
    const room = r && 13 + r.n <= PAYLOAD;
    const p = (sending = room ? cut(PAYLOAD - r.n - 1, BATCH - 1) : cut(PAYLOAD));
    if (room) {
      p.push(r);
      p.b += r.n + 1;
      dropped = 0;
    }
    // Keepalive only within the quota: Chromium refuses a keepalive fetch
    // beyond it ("Failed to fetch"), and frees a request's bytes only after
    // its answer is read, a task after the promise resolves.
    const k = (p.k = keep + p.b <= QUOTA);
    if (k) keep += p.b;
    const c = (p.c = new AbortController()), t = setTimeout(() => c.abort(), TIMEOUT);
    fetch(endpoint, {method: 'POST', body: text(p), keepalive: k, credentials: 'include', signal: c.signal})
      .then(r => r.text().then(() => r.status, () => r.status), () => 0)
      .then(status => new Promise(go => setTimeout(() => go(status), 0)))
      .then(status => {
        clearTimeout(t);
        if (k) keep -= p.b;
        // Taken back by `hide`.
        if (sending != p) return;
        sending = null;
        if (status > 199 && status < 300) {
          // Accepted, or 200 with `rejected`: those went to the API's dead letters.
          down = false;
          backoff = 0;
          if (queue.length) flush();
        } else if (!status || status == 408 || status == 429 || status > 499) {
          // Not taken: kept, and sent again later with the same event ids.
          queue = bound(p.concat(queue));
          down = true;
          backoff = Math.min(backoff * 2 || 1000, MAX_BACKOFF);
          if (hidden) hide();
          else later(backoff);
        } else {
          // 400, 413, …: sending it again cannot help.
          dropped += p.length;
          if (queue.length) flush();
        }
      });
  };

  // Hidden or leaving: beacons, oldest events first, in as few payloads as
  // the quota left allows; what does not fit (or everything, while the API is
  // unreachable) waits in localStorage for the next page.
  const hide = () => {
    hidden = true;
    clearTimeout(timer);
    timer = 0;
    // A retry in flight while the API is unreachable is taken back: kept,
    // not left to a request that will most likely fail after the page is gone;
    // so is a fetch without keepalive, which the browser cancels at unload.
    if (sending && (down || !sending.k)) {
      sending.c.abort();
      queue = sending.concat(queue);
      sending = null;
    }
    while (!down && queue.length) {
      const p = cut(Math.min(PAYLOAD, QUOTA - keep));
      let ok = false;
      if (p.length) try { ok = navigator.sendBeacon(endpoint, text(p)); } catch (e) {}
      if (!ok) {
        queue = p.concat(queue);
        break;
      }
      // Counted until the browser has surely sent it; it never says when.
      keep += p.b;
      setTimeout(() => (keep -= p.b), TIMEOUT);
    }
    if (queue.length || dropped) {
      queue = bound(load().concat(queue));
      // Storage full: without the oldest half (counted), until the rest fits.
      // Storage unusable: everything stays in memory, for this page.
      for (let k = queue; ; k = k.slice(Math.ceil(k.length / 2))) {
        try {
          localStorage.setItem(KEY, '{"d":' + (dropped + queue.length - k.length) + ',"e":[' + k.map(i => i.s).join(',') + ']}');
          queue = [];
          dropped = 0;
          break;
        } catch (e) {
          if (!k.length) break;
        }
      }
    }
  };

  // Takes the events (and the count of dropped ones) earlier pages left.
  const load = () => {
    try {
      const v = localStorage.getItem(KEY);
      localStorage.removeItem(KEY); // even when damaged
      const o = JSON.parse(v);
      if (o) {
        dropped += o.d | 0;
        // Stored by another version maybe: what cannot be sent is dropped,
        // or it would block the queue behind it.
        const l = [];
        for (const e of o.e) {
          const it = item(JSON.stringify(e));
          big(it, (e || 0).props) ? dropped++ : l.push(it);
        }
        return l;
      }
    } catch (e) {}
    return [];
  };

  const show = () => {
    hidden = gone = false;
    queue = bound(load().concat(queue));
    if (queue.length) later(DELAY);
  };

  const track = (type, props) => {
    add(type, props);
    // Hidden but alive: batched like a visible page (a beacon per event
    // would be one request per event); gone: no timer will ever fire.
    if (gone) hide();
    else if (ready && !down && queue.length >= COUNT) {
      // At the next task: events tracked in one go share a payload.
      clearTimeout(timer);
      timer = setTimeout(flush, 0);
    } else later(down ? backoff : DELAY);
  };

  const api = function (type, props) {
    track(type, props);
  };
  api.l = 1;
  w.tracking = api;
  show();
  ((stub && stub.q) || []).forEach(a => track(a[0], a[1]));
  ready = true;
  d.addEventListener('visibilitychange', () => (d.visibilityState == 'hidden' ? hide() : show()));
  w.addEventListener('pagehide', () => hide((gone = true)));
  w.addEventListener('pageshow', e => e.persisted && show());
})();
