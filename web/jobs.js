// jobs.js — every job in one table, polled each second: state, progress, ETA, loss,
// accuracy, samples/s, device and age, a state filter, cancel/pause/resume, and
// checkboxes to compare. Rows are kept and updated in place (keyed by job id) so
// buttons never move under the pointer.
import { api, el, errorText, fmtAge, fmtDuration, fmtNum, terminal } from './api.js';

const STATES = ['', 'queued', 'running', 'paused', 'succeeded', 'failed', 'canceled'];

function accuracyOf(m) {
  return m.val_accuracy ?? m.accuracy ?? m.test_accuracy;
}

export function jobsView(root, params) {
  let filter = params.get('state') || '';
  const selected = new Set();
  const rows = new Map();
  const message = el('div', { class: 'muted', id: 'jobs-message' });
  const select = el('select', { id: 'state-filter', onchange: () => { filter = select.value; refresh(); } },
    ...STATES.map((s) => el('option', { value: s, selected: s === filter }, s || 'all states')));
  const compare = el('button', { id: 'compare-selected', onclick: () => {
    location.hash = '#/compare?ids=' + [...selected].join(',');
  } }, 'Compare selected');
  const tbody = el('tbody');
  const table = el('table', { id: 'jobs' },
    el('thead', {}, el('tr', {}, ...['', 'Job', 'Model', 'State', 'Progress', 'ETA', 'Loss',
      'Accuracy', 'Samples/s', 'Device', 'Age', ''].map((h) => el('th', {}, h)))),
    tbody);
  root.append(el('h1', {}, 'Jobs'),
    el('div', { class: 'toolbar' }, el('label', {}, 'State ', select), compare,
      el('a', { href: '#/submit' }, 'Submit a job…'), message),
    table);

  async function act(id, verb) {
    const r = await api('POST', `/v1/jobs/${id}/${verb}`);
    message.textContent = r.ok ? `${verb}: ${id} is ${r.data.state}` : errorText(r);
    refresh();
  }

  function makeRow(job) {
    const cells = {};
    const check = el('input', { type: 'checkbox', onchange: () => {
      if (check.checked) selected.add(job.id); else selected.delete(job.id);
    } });
    const mk = (name, cls) => (cells[name] = el('td', { class: cls }));
    const tr = el('tr', { 'data-job': job.id },
      el('td', {}, check),
      el('td', {}, el('a', { href: '#/job/' + job.id }, job.id)),
      mk('model'), mk('state'), mk('progress'), mk('eta', 'num'), mk('loss', 'num'),
      mk('accuracy', 'num'), mk('sps', 'num'), mk('device'), mk('age'), mk('actions'));
    cells.actions.append(
      el('button', { 'data-action': 'pause', onclick: () => act(job.id, 'pause') }, 'Pause'), ' ',
      el('button', { 'data-action': 'resume', onclick: () => act(job.id, 'resume') }, 'Resume'), ' ',
      el('button', { 'data-action': 'cancel', onclick: () => act(job.id, 'cancel') }, 'Cancel'));
    return { tr, cells };
  }

  function update(row, job) {
    const c = row.cells, m = job.metrics || {}, p = job.progress || {};
    c.model.textContent = job.model;
    const badge = c.state.firstChild || c.state.appendChild(el('span'));
    badge.className = 'badge ' + job.state;
    badge.textContent = job.state + (job.cancel_requested ? ' (canceling)' :
      job.pause_requested ? ' (pausing)' : '');
    const fraction = p.total_steps > 0 ? Math.min(1, p.step / p.total_steps) :
      job.state === 'succeeded' ? 1 : 0;
    if (!c.progress.firstChild) c.progress.append(el('span', { class: 'bar' }, el('div')), el('span'));
    c.progress.firstChild.firstChild.style.width = (fraction * 100).toFixed(1) + '%';
    c.progress.lastChild.textContent = ` ${p.step ?? 0}/${p.total_steps || '?'}`;
    c.eta.textContent = job.state === 'running' ? fmtDuration(job.eta_seconds) : '';
    c.loss.textContent = fmtNum(m.loss);
    c.accuracy.textContent = fmtNum(accuracyOf(m));
    c.sps.textContent = job.samples_per_second ? fmtNum(job.samples_per_second, 3) : '';
    const world = job.distributed && (job.distributed.world_size || job.distributed.processes);
    c.device.textContent = (job.device || '') + (world ? ` ×${world}` : '');
    c.age.textContent = fmtAge(job.created_at);
    c.age.title = job.error ? job.error.message : '';
    const [pause, resume, cancel] = c.actions.querySelectorAll('button');
    pause.disabled = !['queued', 'running'].includes(job.state) || job.pause_requested;
    resume.disabled = !(job.state === 'paused' || job.pause_requested);
    cancel.disabled = terminal(job.state) || job.cancel_requested;
  }

  let timer = null, stopped = false;
  async function refresh() {
    clearTimeout(timer);
    const r = await api('GET', '/v1/jobs?limit=500' + (filter ? '&state=' + filter : ''));
    if (stopped) return;
    if (r.status === 401) return; // no polling without the token: entering it re-routes
    if (!r.ok) {
      message.textContent = errorText(r);
    } else {
      const seen = new Set();
      let previous = null;
      for (const job of r.data.jobs) {
        seen.add(job.id);
        let row = rows.get(job.id);
        if (!row) rows.set(job.id, (row = makeRow(job)));
        update(row, job);
        // newest first: keep the server's order without rebuilding the rows
        const want = previous ? previous.nextSibling : tbody.firstChild;
        if (want !== row.tr) tbody.insertBefore(row.tr, want);
        previous = row.tr;
      }
      for (const [id, row] of rows)
        if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
      if (!r.data.jobs.length) message.textContent = 'No jobs' + (filter ? ' ' + filter : '') + ' yet.';
    }
    timer = setTimeout(refresh, 1000);
  }
  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
