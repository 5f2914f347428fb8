// Loads each dashboard page five times in Debian's Chromium and prints, as
// JSON, the median time from navigation to the load event per path.
// Run by `cargo xtask bench ui` (tests/src/bin/residency-bench/ui.rs).
// Environment: BASE, TOKEN, PATHS (a JSON array of paths).
import { chromium } from "playwright-core";

const { BASE, TOKEN, PATHS } = process.env;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const out = {};
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  await page.goto(`${BASE}/ui/login`);
  await page.fill("#token", TOKEN);
  await page.click("button[type=submit]");
  await page.waitForURL((u) => u.pathname === "/ui");
  for (const path of JSON.parse(PATHS)) {
    const times = [];
    for (let i = 0; i < 5; i++) {
      await page.goto(`${BASE}${path}`, { waitUntil: "load" });
      times.push(await page.evaluate(() => {
        const n = performance.getEntriesByType("navigation")[0];
        return n.loadEventEnd - n.startTime;
      }));
    }
    times.sort((a, b) => a - b);
    out[path] = times[2];
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
