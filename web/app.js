// app.js — the dashboard's shell: the token field, the connection dot and a hash
// router (#/jobs, #/job/<id>, #/compare?ids=a,b, #/submit, #/infer?job=<id>). Each view
// is mount(root, params) returning a cleanup that stops its timers and streams.
import { getToken, setToken, watchConnection, watchUnauthorized } from './api.js';
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
tokenInput.addEventListener('change', () => {
  if (tokenInput.value.trim() === getToken()) return;
  setToken(tokenInput.value.trim());
  route();
});
// Enter applies the token at once (change alone waits for the field to lose focus)
tokenInput.addEventListener('keydown', (e) => { if (e.key === 'Enter') tokenInput.blur(); });
watchConnection((ok) => { conn.className = 'conn ' + (ok ? 'ok' : 'bad'); });
// kilnd was started with --token-file and the page has none (or a wrong one): say so
// where the views show messages, and point at the field
watchUnauthorized(() => {
  tokenInput.classList.add('needed');
  tokenInput.title = getToken() ? 'this token was refused' : 'this server needs a token';
  if (!document.getElementById('token-note'))
    root.prepend(Object.assign(document.createElement('div'), { id: 'token-note', className: 'note',
      textContent: getToken() ? 'kilnd refused this token: enter the one in its --token-file.'
        : 'This kilnd needs a token (its --token-file): enter it in the Token field above.' }));
  if (!getToken()) tokenInput.focus();
});

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  tokenInput.classList.remove('needed');
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
