// api.js — talking to kilnd: JSON requests with the bearer token (kept in
// localStorage), event streams (a job's progress and its log: EventSource, or a
// fetch-based reader when a token must be sent, since EventSource cannot send headers),
// and formatting helpers.

const TOKEN_KEY = 'kiln.token';
export const getToken = () => localStorage.getItem(TOKEN_KEY) || '';
export const setToken = (t) => t ? localStorage.setItem(TOKEN_KEY, t) : localStorage.removeItem(TOKEN_KEY);

function headers(extra) {
  const h = Object.assign({}, extra);
  const t = getToken();
  if (t) h.Authorization = 'Bearer ' + t;
  return h;
}

let onConnection = () => {};
export const watchConnection = (fn) => { onConnection = fn; };
let onUnauthorized = () => {};
export const watchUnauthorized = (fn) => { onUnauthorized = fn; };

// Resolves to {ok, status, data}; never throws (a network failure is status 0).
export async function api(method, path, body) {
  const init = { method, headers: headers(body !== undefined ? { 'Content-Type': 'application/json' } : {}) };
  if (body !== undefined) init.body = typeof body === 'string' ? body : JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    onConnection(false);
    return { ok: false, status: 0, data: { error: { code: 'network', message: String(e) } } };
  }
  onConnection(response.status !== 401);
  if (response.status === 401) onUnauthorized();
  let data = null;
  const text = await response.text();
  try { data = text ? JSON.parse(text) : null; } catch { data = { text }; }
  return { ok: response.ok, status: response.status, data };
}

export function errorText(r) {
  const e = r.data && r.data.error;
  if (!e) return 'HTTP ' + r.status;
  if (typeof e === 'string') return e;
  return (e.code ? e.code + ': ' : '') + (e.message || '');
}

// Metric values arrive as numbers or "NaN"/"Infinity"/"-Infinity" strings.
export const num = (v) => typeof v === 'number' ? v : v === 'Infinity' ? Infinity :
  v === '-Infinity' ? -Infinity : v == null ? null : NaN;

// A server-sent event stream at url: handlers[type](data) for each event of `types`,
// end when the server says "end", fail when the stream is unusable (poll instead).
// EventSource when no token is needed; with a token, the same protocol read through
// fetch, which can send headers. Reconnects (the server ends streams after a minute)
// carry Last-Event-ID. Returns {close}.
export function eventStream(url, types, handlers) {
  const dispatch = (type, data) => {
    let parsed;
    try { parsed = JSON.parse(data); } catch { return; }
    if (handlers[type]) handlers[type](parsed);
  };
  if (!getToken() && typeof EventSource !== 'undefined') {
    const es = new EventSource(url);
    let ended = false;
    for (const type of types) es.addEventListener(type, (e) => dispatch(type, e.data));
    es.addEventListener('end', (e) => { ended = true; es.close(); dispatch('end', e.data); });
    es.onerror = () => {
      // CONNECTING: EventSource reconnects by itself with Last-Event-ID; CLOSED: it gave
      // up, so poll
      if (!ended && es.readyState === EventSource.CLOSED && handlers.fail) handlers.fail();
    };
    return { close: () => { ended = true; es.close(); } };
  }
  const controller = new AbortController();
  let lastId = '', closed = false, failures = 0;
  const run = async () => {
    while (!closed) {
      let response;
      try {
        const h = headers(lastId ? { 'Last-Event-ID': lastId } : {});
        response = await fetch(url, { headers: h, signal: controller.signal });
        if (!response.ok || !response.body) throw new Error('HTTP ' + response.status);
        failures = 0;
        let ended = false;
        await readEvents(response, (type, data, id) => {
          if (id) lastId = id;
          if (data && (types.includes(type) || type === 'end')) dispatch(type, data);
          if (type === 'end') ended = true;
        });
        if (ended) return;
      } catch (e) {
        if (closed) return;
        if (++failures >= 3) { if (handlers.fail) handlers.fail(); return; }
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  };
  run();
  return { close: () => { closed = true; controller.abort(); } };
}

// A job's progress after afterStep: metrics, state, checkpoint, end, fail.
export const jobEvents = (id, afterStep, handlers) => eventStream(
  `/v1/jobs/${encodeURIComponent(id)}/events?after_step=${afterStep}`,
  ['metrics', 'state', 'checkpoint'], handlers);

// A job's log lines after line `after`, as they are written: log, end, fail.
export const jobLog = (id, after, handlers) => eventStream(
  `/v1/jobs/${encodeURIComponent(id)}/logs?follow=true&after=${after}`, ['log'], handlers);

// A run's label in lists and legends: its name, else its model and the id's end.
export const runLabel = (job) => job.name || `${job.model} ${job.id.slice(-6)}`;

// ---- formatting --------------------------------------------------------------------
export function fmtNum(v, digits = 4) {
  v = num(v);
  if (v == null) return '';
  if (!isFinite(v)) return String(v);
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) return v.toExponential(2);
  return Number(v.toPrecision(digits)).toString();
}
export function fmtDuration(s) {
  if (s == null || !isFinite(s) || s < 0) return '';
  if (s < 60) return Math.round(s) + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm ' + Math.round(s % 60) + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h ' + Math.round((s % 3600) / 60) + 'm';
  return Math.floor(s / 86400) + 'd ' + Math.round((s % 86400) / 3600) + 'h';
}
export const fmtAge = (t) => t ? fmtDuration(Date.now() / 1000 - t) + ' ago' : '';
export function fmtBytes(b) {
  if (b < 1024) return b + ' B';
  if (b < 1 << 20) return (b / 1024).toFixed(1) + ' KiB';
  return (b / (1 << 20)).toFixed(1) + ' MiB';
}
export const terminal = (state) => ['succeeded', 'failed', 'canceled'].includes(state);

// Small DOM builder: el('td', {class: 'num'}, 'text', child, ...).
export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

// Downloads a protected file (checkpoints) with the token, through a blob URL.
export async function download(url, filename) {
  const response = await fetch(url, { headers: headers({}) });
  if (!response.ok) return false;
  const blob = await response.blob();
  const a = el('a', { href: URL.createObjectURL(blob), download: filename });
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  return true;
}

// A POST whose answer is server-sent events (generate with "stream": true): each event
// handed to onEvent(type, data) as it arrives. Resolves to {ok: true} at the end of the
// stream, or to api()'s {ok: false, status, data} when the server refused the request.
export async function postEvents(path, body, onEvent) {
  let response;
  try {
    response = await fetch(path, { method: 'POST', headers: headers({ 'Content-Type': 'application/json' }),
      body: JSON.stringify(body) });
  } catch (e) {
    return { ok: false, status: 0, data: { error: { message: String(e) } } };
  }
  if (!response.ok || !response.body) {
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    return { ok: false, status: response.status, data };
  }
  await readEvents(response, (type, data) => {
    if (data) { try { onEvent(type, JSON.parse(data)); } catch { /* not JSON: skip */ } }
  });
  return { ok: true };
}

// Reads a server-sent event stream to its end: onBlock(type, data, id) for each event.
async function readEvents(response, onBlock) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let type = 'message', data = '', id = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('id: ')) id = line.slice(4);
        else if (line.startsWith('event: ')) type = line.slice(7);
        else if (line.startsWith('data: ')) data += line.slice(6);
      }
      onBlock(type, data, id);
    }
  }
}
