// Line charts over time in inline SVG (nothing is loaded from elsewhere): load, quality and
// usage are easier to look at than to read. Each series is [{t: ms or Date, v: number}].

const NS = 'http://www.w3.org/2000/svg';
const COLOURS = ['#3b82f6', '#22c55e', '#f59e0b', '#ef4444', '#a855f7', '#14b8a6', '#ec4899', '#84cc16'];

function el(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

const clockTime = (t) => new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });

/**
 * Draw `series` ([{name, points: [{t, v}]}]) into a new <svg class="chart">.
 * `format` turns a value into axis text, `clock` a time into the x axis's; `kind` 'line'
 * (default) or 'bars' (usage buckets: each bar `step` ms wide in time, and carrying its
 * bucket's start and exact value as data-t and data-v, so what is drawn can be checked).
 */
export function lineChart(series, {
  width = 560, height = 180, format = String, title = '', kind = 'line', clock = clockTime, step = 0,
} = {}) {
  const svg = el('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': title });
  const left = 64;
  const right = 8;
  const top = 22;
  const bottom = 22;
  const all = series.flatMap((s) => s.points.map((p) => ({ t: +p.t, v: p.v }))).filter((p) => Number.isFinite(p.v));
  if (title) svg.append(el('text', { x: left, y: 14, class: 'chart-title' }, title));
  if (all.length === 0) {
    svg.append(el('text', { x: width / 2, y: height / 2, class: 'chart-empty', 'text-anchor': 'middle' }, 'no data yet'));
    return svg;
  }
  const t0 = Math.min(...all.map((p) => p.t));
  const t1 = Math.max(...all.map((p) => p.t)) + (kind === 'bars' ? step : 0);
  const vmax = Math.max(...all.map((p) => p.v), 0) || 1;
  const x = (t) => left + (t1 === t0 ? (width - left - right) / 2 : ((t - t0) / (t1 - t0)) * (width - left - right));
  const y = (v) => top + (1 - v / vmax) * (height - top - bottom);
  svg.append(el('line', { x1: left, y1: y(0), x2: width - right, y2: y(0), class: 'axis' }));
  svg.append(el('line', { x1: left, y1: top, x2: left, y2: y(0), class: 'axis' }));
  svg.append(el('text', { x: left - 4, y: top + 4, 'text-anchor': 'end', class: 'tick' }, format(vmax)));
  svg.append(el('text', { x: left - 4, y: y(0), 'text-anchor': 'end', class: 'tick' }, format(0)));
  svg.append(el('text', { x: left, y: height - 6, class: 'tick' }, clock(t0)));
  svg.append(el('text', { x: width - right, y: height - 6, 'text-anchor': 'end', class: 'tick' }, clock(t1)));
  series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const points = s.points.filter((p) => Number.isFinite(p.v));
    if (kind === 'bars') {
      const slot = step && t1 > t0 ? x(t0 + step) - x(t0) : (width - left - right) / Math.max(points.length, 1);
      const barWidth = Math.max(2, slot / series.length - 2);
      for (const p of points) {
        svg.append(el('rect', {
          x: x(+p.t) + i * barWidth, y: y(p.v), width: barWidth, height: y(0) - y(p.v), fill: colour, class: 'bar',
          'data-t': new Date(+p.t).toISOString(), 'data-v': p.v,
        }));
      }
    } else {
      const line = el('polyline', {
        points: points.map((p) => `${x(+p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' '),
        fill: 'none', stroke: colour, 'stroke-width': 2, class: 'series',
      });
      line.dataset.name = s.name;
      svg.append(line);
    }
    svg.append(el('text', { x: left + 8 + i * 130, y: top + 12, fill: colour, class: 'legend' }, s.name));
  });
  return svg;
}

/** Keeps the last `size` samples of named series, for charts of what is polled live. */
export class History {
  constructor(size = 60) {
    this.size = size;
    this.series = new Map();
  }

  add(name, v, t = Date.now()) {
    if (!this.series.has(name)) this.series.set(name, []);
    const points = this.series.get(name);
    points.push({ t, v });
    if (points.length > this.size) points.shift();
  }

  toSeries(names = [...this.series.keys()]) {
    return names.filter((n) => this.series.has(n)).map((name) => ({ name, points: this.series.get(name) }));
  }
}
