// Unit tests of tracker.js: the queue, splitting, retry and unload rules,
// deterministically, in node's built-in test runner (no npm packages):
//   node --test crates/tracking-api/assets/tracker.test.mjs
//
// The tracker runs in a `node:vm` context whose window, document, navigator,
// localStorage, fetch and timers are fakes driven by the test. The fake
// network enforces what Chromium enforces: keepalive fetches and beacons a
// page has in flight share 64 KiB (beyond it, fetch rejects and sendBeacon
// returns false), and a page that is gone never sees an answer.

import {test} from 'node:test';
import assert from 'node:assert/strict';
import vm from 'node:vm';
import fs from 'node:fs';
import zlib from 'node:zlib';
import {webcrypto} from 'node:crypto';

const SOURCE = fs.readFileSync(new URL('./tracker.js', import.meta.url), 'utf8');
const README = fs.readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');
const QUOTA = 65536;
const PAYLOAD = 61440;

// The page snippet exactly as the README gives it.
const SNIPPET = (() => {
  const line = README.split('\n').find(l => l.includes('window.tracking = window.tracking ||'));
  assert.ok(line, 'README.md must show the page snippet (window.tracking = window.tracking || …)');
  return line.trim();
})();

const settle = () => new Promise(r => setImmediate(r));

class Storage {
  constructor() {
    this.map = new Map();
    this.limit = Infinity; // characters a value may have
    this.broken = false; // every call throws (storage disabled)
  }
  getItem(k) {
    if (this.broken) throw new Error('SecurityError');
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    if (this.broken) throw new Error('SecurityError');
    v = String(v);
    if (v.length > this.limit) throw new Error('QuotaExceededError');
    this.map.set(k, v);
  }
  removeItem(k) {
    if (this.broken) throw new Error('SecurityError');
    this.map.delete(k);
  }
}

// One browser profile: a clock, the origin's localStorage, and the server
// side (every request any page made, what arrived).
class Browser {
  constructor() {
    this.now = 1_763_000_000_000;
    this.storage = new Storage();
    this.requests = [];
    this.arrived = []; // events of requests answered 2xx (or beacons), in order
    this.quotaFailures = 0;
    this.pages = [];
  }

  open(options = {}) {
    const page = new Page(this, options);
    this.pages.push(page);
    return page;
  }

  // Requests not answered yet.
  pending() {
    return this.requests.filter(r => r.state == 'open');
  }

  // Moves the clock, firing due timers of live pages in time order.
  async advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let next = null;
      for (const p of this.pages) {
        if (!p.alive) continue;
        for (const t of p.timers.values()) if (t.at <= end && (!next || t.at < next.t.at)) next = {p, t};
      }
      if (!next) break;
      this.now = Math.max(this.now, next.t.at);
      next.p.timers.delete(next.t.id);
      next.t.fn();
      await settle();
    }
    this.now = end;
    await settle();
  }

  // A live server: answers every request with `answer(req)` (a status, or
  // 'fail' for a network error) as time passes, `ms` in total.
  async serve(ms, answer = () => 204) {
    for (let t = 0; t < ms; t += 50) {
      for (let guard = 0; guard < 1000 && this.pending().length; guard++) {
        for (const r of this.pending()) {
          const a = answer(r);
          if (a == 'fail') r.fail();
          else r.answer(a);
        }
        await settle();
      }
      await this.advance(50);
    }
  }

  ids() {
    return this.arrived.map(e => e.event_id);
  }
}

class Page {
  constructor(browser, {
    calls = [], // tracking(...) calls made by the page before the script loads
    href = 'https://www.shop.example/p1?utm_source=news',
    referrer = 'https://www.shop.example/',
    src = 'https://t.shop.example/v1/tracker.js',
    endpoint = null, // data-endpoint
    load = true,
    batch = null, // the API's batch limit, written into the script as the API does
  } = {}) {
    this.browser = browser;
    this.source = batch == null ? SOURCE : SOURCE.replace('BATCH = 500,', `BATCH = ${batch},`);
    assert.ok(batch == null || this.source != SOURCE, 'tracker.js declares BATCH = 500,');
    this.alive = true;
    this.timers = new Map();
    this.nextTimer = 1;
    this.inflight = 0; // keepalive bytes in flight (Chromium's quota)
    this.listeners = {document: {}, window: {}};
    const page = this;
    const on = where => (type, fn) => (page.listeners[where][type] ||= []).push(fn);
    const document = {
      currentScript: {src, getAttribute: n => (n == 'data-endpoint' ? endpoint : null)},
      querySelector: () => null,
      referrer,
      visibilityState: 'visible',
      addEventListener: on('document'),
    };
    const ctx = {
      document,
      location: {href},
      navigator: {sendBeacon: (url, body) => page.beacon(url, body)},
      localStorage: browser.storage,
      fetch: (url, init) => page.fetch(url, init),
      setTimeout: (fn, ms) => page.setTimeout(fn, ms),
      clearTimeout: id => page.timers.delete(id),
      crypto: webcrypto,
      URL,
      AbortController,
      addEventListener: on('window'),
      __now: () => browser.now,
    };
    ctx.window = ctx;
    this.document = document;
    this.ctx = vm.createContext(ctx);
    vm.runInContext('Date.now = () => __now();', this.ctx);
    vm.runInContext(SNIPPET, this.ctx);
    for (const c of calls) this.call(...c);
    if (load) this.load();
  }

  load() {
    vm.runInContext(this.source, this.ctx);
  }

  // tracking(...) as the page calls it.
  call(...args) {
    this.ctx.__args = args;
    vm.runInContext('tracking.apply(null, __args)', this.ctx);
  }

  setTimeout(fn, ms) {
    const id = this.nextTimer++;
    this.timers.set(id, {id, at: this.browser.now + Math.max(0, ms | 0), fn});
    return id;
  }

  record(kind, url, body, extra) {
    const bytes = Buffer.byteLength(body);
    const parsed = JSON.parse(body);
    assert.deepEqual(Object.keys(parsed), ['events'], 'a payload is {"events": [...]}');
    const req = {kind, url, body, bytes, events: parsed.events, page: this, state: 'open', ...extra};
    assert.ok(bytes <= PAYLOAD, `a payload of ${bytes} bytes is over 60 KiB`);
    assert.ok(req.events.length >= 1 && req.events.length <= 500, `${req.events.length} events in a payload`);
    this.browser.requests.push(req);
    return req;
  }

  fetch(url, init) {
    assert.equal(init.method, 'POST');
    assert.equal(typeof init.keepalive, 'boolean');
    assert.equal(init.credentials, 'include');
    assert.equal(init.headers, undefined, 'no headers: a string body goes as text/plain, without a preflight');
    assert.equal(typeof init.body, 'string');
    // Only keepalive requests count against the quota.
    const bytes = init.keepalive ? Buffer.byteLength(init.body) : 0;
    if (this.inflight + bytes > QUOTA) {
      this.browser.quotaFailures++;
      return Promise.reject(new TypeError('Failed to fetch (keepalive quota)'));
    }
    return new Promise((resolve, reject) => {
      const req = this.record('fetch', url, init.body, {signal: init.signal, keepalive: init.keepalive});
      this.inflight += bytes;
      // As in Chromium: the bytes are freed once the answer is complete, a
      // task after the promise resolved, not when it resolves.
      const end = () => {
        if (req.state != 'open') return false;
        this.setTimeout(() => (this.inflight -= bytes), 0);
        return true;
      };
      req.answer = status => {
        if (!end()) return;
        req.state = 'answered';
        req.status = status;
        if (status >= 200 && status < 300) this.browser.arrived.push(...req.events);
        if (this.alive) resolve({status, text: () => Promise.resolve('')});
      };
      req.fail = () => {
        if (!end()) return;
        req.state = 'failed';
        if (this.alive) reject(new TypeError('Failed to fetch'));
      };
      init.signal.addEventListener('abort', () => {
        if (!end()) return;
        req.state = 'aborted';
        if (this.alive) reject(new DOMException('aborted', 'AbortError'));
      });
    });
  }

  beacon(url, body) {
    const bytes = Buffer.byteLength(body);
    if (this.inflight + bytes > QUOTA) return false;
    const req = this.record('beacon', url, body);
    this.inflight += bytes;
    // The browser delivers it; the page never learns how it went.
    req.answer = status => {
      if (req.state != 'open') return;
      this.inflight -= bytes;
      req.state = 'answered';
      req.status = status;
      if (status >= 200 && status < 300) this.browser.arrived.push(...req.events);
    };
    req.fail = () => {
      if (req.state != 'open') return;
      this.inflight -= bytes;
      req.state = 'failed';
    };
    return true;
  }

  fire(where, type, event = {}) {
    for (const fn of this.listeners[where][type] || []) fn(event);
  }

  // Switching tabs.
  hideTab() {
    this.document.visibilityState = 'hidden';
    this.fire('document', 'visibilitychange');
  }
  showTab() {
    this.document.visibilityState = 'visible';
    this.fire('document', 'visibilitychange');
  }

  // Navigating away: the page is gone after pagehide; its requests carry on.
  leave() {
    this.hideTab();
    this.fire('window', 'pagehide', {persisted: false});
    this.alive = false;
    // The browser cancels what is not keepalive.
    for (const r of this.browser.pending()) if (r.page == this && r.kind == 'fetch' && !r.keepalive) r.state = 'cancelled';
    this.timers.clear();
  }
}

// A page whose first request (carrying `calls`) fails: the API is unreachable.
const unreachable = async (b, calls) => {
  const page = b.open({calls});
  await b.advance(500);
  b.requests.at(-1).fail();
  await b.advance(0);
  return page;
};

const bigProps = i => ({i, blob: 'x'.repeat(400)}); // an event of about 500 bytes
const types = events => events.map(e => e.type);
const stored = b => JSON.parse(b.storage.getItem('_tracking') || '{"d":0,"e":[]}');

test('the snippet queue is replayed in order, each event with its fields', async () => {
  const b = new Browser();
  const page = b.open({calls: [['page_view'], ['add_to_cart', {sku: 'a-1'}]]});
  page.call('purchase', {total: 12});
  assert.equal(b.requests.length, 0, 'nothing leaves before the flush delay');
  await b.advance(499);
  assert.equal(b.requests.length, 0);
  await b.advance(1);
  assert.equal(b.requests.length, 1);
  const [req] = b.requests;
  assert.equal(req.url, 'https://t.shop.example/v1/events', 'the origin the script came from');
  assert.deepEqual(types(req.events), ['page_view', 'add_to_cart', 'purchase']);
  const [pv, cart] = req.events;
  assert.deepEqual(Object.keys(pv).sort(), ['event_id', 'referrer', 'ts', 'type', 'url']);
  assert.deepEqual(cart.props, {sku: 'a-1'});
  assert.equal(pv.url, 'https://www.shop.example/p1?utm_source=news');
  assert.equal(pv.referrer, 'https://www.shop.example/');
  assert.equal(pv.ts, b.now - 500);
  assert.match(pv.event_id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(new Set(req.events.map(e => e.event_id)).size, 3);
});

test('data-endpoint overrides the origin: a full URL, or an origin alone', async () => {
  for (const [endpoint, expected] of [
    ['https://collect.shop.example/custom/path', 'https://collect.shop.example/custom/path'],
    ['https://collect.shop.example', 'https://collect.shop.example/v1/events'],
    ['/relative/events', 'https://www.shop.example/relative/events'],
  ]) {
    const b = new Browser();
    const page = b.open({endpoint, calls: Array.from({length: 10}, () => ['e'])});
    page.call('e');
    await b.advance(0);
    assert.equal(b.requests[0].url, expected, endpoint);
  }
});

test('a few events are sent at once; an empty page sends nothing; no empty payload', async () => {
  const b = new Browser();
  const page = b.open();
  await b.advance(5000);
  assert.equal(b.requests.length, 0);
  for (let i = 0; i < 9; i++) page.call('e', {i});
  assert.equal(b.requests.length, 0);
  page.call('e', {i: 9});
  assert.equal(b.requests.length, 0, 'not in the middle of the calling task');
  for (let i = 10; i < 30; i++) page.call('e', {i});
  await b.advance(0);
  assert.equal(b.requests.length, 1, 'the tenth event triggers a send at the next task');
  assert.equal(b.requests[0].events.length, 30, 'with everything tracked in that task');
});

test('one payload in flight at a time: the first goes alone, the rest wait for its answer', async () => {
  const b = new Browser();
  const page = b.open({calls: [['page_view']]});
  await b.advance(500);
  assert.equal(b.pending().length, 1);
  for (let i = 0; i < 40; i++) page.call('e', {i});
  await b.advance(5000);
  assert.equal(b.pending().length, 1, 'still waiting for the first answer');
  assert.deepEqual(types(b.requests[0].events), ['page_view']);
  b.requests[0].answer(204);
  await b.advance(0);
  assert.equal(b.pending().length, 1);
  assert.equal(b.requests[1].events.length, 40, 'the rest in one payload');
});

test('payloads stay under 60 KiB and the batch limit; all events arrive once, in order', async () => {
  const b = new Browser();
  const page = b.open();
  for (let i = 0; i < 300; i++) page.call('big', bigProps(i));
  for (let i = 0; i < 900; i++) page.call('small', {i});
  await b.serve(5000);
  assert.equal(b.arrived.length, 1001, 'bounded at 1000 events held, and one report');
  assert.deepEqual(b.arrived.filter(e => e.type == 'tracker_dropped').map(e => e.props), [{events: 200}]);
  const sizes = b.requests.map(r => r.bytes);
  assert.ok(sizes.every(s => s <= PAYLOAD), String(sizes));
  assert.ok(sizes[0] > PAYLOAD - 600, `payloads are filled (${sizes[0]} bytes)`);
  const arrived = b.arrived.filter(e => e.type != 'tracker_dropped');
  // The 200 oldest were dropped (bounded memory) and reported.
  assert.deepEqual(arrived.map(e => e.props.i), [...Array(100).keys()].map(i => i + 200).concat([...Array(900).keys()]));
  assert.equal(new Set(b.ids()).size, b.arrived.length);
  assert.equal(b.quotaFailures, 0);
});

test('back-to-back payloads never overrun the keepalive quota, nor wait for a retry', async () => {
  // Chromium frees a keepalive request's bytes a task after its answer:
  // the next 60 KiB keepalive fetch started at once is refused.
  const b = new Browser();
  const page = b.open();
  for (let i = 0; i < 600; i++) page.call('big', bigProps(i));
  await b.serve(500);
  assert.equal(b.quotaFailures, 0);
  assert.equal(b.arrived.length, 600, 'all within half a second: no 1 s retry between payloads');
  assert.ok(b.requests.length >= 5 && b.requests.every(r => r.keepalive));
});

test('quota still held by beacons: a visible page fetches without keepalive, taken back at unload', async () => {
  const b = new Browser();
  const page = b.open();
  for (let i = 0; i < 100; i++) page.call('big', bigProps(i));
  page.hideTab(); // beacons take the quota; the browser has not sent them yet
  const beacons = b.requests.length;
  assert.ok(beacons >= 1);
  page.showTab();
  for (let i = 100; i < 110; i++) page.call('big', bigProps(i));
  await b.advance(500);
  const plain = b.pending().filter(r => r.kind == 'fetch');
  assert.equal(plain.length, 1);
  assert.equal(plain[0].keepalive, false, 'no room for a keepalive fetch');
  page.leave(); // the browser would cancel it: the tracker takes it back first
  assert.equal(plain[0].state, 'aborted');
  b.pending().forEach(r => r.answer(204));
  b.open();
  await b.serve(3000);
  assert.deepEqual(b.arrived.map(e => e.props.i).sort((x, y) => x - y), [...Array(110).keys()]);
  assert.equal(b.quotaFailures, 0);
});

test('a payload of small events is cut at the batch limit of 500', async () => {
  const b = new Browser();
  const page = b.open({href: 'https://a.b/', referrer: ''});
  for (let i = 0; i < 900; i++) page.call('s');
  await b.serve(2000);
  assert.deepEqual(b.requests.map(r => r.events.length), [500, 400]);
  assert.ok(b.requests[0].bytes < PAYLOAD - 5000, `cut by count, not by size (${b.requests[0].bytes} bytes)`);
  assert.equal(new Set(b.ids()).size, 900);
});

test('a 503 and a network error are retried with the same event ids, backing off', async () => {
  const b = new Browser();
  const page = b.open({calls: [['page_view'], ['e']]});
  await b.advance(500);
  const first = b.requests[0];
  first.answer(503);
  await b.advance(0);
  page.call('later');
  await b.advance(999);
  assert.equal(b.requests.length, 1, 'no retry before 1 s');
  await b.advance(1);
  assert.equal(b.requests.length, 2);
  assert.deepEqual(b.requests[1].events.slice(0, 2), first.events, 'same events, same ids');
  b.requests[1].fail();
  await b.advance(0);
  await b.advance(1999);
  assert.equal(b.requests.length, 2, 'then 2 s');
  await b.advance(1);
  assert.equal(b.requests.length, 3);
  b.requests[2].answer(204);
  await b.advance(0);
  assert.deepEqual(types(b.arrived), ['page_view', 'e', 'later']);
});

test('a request without an answer is aborted after 10 s and retried', async () => {
  const b = new Browser();
  b.open({calls: [['page_view']]});
  await b.advance(500);
  const stuck = b.requests[0];
  await b.advance(9999);
  assert.equal(stuck.state, 'open');
  await b.advance(1);
  assert.equal(stuck.state, 'aborted');
  await b.advance(1000);
  assert.equal(b.requests.length, 2);
  assert.deepEqual(b.requests[1].events, stuck.events);
});

test('400 and 413 are not retried; the loss is counted and reported with the next event', async () => {
  for (const status of [400, 413]) {
    const b = new Browser();
    const page = b.open({calls: [['a'], ['b']]});
    await b.advance(500);
    b.requests[0].answer(status);
    await b.serve(5000);
    assert.equal(b.requests.length, 1, `${status} is final`);
    page.call('next');
    await b.serve(1000);
    assert.deepEqual(types(b.arrived), ['next', 'tracker_dropped']);
    assert.deepEqual(b.arrived[1].props, {events: 2});
  }
});

test('a 200 with rejected indexes: nothing is sent again, nothing counted as lost', async () => {
  const b = new Browser();
  const page = b.open({calls: [['ok'], ['Bad Type'], ['ok']]});
  await b.advance(500);
  b.requests[0].answer(200);
  await b.serve(5000);
  page.call('next');
  await b.serve(1000);
  assert.deepEqual(types(b.requests.flatMap(r => r.events)), ['ok', 'Bad Type', 'ok', 'next']);
});

test('leaving with 300 queued events: beacons within the quota, the rest waits for the next page', async () => {
  const b = new Browser();
  const page = b.open({calls: [['page_view']]});
  for (let i = 0; i < 300; i++) page.call('big', bigProps(i));
  assert.equal(b.requests.length, 0, 'all still queued');
  page.leave();
  const beacons = b.requests.filter(r => r.kind == 'beacon');
  assert.ok(beacons.length >= 1);
  assert.ok(beacons.reduce((s, r) => s + r.bytes, 0) <= QUOTA, 'within the 64 KiB quota');
  assert.ok(beacons[0].bytes > PAYLOAD - 600, 'as few payloads as possible: the first is full');
  const rest = stored(b).e;
  assert.equal(beacons.reduce((s, r) => s + r.events.length, 0) + rest.length, 301);
  b.pending().forEach(r => r.answer(204));

  const next = b.open({calls: [['page_view']], href: 'https://www.shop.example/p2'});
  assert.equal(b.storage.getItem('_tracking'), null, 'taken by the next page');
  await b.serve(5000);
  const bulk = b.arrived.filter(e => e.type == 'big').map(e => e.props.i);
  assert.deepEqual(bulk, [...Array(300).keys()], 'every event once, in order');
  assert.equal(new Set(b.ids()).size, 302);
  assert.equal(b.arrived.at(-1).url, 'https://www.shop.example/p2');
  assert.equal(b.quotaFailures, 0);
  assert.ok(next.alive);
});

test('leaving while a keepalive fetch is in flight: beacons get only the quota left', async () => {
  const b = new Browser();
  const page = b.open();
  for (let i = 0; i < 80; i++) page.call('big', bigProps(i));
  await b.advance(0);
  const inflight = b.pending()[0];
  assert.ok(inflight.bytes > 30000);
  for (let i = 80; i < 200; i++) page.call('big', bigProps(i));
  page.leave();
  const beacons = b.requests.filter(r => r.kind == 'beacon');
  assert.ok(beacons.length >= 1);
  assert.ok(inflight.bytes + beacons.reduce((s, r) => s + r.bytes, 0) <= QUOTA);
  // The fetch in flight is the browser's to deliver.
  b.pending().forEach(r => r.answer(204));
  b.open();
  await b.serve(3000);
  assert.deepEqual(b.arrived.map(e => e.props.i).sort((x, y) => x - y), [...Array(200).keys()]);
});

test('a beacon the browser refuses is kept in localStorage', async () => {
  const b = new Browser();
  const page = b.open({calls: [['a'], ['b']]});
  page.inflight = QUOTA - 100; // the site's own beacons hold the quota
  page.leave();
  assert.equal(b.requests.length, 0);
  assert.deepEqual(types(stored(b).e), ['a', 'b']);
  b.open();
  await b.serve(1000);
  assert.deepEqual(types(b.arrived), ['a', 'b']);
});

test('API unreachable: nothing is beaconed into the void; the next page sends it all once', async () => {
  const b = new Browser();
  const page = await unreachable(b, [['page_view']]);
  for (let i = 0; i < 5; i++) page.call('offline', {i});
  await b.advance(1000); // the retry is in flight when the page goes
  assert.equal(b.pending().length, 1);
  const retry = b.pending()[0];
  page.leave();
  assert.equal(retry.state, 'aborted', 'the retry is taken back');
  assert.equal(b.requests.filter(r => r.kind == 'beacon').length, 0);
  assert.deepEqual(types(stored(b).e), ['page_view', ...Array(5).fill('offline')]);

  const next = b.open({calls: [['page_view']], href: 'https://www.shop.example/p2'});
  await b.serve(3000);
  assert.deepEqual(types(b.arrived), ['page_view', ...Array(5).fill('offline'), 'page_view']);
  assert.deepEqual(b.ids().slice(0, 6), b.requests[0].events.map(e => e.event_id).concat(retry.events.slice(1).map(e => e.event_id)));
  assert.equal(new Set(b.ids()).size, 7);
  assert.ok(next.alive);
});

test('a failure answered after the tab was hidden is kept, not dropped', async () => {
  const b = new Browser();
  const page = b.open({calls: [['a']]});
  await b.advance(500);
  page.hideTab();
  b.requests[0].answer(503);
  await b.advance(0);
  assert.deepEqual(types(stored(b).e), ['a']);
  page.showTab();
  assert.equal(b.storage.getItem('_tracking'), null, 'taken back when visible again');
  await b.serve(2000);
  assert.deepEqual(types(b.arrived), ['a']);
});

test('back from the back/forward cache, the page takes its stored events back', async () => {
  const b = new Browser();
  const page = await unreachable(b, [['a']]);
  page.document.visibilityState = 'hidden';
  page.fire('window', 'pagehide', {persisted: true}); // frozen, not gone
  assert.deepEqual(types(stored(b).e), ['a']);
  page.document.visibilityState = 'visible';
  page.fire('window', 'pageshow', {persisted: true});
  assert.equal(b.storage.getItem('_tracking'), null);
  await b.serve(2000);
  assert.deepEqual(types(b.arrived), ['a']);
});

test('two tabs share localStorage: each stored event is sent by one of them, once', async () => {
  const b = new Browser();
  const one = b.open({calls: [['one_a'], ['one_b']]});
  const two = b.open({calls: [['two_a']]});
  await b.advance(500);
  b.pending().forEach(r => r.fail()); // both failed: the API is unreachable
  await b.advance(0);
  one.hideTab();
  two.hideTab();
  assert.deepEqual(types(stored(b).e), ['one_a', 'one_b', 'two_a'], 'merged, not overwritten');
  one.showTab(); // takes all three
  two.showTab(); // finds nothing
  await b.serve(3000);
  assert.deepEqual(types(b.arrived).sort(), ['one_a', 'one_b', 'two_a']);
  assert.equal(new Set(b.ids()).size, 3);
});

test('a damaged localStorage value is discarded, not fatal', async () => {
  const b = new Browser();
  b.storage.setItem('_tracking', '{"d":1,"e":[{"type":');
  b.open({calls: [['page_view']]});
  assert.equal(b.storage.getItem('_tracking'), null);
  await b.serve(1000);
  assert.deepEqual(types(b.arrived), ['page_view']);
});

test('events tracked after the page was hidden leave at once', () => {
  const b = new Browser();
  const page = b.open();
  page.leave(); // nothing queued: nothing sent
  assert.equal(b.requests.length, 0);
  page.call('exit', {reason: 'pagehide handler'});
  assert.equal(b.requests.length, 1);
  assert.equal(b.requests[0].kind, 'beacon');
});

test('a hidden page batches: 300 events are a few payloads, not 300 beacons', async () => {
  const b = new Browser();
  const page = b.open({calls: [['page_view']]});
  await b.serve(1000);
  page.hideTab();
  for (let i = 0; i < 300; i++) page.call('bg', {i});
  await b.serve(2000);
  assert.equal(b.arrived.length, 301);
  assert.ok(b.requests.length <= 3, `${b.requests.length} requests`);
  for (let i = 300; i < 310; i++) page.call('bg', {i});
  page.leave(); // what is queued leaves with the pagehide
  b.pending().forEach(r => r.answer(204));
  assert.equal(b.arrived.length, 311);
});

test('a hidden page whose requests fail keeps its events and sends them when visible', async () => {
  const b = new Browser();
  const page = b.open({calls: [['page_view']]});
  await b.serve(1000);
  page.hideTab();
  for (let i = 0; i < 10; i++) {
    page.call('bg', {i});
    await b.serve(1000, () => 503);
  }
  assert.equal(b.arrived.length, 1);
  assert.ok(b.requests.length <= 12, `${b.requests.length} requests`);
  page.showTab();
  await b.serve(3000);
  assert.deepEqual(b.arrived.filter(e => e.type == 'bg').map(e => e.props.i).sort((x, y) => x - y), [...Array(10).keys()]);
  assert.equal(new Set(b.ids()).size, 11);
});

test('held events are bounded: the oldest go first, counted and reported', async () => {
  const b = new Browser();
  const page = await unreachable(b, [['page_view']]); // everything is kept
  for (let i = 0; i < 1200; i++) page.call('e', {i});
  page.leave();
  const s = stored(b);
  assert.equal(s.e.length, 1000);
  assert.equal(s.e[0].props.i, 200, 'the newest 1000 are kept');
  assert.equal(s.d, 201, 'page_view and 200 events dropped');

  b.open();
  await b.serve(3000);
  assert.equal(b.arrived.length, 1001);
  assert.deepEqual(b.arrived.filter(e => e.type == 'e').map(e => e.props.i), [...Array(1000).keys()].map(i => i + 200));
  const report = b.arrived.find(e => e.type == 'tracker_dropped');
  assert.deepEqual(report.props, {events: 201});
});

test('held bytes are bounded too', async () => {
  const b = new Browser();
  const page = await unreachable(b, [['x']]);
  for (let i = 0; i < 150; i++) page.call('huge', {i, blob: 'y'.repeat(5000)});
  page.leave();
  const s = stored(b);
  assert.ok(JSON.stringify(s.e).length <= 500000, 'within 500 kB');
  assert.ok(s.e.length < 100 && s.e.length > 90, String(s.e.length));
  assert.equal(s.e.at(-1).props.i, 149);
  assert.equal(s.d + s.e.length, 151);
});

test('a full localStorage keeps the newest half that fits; a disabled one breaks nothing', async () => {
  const b = new Browser();
  b.storage.limit = 20000;
  const page = await unreachable(b, [['x']]);
  for (let i = 0; i < 100; i++) page.call('e', {i, pad: 'z'.repeat(300)});
  page.leave();
  const s = stored(b);
  assert.ok(s.e.length > 0 && s.e.length <= 60, String(s.e.length));
  assert.equal(s.e.at(-1).props.i, 99);
  assert.equal(s.d + s.e.length, 101);

  const c = new Browser();
  c.storage.broken = true;
  const p = await unreachable(c, [['a']]);
  p.hideTab(); // cannot be stored: stays in memory
  p.showTab();
  await c.serve(3000);
  assert.deepEqual(types(c.arrived), ['a']);
});

test('an event too big for any payload, or that JSON cannot carry, is dropped and counted', async () => {
  const b = new Browser();
  const circular = {};
  circular.self = circular;
  const page = b.open({calls: [['huge', {blob: 'x'.repeat(70000)}], ['circular', circular], ['ok']]});
  await b.serve(1000);
  assert.deepEqual(types(b.arrived), ['ok', 'tracker_dropped']);
  page.call('next');
  await b.serve(1000);
  assert.deepEqual(types(b.arrived), ['ok', 'tracker_dropped', 'next']);
  assert.deepEqual(b.arrived[1].props, {events: 2});
});

test('with a batch limit of 1 or 2 the drop report still goes, within the limit', async () => {
  for (const batch of [1, 2]) {
    const b = new Browser();
    const page = b.open({batch, calls: [['huge', {blob: 'x'.repeat(70000)}], ['a'], ['b'], ['c']]});
    await b.serve(3000);
    assert.deepEqual(types(b.arrived).sort(), ['a', 'b', 'c', 'tracker_dropped'], `batch ${batch}`);
    assert.deepEqual(b.arrived.find(e => e.type == 'tracker_dropped').props, {events: 1});
    for (const r of b.requests) assert.ok(JSON.parse(r.body).events.length <= batch, `batch ${batch}: ${r.body}`);
    page.call('d');
    await b.serve(1000);
    assert.equal(types(b.arrived).length, 5);
  }
});

test('a stored event that cannot be sent is dropped and counted, not sent empty for ever', async () => {
  const b = new Browser();
  // As an older tracker, or the site, may have left it.
  b.storage.setItem('_tracking', JSON.stringify({d: 0, e: [{type: 'big', props: {s: 'x'.repeat(70000)}}, {type: 'props9k', props: {s: 'y'.repeat(9000)}}, {type: 'small_after'}]}));
  b.open({calls: [['page_view']]});
  await b.serve(5000);
  assert.deepEqual(types(b.arrived), ['small_after', 'page_view', 'tracker_dropped']);
  assert.deepEqual(b.arrived[2].props, {events: 2});
  assert.equal(b.requests.length, 1);
});

test('props over the API limit of 8192 bytes are dropped and counted at track time', async () => {
  const b = new Browser();
  // {"s":"…"} is 8 bytes besides the string.
  b.open({calls: [['at_limit', {s: 'x'.repeat(8184)}], ['over', {s: 'x'.repeat(8185)}], ['over_utf8', {s: 'é'.repeat(4093)}]]});
  await b.serve(1000);
  assert.deepEqual(types(b.arrived), ['at_limit', 'tracker_dropped']);
  assert.deepEqual(b.arrived[1].props, {events: 2});
});

test('a second copy of the script changes nothing', async () => {
  const b = new Browser();
  const page = b.open({calls: [['page_view']]});
  const first = vm.runInContext('tracking', page.ctx);
  page.load();
  assert.equal(vm.runInContext('tracking', page.ctx), first);
  page.call('e');
  await b.serve(1000);
  assert.deepEqual(types(b.arrived), ['page_view', 'e']);
});

test('multi-byte text is measured in UTF-8 bytes', async () => {
  const b = new Browser();
  const page = b.open();
  // 3 bytes a character in UTF-8: 200 such events are ~360 kB in UTF-16 terms but must be split by bytes.
  for (let i = 0; i < 200; i++) page.call('jp', {i, s: '経由情報'.repeat(150)});
  await b.serve(5000);
  assert.equal(b.arrived.length, 200);
  assert.ok(b.requests.every(r => r.bytes <= PAYLOAD));
  assert.equal(b.quotaFailures, 0);
});

test('the source has no eval and fits 4 KiB gzipped', () => {
  assert.doesNotMatch(SOURCE, /\beval\b|\bFunction\s*\(|setTimeout\(\s*['"`]/);
  const gz = zlib.gzipSync(SOURCE, {level: 9}).length;
  assert.ok(gz <= 4096, `${gz} bytes gzipped`);
});
