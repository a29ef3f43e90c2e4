// The dashboard in headless Chromium (Debian's, no browser download): sign in, see an instance
// whose name is markup shown as text (no script runs), a member refused the admin page, the admin
// page for the admin, sign out. Screenshots of the main pages go to the artifacts directory.
// Usage: node dashboard.mjs BASE_URL DEMO_PASSWORD ADMIN_PASSWORD ARTIFACTS_DIR
import { chromium } from 'playwright-core';

const [base, demoPw, adminPw, artifacts] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const results = {};
try {
  const signIn = async (page, user, pw, project) => {
    await page.goto(`${base}/login`);
    await page.fill('input[name=username]', user);
    await page.fill('input[name=password]', pw);
    await page.fill('input[name=project]', project);
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  };
  const demo = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  let dialogs = 0;
  demo.on('dialog', async (d) => { dialogs += 1; await d.dismiss(); });
  await demo.goto(`${base}/login`);
  await demo.fill('input[name=username]', 'demo');
  await demo.fill('input[name=password]', 'wrong');
  await Promise.all([demo.waitForNavigation(), demo.click('button[type=submit]')]);
  results.wrongPassword = await demo.textContent('.error');
  await signIn(demo, 'demo', demoPw, '');
  results.afterSignIn = new URL(demo.url()).pathname;
  // The stylesheet loaded (the CSP allows no inline style): the header has its colour.
  results.headerColour = await demo.$eval('header', (h) => getComputedStyle(h).backgroundColor);
  await demo.goto(`${base}/project/instances`);
  results.names = await demo.$$eval('a.name', (tds) => tds.map((t) => t.textContent));
  results.injected = await demo.$$eval('main script, main img', (els) => els.length);
  await demo.screenshot({ path: `${artifacts}/instances.png`, fullPage: true });
  const resp = await demo.goto(`${base}/admin/hypervisors`);
  results.memberAdminStatus = resp.status();
  results.memberAdminText = await demo.textContent('main');
  results.memberAdminOthers = [];
  for (const p of ['instances', 'projects', 'users', 'flavors', 'usage']) {
    results.memberAdminOthers.push((await demo.goto(`${base}/admin/${p}`)).status());
  }
  results.memberSeesAdminNav = await demo.$$eval('nav a[href^="/admin/"]', (a) => a.length);
  await demo.goto(`${base}/project/instances`);
  await Promise.all([demo.waitForNavigation(), demo.click('header form.logout button')]);
  results.afterSignOut = new URL(demo.url()).pathname;
  await demo.goto(`${base}/project/instances`);
  results.afterSignOutRevisit = new URL(demo.url()).pathname;
  results.dialogs = dialogs;

  const phone = await (await browser.newContext({ viewport: { width: 390, height: 800 } })).newPage();
  await signIn(phone, 'admin', adminPw, 'admin');
  await phone.goto(`${base}/admin/hypervisors`);
  results.adminRows = await phone.$eval('table', (t) => t.tBodies[0].rows.length);
  await phone.screenshot({ path: `${artifacts}/hypervisors-phone.png`, fullPage: true });
  // Every admin page answers the admin, on a phone-sized screen without sideways page scroll.
  results.adminPages = {};
  for (const p of ['instances', 'projects', 'users', 'flavors', 'usage']) {
    const r = await phone.goto(`${base}/admin/${p}`);
    const wide = await phone.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
    results.adminPages[p] = [r.status(), wide];
    await phone.screenshot({ path: `${artifacts}/admin-${p}-phone.png`, fullPage: true });
  }
  await phone.goto(`${base}/login`);
  await phone.screenshot({ path: `${artifacts}/login-phone.png` });
} finally {
  await browser.close();
}
console.log(JSON.stringify(results));
