// Customers: create one, change its tier and instance quota, suspend or reactivate it (operator);
// an instance administrator sees its own customer only, read-only.

import { get, patch, post } from '../api.js';
import { bytes, h, table, when } from '../dom.js';

function quotaRows(quotas, usage) {
  return [
    ['instances', `${usage.instances} of ${quotas.max_instances}`],
    ['open rooms', `${usage.open_rooms} of ${quotas.max_concurrent_rooms}`],
    ['participants per room', quotas.max_participants_per_room],
    ['recording minutes a month', quotas.recording_minutes_per_month],
    ['storage', bytes(quotas.storage_bytes)],
  ];
}

async function ownCustomer(ctx, root) {
  const detail = await get(`customers/${ctx.who.customer_id}`);
  root.append(h('section', { class: 'panel', id: 'customers' },
    h('h2', {}, 'Your customer account'),
    table(['Name', 'Tier', 'Status', 'Since'], [{
      cells: [detail.customer.name, detail.customer.subscription_tier, detail.customer.status,
        when(detail.customer.created_at)],
      attrs: { dataset: { customerId: detail.customer.id } },
    }]),
    h('h3', {}, 'Quotas'), table(['', ''], quotaRows(detail.quotas, detail.usage))));
}

export async function show(ctx, root) {
  if (!ctx.operator) return ownCustomer(ctx, root);
  const [{ plans }, { customers }] = await Promise.all([get('plans'), get('customers?limit=200')]);
  const tiers = plans.map((p) => p.id);
  const tierSelect = (value, attrs = {}) => h('select', attrs, tiers.map((t) => h('option', { value: t, selected: t === value }, t)));

  const name = h('input', { name: 'name', placeholder: 'customer name', required: true, maxLength: 200 });
  const tier = tierSelect('starter', { name: 'tier' });
  const form = h('form', { id: 'customer-form' }, name, tier, h('button', { type: 'submit', class: 'primary' }, 'Create customer'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const created = await post('customers', { name: name.value, tier: tier.value });
      ctx.status(`Customer ${created.name} created.`);
      await ctx.go('customers');
    } catch (error) {
      ctx.fail(error);
    }
  });

  const rows = customers.map((customer) => {
    const tierField = tierSelect(customer.subscription_tier, { class: 'tier', 'aria-label': 'Tier' });
    const maxField = h('input', { type: 'number', min: 0, value: customer.max_instances, class: 'max-instances', size: 4 });
    const save = h('button', { type: 'button', class: 'save' }, 'Save');
    save.addEventListener('click', async () => {
      try {
        const changes = { max_instances: Number(maxField.value) };
        if (tierField.value !== customer.subscription_tier) changes.subscription_tier = tierField.value;
        await patch(`customers/${customer.id}`, changes);
        ctx.status(`Customer ${customer.name} saved.`);
        await ctx.go('customers');
      } catch (error) {
        ctx.fail(error);
      }
    });
    const suspended = customer.status === 'suspended';
    const toggle = h('button', { type: 'button', class: suspended ? 'activate' : 'suspend danger' }, suspended ? 'Activate' : 'Suspend');
    toggle.addEventListener('click', async () => {
      try {
        await patch(`customers/${customer.id}`, { status: suspended ? 'active' : 'suspended' });
        await ctx.go('customers');
      } catch (error) {
        ctx.fail(error);
      }
    });
    const open = h('button', { type: 'button', class: 'instances' }, 'Instances');
    open.addEventListener('click', () => ctx.go('instances', { customerId: customer.id }));
    return {
      cells: [h('span', { class: 'name' }, customer.name), h('span', { class: 'state' }, customer.status), tierField,
        maxField, h('span', {}, save, ' ', toggle, ' ', open), when(customer.created_at)],
      attrs: { dataset: { customerId: customer.id, status: customer.status } },
    };
  });
  root.append(h('section', { class: 'panel', id: 'customers' },
    h('h2', {}, 'Customers'), form,
    table(['Name', 'Status', 'Tier', 'Max instances', '', 'Created'], rows, { id: 'customer-table' })));
}
