// Webhook endpoints of an instance and their deliveries: add an endpoint (its signing secret is
// shown once), send a test event, see each delivery's attempts, redeliver one.

import { del, get, patch, post, query } from '../api.js';
import { h, table, when } from '../dom.js';
import { administeredInstances, copyField, instanceSelect } from './common.js';

const EVENTS = ['room_started', 'room_finished', 'participant_joined', 'participant_left', 'track_published',
  'track_unpublished', 'recording_started', 'recording_finished', 'live_started', 'live_ended', 'message_created'];

function attempts(delivery) {
  return delivery.attempt_log.map((a) => `#${a.attempt} ${a.status_code ?? ''} ${a.error ?? ''}`.trim()).join('; ') || '–';
}

async function deliveries(ctx, box, instanceId, hook) {
  const { deliveries: list } = await get(`instances/${instanceId}/webhooks/${hook.id}/deliveries${query({ limit: 50 })}`);
  const rows = list.map((d) => {
    const again = h('button', { type: 'button', class: 'redeliver' }, 'Redeliver');
    again.addEventListener('click', async () => {
      try {
        await post(`instances/${instanceId}/webhooks/${hook.id}/deliveries/${d.id}/redeliver`);
        ctx.status(`Delivery ${d.id} queued again.`);
        await deliveries(ctx, box, instanceId, hook);
      } catch (error) {
        ctx.fail(error);
      }
    });
    return { cells: [d.id, d.event_type, d.status, d.attempts, attempts(d), when(d.created_at), again],
      attrs: { dataset: { deliveryId: String(d.id), status: d.status, event: d.event_type } } };
  });
  const refresh = h('button', { type: 'button', class: 'refresh' }, 'Refresh');
  refresh.addEventListener('click', () => deliveries(ctx, box, instanceId, hook).catch(ctx.fail));
  box.replaceChildren(h('h3', {}, `Deliveries to ${hook.url} `), refresh,
    list.length ? table(['#', 'Event', 'Status', 'Attempts', 'Log', 'Created', ''], rows, { id: 'delivery-table' })
      : h('p', { class: 'muted' }, 'No deliveries yet.'));
  box.dataset.webhookId = hook.id;
}

async function endpoints(ctx, box, instanceId) {
  const { webhooks } = await get(`instances/${instanceId}/webhooks`);
  const url = h('input', { name: 'url', type: 'url', placeholder: 'https://example.com/hook', required: true, size: 40 });
  const form = h('form', { id: 'webhook-form' }, url, h('button', { type: 'submit', class: 'primary' }, 'Add endpoint'));
  const secret = h('div');
  const detail = h('div', { id: 'deliveries' });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const created = await post(`instances/${instanceId}/webhooks`, { url: url.value, events: EVENTS });
      await endpoints(ctx, box, instanceId);
      box.querySelector('.new-secret')?.replaceChildren(h('div', { class: 'secret' }, 'Signing secret (shown once): ',
        copyField(created.secret)));
    } catch (error) {
      ctx.fail(error);
    }
  });
  const rows = webhooks.map((hook) => {
    const test = h('button', { type: 'button', class: 'test' }, 'Send test');
    test.addEventListener('click', async () => {
      try {
        await post(`instances/${instanceId}/webhooks/${hook.id}/test`);
        await deliveries(ctx, detail, instanceId, hook);
      } catch (error) {
        ctx.fail(error);
      }
    });
    const show = h('button', { type: 'button', class: 'deliveries' }, 'Deliveries');
    show.addEventListener('click', () => deliveries(ctx, detail, instanceId, hook).catch(ctx.fail));
    const toggle = h('button', { type: 'button', class: 'toggle' }, hook.enabled ? 'Disable' : 'Enable');
    toggle.addEventListener('click', async () => {
      try {
        await patch(`instances/${instanceId}/webhooks/${hook.id}`, { enabled: !hook.enabled });
        await endpoints(ctx, box, instanceId);
      } catch (error) {
        ctx.fail(error);
      }
    });
    const remove = h('button', { type: 'button', class: 'delete danger' }, 'Delete');
    remove.addEventListener('click', async () => {
      try {
        await del(`instances/${instanceId}/webhooks/${hook.id}`);
        await endpoints(ctx, box, instanceId);
      } catch (error) {
        ctx.fail(error);
      }
    });
    return { cells: [h('code', {}, hook.url), hook.enabled ? 'enabled' : 'disabled', `${hook.events.length} events`,
      h('span', {}, test, ' ', show, ' ', toggle, ' ', remove)], attrs: { dataset: { webhookId: hook.id } } };
  });
  secret.className = 'new-secret';
  box.replaceChildren(form, secret,
    webhooks.length ? table(['URL', 'State', 'Events', ''], rows, { id: 'webhook-table' }) : h('p', { class: 'muted' }, 'No endpoints.'),
    detail);
}

export async function show(ctx, root) {
  const choices = await administeredInstances(ctx);
  const box = h('div', { id: 'webhook-endpoints' });
  if (choices.length === 0) {
    root.append(h('section', { class: 'panel' }, h('p', {}, 'No instances yet.')));
    return;
  }
  const select = instanceSelect(choices, (id) => endpoints(ctx, box, id).catch(ctx.fail));
  select.id = 'webhook-instance';
  root.append(h('section', { class: 'panel', id: 'webhooks' }, h('h2', {}, 'Webhooks of '), select, box));
  await endpoints(ctx, box, select.value);
}
