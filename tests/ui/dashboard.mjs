// Drives Debian's Chromium through the residency dashboard, as a compliance
// lead would: log in with the API token, read every page, acknowledge a
// violation, replay a pasted configuration, open a tenant's report.
//
// Run by tests/tests/dashboard.rs, which starts the daemon and checks what
// this prints (one JSON object on stdout) against the evidence store.
// Environment: BASE (http://127.0.0.1:PORT), TOKEN, SHOTS (a directory for
// the screenshots), CONFIG (a configuration file to paste), CHROMIUM.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const { BASE, TOKEN, SHOTS, CONFIG } = process.env;
const out = { requests: [], notLoopback: [], pages: {}, errors: [] };

function check(cond, what) {
  if (!cond) throw new Error(what);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-domain-reliability",
  ],
});
// A laptop's screen.
const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
const page = await context.newPage();
try {
  page.on("request", (r) => {
    out.requests.push(r.url());
    const u = new URL(r.url());
    if (u.protocol !== "data:" && u.hostname !== "127.0.0.1") out.notLoopback.push(r.url());
  });
  page.on("pageerror", (e) => out.errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") out.errors.push(m.text()); });

  // Without a session: to the login page; a form post is refused; the
  // JSON API does not take the cookie.
  await page.goto(`${BASE}/ui/violations`);
  check(new URL(page.url()).pathname === "/ui/login", `no session went to ${page.url()}`);
  const refused = await context.request.post(`${BASE}/ui/violations/1/ack`, {
    form: { note: "x", csrf: "x" }, headers: { origin: BASE }, maxRedirects: 0,
  });
  out.refusedWithoutSession = refused.status();
  await page.screenshot({ path: `${SHOTS}/login.png` });

  // Log in.
  await page.fill("#token", TOKEN);
  await page.fill("#name", "Dana (DPO)");
  await page.click("button[type=submit]");
  await page.waitForURL((u) => u.pathname === "/ui/violations");
  const cookies = await context.cookies();
  const c = cookies.find((x) => x.name === "residency_ui");
  out.cookie = c ? { httpOnly: c.httpOnly, sameSite: c.sameSite, path: c.path } : null;
  // The JSON API does not take the session, even sent to it by hand.
  const api = await context.request.get(`${BASE}/v1/flows`, {
    headers: { cookie: `residency_ui=${c ? c.value : ""}` },
  });
  out.apiWithCookieOnly = api.status();

  // Overview: the flow diagram and the map are drawn.
  await page.goto(`${BASE}/ui?days=1`);
  out.pages.overview = {
    title: await page.title(),
    bands: await page.locator("svg.sankey path.band").count(),
    nodes: await page.locator("svg.sankey g.node").count(),
    countries: await page.locator("svg.map path.country").count(),
    blocked: await page.locator("svg.map path[data-verdict=blocked]").evaluateAll((e) => e.map((x) => x.dataset.country)),
    allowed: await page.locator("svg.map path[data-verdict=allowed]").evaluateAll((e) => e.map((x) => x.dataset.country)),
    dayBars: await page.locator("svg.days rect.bar").count(),
    totalFlows: await page.locator("#total-flows").innerText(),
    checkpoint: await page.locator("#checkpoint").innerText(),
    clocks: await page.locator("#violations time[data-due]").count(),
    // Laptop width: nothing wider than the window.
    overflow: await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth),
  };
  // The clocks count down: the script changes the text within 2 s.
  const first = page.locator("#violations time[data-due]").first();
  const before = await first.innerText();
  await page.waitForTimeout(2100);
  out.pages.overview.clockTicks = before !== (await first.innerText());
  await page.screenshot({ path: `${SHOTS}/overview.png`, fullPage: true });

  // The keyboard: the first Tab reaches the skip link, the next ones the
  // navigation.
  await page.keyboard.press("Tab");
  const focus1 = await page.evaluate(() => document.activeElement.textContent.trim());
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  const focus3 = await page.evaluate(() => document.activeElement.textContent.trim());
  out.keyboard = [focus1, focus3];

  // Flows, filtered as the API filters.
  await page.goto(`${BASE}/ui/flows`);
  await page.selectOption("select[name=verdict]", "blocked");
  await page.click("form.filters button[type=submit]");
  await page.waitForURL((u) => u.searchParams.get("verdict") === "blocked");
  const wider = () => page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  out.pages.flows = {
    overflow: await wider(),
    rows: await page.locator("table.flows tbody tr").count(),
    why: await page.locator("table.flows td.why").first().innerText(),
  };
  await page.screenshot({ path: `${SHOTS}/flows.png`, fullPage: true });
  await page.locator("table.flows tbody tr a").first().click();
  await page.waitForURL((u) => /^\/ui\/flows\/\d+$/.test(u.pathname));
  out.pages.flow = { why: await page.locator("#why").innerText(), versions: await page.locator("#versions").innerText() };
  await page.screenshot({ path: `${SHOTS}/flow.png`, fullPage: true });

  // Violations: open one, acknowledge it with a note.
  await page.goto(`${BASE}/ui/violations`);
  await page.selectOption("select[name=state]", "open");
  await page.click("form.filters button[type=submit]");
  await page.waitForURL((u) => u.searchParams.get("state") === "open");
  out.pages.violations = { overflow: await wider() };
  await page.screenshot({ path: `${SHOTS}/violations.png`, fullPage: true });
  await page.locator("#violation-list tbody tr a").first().click();
  await page.waitForURL((u) => /^\/ui\/violations\/\d+$/.test(u.pathname));
  const id = Number(new URL(page.url()).pathname.split("/").pop());
  await page.fill("#note-ack", "SEC-42: the sync job was pointed at a US bucket; moved back");
  await page.click("form[action$='/ack'] button[type=submit]");
  await page.waitForURL((u) => u.searchParams.get("done") === "acknowledged");
  out.pages.violation = { id, state: await page.locator("#state").innerText(), done: await page.locator("p.done").innerText() };
  await page.screenshot({ path: `${SHOTS}/violation.png`, fullPage: true });

  // Policy: history, diff, and a pasted configuration replayed.
  await page.goto(`${BASE}/ui/policy`);
  await page.fill("#config", readFileSync(CONFIG, "utf8"));
  await page.click("form.what-if button[type=submit]");
  await page.waitForSelector("#replay-summary");
  out.pages.policy = {
    summary: await page.locator("#replay-summary").innerText(),
    newBlocks: await page.locator("#replay-summary [data-count=new_blocks]").innerText(),
    changes: await page.locator("#replay-changes tbody tr").count(),
  };
  await page.screenshot({ path: `${SHOTS}/policy-what-if.png`, fullPage: true });
  await page.goto(`${BASE}/ui/policy`);
  await page.screenshot({ path: `${SHOTS}/policy.png`, fullPage: true });

  // A tenant's transfer report, from the overview's link.
  await page.goto(`${BASE}/ui?days=1`);
  await page.locator("#tenants a[href^='/ui/report']").first().click();
  await page.waitForURL((u) => u.pathname === "/ui/report");
  out.pages.report = {
    h1: await page.locator("h1").innerText(),
    flows: await page.locator("td[data-total=flows]").innerText(),
  };
  await page.screenshot({ path: `${SHOTS}/report.png`, fullPage: true });

  // Logged out, the pages are closed again, and the old cookie, sent by
  // hand, is no session on the server either.
  const session = (await context.cookies()).find((x) => x.name === "residency_ui");
  await page.goto(`${BASE}/ui`);
  await page.click("form.logout button");
  await page.waitForURL((u) => u.pathname === "/ui/login");
  await page.goto(`${BASE}/ui/flows`);
  out.afterLogout = new URL(page.url()).pathname;
  const replayed = await context.request.get(`${BASE}/ui/flows`, {
    headers: { cookie: `residency_ui=${session ? session.value : ""}` }, maxRedirects: 0,
  });
  out.oldCookieAfterLogout = replayed.status();
} catch (e) {
  // Where it stopped, for the test's message and a look.
  out.failure = String(e);
  out.url = page.url();
  out.text = (await page.locator("body").innerText().catch(() => "")).slice(0, 2000);
  await page.screenshot({ path: `${SHOTS}/failure.png`, fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
