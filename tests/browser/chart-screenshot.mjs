// chart-screenshot.mjs — opens a job's page of a running kilnd in Debian's chromium
// (headless, playwright-core), with the bearer token when one is given, waits for its
// loss chart, saves a screenshot of the page and of the chart, and checks the chart's
// screenshot itself: the PNG is decoded (by the browser), the pixels of the training loss
// curve's colour are counted, and the curves' coloured pixels (the axes and grid are
// grey) must span most of the plot's width. So a page whose chart library is missing, or
// whose chart is empty, fails. Used by
// scripts/container-test.sh against the container:
//   node chart-screenshot.mjs URL JOB_ID OUT_DIR   (token in $KILN_DASHBOARD_TOKEN)
// Prints one line of figures; exits 0 when the chart is drawn, 1 otherwise.
import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';

const [url, job, out] = process.argv.slice(2);
if (!url || !job || !out) {
  console.error('usage: chart-screenshot.mjs URL JOB_ID OUT_DIR');
  process.exit(2);
}
mkdirSync(out, { recursive: true });
const TOKEN = process.env.KILN_DASHBOARD_TOKEN || '';
// The first line's colour in web/chart.js (COLORS[0]): the training loss.
const LOSS_RGB = [0x2f, 0x6f, 0xde];

const browser = await chromium.launch({
  executablePath: process.env.KILN_CHROMIUM || '/usr/bin/chromium', headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
    '--disable-background-networking', '--disable-component-update', '--no-first-run'],
});
let ok = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(30_000);
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  // the page keeps the token in localStorage (web/api.js): set it before the job page loads
  await page.goto(url + '/');
  if (TOKEN) await page.evaluate((t) => localStorage.setItem('kiln.token', t), TOKEN);
  await page.goto(url + '/#/job/' + job);
  await page.waitForFunction(() => Number(document.querySelector('[data-chart="loss"]')?.dataset.points) > 0);
  await page.waitForSelector('[data-chart="loss"] canvas');
  // two frames: the plot is drawn on the frame after its data arrives
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  await page.screenshot({ path: out + '/job.png', fullPage: true });
  const chart = await page.locator('[data-chart="loss"] canvas').first().screenshot();
  writeFileSync(out + '/loss-chart.png', chart);
  const points = await page.$eval('[data-chart="loss"]', (e) => Number(e.dataset.points));
  const found = await page.evaluate(async ({ png, rgb }) => {
    const img = new Image();
    img.src = 'data:image/png;base64,' + png;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.width;
    c.height = img.height;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let count = 0, minX = Infinity, maxX = -1;
    for (let i = 0; i < d.length; i += 4) {
      const r = d[i], g2 = d[i + 1], b = d[i + 2];
      if (Math.abs(r - rgb[0]) + Math.abs(g2 - rgb[1]) + Math.abs(b - rgb[2]) <= 60) count++;
      if (Math.max(r, g2, b) - Math.min(r, g2, b) < 60) continue; // grey: axes, grid, text
      const x = (i / 4) % c.width;
      minX = Math.min(minX, x);
      maxX = Math.max(maxX, x);
    }
    return { width: c.width, height: c.height, count, span: maxX >= minX ? maxX - minX + 1 : 0 };
  }, { png: chart.toString('base64'), rgb: LOSS_RGB });
  const library = await page.evaluate(() => typeof window.uPlot === 'function');
  console.log(`chart screenshot ${found.width}x${found.height}: ${found.count} pixels of the loss ` +
    `curve's colour, curves spanning ${found.span} px; ${points} points; uPlot ${library ? 'loaded' : 'MISSING'}; ` +
    `page errors: ${errors.length}`);
  // the plot area is the canvas less the y axis (60 px): the curve must cross most of it
  ok = found.count >= 100 && found.span >= 0.6 * (found.width - 60) && errors.length === 0 && library;
  if (!ok) console.error('the loss chart is not drawn' + (errors.length ? ': ' + errors.join(' | ') : ''));
} catch (e) {
  console.error('FAIL: ' + (e && e.stack || e));
} finally {
  await browser.close();
}
process.exit(ok ? 0 : 1);
