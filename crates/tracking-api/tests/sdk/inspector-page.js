// Drives the event inspector's page (`/inspect` on the admin listener) in
// headless Chromium with Playwright, as an integrator's or QA engineer's
// test would, and prints a JSON report on stdout for tests/inspect_browser.rs.
//
// Env: ADMIN (http://host:port of the admin listener), API (the public
// one), PAGE (a page that loads the API's tracker and sends `page_view` and
// `add_to_cart`), CHROME (the browser), SCREENSHOT (a .png path).

const { chromium } = require('playwright-core');
const { execFileSync } = require('child_process');

const { ADMIN, API, PAGE, CHROME, SCREENSHOT } = process.env;

function curl(body) {
  return execFileSync('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}',
    '-H', 'content-type: application/json', '--data-binary', body, `${API}/v1/events`]).toString();
}

async function main() {
  const browser = await chromium.launch({
    executablePath: CHROME,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'],
  });
  try {
    return await drive(browser);
  } finally {
    await browser.close();
  }
}

async function drive(browser) {
  const report = {};
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const inspector = await context.newPage();
  const pageErrors = [];
  inspector.on('pageerror', (e) => pageErrors.push(String(e)));
  await inspector.goto(`${ADMIN}/inspect`);
  report.title = await inspector.title();
  const rows = (sel = '') => inspector.locator(`tr.ev${sel}`);

  // 1. The tracker on a page of the site: its events appear, no reload.
  const site = await context.newPage();
  await site.goto(PAGE);
  await rows(':has-text("add_to_cart")').first().waitFor({ timeout: 15000 });
  await rows(':has-text("page_view")').first().waitFor({ timeout: 15000 });

  // 2. With curl: the time from the POST to the row on screen.
  report.latency_ms = [];
  for (let i = 0; i < 5; i++) {
    const type = `curl_probe_${i}`;
    const t0 = Date.now();
    const status = curl(JSON.stringify({ type, client_id: 'curl-visitor', event_id: `probe-${i}` }));
    await rows(`:has-text("${type}")`).first().waitFor({ timeout: 10000 });
    report.latency_ms.push(Date.now() - t0);
    report.curl_status = status;
  }

  // 3. A batch with a refused event: the rejected row, with its reason.
  report.mixed_status = curl(JSON.stringify({ events: [
    { type: 'signup', client_id: 'curl-visitor', event_id: 'signup-1' },
    { type: 'Not A Type', client_id: 'curl-visitor' },
  ] }));
  await rows('[data-status="rejected"]').first().waitFor({ timeout: 10000 });

  // 4. Filters: by type, then by status.
  await inspector.fill('#f-type', 'signup');
  await inspector.waitForFunction(() => {
    const r = [...document.querySelectorAll('tr.ev')];
    return r.length === 1 && r[0].textContent.includes('signup');
  }, null, { timeout: 10000 });
  report.type_filter_rows = await rows().count();
  await inspector.fill('#f-type', '');
  await inspector.selectOption('#f-status', 'rejected');
  await inspector.waitForFunction(() => {
    const r = [...document.querySelectorAll('tr.ev')];
    return r.length >= 1 && r.every((x) => x.dataset.status === 'rejected');
  }, null, { timeout: 10000 });
  report.rejected_rows = await rows().count();

  // 5. Open the rejected one: its reason and raw input.
  await rows().first().click();
  await inspector.locator('#detail:not([hidden])').waitFor({ timeout: 5000 });
  report.detail_reason = await inspector.textContent('#detail-reason');
  report.detail_json = await inspector.textContent('#detail-json');
  await inspector.keyboard.press('Escape');
  await inspector.locator('#detail').waitFor({ state: 'hidden', timeout: 5000 });
  await inspector.selectOption('#f-status', '');

  // 6. The keyboard alone: `/` to the free-text filter, then j and Enter.
  await inspector.keyboard.press('/');
  report.slash_focus = await inspector.evaluate(() => document.activeElement && document.activeElement.id);
  await inspector.keyboard.type('curl_probe_3');
  await inspector.waitForFunction(() => {
    const r = [...document.querySelectorAll('tr.ev')];
    return r.length === 1 && r[0].textContent.includes('curl_probe_3');
  }, null, { timeout: 10000 });
  await inspector.keyboard.press('Escape'); // leaves the filter for the list
  await inspector.keyboard.press('j');
  await inspector.keyboard.press('Enter');
  await inspector.locator('#detail:not([hidden])').waitFor({ timeout: 5000 });
  report.keyboard_detail = await inspector.textContent('#detail-json');
  await inspector.keyboard.press('Escape');
  await inspector.fill('#f-q', '');

  // 7. A visitor followed across the short-session boundary (the API runs
  // with a 2 s short TTL): the row where the session changed, and why.
  curl(JSON.stringify({ type: 'visit_one', client_id: 'returning-visitor' }));
  await new Promise((r) => setTimeout(r, 3000));
  curl(JSON.stringify({ type: 'visit_two', client_id: 'returning-visitor' }));
  await inspector.fill('#f-client', 'returning-visitor');
  await inspector.waitForFunction(() => document.querySelectorAll('tr.ev').length === 2, null, { timeout: 10000 });
  const boundary = inspector.locator('tr.boundary');
  await boundary.first().waitFor({ timeout: 5000 });
  report.boundary = await boundary.first().textContent();
  await inspector.fill('#f-client', '');
  await rows(':has-text("visit_two")').first().waitFor({ timeout: 10000 });

  // The counts line catches up within its refresh (about a second).
  await inspector.waitForFunction(() => document.getElementById('c-accepted').textContent.trim() === '10',
    null, { timeout: 5000 }).catch(() => {});
  report.counts = {};
  for (const c of ['accepted', 'rejected', 'duplicate', 'dropped', 'held']) {
    report.counts[c] = (await inspector.textContent(`#c-${c}`)).trim();
  }
  report.rows = await rows().count();
  report.navigations_after = await inspector.evaluate(() => performance.getEntriesByType('navigation').length);
  await inspector.screenshot({ path: SCREENSHOT, fullPage: false });
  report.page_errors = pageErrors;
  return report;
}

main().then(
  (r) => { console.log(JSON.stringify(r)); },
  (e) => { console.log(JSON.stringify({ error: String(e && e.stack || e) })); process.exitCode = 1; },
);
