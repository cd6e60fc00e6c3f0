// chart.js — metric series and their charts on uPlot: TensorBoard-style smoothing (a
// debiased exponential moving average), linear or log y axis, series of different
// steps on one step axis, series of a single point drawn as points, and a bounded
// number of points however long the run.

export const chartsAvailable = () => typeof window.uPlot === 'function';

const COLORS = ['#2f6fde', '#e8590c', '#1b9e52', '#ae3ec9', '#d6333a', '#0c8599',
  '#c98a00', '#5c7cfa', '#868e96', '#f06595'];
export const color = (i) => COLORS[i % COLORS.length];

// Points kept per series in the browser: past this, older points are reduced to each
// bucket's min and max (the server's max_points does the same for the initial load).
const KEEP = 8000;

export class Series {
  constructor() { this.x = []; this.y = []; }
  get last() { return this.x.length ? this.x[this.x.length - 1] : -1; }
  // points: [[step, wall_time, value], ...] ascending; steps we have are dropped
  append(points, num) {
    for (const p of points) {
      if (p[0] <= this.last) continue;
      this.x.push(p[0]);
      this.y.push(num(p[2]));
    }
    if (this.x.length > KEEP) this.compact();
  }
  compact() {
    const tail = 1000, n = this.x.length - tail, buckets = (KEEP / 2 - tail) / 2;
    const x = [], y = [];
    for (let b = 0; b < buckets; b++) {
      const lo = Math.floor(b * n / buckets), hi = Math.floor((b + 1) * n / buckets);
      let min = lo, max = lo;
      for (let i = lo; i < hi; i++) {
        if (!(this.y[i] >= this.y[min])) min = i; // NaN never wins min...
        if (!(this.y[i] <= this.y[max])) max = i; // ...and always wins max
      }
      for (const i of min <= max ? [min, max] : [max, min]) {
        if (x.length && x[x.length - 1] === this.x[i]) continue;
        x.push(this.x[i]); y.push(this.y[i]);
      }
    }
    this.x = x.concat(this.x.slice(n));
    this.y = y.concat(this.y.slice(n));
  }
}

// TensorBoard's smoothing: EMA with weight w, debiased so the start is not pulled to 0.
export function ema(y, w) {
  if (!(w > 0)) return y;
  const out = new Array(y.length);
  let last = 0, n = 0;
  for (let i = 0; i < y.length; i++) {
    const v = y[i];
    if (v == null || !isFinite(v)) { out[i] = v; continue; }
    last = last * w + (1 - w) * v;
    n++;
    out[i] = last / (1 - Math.pow(w, n));
  }
  return out;
}

// Aligns series of different steps on the union of their steps (nulls elsewhere).
function align(list) {
  if (list.length === 1) return [list[0].x, list[0].y];
  const all = new Set();
  for (const s of list) for (const x of s.x) all.add(x);
  const xs = Float64Array.from(all).sort();
  const ys = list.map((s) => {
    const out = new Array(xs.length).fill(null);
    let j = 0;
    for (let i = 0; i < s.x.length; i++) {
      while (xs[j] < s.x[i]) j++;
      out[j] = s.y[i];
    }
    return out;
  });
  return [Array.from(xs), ...ys];
}

// A line of one or two points (a final test metric) is drawn as points, unsmoothed.
const fewPoints = (line) => line.series.x.length <= 2;

// One chart: lines = [{label, series: Series, color}].
export class LineChart {
  constructor(container, title, key) {
    this.box = document.createElement('div');
    this.box.className = 'chart';
    this.box.dataset.chart = key;
    this.box.dataset.points = '0';
    const h = document.createElement('h3');
    h.textContent = title;
    this.box.append(h);
    this.plotBox = document.createElement('div');
    this.box.append(this.plotBox);
    container.append(this.box);
    this.lines = [];
    this.options = { log: false, smoothing: 0 };
    this.plot = null;
    this.shape = '';
  }
  setLines(lines) { this.lines = lines; }
  setOptions(options) { this.options = Object.assign({}, this.options, options); }
  destroy() { if (this.plot) this.plot.destroy(); this.plot = null; this.box.remove(); }

  data() {
    const [x, ...ys] = align(this.lines.map((l) => l.series));
    const w = this.options.smoothing, log = this.options.log;
    const clean = (y) => y.map((v) => v == null || !isFinite(v) || (log && v <= 0) ? null : v);
    const out = [x];
    ys.forEach((y, i) => {
      out.push(clean(y));
      if (w > 0 && !fewPoints(this.lines[i])) out.push(clean(ema(y, w)));
    });
    return out;
  }

  redraw() {
    let points = 0;
    for (const l of this.lines) points += l.series.x.length;
    this.box.dataset.points = String(points);
    if (!chartsAvailable()) return;
    const shape = JSON.stringify([this.lines.map((l) => [l.label, fewPoints(l)]),
      this.options.log, this.options.smoothing > 0]);
    const data = this.data();
    if (this.plot && shape === this.shape) {
      this.plot.setData(data);
      return;
    }
    if (this.plot) this.plot.destroy();
    this.shape = shape;
    const smooth = this.options.smoothing > 0;
    const series = [{ label: 'step' }];
    for (const l of this.lines) {
      // a series of one or two points (a final test metric) has no line to speak of:
      // draw its points, or it would look empty
      const few = fewPoints(l);
      const points = few ? { show: true, size: 8, fill: l.color } : { show: false };
      series.push({ label: l.label + (smooth && !few ? ' (raw)' : ''), stroke: l.color,
        width: smooth && !few ? 1 : 1.5, alpha: smooth && !few ? 0.3 : 1, spanGaps: true, points });
      if (smooth && !few) series.push({ label: l.label, stroke: l.color, width: 2, spanGaps: true,
        points: { show: false } });
    }
    const width = Math.max(300, this.box.clientWidth - 14);
    this.plot = new window.uPlot({
      width, height: 260, series, legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      // one step on the x axis (single points at the same step) still needs a width
      scales: { x: { time: false, range: (u, min, max) => min === max ? [min - 1, max + 1] : [min, max] },
        y: this.options.log ? { distr: 3 } : {} },
      axes: [{ stroke: '#888', grid: { stroke: 'rgba(128,128,128,.15)' } },
        { stroke: '#888', grid: { stroke: 'rgba(128,128,128,.15)' }, size: 60 }],
    }, data, this.plotBox);
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: Math.max(300, this.box.clientWidth - 14), height: 260 });
  }
}

// Groups a job's series names into charts: losses together, accuracies together,
// the learning rate alone, anything else alone.
// One chart per kind of number: the validation and test series of a metric share it
// (val_r2 and test_r2); accuracy and exact match share one, the macro precision, recall
// and F1 another.
export function groupOf(name) {
  if (/loss/.test(name)) return 'loss';
  if (name === 'lr' || /learning_rate/.test(name)) return 'lr';
  const base = name.replace(/^(val|test)_/, '');
  if (/acc|^exact_match$/.test(base)) return 'accuracy';
  if (/^precision$|^recall$|^f1$/.test(base)) return 'f1';
  return base;
}
export const GROUP_TITLES = { loss: 'Loss', accuracy: 'Accuracy', f1: 'Precision, recall, F1 (macro)',
  lr: 'Learning rate', mse: 'Mean squared error', mae: 'Mean absolute error', r2: 'R²' };
