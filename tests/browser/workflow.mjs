// A user's day in the dashboard, in headless Chromium (Debian's package): overview, key pair
// created and downloaded, image uploaded with progress, a security group rule added, an instance
// launched from the wizard and watched until Active, a floating IP associated, the console log
// read, a command typed into the interactive console and its answer seen, the instance deleted.
// Prints one JSON line of observations; the Python test asserts on them.
// Usage: node workflow.mjs BASE_URL DEMO_PASSWORD ARTIFACTS_DIR UPLOAD_FILE
import { chromium } from 'playwright-core';
import { readFileSync } from 'node:fs';

const [base, demoPw, artifacts, uploadFile] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const results = { timings: {} };
const step = (name) => { results.lastStep = name; };
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  let dialogs = 0;
  page.on('dialog', async (d) => { dialogs += 1; await d.dismiss(); });
  // Server time of every dashboard page, from its Server-Timing header.
  page.on('response', (r) => {
    const u = new URL(r.url());
    const t = r.headers()['server-timing'];
    if (r.request().resourceType() === 'document' && t) {
      const ms = parseFloat((t.match(/dur=([0-9.]+)/) || [])[1]);
      const k = u.pathname.replace(/[0-9a-f]{8}-[0-9a-f-]{27}/g, '{id}');
      results.timings[k] = Math.max(results.timings[k] || 0, ms);
    }
  });
  const shot = (name) => page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });
  const go = async (path) => { await page.goto(`${base}${path}`); };
  const submit = async (selector) => {
    await Promise.all([page.waitForNavigation(), page.click(selector)]);
  };

  step('sign in');
  await go('/login');
  await page.fill('input[name=username]', 'demo');
  await page.fill('input[name=password]', demoPw);
  await submit('form[action="/login"] button[type=submit]');
  results.afterSignIn = new URL(page.url()).pathname;
  results.charts = await page.$$eval('figure.chart', (fs) => fs.map((f) => f.dataset.quota));
  await shot('overview');

  step('key pair');
  await go('/project/key_pairs');
  await page.fill('#create-key input[name=name]', 'browser-key');
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.click('#create-key button[type=submit]'),
  ]);
  results.keyFile = download.suggestedFilename();
  results.keyText = readFileSync(await download.path(), 'utf8').split('\n')[0];
  await go('/project/key_pairs');
  results.keyNames = await page.$$eval('span.name', (s) => s.map((e) => e.textContent));
  results.keyPageHasPrivate = (await page.content()).includes('PRIVATE KEY');
  await shot('key-pairs');

  step('image upload');
  await go('/project/images');
  await page.fill('#upload input[name=name]', 'uploaded-img');
  await page.selectOption('#upload select[name=disk_format]', 'raw');
  await page.setInputFiles('#upload input[name=file]', uploadFile);
  // Record the values the page gives its progress bar as the upload runs.
  const progress = [];
  await page.exposeFunction('reportProgress', (v) => { progress.push(v); });
  await page.evaluate(() => {
    const bar = document.getElementById('upload-progress');
    const orig = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, 'value');
    Object.defineProperty(bar, 'value', {
      get() { return orig.get.call(this); },
      set(v) { window.reportProgress(v); orig.set.call(this, v); },
    });
  });
  await Promise.all([page.waitForNavigation({ timeout: 120000 }), page.click('#upload button[type=submit]')]);
  results.progress = progress;
  results.uploadNotice = await page.textContent('main').then((t) => t.includes('Image uploaded.'));
  results.imageRow = await page.$$eval('tbody tr', (rows) => rows
    .map((r) => Array.from(r.cells).map((c) => c.textContent))
    .find((c) => c[0] === 'uploaded-img'));
  await shot('images');

  step('security group rule');
  await go('/project/security_groups');
  await submit('a[href^="/project/security_groups/"]:text-is("default")');
  await page.selectOption('#add-rule select[name=direction]', 'ingress');
  await page.selectOption('#add-rule select[name=protocol]', 'tcp');
  await page.fill('#add-rule input[name=port_min]', '8080');
  await page.fill('#add-rule input[name=remote_ip_prefix]', '198.18.0.0/15');
  await submit('#add-rule button[type=submit]');
  results.rules = await page.$$eval('tbody tr', (rows) => rows.map((r) => r.textContent));
  await shot('security-group');

  step('launch');
  await go('/project/instances/launch');
  await shot('launch');
  await page.fill('#launch input[name=name]', 'web-1');
  await page.selectOption('#launch select[name=image]', { label: 'onestack-tiny' });
  await page.selectOption('#launch select[name=flavor]', '1');
  await page.selectOption('#launch select[name=key_name]', 'browser-key');
  await submit('#launch button[type=submit]');
  results.afterLaunch = new URL(page.url()).pathname;
  results.launchNotice = await page.textContent('p.ok, p.error');
  const status = page.locator('tr:has(a.name:text-is("web-1")) [data-status-of]');
  results.firstStatus = await status.textContent();
  // No reload by the test: the page's own polling turns the status to ACTIVE.
  await page.waitForFunction(
    () => Array.from(document.querySelectorAll('[data-status-of]')).some((e) => e.textContent === 'ACTIVE'),
    null, { timeout: 120000 });
  results.activeStatus = await status.textContent();
  await shot('instances');

  step('detail and floating ip');
  await submit('a.name:text-is("web-1")');
  const fipChoice = await page.$eval('#associate select[name=floating_ip] option[value^="new:"]', (o) => o.value);
  await page.selectOption('#associate select[name=floating_ip]', fipChoice);
  await submit('#associate button[type=submit]');
  results.associateNotice = await page.textContent('p.ok, p.error');
  results.addresses = await page.textContent('dd.addresses');

  step('console log');
  const deadline = Date.now() + 180000;
  results.consoleLog = '';
  while (Date.now() < deadline) {
    results.consoleLog = (await page.textContent('#console-log').catch(() => '')) || '';
    if (/login:|onestack/i.test(results.consoleLog)) break;
    await page.waitForTimeout(3000);
    await page.reload();
  }
  results.consoleLogTail = results.consoleLog.slice(-300);

  step('interactive console');
  await page.click('#console');
  await page.waitForSelector('#console[data-connected=yes]', { timeout: 20000 });
  let answered = false;
  for (let i = 0; i < 8 && !answered; i += 1) {
    await page.keyboard.press('Enter');
    await page.keyboard.type('echo $((6*7))XY');
    await page.keyboard.press('Enter');
    answered = await page.waitForFunction(
      () => document.getElementById('console').textContent.includes('42XY'),
      null, { timeout: 5000 }).then(() => true, () => false);
  }
  results.consoleAnswered = answered;
  results.consoleTail = (await page.textContent('#console')).slice(-200);
  await shot('instance-detail');

  step('snapshot, stop and start');
  await submit('#snapshot button[type=submit]');
  results.snapshotNotice = await page.textContent('p.ok, p.error');
  const facts = page.locator('dl.facts [data-status-of]');
  // While the snapshot is taken the API refuses power actions (409); the live status says when
  // it is done.
  await page.waitForFunction(
    () => document.querySelector('dl.facts [data-status-of]').textContent === 'ACTIVE',
    null, { timeout: 120000 });
  await submit('#actions button[value=stop]');
  results.stopNotice = await page.textContent('p.ok, p.error');
  await page.waitForFunction(
    () => document.querySelector('dl.facts [data-status-of]').textContent === 'SHUTOFF',
    null, { timeout: 120000 });
  results.stoppedStatus = await facts.textContent();
  await page.reload();
  results.buttonsWhenStopped = await page.$$eval('#actions button', (b) => b.map((x) => x.value));
  await submit('#actions button[value=start]');
  await page.waitForFunction(
    () => document.querySelector('dl.facts [data-status-of]').textContent === 'ACTIVE',
    null, { timeout: 120000 });
  await page.reload();
  results.buttonsWhenActive = await page.$$eval('#actions button', (b) => b.map((x) => x.value));

  step('delete');
  await submit('#actions button[value=delete]');
  results.deleteNotice = await page.textContent('p.ok, p.error');
  await page.waitForFunction(
    () => !Array.from(document.querySelectorAll('a.name')).some((a) => a.textContent === 'web-1'),
    null, { timeout: 120000 });
  results.gone = true;

  step('network pages');
  for (const p of ['networks', 'routers', 'floating_ips']) {
    await go(`/project/${p}`);
    await shot(p.replace('_', '-'));
  }
  results.dialogs = dialogs;
  step('done');
} catch (e) {
  results.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(results));
