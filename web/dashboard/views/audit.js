// The audit log, newest first: filter by customer and instance (the operator; an instance's
// administrator sees its own instance's entries only) and by action, page back with "Older".

import { get, query } from '../api.js';
import { h, table, when } from '../dom.js';

export async function show(ctx, root) {
  const customer = h('input', { name: 'customer_id', placeholder: 'customer id', size: 38, hidden: !ctx.operator });
  const instance = h('input', { name: 'instance_id', placeholder: 'instance id', size: 38, hidden: !ctx.operator });
  const action = h('input', { name: 'action', placeholder: 'action contains (e.g. customer.)', size: 24 });
  const form = h('form', { id: 'audit-filter' }, customer, instance, action, h('button', { type: 'submit', class: 'primary' }, 'Filter'));
  const body = h('tbody');
  const older = h('button', { type: 'button', id: 'audit-older' }, 'Older');
  root.append(h('section', { class: 'panel', id: 'audit' }, h('h2', {}, 'Audit log'), form,
    h('table', { id: 'audit-table' }, h('thead', {}, h('tr', {}, ['When', 'Actor', 'Action', 'Target', 'Customer', 'Instance', 'Details'].map((t) => h('th', {}, t)))), body),
    older));
  let before = null;
  const load = async (reset) => {
    if (reset) {
      before = null;
      body.replaceChildren();
    }
    const params = { limit: 100, before };
    if (ctx.operator) Object.assign(params, { customer_id: customer.value.trim(), instance_id: instance.value.trim() });
    const { entries } = await get(`audit${query(params)}`);
    const wanted = action.value.trim();
    for (const entry of entries) {
      before = entry.id;
      if (wanted && !entry.action.includes(wanted)) continue;
      body.append(h('tr', { dataset: { action: entry.action, auditId: String(entry.id) } },
        [when(entry.at), `${entry.actor} (${entry.actor_kind})`, entry.action, `${entry.target_type} ${entry.target_id}`,
          entry.customer_id || '', entry.instance_id || '', JSON.stringify(entry.details)].map((t) => h('td', {}, t))));
    }
    older.disabled = entries.length === 0;
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    load(true).catch(ctx.fail);
  });
  older.addEventListener('click', () => load(false).catch(ctx.fail));
  await load(true);
}
