// job.js — one job: its curves growing live (the event stream, or polling with
// after_step when streaming fails), smoothing and log axis controls, its state and
// error, its run name and recipe, the final evaluation (metrics of its task, the confusion
// matrix of a classifier or each label's F1), checkpoints with download links, its own log
// (lines streamed as they are written) and its spec.
import { api, download, el, errorText, fmtBytes, fmtDuration, fmtNum, getToken, jobEvents,
  jobLog, num, terminal } from './api.js';
import { chartsAvailable, color, groupOf, GROUP_TITLES, LineChart, Series } from './chart.js';

// The first load asks the server for at most this many points per series (min/max
// buckets), so a run of 100,000 steps paints as fast as a short one.
const INITIAL_POINTS = 2000;

export function jobView(root, id) {
  const series = new Map();    // name -> Series
  const charts = new Map();    // group -> LineChart
  const checkpoints = new Map();
  let job = null, stream = null, pollTimer = null, stopped = false, dirty = false, frame = 0;
  const options = { smoothing: Number(localStorage.getItem('kiln.smoothing') || 0.6), log: false };

  const title = el('h1', {}, 'Job ', el('span', { id: 'job-id' }, id), ' ',
    el('span', { class: 'badge', id: 'job-state' }, '…'));
  const info = el('div', { class: 'kv', id: 'job-info' });
  const errorBox = el('div', { class: 'error-box', id: 'job-error', hidden: true });
  const slider = el('input', { type: 'range', min: 0, max: 0.99, step: 0.01, id: 'smoothing',
    value: options.smoothing });
  const sliderValue = el('span', {}, options.smoothing.toFixed(2));
  slider.addEventListener('input', () => {
    options.smoothing = Number(slider.value);
    sliderValue.textContent = options.smoothing.toFixed(2);
    localStorage.setItem('kiln.smoothing', slider.value);
    for (const c of charts.values()) c.setOptions(options);
    schedule();
  });
  const logBox = el('input', { type: 'checkbox', id: 'log-axis', onchange: () => {
    options.log = logBox.checked;
    for (const c of charts.values()) c.setOptions(options);
    schedule();
  } });
  const buttons = el('span', {},
    ...['pause', 'resume', 'cancel'].map((verb) => el('button', { 'data-action': verb,
      onclick: async () => {
        const r = await api('POST', `/v1/jobs/${id}/${verb}`);
        if (!r.ok) showError(errorText(r)); else showJob(Object.assign({}, job, r.data));
      } }, verb[0].toUpperCase() + verb.slice(1))));
  const liveNote = el('span', { class: 'muted', id: 'live' });
  const chartBox = el('div', { class: 'charts', id: 'charts' });
  const ckptBody = el('tbody');
  const evaluationBox = el('div', { id: 'evaluation' });
  const specPre = el('pre', { id: 'job-spec' });
  const logPre = el('pre', { id: 'job-log' });
  let logStream = null, logTimer = null, lastLine = 0;
  const noCharts = chartsAvailable() ? '' : el('div', { class: 'note' },
    'This kilnd was built without the chart library (npm was missing): curves are not drawn.');
  root.append(title, info, errorBox,
    el('div', { class: 'toolbar' }, buttons,
      el('label', {}, 'Smoothing ', slider, ' ', sliderValue),
      el('label', {}, logBox, ' log scale'),
      el('a', { href: '#/compare?ids=' + id }, 'Compare…'),
      el('a', { href: '#/infer?job=' + id }, 'Try it…'), liveNote),
    noCharts, chartBox, evaluationBox,
    el('h2', {}, 'Checkpoints'),
    el('table', { id: 'checkpoints' }, el('thead', {}, el('tr', {},
      el('th', {}, 'Step'), el('th', {}, 'Kind'), el('th', {}, 'Size'), el('th', {}, 'Download'))), ckptBody),
    el('h2', {}, 'Log'), logPre,
    el('h2', {}, 'Spec'), specPre);

  function showError(text) {
    errorBox.hidden = false;
    errorBox.textContent = text;
  }

  // a distributed job: its world size and each rank's share of the samples/s
  function distributedRows(d) {
    if (!d) return [];
    const ranks = d.ranks || [];
    return [['Processes', `${d.world_size || d.processes} × ${d.devices}` +
        (d.backend ? ` (${d.backend})` : '') +
        (d.max_restarts ? `, restarts ${d.restarts}/${d.max_restarts}` : '')],
      ['Per-rank samples/s', ranks.map((r) => `${r.rank}: ${fmtNum(r.samples_per_second, 3)}` +
        (r.host ? ` (${r.host})` : '')).join(', ')]];
  }

  function showJob(j) {
    job = j;
    const badge = document.getElementById('job-state') || title.querySelector('.badge');
    badge.className = 'badge ' + j.state;
    badge.textContent = j.state;
    const p = j.progress || { step: j.step, total_steps: j.total_steps, epoch: j.epoch };
    const m = j.metrics || {};
    const h = j.hyperparameters || {};
    const recipe = h.optimizer ? `${h.optimizer}, lr ${fmtNum(h.lr)}, batch ${h.batch_size}, ` +
      (h.epochs != null ? `${h.epochs} epochs` : `${h.max_steps} steps`) : null;
    const rows = [['Name', j.name], ['Model', j.model], ['Dataset', j.dataset], ['Recipe', recipe],
      ['Device', j.device],
      ['Step', `${p.step} / ${p.total_steps || '?'} (epoch ${p.epoch})`],
      ['ETA', j.state === 'running' ? fmtDuration(j.eta_seconds) : ''],
      ['Samples/s', fmtNum(j.samples_per_second, 3)],
      ...distributedRows(j.distributed),
      ...Object.entries(m).filter(([, v]) => typeof v !== 'object').map(([k, v]) => [k, fmtNum(v)])];
    info.replaceChildren(...rows.filter((r) => r[1] != null && r[1] !== undefined)
      .flatMap(([k, v]) => [el('span', { class: 'muted' }, k), el('span', { 'data-key': k }, String(v))]));
    if (j.error) showError(`${j.error.code} at step ${j.error.step ?? '?'}: ${j.error.message}`);
    const [pause, resume, cancel] = buttons.querySelectorAll('button');
    pause.disabled = !['queued', 'running'].includes(j.state) || j.pause_requested;
    resume.disabled = !(j.state === 'paused' || j.pause_requested);
    cancel.disabled = terminal(j.state) || j.cancel_requested;
    if (j.spec && !specPre.textContent) specPre.textContent = JSON.stringify(j.spec, null, 2);
    if (j.evaluation) showEvaluation(j.evaluation);
  }

  // The end of the run: the task's metrics, then the confusion matrix (rows: true class,
  // columns: predicted; each cell shaded by its share of the row) or each label's F1.
  function showEvaluation(e) {
    const metrics = Object.entries(e.metrics || {}).map(([k, v]) => `${k} ${fmtNum(v)}`).join(' · ');
    const parts = [el('h2', {}, `Final evaluation (${e.split === 'val' ? 'validation' : e.split || 'test'} data, ` +
      `${e.count} samples, ${e.task})`), el('div', { class: 'muted', id: 'evaluation-metrics' },
      `loss ${fmtNum(e.loss)} · ${metrics}`)];
    const matrix = e.confusion_matrix;
    if (Array.isArray(matrix) && matrix.length) {
      const n = matrix.length;
      const head = el('tr', {}, el('th', {}, 'true \\ predicted'),
        ...matrix.map((_, c) => el('th', { class: 'num' }, String(c))));
      const rows = matrix.map((row, t) => {
        const total = row.reduce((a, b) => a + b, 0) || 1;
        return el('tr', { 'data-class': t }, el('th', {}, String(t)), ...row.map((v, p) => el('td', {
          class: 'num cm' + (p === t ? ' diag' : ''), 'data-count': v,
          style: `--share:${(v / total).toFixed(3)}` }, String(v))));
      });
      parts.push(el('table', { id: 'confusion', class: 'confusion' + (n > 20 ? ' dense' : '') },
        el('thead', {}, head), el('tbody', {}, ...rows)));
    }
    if (Array.isArray(e.label_f1)) {
      parts.push(el('table', { id: 'label-f1', class: 'confusion' },
        el('thead', {}, el('tr', {}, el('th', {}, 'label'), el('th', {}, 'F1'))),
        el('tbody', {}, ...e.label_f1.map((f, k) => el('tr', { 'data-label': k },
          el('td', {}, String(k)),
          el('td', { class: 'num cm', style: `--share:${Number(f).toFixed(3)}` }, fmtNum(f)))))));
    }
    evaluationBox.replaceChildren(...parts);
  }

  function addCheckpoint(c) {
    const key = c.kind + ':' + c.step;
    if (checkpoints.has(key)) return;
    checkpoints.set(key, c);
    const name = c.kind === 'final' ? `${id}.safetensors` : `${id}-step${c.step}.safetensors`;
    const link = el('a', { href: c.url, download: name }, name);
    // a plain link cannot carry the token: fetch it and hand over a blob instead
    link.addEventListener('click', (e) => { if (getToken()) { e.preventDefault(); download(c.url, name); } });
    const tr = el('tr', { 'data-step': c.step }, el('td', { class: 'num' }, String(c.step)),
      el('td', {}, c.kind), el('td', { class: 'num' }, fmtBytes(c.bytes)), el('td', {}, link));
    const after = [...ckptBody.children].find((r) => Number(r.dataset.step) > c.step);
    ckptBody.insertBefore(tr, after || null);
  }

  function addPoints(all) {
    for (const [name, points] of Object.entries(all)) {
      let s = series.get(name);
      if (!s) {
        series.set(name, (s = new Series()));
        const group = groupOf(name);
        let chart = charts.get(group);
        if (!chart) {
          charts.set(group, (chart = new LineChart(chartBox, GROUP_TITLES[group] || name, group)));
          chart.setOptions(options);
        }
        const names = [...series.keys()].filter((n) => groupOf(n) === group).sort();
        chart.setLines(names.map((n, i) => ({ label: n, series: series.get(n), color: color(i) })));
      }
      s.append(points, num);
    }
    schedule();
  }

  // Redraws at most once per animation frame, however fast events come.
  function schedule() {
    if (dirty) return;
    dirty = true;
    frame = requestAnimationFrame(() => {
      dirty = false;
      for (const c of charts.values()) c.redraw();
    });
  }

  // ---- the log --------------------------------------------------------------------------
  function addLine(line) {
    if (line.seq <= lastLine) return;
    lastLine = line.seq;
    const atBottom = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 4;
    const time = new Date(line.time * 1000).toISOString().replace('T', ' ').slice(0, 23);
    logPre.append(el('div', { class: line.level, 'data-seq': line.seq },
      `${time} ${line.level.padEnd(5)} ${line.message}`));
    if (atBottom) logPre.scrollTop = logPre.scrollHeight;
  }

  // Reads what is there, page by page; then follows a live job (or polls if streams fail).
  async function loadLog(follow) {
    for (;;) {
      const r = await api('GET', `/v1/jobs/${id}/logs?after=${lastLine}&limit=1000`);
      if (stopped || !r.ok) return;
      r.data.lines.forEach(addLine);
      if (!r.data.more) {
        if (terminal(r.data.state) || !follow) return;
        break;
      }
    }
    logStream = jobLog(id, lastLine, {
      log: addLine,
      end: () => { logStream = null; },
      fail: () => { logStream = null; pollLog(); },
    });
  }

  async function pollLog() {
    const r = await api('GET', `/v1/jobs/${id}/logs?after=${lastLine}&limit=1000`);
    if (stopped) return;
    if (r.ok) r.data.lines.forEach(addLine);
    if (!(r.ok && terminal(r.data.state) && !r.data.more)) logTimer = setTimeout(pollLog, 2000);
  }

  const lastStep = () => Math.max(-1, ...[...series.values()].map((s) => s.last));

  async function poll() {
    // the fallback: state, new points after the last step, checkpoints, every second
    const [j, m, c] = await Promise.all([api('GET', `/v1/jobs/${id}`),
      api('GET', `/v1/jobs/${id}/metrics?after_step=${lastStep()}&max_points=${INITIAL_POINTS}`),
      api('GET', `/v1/jobs/${id}/checkpoints`)]);
    if (stopped) return;
    if (j.ok) showJob(j.data);
    if (m.ok) addPoints(m.data.series);
    if (c.ok) c.data.checkpoints.forEach(addCheckpoint);
    if (j.status === 401) return; // entering the token re-routes and starts again
    if (!(j.ok && terminal(j.data.state))) pollTimer = setTimeout(poll, 1000);
  }

  async function start() {
    const [j, m, c] = await Promise.all([api('GET', `/v1/jobs/${id}`),
      api('GET', `/v1/jobs/${id}/metrics?max_points=${INITIAL_POINTS}`),
      api('GET', `/v1/jobs/${id}/checkpoints`)]);
    if (stopped) return;
    if (!j.ok) { showError(errorText(j)); return; }
    showJob(j.data);
    if (m.ok) addPoints(m.data.series);
    if (c.ok) c.data.checkpoints.forEach(addCheckpoint);
    loadLog(!terminal(j.data.state));
    if (terminal(j.data.state)) return;
    liveNote.textContent = 'live';
    stream = jobEvents(id, lastStep(), {
      metrics: (d) => addPoints(d.series),
      state: (s) => showJob(Object.assign({}, job, s, { progress: { step: s.step,
        total_steps: s.total_steps, epoch: s.epoch } })),
      checkpoint: addCheckpoint,
      end: () => { liveNote.textContent = ''; },
      fail: () => { liveNote.textContent = 'polling'; stream = null; poll(); },
    });
  }

  const onResize = () => { for (const c of charts.values()) c.resize(); };
  window.addEventListener('resize', onResize);
  start();
  return () => {
    stopped = true;
    if (stream) stream.close();
    if (logStream) logStream.close();
    clearTimeout(pollTimer);
    clearTimeout(logTimer);
    cancelAnimationFrame(frame);
    window.removeEventListener('resize', onResize);
    for (const c of charts.values()) c.destroy();
  };
}
