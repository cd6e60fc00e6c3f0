// compare.js — several jobs' curves overlaid, one chart per metric (loss, val_loss,
// val_accuracy, lr, ...), with the same smoothing and log controls as a job page. Runs
// are labelled by their name ("name" in the job), else by model and short id; final
// metrics of one point each (test_accuracy, test_loss) show as points.
import { api, el, errorText, num, runLabel } from './api.js';
import { color, LineChart, Series } from './chart.js';

export function compareView(root, params) {
  const ids = (params.get('ids') || '').split(',').filter(Boolean);
  const options = { smoothing: Number(localStorage.getItem('kiln.smoothing') || 0.6), log: false };
  const charts = new Map();
  const picker = el('div', { class: 'toolbar', id: 'compare-picker' });
  const chartBox = el('div', { class: 'charts', id: 'charts' });
  const message = el('div', { class: 'muted' });
  const slider = el('input', { type: 'range', min: 0, max: 0.99, step: 0.01, value: options.smoothing,
    oninput: () => { options.smoothing = Number(slider.value); redraw(); } });
  const logBox = el('input', { type: 'checkbox', onchange: () => { options.log = logBox.checked; redraw(); } });
  root.append(el('h1', {}, 'Compare'), picker,
    el('div', { class: 'toolbar' }, el('label', {}, 'Smoothing ', slider),
      el('label', {}, logBox, ' log scale'), message), chartBox);

  function redraw() {
    for (const c of charts.values()) { c.setOptions(options); c.redraw(); }
  }

  let stopped = false, timer = null;
  async function load() {
    const list = await api('GET', '/v1/jobs?limit=200');
    if (stopped) return;
    const labels = new Map();
    if (list.ok) {
      for (const j of list.data.jobs) labels.set(j.id, runLabel(j));
      picker.replaceChildren(el('span', { class: 'muted' }, 'Jobs:'), ...list.data.jobs.map((j) => {
        const box = el('input', { type: 'checkbox', checked: ids.includes(j.id), onchange: () => {
          const next = box.checked ? [...ids, j.id] : ids.filter((x) => x !== j.id);
          location.hash = '#/compare?ids=' + next.join(',');
        } });
        return el('label', { title: `${j.id} (${j.model})`, 'data-job': j.id }, box, ' ' + runLabel(j));
      }));
    }
    const byMetric = new Map();
    const results = await Promise.all(ids.map((id) => api('GET', `/v1/jobs/${id}/metrics?max_points=2000`)));
    if (stopped) return;
    results.forEach((r, i) => {
      if (!r.ok) { message.textContent = ids[i] + ': ' + errorText(r); return; }
      for (const [name, points] of Object.entries(r.data.series)) {
        const s = new Series();
        s.append(points, num);
        if (!byMetric.has(name)) byMetric.set(name, []);
        byMetric.get(name).push({ label: labels.get(ids[i]) || ids[i].slice(-6), series: s,
          color: color(i) });
      }
    });
    for (const [name, lines] of [...byMetric].sort()) {
      let chart = charts.get(name);
      if (!chart) charts.set(name, (chart = new LineChart(chartBox, name, name)));
      chart.setLines(lines);
    }
    redraw();
    if (!ids.length) message.textContent = 'Pick jobs above to overlay their curves.';
    timer = setTimeout(load, 5000); // running jobs keep growing
  }
  load();
  return () => { stopped = true; clearTimeout(timer); for (const c of charts.values()) c.destroy(); };
}
