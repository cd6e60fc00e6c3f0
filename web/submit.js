// submit.js — a job spec to paste or edit, validated by the server
// (POST /v1/jobs?validate_only=true runs every check a submission gets, the inline
// model's included) with each message shown at its field, then submitted. The template
// names a model and a dataset this server has (the newest of each), so it validates as
// it stands; the draft is kept in localStorage.
import { api, el, errorText } from './api.js';

// 1536 -> "1.5 KiB", as kilnd's own messages write sizes
function bytesText(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
  return `${u ? n.toFixed(1) : n} ${units[u]}`;
}

// A job for model and dataset (names on this server, or placeholders when it has none).
const template = (model, dataset) => ({
  name: `${model} on ${dataset}`,
  model,
  data: { dataset, validation_split: 0.1 },
  loss: { type: 'cross_entropy' },
  optimizer: { type: 'adam', lr: 0.001 },
  batch_size: 64,
  epochs: 1,
});

// The newest model and dataset of the server; a note when one of them is missing.
async function serverTemplate() {
  const [m, d] = await Promise.all([api('GET', '/v1/models'), api('GET', '/v1/datasets')]);
  const newest = (r, key) => (r.ok && r.data[key].length
    ? r.data[key].reduce((a, b) => (b.created_at > a.created_at ? b : a)).name : null);
  const model = newest(m, 'models'), dataset = newest(d, 'datasets');
  const missing = [!model && 'a model (POST /v1/models)', !dataset && 'a dataset (kiln upload)']
    .filter(Boolean);
  return { spec: template(model || 'my-model', dataset || 'my-dataset'),
    note: missing.length ? `This server has no ${missing.join(' and no ')} yet: the template names placeholders.` : '' };
}

// Every path in a JSON value: "a", "a.b", "a.b[0]", ... with its depth and leaf text.
function paths(value, prefix = '', depth = 0, out = []) {
  if (value && typeof value === 'object') {
    const entries = Array.isArray(value) ? value.map((v, i) => [`${prefix}[${i}]`, v, `[${i}]`])
      : Object.entries(value).map(([k, v]) => [prefix ? `${prefix}.${k}` : k, v, k]);
    for (const [path, v, label] of entries) {
      const leaf = !(v && typeof v === 'object');
      out.push({ path, label, depth, text: leaf ? JSON.stringify(v) : Array.isArray(v) ? '[' : '{' });
      if (!leaf) paths(v, path, depth + 1, out);
    }
  }
  return out;
}

export function submitView(root) {
  const area = el('textarea', { id: 'spec', spellcheck: 'false' });
  area.value = localStorage.getItem('kiln.draft') || '';
  const fields = el('div', { class: 'fields', id: 'fields' });
  const result = el('div', { id: 'submit-result' });
  const validate = el('button', { id: 'validate', onclick: () => check(false) }, 'Validate');
  const submit = el('button', { id: 'submit', class: 'primary', onclick: () => check(true) }, 'Submit');
  const reset = el('button', { id: 'template', onclick: () => fillTemplate() }, 'New from template');
  root.append(el('h1', {}, 'Submit a job'),
    el('div', { class: 'toolbar' }, validate, submit, reset, el('span', { class: 'muted' },
      'The spec is checked by kilnd: messages appear next to their fields.')),
    result, el('div', { class: 'split' }, area, fields));

  async function fillTemplate() {
    const { spec, note } = await serverTemplate();
    area.value = JSON.stringify(spec, null, 2);
    localStorage.removeItem('kiln.draft');
    result.className = note ? 'note' : '';
    result.textContent = note;
    render(spec, []);
  }

  // Renders the spec's fields, with the server's errors attached where they point.
  function render(spec, errors) {
    const rows = paths(spec);
    const known = new Set(rows.map((r) => r.path));
    const byPath = new Map();
    for (const e of errors) {
      // a missing field has no row: show it at its closest existing parent
      let p = e.path || '';
      while (p && !known.has(p)) {
        const parent = p.replace(/(\.[^.[\]]+|\[\d+\])$/, '');
        p = parent === p ? '' : parent;
      }
      if (!byPath.has(p)) byPath.set(p, []);
      byPath.get(p).push(e);
    }
    const top = (byPath.get('') || []).map((e) => el('div', { class: 'field bad', 'data-path': e.path || '' },
      el('span', { class: 'field-error' }, (e.path ? e.path + ': ' : '') + e.message)));
    fields.replaceChildren(...top, ...rows.map((r) => {
      const errs = byPath.get(r.path) || [];
      return el('div', { class: 'field' + (errs.length ? ' bad' : ''), 'data-path': r.path,
        style: `padding-left:${r.depth * 16}px` }, `${r.label}: ${r.text}`,
        ...errs.map((e) => el('div', { class: 'field-error' },
          (e.path !== r.path ? e.path + ': ' : '') + e.message)));
    }));
  }

  async function check(andSubmit) {
    localStorage.setItem('kiln.draft', area.value);
    let spec;
    try {
      spec = JSON.parse(area.value);
    } catch (e) {
      result.className = 'error-box';
      result.textContent = 'Not JSON: ' + e.message;
      return;
    }
    const r = await api('POST', '/v1/jobs?validate_only=true', area.value);
    if (!r.ok) {
      const e = (r.data && r.data.error) || {};
      const details = e.details && e.details.length ? e.details
        : [{ path: e.path || '', message: e.message || errorText(r) }];
      result.className = 'error-box';
      result.textContent = `${details.length} problem${details.length > 1 ? 's' : ''}: ${errorText(r)}`;
      render(spec, details);
      return;
    }
    render(spec, []);
    if (!andSubmit) {
      result.className = 'ok-box';
      const memory = r.data.memory_bytes && r.data.job_memory_limit_bytes
        ? ` It needs about ${bytesText(r.data.memory_bytes)} of the ${bytesText(r.data.job_memory_limit_bytes)} a job may use.`
        : '';
      result.textContent = `Valid: ${r.data.total_steps || '?'} steps on ${r.data.dataset}.${memory}`;
      return;
    }
    const s = await api('POST', '/v1/jobs', area.value);
    if (!s.ok) {
      result.className = 'error-box';
      result.textContent = errorText(s);
      return;
    }
    result.className = 'ok-box';
    result.replaceChildren('Submitted: ', el('a', { href: '#/job/' + s.data.id }, s.data.id));
  }

  if (!area.value) fillTemplate();
  else try { render(JSON.parse(area.value), []); } catch { /* shown on validate */ }
  area.addEventListener('input', () => {
    try { render(JSON.parse(area.value), []); } catch { /* keep the last rendering */ }
  });
  return () => {};
}
