// infer.js — try a trained model: pick a succeeded job (a version of its model), give
// it an input — drawn on a canvas (downsampled to the model's height x width) for image
// models, typed numbers otherwise — or pick one of its dataset's test samples (a strip
// of thumbnails from GET /v1/datasets/{name}/samples; the true label is shown next to
// the prediction) — and see what the model says, as its task reads its outputs: class
// probabilities as bars (softmax; one output: the sigmoid of the positive class), each
// label's probability for a multi-label model, the values of a regression
// (POST /v2/models/{model}/versions/{job}/infer). Inputs go raw, like the training data:
// kilnd applies the job's preprocessing (scale, normalize) kept with its weights. A text
// model (a job trained on a dataset's train_text) gets a prompt box instead: its
// continuation streamed token by token from POST /v1/models/{model}/versions/{job}/generate
// with "stream": true.
import { api, el, errorText, postEvents } from './api.js';

const SAMPLES = 16;

export function inferView(root, params) {
  const select = el('select', { id: 'infer-job' });
  const inputBox = el('div', { id: 'infer-input' });
  const probs = el('div', { class: 'probs', id: 'probs' });
  const message = el('div', { class: 'muted', id: 'infer-message' });
  const predict = el('button', { id: 'predict', class: 'primary', onclick: () => run() }, 'Predict');
  const strip = el('div', { class: 'samples', id: 'samples' });
  const stripTitle = el('h2', { hidden: true }, 'Pick a test image');
  root.append(el('h1', {}, 'Try a model'),
    el('div', { class: 'toolbar' }, el('label', {}, 'Succeeded job ', select), predict, message),
    stripTitle, strip,
    el('div', { class: 'split' }, inputBox, probs));

  let current = null; // {job, model, shape, inputName, task, getInput}
  let stopped = false, chosen = 0;

  async function load() {
    const r = await api('GET', '/v1/jobs?state=succeeded&limit=200');
    if (stopped) return;
    if (!r.ok) { message.textContent = errorText(r); return; }
    if (!r.data.jobs.length) { message.textContent = 'No succeeded job yet.'; return; }
    select.replaceChildren(...r.data.jobs.map((j) => el('option', { value: j.id },
      `${j.model} · ${j.id}`)));
    const wanted = params.get('job');
    if (wanted && r.data.jobs.some((j) => j.id === wanted)) select.value = wanted;
    choose();
  }
  select.addEventListener('change', choose);

  async function choose() {
    const id = select.value, seq = ++chosen;
    probs.replaceChildren();
    strip.replaceChildren();
    stripTitle.hidden = true;
    const j = await api('GET', `/v1/jobs/${id}`);
    if (stopped || seq !== chosen) return;
    if (!j.ok) { message.textContent = errorText(j); return; }
    const spec = j.data.spec || {};
    let modelSpec = typeof spec.model === 'object' ? spec.model : null;
    if (!modelSpec) {
      const m = await api('GET', `/v1/models/${encodeURIComponent(j.data.model)}`);
      modelSpec = m.ok ? m.data.spec : null;
    }
    const meta = await api('GET', `/v2/models/${encodeURIComponent(j.data.model)}`);
    if (stopped || seq !== chosen) return;
    const inputName = meta.ok && meta.data.inputs && meta.data.inputs[0] ? meta.data.inputs[0].name : 'input';
    const shape = (modelSpec && modelSpec.input_shape) ||
      (meta.ok ? meta.data.inputs[0].shape.slice(1) : [1]);
    const data = spec.data || {};
    current = { id, model: j.data.model, shape, inputName, task: taskOf(spec) };
    const metrics = j.data.metrics || {};
    if (data.tokenizer || 'tokens_per_second' in metrics) {
      message.textContent = `text model, window ${shape[0]} tokens`;
      predict.textContent = 'Generate';
      textInput();
      return;
    }
    predict.textContent = 'Predict';
    message.textContent = `input ${JSON.stringify(shape)}, ${current.task}`;
    if (shape.length >= 2) imageInput(shape); else vectorInput(shape);
    loadSamples(j.data.dataset || data.dataset, seq);
  }

  // The strip of samples: the dataset's test split (its training split when it has
  // none), asked for only when the dataset lists the files, so no request fails.
  async function loadSamples(dataset, seq) {
    if (!dataset) return;
    const d = await api('GET', `/v1/datasets/${encodeURIComponent(dataset)}`);
    if (stopped || seq !== chosen || !d.ok) return;
    const roles = (d.data.files || []).map((f) => f.role);
    const split = roles.some((r) => r.startsWith('test')) ? 'test' :
      roles.some((r) => r.startsWith('train')) ? 'train' : null;
    if (!split) return;
    const r = await api('GET', `/v1/datasets/${encodeURIComponent(dataset)}/samples` +
      `?split=${split}&offset=0&limit=${SAMPLES}`);
    if (stopped || seq !== chosen) return;
    if (!r.ok) { message.textContent = 'samples: ' + errorText(r); return; }
    const size = current.shape.reduce((a, b) => a * b, 1);
    const samples = r.data.samples.filter((s) => s.data.length === size);
    if (!samples.length) return;
    stripTitle.textContent = `Pick a ${split} image (${dataset}, ${r.data.total} samples)`;
    stripTitle.hidden = false;
    strip.replaceChildren(...samples.map((sample) => {
      const thumb = current.shape.length >= 2 ? thumbnail(sample.data, current.shape) :
        el('button', {}, `#${sample.index}`);
      thumb.dataset.index = sample.index;
      thumb.dataset.label = sample.label;
      thumb.title = `#${sample.index}, label ${sample.label}`;
      thumb.addEventListener('click', () => {
        strip.querySelectorAll('.picked').forEach((e) => e.classList.remove('picked'));
        thumb.classList.add('picked');
        run(sample);
      });
      return thumb;
    }));
  }

  // A sample drawn at its own resolution (CSS scales it up), its values stretched to
  // 0..255 whatever their stored range: grey for one channel, RGB for three.
  function thumbnail(values, shape) {
    const h = shape[shape.length - 2], w = shape[shape.length - 1];
    const channels = shape.length === 3 ? shape[0] : 1;
    const canvas = el('canvas', { width: w, height: h });
    let lo = Infinity, hi = -Infinity;
    for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
    const k = hi > lo ? 255 / (hi - lo) : 0;
    const ctx = canvas.getContext('2d');
    const image = ctx.createImageData(w, h);
    for (let i = 0; i < w * h; i++) {
      for (let c = 0; c < 3; c++) {
        const v = values[(channels === 3 ? c : 0) * w * h + i];
        image.data[i * 4 + c] = (v - lo) * k;
      }
      image.data[i * 4 + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    return canvas;
  }

  function imageInput(shape) {
    const h = shape[shape.length - 2], w = shape[shape.length - 1];
    const channels = shape.length === 3 ? shape[0] : 1;
    const size = 280;
    const canvas = el('canvas', { class: 'draw', id: 'draw', width: size, height: size });
    const small = el('canvas', { width: w, height: h, id: 'draw-small',
      style: `width:${w * 4}px;height:${h * 4}px;image-rendering:pixelated;border:1px solid #888` });
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, size, size);
    ctx.strokeStyle = '#fff';
    ctx.lineWidth = size / 12;
    ctx.lineCap = ctx.lineJoin = 'round';
    let drawing = false;
    const at = (e) => { const b = canvas.getBoundingClientRect(); return [e.clientX - b.left, e.clientY - b.top]; };
    canvas.addEventListener('pointerdown', (e) => { drawing = true; ctx.beginPath(); ctx.moveTo(...at(e)); });
    canvas.addEventListener('pointermove', (e) => { if (drawing) { ctx.lineTo(...at(e)); ctx.stroke(); } });
    const up = () => { if (drawing) { drawing = false; run(); } };
    canvas.addEventListener('pointerup', up);
    canvas.addEventListener('pointerleave', up);
    const clear = el('button', { onclick: () => { ctx.fillRect(0, 0, size, size); probs.replaceChildren(); } }, 'Clear');
    inputBox.replaceChildren(el('div', {}, canvas), el('div', { class: 'toolbar' }, clear,
      el('span', { class: 'muted' }, `drawn, sent as ${w}x${h}:`), small));
    current.getInput = () => {
      const sctx = small.getContext('2d', { willReadFrequently: true });
      sctx.imageSmoothingEnabled = true;
      sctx.imageSmoothingQuality = 'high';
      sctx.drawImage(canvas, 0, 0, w, h);
      const pixels = sctx.getImageData(0, 0, w, h).data;
      const out = [];
      for (let c = 0; c < channels; c++)
        for (let i = 0; i < w * h; i++) out.push(channels === 3 ? pixels[i * 4 + c] : pixels[i * 4]);
      return out;
    };
  }

  function vectorInput(shape) {
    const n = shape.reduce((a, b) => a * b, 1);
    const text = el('textarea', { id: 'vector', style: 'min-height:80px' });
    text.value = new Array(n).fill(0).join(', ');
    inputBox.replaceChildren(el('div', { class: 'muted' }, `${n} numbers, comma-separated`), text);
    current.getInput = () => text.value.split(/[\s,]+/).filter(Boolean).map(Number);
  }

  // A prompt and the sampling knobs; run() streams the continuation into #generated.
  function textInput() {
    const prompt = el('textarea', { id: 'prompt', style: 'min-height:80px' });
    const field = (id, label, value, attrs) => {
      const input = el('input', Object.assign({ id, type: 'number', value, style: 'width:6em' }, attrs));
      return [input, el('label', {}, label + ' ', input)];
    };
    const [tokens, tokensLabel] = field('max-new-tokens', 'tokens', 200, { min: 0 });
    const [temperature, temperatureLabel] = field('temperature', 'temperature', 0.8, { step: 0.1, min: 0 });
    const [topK, topKLabel] = field('top-k', 'top k', 40, { min: 1 });
    const [seed, seedLabel] = field('seed', 'seed', 1, { min: 0 });
    inputBox.replaceChildren(el('div', { class: 'muted' }, 'Prompt'), prompt,
      el('div', { class: 'toolbar' }, tokensLabel, temperatureLabel, topKLabel, seedLabel));
    current.getRequest = () => {
      const body = { prompt: prompt.value, max_new_tokens: Number(tokens.value),
        temperature: Number(temperature.value), stream: true };
      if (topK.value !== '') body.top_k = Number(topK.value);
      if (seed.value !== '') body.seed = Number(seed.value);
      return body;
    };
  }

  async function generate() {
    const out = el('pre', { id: 'generated', class: 'generated' });
    const status = el('div', { class: 'muted', id: 'generate-status' }, 'generating…');
    probs.replaceChildren(el('h2', {}, 'Continuation'), out, status);
    const r = await postEvents(`/v1/models/${encodeURIComponent(current.model)}/versions/${current.id}/generate`,
      current.getRequest(), (type, data) => {
        if (type === 'token') out.textContent += data.text;
        else if (type === 'done') status.textContent =
          `${data.tokens.length} tokens, ${data.tokens_per_second.toFixed(0)} tokens/s, seed ${data.seed}`;
        else if (type === 'error') status.textContent = 'error: ' + data.message;
      });
    if (!r.ok) { status.textContent = errorText(r); message.textContent = errorText(r); }
  }

  // sample: a picked {index, label, data} (values as stored); none: the drawn input.
  async function run(sample) {
    if (current && current.getRequest) return generate();
    if (!current || !(sample || current.getInput)) return;
    if (!sample) strip.querySelectorAll('.picked').forEach((e) => e.classList.remove('picked'));
    const data = sample ? sample.data : current.getInput();
    const softmax = current.task === 'classification';
    const body = { id: 'dashboard', parameters: { softmax },
      inputs: [{ name: current.inputName, datatype: 'FP32', shape: [1, ...current.shape], data }] };
    const r = await api('POST', `/v2/models/${encodeURIComponent(current.model)}/versions/${current.id}/infer`, body);
    if (!r.ok) { message.textContent = errorText(r); return; }
    let out = r.data.outputs[0].data;
    if (current.task === 'regression') return showValues(out, sample);
    if (current.task === 'multilabel') return showLabels(out.map(sigmoid), sample);
    // one output (binary with bce_with_logits): the sigmoid is the positive class's
    if (out.length === 1) out = [1 - sigmoid(r.data.outputs[0].data[0]), sigmoid(r.data.outputs[0].data[0])];
    const best = out.indexOf(Math.max(...out));
    const truth = sample ? el('div', { id: 'true-label', 'data-label': sample.label,
      class: sample.label === best ? 'ok' : 'bad' },
    `True label ${sample.label} (sample #${sample.index}) — ` +
      (sample.label === best ? 'correct' : 'wrong')) : null;
    probs.replaceChildren(el('h2', {}, `Predicted class ${best}`), truth, ...out.map((p, i) =>
      el('div', { class: 'row' + (i === best ? ' top' : ''), 'data-class': i },
        el('span', { class: 'label' }, String(i)),
        el('div', { class: 'pbar', style: `width:${Math.max(1, p * 300).toFixed(0)}px` }),
        el('span', { class: 'num' }, (p * 100).toFixed(1) + '%'))));
  }

  function showValues(out, sample) {
    const truth = sample ? el('div', { id: 'true-label', 'data-label': JSON.stringify(sample.label) },
      `True value ${JSON.stringify(sample.label)} (sample #${sample.index})`) : null;
    probs.replaceChildren(el('h2', {}, out.length === 1 ? 'Predicted value' : 'Predicted values'), truth,
      ...out.map((v, i) => el('div', { class: 'row', 'data-output': i },
        el('span', { class: 'label' }, String(i)), el('span', { class: 'num value' }, fmtValue(v)))));
  }

  function showLabels(p, sample) {
    const on = p.map((v, i) => (v > 0.5 ? i : -1)).filter((i) => i >= 0);
    const truth = sample ? el('div', { id: 'true-label', 'data-label': JSON.stringify(sample.label) },
      `True labels ${JSON.stringify(sample.label)} (sample #${sample.index})`) : null;
    probs.replaceChildren(el('h2', {}, `Predicted labels: ${on.length ? on.join(', ') : 'none'}`), truth,
      ...p.map((v, i) => el('div', { class: 'row' + (v > 0.5 ? ' top' : ''), 'data-class': i },
        el('span', { class: 'label' }, String(i)),
        el('div', { class: 'pbar', style: `width:${Math.max(1, v * 300).toFixed(0)}px` }),
        el('span', { class: 'num' }, (v * 100).toFixed(1) + '%'))));
  }

  load();
  return () => { stopped = true; };
}

const sigmoid = (x) => 1 / (1 + Math.exp(-x));
const fmtValue = (v) => (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(4) : v.toFixed(4));

// The job's task: "task" in its spec, else its loss's (as kilnd infers it).
export function taskOf(spec) {
  if (spec.task) return spec.task;
  const loss = typeof spec.loss === 'object' && spec.loss ? spec.loss.type : spec.loss || 'cross_entropy';
  if (loss === 'cross_entropy' || loss === 'nll') return 'classification';
  return loss === 'bce_with_logits' ? 'multilabel' : 'regression';
}
