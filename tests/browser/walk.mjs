// The customer portal, walked in a real browser (Debian's chromium driven by playwright-core):
// pricing page → hand-off link → create a key (secret shown once, gone after reload) → call the
// gateway with it → the usage chart shows the call → start a SEPA upgrade (instructions + QR) →
// the operator confirms → the dashboard shows `pro` and the key's limit is 100/min.
//
// Started by run.sh with BASE_URL (the gateway), SERVICE_TOKEN and SCREENSHOT_DIR. Fails (exit 1)
// on any failed check and on any console error or uncaught exception in any page. Every wait is
// on a condition with a deadline; nothing sleeps to synchronise.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const BASE = process.env.BASE_URL;
const TOKEN = process.env.SERVICE_TOKEN;
const SHOTS = process.env.SCREENSHOT_DIR || 'screenshots';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
if (!BASE || !TOKEN) {
  console.error('walk.mjs: BASE_URL and SERVICE_TOKEN are required');
  process.exit(2);
}
mkdirSync(SHOTS, { recursive: true });

const problems = [];
let step = 0;

function check(ok, what) {
  if (!ok) {
    throw new Error(`check failed: ${what}`);
  }
  console.log(`  ✓ ${what}`);
}

/** Polls `probe` until it returns a truthy value, or fails after `ms`. */
async function eventually(what, ms, probe) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await probe();
    if (last) {
      console.log(`  ✓ ${what}`);
      return last;
    }
    if (Date.now() > deadline) {
      throw new Error(`not within ${ms} ms: ${what}`);
    }
    await new Promise((r) => setTimeout(r, 100)); // poll interval of a condition, not a sync sleep
  }
}

async function shot(page, name) {
  step += 1;
  const file = join(SHOTS, `${String(step).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`  📷 ${file}`);
}

/** Console errors and uncaught exceptions fail the walk, except the browser's own note about
 *  a refusal page's status on a navigation we expect to be refused. */
function watch(page, label) {
  const expectedStatus = new Set();
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    const m = /status of (\d{3})/.exec(text);
    if (m && expectedStatus.has(Number(m[1]))) return;
    problems.push(`[${label}] console error: ${text} (${msg.location().url || page.url()})`);
  });
  page.on('pageerror', (err) => problems.push(`[${label}] uncaught: ${err.message}`));
  page.on('requestfailed', (req) => {
    // ERR_ABORTED is the browser cancelling a request itself (the page navigated away while its
    // favicon loaded); the server never failed it. Any other failure is a problem.
    const why = req.failure()?.errorText;
    if (why === 'net::ERR_ABORTED' && req.url().endsWith('/favicon.svg')) return;
    problems.push(`[${label}] request failed: ${req.url()} ${why}`);
  });
  return expectedStatus;
}

async function api(path, body) {
  const r = await fetch(BASE + path, {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await r.json();
  if (!r.ok) throw new Error(`${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

// playwright-core starts chromium with a fresh, temporary --user-data-dir of its own.
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});

let failed = false;
try {
  const customer = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await customer.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });
  const page = await customer.newPage();
  const customerExpects = watch(page, 'customer');

  console.log('1. pricing page');
  const pricing = await page.goto(`${BASE}/portal/pricing`);
  check(pricing.status() === 200, 'pricing page answers 200');
  check((pricing.headers()['content-security-policy'] || '').includes("script-src 'self'"), 'strict CSP header');
  check((await page.textContent('h1')) === 'Pricing', 'heading "Pricing"');
  check((await page.textContent('[data-testid="price-pro-monthly"]')) === '29.00 EUR', 'Pro costs 29.00 EUR a month');
  check((await page.textContent('[data-testid="sepa-pro-monthly"]')) === '28.57 EUR', 'Pro by SEPA costs 28.57 EUR (1.5 % off)');
  check(!(await page.isVisible('[data-testid="price-pro-yearly"]')), 'yearly prices hidden at first');
  await shot(page, 'pricing-monthly');
  await page.click('.cycle-toggle button[data-cycle="yearly"]');
  await page.waitForSelector('[data-testid="price-pro-yearly"]', { state: 'visible' });
  check(!(await page.isVisible('[data-testid="price-pro-monthly"]')), 'the toggle switches to yearly prices');
  check((await page.textContent('[data-testid="price-pro-yearly"]')) === '290.00 EUR', 'Pro costs 290.00 EUR a year');
  await shot(page, 'pricing-yearly');

  console.log('2. hand-off link from the operator\'s backend');
  const userId = `walk-${Date.now()}`;
  const link = await api('/portal/api/handoff', { user_id: userId });
  check(link.url.startsWith(`${BASE}/portal/login?token=`), 'hand-off answers a sign-in URL');
  await page.goto(link.url);
  check(new URL(page.url()).pathname === '/portal/dashboard', 'landed on the dashboard');
  check(!page.url().includes('token'), 'no token in the address bar after the redirect');
  const cookies = await customer.cookies(`${BASE}/portal/dashboard`);
  const session = cookies.find((c) => c.name === 'tg_portal');
  check(session && session.httpOnly && session.path === '/portal' && session.sameSite === 'Lax', 'session cookie is HttpOnly, SameSite=Lax, Path=/portal');
  check((await page.textContent('#current-plan')) === 'free', 'a new customer is on free');
  await shot(page, 'dashboard-new');

  console.log('3. create a key: the secret is shown once');
  await page.fill('.create-key input[name="name"]', 'Walk key');
  await page.click('#create-key');
  await page.waitForSelector('#secret-value');
  const secret = (await page.textContent('#secret-value')).trim();
  check(/^cli_free_[A-Za-z0-9_-]{43}$/.test(secret), 'a cli_free_ key is shown');
  await page.click('button[data-copy="secret-value"]');
  await page.waitForFunction(() => document.querySelector('button[data-copy="secret-value"]').textContent === 'Copied');
  check((await page.evaluate(() => navigator.clipboard.readText())) === secret, 'the copy button put the key on the clipboard');
  const keyId = await page.getAttribute('#new-secret', 'data-key');
  check(/^key_[0-9a-f]{16}$/.test(keyId), `the new key is ${keyId}`);
  check((await page.textContent(`#key-${keyId} .start`)).startsWith(secret.slice(0, 12)), 'the key table shows the start of the key only');
  await shot(page, 'key-created');
  await page.reload(); // re-sends the form: the server recognises it and creates nothing
  check((await page.locator('#secret-value').count()) === 0, 'after a reload the secret is gone');
  check((await page.textContent('.notice')).includes('already submitted'), 'the reload is told it created nothing');
  check(!(await page.content()).includes(secret), 'the page holds the secret nowhere');
  check((await page.locator('tr.key').count()) === 1, 'reloading created no second key');
  await shot(page, 'after-reload');

  console.log('4. call the gateway with the key');
  const calls = await eventually('the gateway admits the new key (≤ 1 s feed)', 5000, async () => {
    const r = await fetch(`${BASE}/demo/hello`, { headers: { 'x-api-key': secret } });
    return r.status === 200 ? r : null;
  });
  check((calls.headers.get('ratelimit-policy') || '').includes('"minute";q=10;'), 'the free key has 10/min at the gateway');

  console.log('5. the usage chart shows the call');
  const today = new Date().toISOString().slice(0, 10);
  const bar = `#chart-${keyId} rect[data-day="${today}"]`;
  await eventually('today\'s bar counts the call', 10000, async () => {
    await page.goto(`${BASE}/portal/dashboard`);
    return Number(await page.getAttribute(bar, 'data-count')) >= 1;
  });
  check(Number(await page.getAttribute(`#chart-${keyId}`, 'data-total')) >= 1, 'the chart total counts it');
  check(Number(await page.getAttribute(bar, 'height')) > 0, 'and draws a bar for it');
  check((await page.textContent(`#key-${keyId} .limit-minute`)) === '10/min', 'the key is limited to 10/min on free');
  await page.locator('#usage').scrollIntoViewIfNeeded();
  await shot(page, 'usage-chart');

  console.log('6. start a SEPA upgrade: instructions and QR');
  const pro = page.locator('.plan-upgrade[data-plan="pro"]');
  await pro.locator('select[name="cycle"]').selectOption('monthly');
  check((await pro.locator('button[data-provider="stripe"]').isDisabled()) && (await pro.locator('.na').first().textContent()) === 'not available', 'an unconfigured provider is shown disabled, "not available"');
  await pro.locator('button[data-provider="sepa"]').click();
  await page.waitForURL(/\/portal\/payments\/pay_[A-Za-z0-9]+$/);
  const paymentId = new URL(page.url()).pathname.split('/').pop();
  check((await page.textContent('#sepa-amount')) === '28.57 EUR', 'the transfer is for 28.57 EUR');
  check((await page.textContent('#sepa-iban')) === 'DE89 3704 0044 0532 0130 00', 'to the configured IBAN');
  check((await page.textContent('#sepa-bic')) === 'COBADEFFXXX', 'with the BIC');
  check(/^RF\d{2}[A-Z0-9]{1,21}$/.test(await page.textContent('#sepa-reference')), 'with an RF creditor reference');
  await page.waitForFunction(() => {
    const img = document.getElementById('sepa-qr');
    return img && img.complete && img.naturalWidth > 0;
  });
  check(true, 'the EPC QR image loaded');
  await shot(page, 'sepa-instructions');

  console.log('7. the operator confirms the transfer');
  const operator = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const op = await operator.newPage();
  watch(op, 'operator');
  const opLink = await api('/portal/api/operator-handoff', {});
  await op.goto(opLink.url);
  check(new URL(op.url()).pathname === '/portal/operator', 'operator landed on the operator view');
  const row = op.locator(`tr.pending-transfer[data-payment="${paymentId}"]`);
  check((await row.count()) === 1, 'the transfer is listed as pending');
  check((await row.getAttribute('data-user')) === userId, 'for the customer');
  await shot(op, 'operator-pending');
  await row.locator('button[data-action="confirm"]').click();
  await op.waitForURL(/notice=confirmed/);
  check((await op.locator(`tr.pending-transfer[data-payment="${paymentId}"]`).count()) === 0, 'no longer pending');
  check((await op.getAttribute(`#payments tr[data-payment="${paymentId}"]`, 'data-status')) === 'succeeded', 'the payment succeeded');
  await shot(op, 'operator-confirmed');

  console.log('8. the dashboard shows pro and the key allows 100/min');
  await page.goto(`${BASE}/portal/dashboard`);
  check((await page.textContent('#current-plan')) === 'pro', 'the plan is pro');
  check((await page.textContent(`#key-${keyId} .limit-minute`)) === '100/min', 'the key\'s limit is 100/min');
  check((await page.textContent(`#key-${keyId} .key-plan`)) === 'pro', 'the key is on pro');
  check((await page.getAttribute('#subscription li.sub', 'data-status')) === 'active', 'the subscription is active');
  await eventually('the gateway applies 100/min to the same key', 5000, async () => {
    const r = await fetch(`${BASE}/demo/hello`, { headers: { 'x-api-key': secret } });
    return r.status === 200 && (r.headers.get('ratelimit-policy') || '').includes('"minute";q=100;');
  });
  await shot(page, 'dashboard-pro');

  console.log('9. refusals are clear');
  customerExpects.add(401); // from here on, refusal pages are the point
  const used = await page.goto(link.url);
  check(used.status() === 401, 'a used hand-off link is refused (401)');
  check((await page.textContent('.message')).includes('already been used'), 'with a message saying so');
  await shot(page, 'link-used');

  console.log('10. sign out');
  // The used link ended nothing: sign out from the dashboard.
  const again = await api('/portal/api/handoff', { user_id: userId });
  await page.goto(again.url);
  await page.click('header form[action="/portal/logout"] button');
  await page.waitForURL(/\/portal\/pricing\?notice=signed_out/);
  const gone = await page.goto(`${BASE}/portal/dashboard`);
  check(gone.status() === 401, 'after signing out the dashboard needs a new link');
  await shot(page, 'signed-out');
} catch (e) {
  failed = true;
  console.error(`✗ ${e.message}`);
} finally {
  await browser.close();
}

if (problems.length) {
  failed = true;
  console.error('✗ console errors or page errors:');
  for (const p of problems) console.error(`  ${p}`);
}
if (failed) {
  process.exit(1);
}
console.log(`browser walk passed (${step} screenshots in ${SHOTS})`);
