// app.js — the dashboard's shell: the token field, the connection dot and a hash
// router (#/jobs, #/job/<id>, #/compare?ids=a,b, #/submit, #/infer?job=<id>). Each view
// is mount(root, params) returning a cleanup that stops its timers and streams.
import { getToken, setToken, watchConnection } from './api.js';
import { jobsView } from './jobs.js';
import { jobView } from './job.js';
import { compareView } from './compare.js';
import { submitView } from './submit.js';
import { inferView } from './infer.js';

const root = document.getElementById('view');
const tokenInput = document.getElementById('token');
const conn = document.getElementById('conn');
let cleanup = null;

tokenInput.value = getToken();
tokenInput.addEventListener('change', () => { setToken(tokenInput.value.trim()); route(); });
watchConnection((ok) => { conn.className = 'conn ' + (ok ? 'ok' : 'bad'); });

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  root.replaceChildren();
  const hash = location.hash.replace(/^#\/?/, '') || 'jobs';
  const [path, query] = hash.split('?');
  const parts = path.split('/');
  const params = new URLSearchParams(query || '');
  document.querySelectorAll('nav a').forEach((a) =>
    a.classList.toggle('active', a.dataset.nav === parts[0] ||
      (parts[0] === 'job' && a.dataset.nav === 'jobs')));
  if (parts[0] === 'job' && parts[1]) cleanup = jobView(root, decodeURIComponent(parts[1]));
  else if (parts[0] === 'compare') cleanup = compareView(root, params);
  else if (parts[0] === 'submit') cleanup = submitView(root, params);
  else if (parts[0] === 'infer') cleanup = inferView(root, params);
  else cleanup = jobsView(root, params);
}

window.addEventListener('hashchange', route);
route();
