// A customer's usage over time, its invoices and its subscription, from the metering and
// billing routes (docs/api.md, "Usage" and "Billing"): GET /customers/{id}/usage (buckets of
// per-kind totals), GET/POST /customers/{id}/invoices, GET /invoices/{id} (lines and totals),
// GET /invoices/{id}/print (opened in a new tab) and GET /customers/{id}/subscription.
// Every number shown is the API's, formatted here only: money in integer cents, units as
// the invoice states them.

import { call, get, post, query } from '../api.js';
import { h, table } from '../dom.js';
import { lineChart } from '../chart.js';

const HOUR = 3600 * 1000;
const DAY = 24 * HOUR;
// How far back each granularity looks (the API allows 31 days per hour, 366 per day).
const SPAN = { hour: 2 * DAY, day: 30 * DAY };
const STEP = { hour: HOUR, day: DAY };

/** The usage kinds in the API's order, with what a person reads and how a total is formed. */
export const KINDS = {
  publish_minutes: { label: 'Publishing minutes', unit: 'minutes' },
  subscribe_minutes: { label: 'Participant minutes (receiving)', unit: 'minutes' },
  viewer_minutes: { label: 'Live viewer minutes', unit: 'minutes' },
  recording_minutes: { label: 'Recording minutes', unit: 'minutes' },
  messages: { label: 'Chat messages', unit: 'messages' },
  bytes_out: { label: 'Media sent', unit: 'bytes' },
  storage_bytes: { label: 'Recording storage (peak held)', unit: 'bytes', peak: true },
};

/** Minutes to at most two decimals, counts whole, bytes in decimal units (an invoice's GB is 10^9). */
export function quantity(kind, value) {
  const unit = KINDS[kind]?.unit;
  if (unit === 'minutes') return `${Number(value.toFixed(2))} min`;
  if (unit === 'bytes') {
    for (const [size, name] of [[1e12, 'TB'], [1e9, 'GB'], [1e6, 'MB'], [1e3, 'kB']]) {
      if (value >= size) return `${Number((value / size).toFixed(2))} ${name}`;
    }
    return `${value} B`;
  }
  return String(value);
}

/** Integer cents as the printable invoice writes them: "1,234.56 USD". */
export function money(cents, currency) {
  const abs = Math.abs(cents);
  const whole = Math.floor(abs / 100).toLocaleString('en-US');
  return `${cents < 0 ? '-' : ''}${whole}.${String(abs % 100).padStart(2, '0')} ${currency}`;
}

const day = (iso) => new Date(iso).toISOString().slice(0, 10);

/** The usage answer's buckets ([{start, totals: {kind: n}}]) as one series per kind, in KINDS' order. */
export function usageSeries(buckets) {
  const series = new Map();
  for (const bucket of buckets) {
    const t = Date.parse(bucket.start);
    for (const [kind, value] of Object.entries(bucket.totals)) {
      if (!series.has(kind)) series.set(kind, []);
      series.get(kind).push({ t, v: value });
    }
  }
  const order = Object.keys(KINDS);
  return [...series]
    .sort(([a], [b]) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99))
    .map(([name, points]) => ({ name, points }));
}

/** A kind's total over the shown range: the sum of its buckets, or the peak for storage. */
export function total(kind, points) {
  const values = points.map((p) => p.v);
  if (KINDS[kind]?.peak) return Math.max(0, ...values);
  return Number(values.reduce((a, b) => a + b, 0).toFixed(6));
}

async function drawUsage(box, customerId, granularity) {
  const to = new Date();
  const from = new Date(to.getTime() - SPAN[granularity]);
  const answer = await get(`customers/${customerId}/usage${query({
    from: from.toISOString(), to: to.toISOString(), granularity,
  })}`);
  const series = usageSeries(answer.buckets);
  const clock = granularity === 'day' ? day : (t) => new Date(t).toISOString().slice(5, 16).replace('T', ' ');
  const charts = series.map((s) => h('figure', { class: 'usage-kind', dataset: { kind: s.name } },
    lineChart([s], {
      kind: 'bars', step: STEP[granularity], clock, title: `${KINDS[s.name]?.label ?? s.name} per ${granularity} (UTC)`,
      format: (v) => quantity(s.name, v),
    })));
  const totals = series.length === 0 ? h('p', { class: 'muted' }, 'No usage in this range.')
    : table(['Kind', `Total, ${answer.from.slice(0, 16).replace('T', ' ')} – ${answer.to.slice(0, 16).replace('T', ' ')} UTC`],
      series.map((s) => {
        const sum = total(s.name, s.points);
        return { cells: [KINDS[s.name]?.label ?? s.name, quantity(s.name, sum)], attrs: { dataset: { kind: s.name, total: sum } } };
      }), { id: 'usage-totals' });
  box.replaceChildren(...charts, totals);
  box.dataset.granularity = granularity;
  box.dataset.buckets = answer.buckets.length;
}

async function drawSubscription(box, customerId) {
  const { subscription: sub, in_good_standing: good } = await get(`customers/${customerId}/subscription`);
  box.dataset.status = sub ? sub.status : 'none';
  box.dataset.goodStanding = good;
  box.replaceChildren(sub
    ? h('p', {}, 'Subscription: ', h('strong', { class: 'sub-status' }, sub.status.replace('_', ' ')),
      `, ${sub.plan_id} tier`, sub.activated_at ? `, active since ${day(sub.activated_at)}` : '',
      good ? '; in good standing.' : '; new service (joins, rooms) is refused until it is active again.')
    : h('p', {}, 'No subscription: billed by hand, in good standing.'));
}

function lineRows(invoice) {
  return invoice.lines.map((line) => ({
    cells: [line.description, `${line.quantity} ${line.unit}`, line.included, line.billable,
      `${line.unit_price_cents}¢`, money(line.amount_cents, invoice.currency)],
    attrs: { dataset: { kind: line.kind, amountCents: line.amount_cents } },
  }));
}

async function openInvoice(ctx, detail, id) {
  const invoice = await get(`invoices/${id}`);
  const lines = table(['Item', 'Used', 'Included', 'Billable', 'Unit price', 'Amount'], lineRows(invoice),
    { id: 'invoice-lines' });
  lines.append(h('tfoot', {},
    h('tr', {}, h('th', { colspan: 5 }, 'Subtotal'), h('td', { id: 'invoice-subtotal' }, money(invoice.subtotal_cents, invoice.currency))),
    h('tr', {}, h('th', { colspan: 5 }, 'Total'), h('td', { id: 'invoice-total', dataset: { cents: invoice.total_cents } },
      money(invoice.total_cents, invoice.currency)))));
  const print = h('button', { type: 'button', class: 'print' }, 'Printable page');
  print.addEventListener('click', () => printInvoice(invoice.id).catch(ctx.fail));
  detail.dataset.invoiceId = invoice.id;
  detail.dataset.status = invoice.status;
  detail.replaceChildren(
    h('h4', {}, `Invoice ${invoice.number}`),
    h('p', {}, `${invoice.plan_id} tier, ${day(invoice.period_start)} – ${day(new Date(Date.parse(invoice.period_end) - 1000))}, `,
      h('strong', {}, invoice.status), invoice.status === 'draft' ? ' (the period runs: regenerated on demand)' : ''),
    lines, print);
}

/**
 * The printable page in a new tab: fetched with the token (never put in a URL) and put into the
 * tab's document. The tab inherits the dashboard's Content-Security-Policy, which refuses the
 * page's inline <style>: its rules are applied through the CSSOM instead (a constructed sheet),
 * and the page carries no scripts (the server's, escaped; parsed inert here).
 */
async function printInvoice(id) {
  const tab = window.open('', '_blank'); // now, in the click: a window opened after an await is blocked
  if (!tab) throw new Error('the browser blocked the new tab: allow pop-ups for the dashboard');
  try {
    const page = await (await call('GET', `invoices/${id}/print`, undefined, { raw: true })).text();
    // The <style> blocks are taken out before parsing: even an inert parsed copy would trip the policy.
    const css = [];
    const parsed = new DOMParser().parseFromString(page.replace(/<style>([\s\S]*?)<\/style>/g, (_, rules) => {
      css.push(rules);
      return '';
    }), 'text/html');
    const sheet = new tab.CSSStyleSheet();
    sheet.replaceSync(css.join('\n'));
    tab.document.title = parsed.title;
    tab.document.documentElement.lang = parsed.documentElement.lang;
    tab.document.adoptedStyleSheets = [sheet];
    tab.document.body.replaceWith(tab.document.importNode(parsed.body, true));
  } catch (error) {
    tab.close();
    throw error;
  }
}

async function drawInvoices(ctx, box, customerId) {
  const detail = h('div', { id: 'invoice-detail' });
  const list = h('div');
  const open = (id) => openInvoice(ctx, detail, id).catch(ctx.fail);
  const reload = async () => {
    const { invoices } = await get(`customers/${customerId}/invoices`);
    list.replaceChildren(invoices.length === 0 ? h('p', { class: 'muted' }, 'No invoices yet.')
      : table(['Invoice', 'Period', 'Status', 'Total', ''], invoices.map((inv) => ({
        cells: [inv.number, `${day(inv.period_start)} – ${day(new Date(Date.parse(inv.period_end) - 1000))}`, inv.status,
          money(inv.total_cents, inv.currency), h('button', { type: 'button', class: 'open', onclick: () => open(inv.id) }, 'Open')],
        attrs: { dataset: { invoiceId: inv.id, status: inv.status, totalCents: inv.total_cents } },
      })), { id: 'invoice-table' }));
  };
  const parts = [];
  if (ctx.operator) {
    const period = h('input', { type: 'month', name: 'period', required: true, value: new Date().toISOString().slice(0, 7) });
    const form = h('form', { id: 'invoice-form' }, 'Invoice for ', period, ' ', h('button', { type: 'submit' }, 'Generate'));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        const invoice = await post(`customers/${customerId}/invoices`, { period: period.value });
        ctx.status(`Invoice ${invoice.number} generated (${invoice.status}).`);
        await reload();
        await openInvoice(ctx, detail, invoice.id);
      } catch (error) {
        ctx.fail(error);
      }
    });
    parts.push(form);
  }
  box.replaceChildren(...parts, list, detail);
  await reload();
}

async function customerUsage(ctx, box, customerId, granularity) {
  const generation = (box.generation = (box.generation || 0) + 1); // a newer choice wins over a slow older one
  const subscription = h('div', { id: 'subscription' });
  const chart = h('div', { id: 'usage-chart' });
  const invoices = h('div', { id: 'invoices' });
  box.replaceChildren(subscription, h('h3', {}, 'Usage'), chart, h('h3', {}, 'Invoices'), invoices);
  await Promise.all([
    drawSubscription(subscription, customerId),
    drawUsage(chart, customerId, granularity),
    drawInvoices(ctx, invoices, customerId),
  ]);
  if (box.generation === generation) box.dataset.loaded = `${customerId}/${granularity}`;
}

export async function show(ctx, root) {
  const customers = ctx.operator ? (await get('customers?limit=200')).customers
    : [(await get(`customers/${ctx.who.customer_id}`)).customer];
  if (customers.length === 0) {
    root.append(h('section', { class: 'panel' }, h('p', {}, 'No customers yet.')));
    return;
  }
  const box = h('div', { id: 'usage-box' });
  const pick = h('select', { id: 'usage-customer', 'aria-label': 'Customer' }, customers.map((c) => h('option', { value: c.id }, c.name)));
  const grain = h('select', { id: 'usage-granularity', 'aria-label': 'Granularity' },
    ['day', 'hour'].map((g) => h('option', { value: g }, `per ${g}`)));
  const reload = () => customerUsage(ctx, box, pick.value, grain.value).catch(ctx.fail);
  pick.addEventListener('change', reload);
  grain.addEventListener('change', reload);
  root.append(h('section', { class: 'panel', id: 'usage' }, h('h2', {}, 'Usage and invoices of '), pick, ' ', grain, box));
  await customerUsage(ctx, box, pick.value, grain.value);
}
