// dashboard.test.mjs — the dashboard in a real browser (Debian's chromium, headless,
// driven by playwright-core) against a running kilnd. Run by
// tests/test_browser_dashboard.c:  node dashboard.test.mjs <kilnd url> <artifacts dir> [big job id]
// Checks: the jobs table lists a running job with its run name and hyperparameters and
// sorts by a column; its loss curve appears and grows (points counted before and after);
// its log shows live; its state turns to succeeded and its final evaluation shows the
// confusion matrix; the compare view draws the single-point test metrics and labels runs
// by name; the cancel button cancels a second job; the submit template names this
// server's model and dataset and validates; the submit form shows a validation error at
// the right field; the inference panel shows probabilities; a text model's prompt box
// streams a continuation; no console errors. Writes jobs.png and job.png
// and prints the time to first paint of a job page with 100,000 points per series.
import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync, statSync, unlinkSync } from 'node:fs';

const [url, artifacts, bigJob] = process.argv.slice(2);
if (!url || !artifacts) { console.error('usage: dashboard.test.mjs URL ARTIFACTS [BIG_JOB]'); process.exit(2); }
mkdirSync(artifacts, { recursive: true });
const CHROMIUM = process.env.KILN_CHROMIUM || '/usr/bin/chromium';
const deadline = Date.now() + 150_000;
const TOKEN = process.env.KILN_DASHBOARD_TOKEN || '';

function check(ok, what) {
  if (!ok) throw new Error('check failed: ' + what);
  console.log('ok - ' + what);
}

async function call(method, path, body) {
  const headers = { 'Content-Type': 'application/json' };
  if (TOKEN) headers.Authorization = 'Bearer ' + TOKEN;
  const r = await fetch(url + path, { method, headers,
    body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await r.json().catch(() => null);
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(data)}`);
  return data;
}

// A tiny synthetic image dataset: which quadrant of an 8x8 image is bright (4 classes).
function quads(n, seed) {
  let s = seed;
  const rand = () => ((s = (s * 1664525 + 1013904223) >>> 0) >>> 27);
  const inputs = [], labels = [];
  for (let i = 0; i < n; i++) {
    const label = i % 4, image = [];
    for (let y = 0; y < 8; y++) {
      const row = [];
      for (let x = 0; x < 8; x++) row.push(((y >= 4) * 2 + (x >= 4)) === label ? 160 + rand() * 3 : rand());
      image.push(row);
    }
    inputs.push([image]);
    labels.push(label);
  }
  return { inputs, labels };
}

async function setup(nJobs = 2) {
  await call('POST', '/v1/datasets', { name: 'quads' });
  await call('POST', '/v1/datasets/quads/files/train?format=json', quads(512, 7));
  await call('POST', '/v1/datasets/quads/files/test?format=json', quads(128, 8));
  await call('POST', '/v1/models', { name: 'quads', input_shape: [1, 8, 8], layers: [
    { type: 'flatten' }, { type: 'linear', out_features: 256 }, { type: 'relu' },
    { type: 'linear', out_features: 256 }, { type: 'relu' }, { type: 'linear', out_features: 4 }] });
  const spec = (steps, name) => ({ name, model: 'quads', data: { dataset: 'quads', scale: 1 / 255, validation_split: 0.25 },
    optimizer: { type: 'adam', lr: 0.002 }, batch_size: 16, max_steps: steps,
    validation: { every_steps: 250 }, checkpoint_every_steps: 1000 });
  const steps = Number(process.env.KILN_DASHBOARD_STEPS || (nJobs === 2 ? 6000 : 3000));
  const a = await call('POST', '/v1/jobs', spec(steps, 'run a'));
  if (nJobs === 1) return { a: a.id };
  // queued behind a (one worker) and canceled from the table later: long enough that it is
  // still running then however fast the machine (with a's length it could end first: a
  // flaky 'cancel button never enabled' on a machine that sped up mid-test)
  const b = await call('POST', '/v1/jobs', spec(steps * 100, 'run b'));
  return { a: a.id, b: b.id };
}

// The full run: the first job runs while the page watches, the second is canceled.
async function mainFlow(context, page) {
  const jobs = await setup();
  // The validation request answers 400 on purpose; Chrome logs every 4xx it fetches.
  let expected400 = 0;
  page.on('response', (r) => { if (r.status() === 400 && r.url().includes('validate_only=true')) expected400++; });
  // jobs table lists the running job
  await page.goto(url + '/#/jobs');
  await page.evaluate(() => localStorage.removeItem('kiln.jobs.sort'));
  await page.reload();
  await page.waitForSelector(`tr[data-job="${jobs.a}"]`);
  check(true, 'the jobs table lists the job');
  const cells = await page.$$eval(`tr[data-job="${jobs.a}"] td`, (t) => t.map((e) => e.textContent));
  check(cells.includes('run a') && cells.includes('adam') && cells.includes('0.002') && cells.includes('16'),
    `the row shows the run name and its optimizer, lr and batch size (${cells.slice(2, 14).join(' | ')})`);
  const order = () => page.$$eval('#jobs tbody tr', (r) => r.map((e) => e.dataset.job));
  await page.waitForSelector(`tr[data-job="${jobs.b}"]`);
  check((await order())[0] === jobs.b, 'newest first by default');
  await page.click('th[data-sort="name"]');
  check((await order())[0] === jobs.a, 'a click on Name sorts by name, ascending');
  await page.click('th[data-sort="name"]');
  check((await order())[0] === jobs.b && await page.getAttribute('th[data-sort="name"]', 'data-dir') === 'desc',
    'a second click sorts the other way');
  await page.evaluate(() => localStorage.removeItem('kiln.jobs.sort'));

  // its curve appears and grows
  await page.goto(url + '/#/job/' + jobs.a);
  const points = () => page.$eval('[data-chart="loss"]', (e) => Number(e.dataset.points)).catch(() => 0);
  await page.waitForFunction(() => Number(document.querySelector('[data-chart="loss"]')?.dataset.points) > 0);
  const before = await points();
  await page.waitForFunction((n) => Number(document.querySelector('[data-chart="loss"]').dataset.points) > n,
    before, { timeout: 20_000 });
  const after = await points();
  check(after > before, `the loss curve grows live (${before} -> ${after} points)`);
  check(await page.$('[data-chart="loss"] canvas') !== null, 'the loss chart is drawn (uPlot canvas)');
  await page.waitForFunction(() => /started on cpu/.test(document.getElementById('job-log')?.textContent));
  check(true, 'the job page shows its log while it runs');

  await page.waitForFunction(() => document.getElementById('job-state')?.textContent === 'succeeded',
    null, { timeout: Math.max(1000, deadline - Date.now() - 60_000) });
  check(true, 'the job page shows succeeded');
  await page.waitForSelector('#confusion tbody tr');
  const confusion = await page.$$eval('#confusion tbody tr', (rows) => rows.map((r) =>
    [...r.querySelectorAll('td')].map((td) => Number(td.dataset.count))));
  const counted = confusion.flat().reduce((a, b) => a + b, 0);
  const diagonal = confusion.reduce((a, row, i) => a + row[i], 0);
  check(confusion.length === 4 && confusion.every((r) => r.length === 4) && counted === 128,
    `the final evaluation shows a 4 x 4 confusion matrix of the 128 validation samples (${counted})`);
  check(diagonal / counted > 0.9, `most of it on the diagonal (${diagonal} of ${counted})`);
  await page.waitForSelector('#checkpoints a[href$="/weights"]');
  check(true, 'the checkpoints table links the final weights');
  await page.waitForFunction(() => /succeeded at step/.test(document.getElementById('job-log')?.textContent));
  check(true, 'the log follows the job to its end');

  await page.waitForTimeout(300);
  await page.screenshot({ path: artifacts + '/job.png', fullPage: true });
  // the compare view: single-point series drawn, runs labelled by their names
  await page.goto(url + '/#/compare?ids=' + jobs.a);
  await page.waitForSelector('[data-chart="test_accuracy"] canvas');
  const single = await page.$eval('[data-chart="test_accuracy"]', (e) => Number(e.dataset.points));
  const legend = await page.textContent('[data-chart="test_accuracy"]');
  check(single === 1 && legend.includes('run a'),
    `the compare view draws test_accuracy's single point, labelled "run a" (${single} point)`);
  await page.screenshot({ path: artifacts + '/compare.png', fullPage: true });

  // cancel the second job from the table
  await page.goto(url + '/#/jobs');
  const row = `tr[data-job="${jobs.b}"]`;
  await page.waitForSelector(row);
  await page.click(`${row} button[data-action="cancel"]:not([disabled])`);
  await page.waitForFunction((sel) => document.querySelector(sel + ' .badge')?.textContent.startsWith('cancel'),
    row);
  await page.waitForFunction((sel) => document.querySelector(sel + ' .badge')?.textContent === 'canceled', row);
  check(true, 'the cancel button cancels the second job');
  await page.screenshot({ path: artifacts + '/jobs.png', fullPage: true });

  // the template names this server's model and dataset, and validates as it is
  await page.goto(url + '/#/submit');
  await page.evaluate(() => localStorage.removeItem('kiln.draft'));
  await page.reload();
  await page.waitForFunction(() => document.getElementById('spec').value.includes('"quads"'));
  const template = JSON.parse(await page.inputValue('#spec'));
  check(template.model === 'quads' && template.data.dataset === 'quads',
    `the submit template names model ${template.model} and dataset ${template.data.dataset}`);
  await page.click('#validate');
  await page.waitForSelector('#submit-result.ok-box');
  check(true, 'the template validates on this server');

  // a broken spec: the error appears at its field
  await page.goto(url + '/#/submit');
  const broken = { model: 'quads', data: { dataset: 'quads' }, optimizer: { type: 'adam', lr: -1 }, batch_size: 16 };
  await page.fill('#spec', JSON.stringify(broken, null, 2));
  await page.click('#validate');
  await page.waitForSelector('[data-path="optimizer.lr"] .field-error');
  const message = await page.textContent('[data-path="optimizer.lr"] .field-error');
  check(/-1|≥ 0|>= 0/.test(message), `the validation error shows at optimizer.lr ("${message.trim()}")`);

  // inference: draw in the top-left quadrant, probabilities appear
  await page.goto(url + '/#/infer?job=' + jobs.a);
  await page.waitForSelector('#draw');
  const box = await (await page.$('#draw')).boundingBox();
  await page.mouse.move(box.x + 30, box.y + 30);
  await page.mouse.down();
  for (const [x, y] of [[110, 30], [110, 110], [30, 110], [30, 30], [90, 60]])
    await page.mouse.move(box.x + x, box.y + y, { steps: 4 });
  await page.mouse.up();
  await page.waitForSelector('#probs .row');
  const rows = await page.$$eval('#probs .row', (r) => r.map((e) => e.textContent));
  check(rows.length === 4, `the inference panel shows 4 class probabilities (${rows.join(' | ')})`);
  check(Math.abs(await page.$$eval('#probs .row .num', (n) => n.reduce((s, e) => s + parseFloat(e.textContent), 0)) - 100) < 1,
    'the probabilities add up to 100%');

  // pick a test image: its probabilities and its true label
  await page.waitForSelector('#samples canvas');
  const thumbs = await page.$$('#samples canvas');
  check(thumbs.length === 16, `the strip shows 16 test images (${thumbs.length})`);
  const label = Number(await thumbs[5].getAttribute('data-label'));
  await thumbs[5].click();
  await page.waitForSelector('#true-label');
  const truth = await page.textContent('#true-label');
  const picked = await page.$$eval('#probs .row .num', (n) => n.map((e) => parseFloat(e.textContent)));
  check(picked.length === 4 && Math.abs(picked.reduce((a, b) => a + b, 0) - 100) < 1 &&
    Number(await page.getAttribute('#true-label', 'data-label')) === label,
    `a picked test image shows probabilities (${picked.join('% ')}%) and its true label ("${truth}")`);
  check(picked.indexOf(Math.max(...picked)) === label, 'the trained model classifies the picked image right');

  await textModelFlow(page);

  // first paint of a job page with 100,000 points per series
  if (bigJob) {
    const fresh = await context.newPage();
    fresh.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    const t0 = Date.now();
    await fresh.goto(url + '/#/job/' + bigJob);
    await fresh.waitForFunction(() => {
      const c = document.querySelectorAll('[data-chart] canvas');
      return c.length >= 3 && [...document.querySelectorAll('[data-chart]')].every((e) => Number(e.dataset.points) > 0);
    }, null, { timeout: 30_000 });
    await fresh.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    const ms = Date.now() - t0;
    const shown = await fresh.$eval('[data-chart="loss"]', (e) => e.dataset.points);
    console.log(`first paint of a job page with 100,000 points per series: ${ms} ms ` +
      `(the loss chart holds ${shown} points after the server's max_points downsampling)`);
    const processes = await fresh.textContent('[data-key="Processes"]');
    const perRank = await fresh.textContent('[data-key="Per-rank samples/s"]');
    check(/^2 × cpu \(mpi\), restarts 1\/2$/.test(processes) && /0: 2,?500 \(node1\), 1: 2,?400 \(node2\)/.test(perRank),
      `a distributed job shows its world size ("${processes}") and each rank's samples/s ("${perRank}")`);
    await fresh.screenshot({ path: artifacts + '/job-100k.png', fullPage: true });
    await fresh.close();
  }

  return (t) => expected400 > 0 && /Failed to load resource: the server responded with a status of 400/.test(t);
}

// A text model (issue 12): a small GPT trained on an uploaded text gets a prompt box,
// and its continuation streams into the page token by token.
async function textModelFlow(page) {
  const headers = TOKEN ? { Authorization: 'Bearer ' + TOKEN } : {};
  const text = 'to be, or not to be, that is the question.\n'.repeat(40);
  const up = await fetch(url + '/v1/datasets/play/files/train_text?format=text',
    { method: 'PUT', headers, body: text });
  check(up.status === 201, `a text uploads as a dataset's train_text (${up.status})`);
  const vocab = (await up.json()).vocab_size;
  const model = { name: 'gpt', input_shape: [16], layers: [
    { type: 'embedding', num_embeddings: vocab, embedding_dim: 32 },
    { type: 'positional_embedding', num_embeddings: 16 },
    { type: 'transformer_encoder_layer', nhead: 4, dim_feedforward: 64, dropout: 0,
      activation: 'gelu', norm_first: true, is_causal: true },
    { type: 'layer_norm' }, { type: 'linear', in_features: 32, out_features: vocab, bias: false }] };
  const job = await call('POST', '/v1/jobs', { model, data: { dataset: 'play', tokenizer: 'chars',
    validation_split: 0.1 }, optimizer: { type: 'adamw', lr: 0.003 }, batch_size: 12, max_steps: 150 });
  for (;;) {
    const j = await call('GET', '/v1/jobs/' + job.id);
    if (j.state === 'succeeded') break;
    if (['failed', 'canceled'].includes(j.state)) throw new Error('the text job ended ' + j.state);
    await new Promise((r) => setTimeout(r, 200));
  }
  await page.goto(url + '/#/infer?job=' + job.id);
  await page.waitForSelector('#prompt');
  check((await page.textContent('#predict')) === 'Generate', 'a text model gets a prompt box and a Generate button');
  await page.fill('#prompt', 'to be');
  await page.fill('#max-new-tokens', '30');
  await page.click('#predict');
  await page.waitForFunction(() => /tokens\/s/.test(document.getElementById('generate-status')?.textContent || ''));
  const generated = await page.textContent('#generated');
  check(generated.length === 30, `the continuation streams in (${JSON.stringify(generated)})`);
}

// The token run: everything the page asks for once the token is entered must carry it.
async function tokenFlow(page) {
  const jobs = await setup(1);
  // paused at once (or within a few steps), so its page opens a live stream whatever the
  // machine's speed; the page's Resume button (a POST with the token) lets it finish
  await call('POST', `/v1/jobs/${jobs.a}/pause`);
  let refused = 0, entered = false, refusedAfter = 0, eventsWithToken = 0;
  page.on('response', (r) => { if (r.status() === 401) { if (entered) refusedAfter++; else refused++; } });
  page.on('request', (r) => {
    if (r.url().includes('/events') && r.headers().authorization === 'Bearer ' + TOKEN) eventsWithToken++;
  });
  await page.goto(url + '/#/jobs');
  await page.waitForSelector('#token-note');
  check(refused >= 1 && !(await page.$(`tr[data-job="${jobs.a}"]`)),
    'without the token the page loads and asks for it');
  await page.waitForTimeout(1200); // a refused jobs list is not polled again
  check(refused === 1, `no polling while the token is missing (${refused} refused request)`);

  entered = true;
  await page.fill('#token', TOKEN);
  await page.press('#token', 'Enter');
  await page.waitForSelector(`tr[data-job="${jobs.a}"]`);
  check(true, 'after entering the token the jobs list loads');

  await page.goto(url + '/#/job/' + jobs.a);
  await page.waitForFunction(() => document.getElementById('job-state')?.textContent === 'paused');
  const points = () => page.$eval('[data-chart="loss"]', (e) => Number(e.dataset.points)).catch(() => 0);
  const before = await points();
  await page.click('button[data-action="resume"]:not([disabled])');
  await page.waitForFunction((n) => Number(document.querySelector('[data-chart="loss"]')?.dataset.points) > n,
    before);
  check(await page.$('[data-chart="loss"] canvas') !== null,
    `the job page's loss curve appears and grows after Resume (${before} -> ${await points()} points)`);
  await page.waitForFunction(() => document.getElementById('job-state')?.textContent === 'succeeded',
    null, { timeout: Math.max(1000, deadline - Date.now() - 30_000) });
  check(eventsWithToken > 0 && await page.textContent('#live') !== 'polling',
    `the event stream was read with the token (${eventsWithToken} requests), no polling`);

  const link = await page.waitForSelector('#checkpoints a[href$="/weights"]');
  const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
  const saved = artifacts + '/token-weights.safetensors';
  await download.saveAs(saved);
  const bytes = statSync(saved).size;
  const header = Number(readFileSync(saved).readBigUInt64LE(0));
  unlinkSync(saved);
  check(bytes > 1000 && header > 0 && header < bytes,
    `the final weights download with the token (${bytes} bytes of safetensors)`);
  check(refusedAfter === 0, `no request refused once the token was entered (${refusedAfter})`);
  // Chrome logs every refused fetch: the one made before the token was entered is expected
  return (t, i) => i < refused && /status of 401/.test(t);
}

const consoleErrors = [];
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'] });
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push('page error: ' + e.message));
  const expected = TOKEN ? await tokenFlow(page) : await mainFlow(context, page);
  const unexpected = consoleErrors.filter((t, i) => !expected(t, i));
  check(unexpected.length === 0, 'no console errors' + (unexpected.length ? ': ' + unexpected.join(' || ') : ''));
} catch (e) {
  failed = true;
  console.error('FAIL: ' + (e && e.stack || e));
  if (consoleErrors.length) console.error('console errors: ' + consoleErrors.join(' || '));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
