// Usage over time and invoices of a customer. Metering lives in its own routes
// (GET /customers/{id}/usage, /customers/{id}/invoices, /invoices/{id}); a node without them
// answers 404, and the view says so instead of drawing an empty chart.

import { ApiError, get, query } from '../api.js';
import { h, table, when } from '../dom.js';
import { lineChart } from '../chart.js';

const DAY = 24 * 3600 * 1000;

function unavailable(what) {
  return h('p', { class: 'unavailable' }, `${what} is not available on this node.`);
}

/** Buckets [{start, amounts: {kind: n}}] (or {from/at, <kind>: n}) into one series per kind. */
export function usageSeries(buckets) {
  const series = new Map();
  for (const bucket of buckets) {
    const t = Date.parse(bucket.start ?? bucket.from ?? bucket.at ?? bucket.period_start);
    const amounts = bucket.amounts ?? bucket.usage ?? Object.fromEntries(
      Object.entries(bucket).filter(([, v]) => typeof v === 'number'));
    for (const [kind, value] of Object.entries(amounts)) {
      if (!series.has(kind)) series.set(kind, []);
      series.get(kind).push({ t, v: Number(value) });
    }
  }
  return [...series].map(([name, points]) => ({ name, points }));
}

async function customerUsage(ctx, box, customerId, granularity) {
  const to = new Date();
  const from = new Date(to.getTime() - (granularity === 'hour' ? 2 * DAY : 30 * DAY));
  const chart = h('div', { id: 'usage-chart' });
  const invoices = h('div', { id: 'invoices' });
  box.replaceChildren(h('h3', {}, 'Usage'), chart, h('h3', {}, 'Invoices'), invoices);
  try {
    const answer = await get(`customers/${customerId}/usage${query({ from: from.toISOString(), to: to.toISOString(), granularity })}`);
    const buckets = answer.buckets ?? answer.usage ?? answer;
    chart.replaceChildren(lineChart(usageSeries(Array.isArray(buckets) ? buckets : []), { title: `usage per ${granularity}`, kind: 'bars' }));
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404 && error.code === 'not_found')) throw error;
    chart.replaceChildren(unavailable('Usage metering'));
  }
  try {
    const answer = await get(`customers/${customerId}/invoices`);
    const list = answer.invoices ?? [];
    invoices.replaceChildren(list.length ? table(['Invoice', 'Period', 'Total', 'Status'], list.map((inv) => ({
      cells: [h('code', {}, inv.id), `${when(inv.period_start)} – ${when(inv.period_end)}`,
        inv.total_cents != null ? `${(inv.total_cents / 100).toFixed(2)} ${inv.currency ?? ''}` : '', inv.status ?? ''],
      attrs: { dataset: { invoiceId: inv.id } },
    })), { id: 'invoice-table' }) : h('p', { class: 'muted' }, 'No invoices yet.'));
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404 && error.code === 'not_found')) throw error;
    invoices.replaceChildren(unavailable('Invoicing'));
  }
}

export async function show(ctx, root) {
  const customers = ctx.operator ? (await get('customers?limit=200')).customers
    : [(await get(`customers/${ctx.who.customer_id}`)).customer];
  if (customers.length === 0) {
    root.append(h('section', { class: 'panel' }, h('p', {}, 'No customers yet.')));
    return;
  }
  const box = h('div');
  const pick = h('select', { id: 'usage-customer', 'aria-label': 'Customer' }, customers.map((c) => h('option', { value: c.id }, c.name)));
  const grain = h('select', { id: 'usage-granularity', 'aria-label': 'Granularity' },
    ['day', 'hour'].map((g) => h('option', { value: g }, `per ${g}`)));
  const reload = () => customerUsage(ctx, box, pick.value, grain.value).catch(ctx.fail);
  pick.addEventListener('change', reload);
  grain.addEventListener('change', reload);
  root.append(h('section', { class: 'panel', id: 'usage' }, h('h2', {}, 'Usage and invoices of '), pick, ' ', grain, box));
  await customerUsage(ctx, box, pick.value, grain.value);
}
