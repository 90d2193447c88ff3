// Small DOM helpers: the dashboard builds its tables from API answers, never from HTML strings,
// so a customer's name can never become markup.

/** h('button', {class: 'x', onclick: fn, dataset: {id: 1}}, 'text', child...) */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'class') node.className = value;
    else if (key in node && typeof value !== 'string') node[key] = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
}

export function clear(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A table with a header row; rows are arrays of cells (or {cells, attrs}). */
export function table(headers, rows, attrs = {}) {
  return h('table', attrs,
    h('thead', {}, h('tr', {}, headers.map((text) => h('th', {}, text)))),
    h('tbody', {}, rows.map((row) => {
      const { cells, attrs: rowAttrs } = Array.isArray(row) ? { cells: row, attrs: {} } : row;
      return h('tr', rowAttrs, cells.map((cell) => h('td', {}, cell)));
    })));
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '';
}

export function bps(value) {
  if (value === null || value === undefined) return '–';
  if (value >= 1e6) return `${(value / 1e6).toFixed(2)} Mb/s`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(0)} kb/s`;
  return `${Math.round(value)} b/s`;
}

export function bytes(value) {
  if (value >= 1 << 30) return `${(value / (1 << 30)).toFixed(1)} GiB`;
  if (value >= 1 << 20) return `${(value / (1 << 20)).toFixed(1)} MiB`;
  if (value >= 1 << 10) return `${(value / (1 << 10)).toFixed(0)} KiB`;
  return `${value} B`;
}
