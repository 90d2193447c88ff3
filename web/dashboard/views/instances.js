// Instances: create one for a customer (its first key and secret are shown once), change its
// settings and feature toggles, create and revoke API keys, suspend it (operator).

import { del, get, patch, post } from '../api.js';
import { h, table, when } from '../dom.js';
import { copyField } from './common.js';

const FEATURES = ['recording', 'live', 'bots'];

function credentialsBox(credentials) {
  return h('div', { class: 'secret', id: 'credentials' },
    h('p', {}, 'The new API key and its secret; the secret is shown only now.'),
    h('p', {}, 'Key: ', copyField(credentials.key, { class: 'copy-field key' })),
    h('p', {}, 'Secret: ', copyField(credentials.secret, { class: 'copy-field secret-value' })));
}

async function instanceDetail(ctx, box, instanceId, fresh = null) {
  const [instance, { keys }] = await Promise.all([get(`instances/${instanceId}`), get(`instances/${instanceId}/keys`)]);
  const name = h('input', { name: 'name', value: instance.name, maxLength: 200 });
  const locale = h('input', { name: 'locale', value: instance.locale, size: 6 });
  const toggles = FEATURES.map((feature) => h('label', {},
    h('input', { type: 'checkbox', checked: instance.features[feature] !== false, dataset: { feature } }), ` ${feature} `));
  const settings = h('form', { id: 'instance-settings' }, name, locale, toggles,
    h('button', { type: 'submit', class: 'primary' }, 'Save settings'));
  settings.addEventListener('submit', async (event) => {
    event.preventDefault();
    const features = Object.fromEntries(toggles.map((label) => {
      const box2 = label.querySelector('input');
      return [box2.dataset.feature, box2.checked];
    }));
    try {
      await patch(`instances/${instanceId}`, { name: name.value, locale: locale.value, features });
      ctx.status('Instance saved.');
      await instanceDetail(ctx, box, instanceId);
    } catch (error) {
      ctx.fail(error);
    }
  });
  const newKey = h('button', { type: 'button', id: 'create-key' }, 'Create API key');
  newKey.addEventListener('click', async () => {
    try {
      await instanceDetail(ctx, box, instanceId, await post(`instances/${instanceId}/keys`, { description: 'dashboard' }));
    } catch (error) {
      ctx.fail(error);
    }
  });
  const keyRows = keys.map((key) => {
    const revoke = h('button', { type: 'button', class: 'revoke danger', disabled: Boolean(key.revoked_at) }, 'Revoke');
    revoke.addEventListener('click', async () => {
      try {
        await del(`instances/${instanceId}/keys/${encodeURIComponent(key.key)}`);
        await instanceDetail(ctx, box, instanceId);
      } catch (error) {
        ctx.fail(error);
      }
    });
    return { cells: [h('code', {}, key.key), key.description, when(key.created_at), key.revoked_at ? `revoked ${when(key.revoked_at)}` : 'active', revoke],
      attrs: { dataset: { key: key.key, revoked: String(Boolean(key.revoked_at)) } } };
  });
  const children = [h('h2', {}, `Instance ${instance.name}`),
    h('p', { class: 'muted' }, `${instance.status} · region ${instance.region} · shard ${instance.shard_id} · `, h('code', {}, instance.id))];
  if (ctx.operator) {
    const suspended = instance.status === 'suspended';
    const toggle = h('button', { type: 'button', class: suspended ? 'activate' : 'suspend danger' }, suspended ? 'Activate instance' : 'Suspend instance');
    toggle.addEventListener('click', async () => {
      try {
        await patch(`instances/${instanceId}`, { status: suspended ? 'active' : 'suspended' });
        await instanceDetail(ctx, box, instanceId);
      } catch (error) {
        ctx.fail(error);
      }
    });
    children.push(h('p', {}, toggle));
  }
  children.push(h('h3', {}, 'Settings and features'), settings, h('h3', {}, 'API keys'));
  if (fresh) children.push(credentialsBox(fresh));
  children.push(newKey, table(['Key', 'Description', 'Created', 'State', ''], keyRows, { id: 'key-table' }));
  box.replaceChildren(...children);
  box.dataset.instanceId = instanceId;
}

export async function show(ctx, root, arg = {}) {
  const detail = h('section', { class: 'panel', id: 'instance-detail' });
  if (!ctx.operator) {
    root.append(detail);
    await instanceDetail(ctx, detail, ctx.who.instance_id);
    return;
  }
  const { customers } = await get('customers?limit=200');
  if (customers.length === 0) {
    root.append(h('section', { class: 'panel' }, h('p', {}, 'No customers yet: create one under Customers.')));
    return;
  }
  const customerId = arg.customerId || customers[0].id;
  const picker = h('select', { id: 'instance-customer', 'aria-label': 'Customer' },
    customers.map((c) => h('option', { value: c.id, selected: c.id === customerId }, c.name)));
  picker.addEventListener('change', () => ctx.go('instances', { customerId: picker.value }));
  const { instances } = await get(`customers/${customerId}/instances`);
  const name = h('input', { name: 'name', placeholder: 'instance name', required: true, maxLength: 200 });
  const form = h('form', { id: 'instance-form' }, name, h('button', { type: 'submit', class: 'primary' }, 'Create instance'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const created = await post(`customers/${customerId}/instances`, { name: name.value });
      await ctx.go('instances', { customerId, instanceId: created.instance.id, fresh: created.credentials });
    } catch (error) {
      ctx.fail(error);
    }
  });
  const rows = instances.filter((i) => i.status !== 'deleted').map((instance) => {
    const open = h('button', { type: 'button', class: 'open' }, 'Open');
    open.addEventListener('click', () => instanceDetail(ctx, detail, instance.id).catch(ctx.fail));
    return { cells: [h('span', { class: 'name' }, instance.name), instance.status, instance.region, when(instance.created_at), open],
      attrs: { dataset: { instanceId: instance.id } } };
  });
  root.append(h('section', { class: 'panel', id: 'instances' }, h('h2', {}, 'Instances of '), picker, form,
    table(['Name', 'Status', 'Region', 'Created', ''], rows, { id: 'instance-table' })), detail);
  if (arg.instanceId) await instanceDetail(ctx, detail, arg.instanceId, arg.fresh);
}
