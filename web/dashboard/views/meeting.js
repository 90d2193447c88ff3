// "Start a meeting": one click makes a room (and, for an operator with no tenant yet, a default
// customer and instance) and shows join links to copy: the host's and one per guest.

import { get, post } from '../api.js';
import { h } from '../dom.js';
import { copyField } from './common.js';

const DEFAULT_MARK = 'dashboard_default';
const HOST_GRANTS = { room_join: true, can_publish: true, can_subscribe: true, can_publish_data: true, room_admin: true };

/** The instance meetings go to: the admin's own; for the operator, the default tenant's (made once). */
async function meetingInstance(ctx) {
  if (!ctx.operator) return ctx.who.instance_id;
  const { customers } = await get('customers?limit=200');
  let customer = customers.find((c) => c.metadata?.[DEFAULT_MARK] && c.status === 'active');
  if (!customer) {
    customer = await post('customers', { name: 'Default', tier: 'pro', metadata: { [DEFAULT_MARK]: true } });
  }
  const { instances } = await get(`customers/${customer.id}/instances`);
  const found = instances.find((i) => i.status === 'active');
  if (found) return found.id;
  return (await post(`customers/${customer.id}/instances`, { name: 'meetings' })).instance.id;
}

function suffix() {
  return Array.from(crypto.getRandomValues(new Uint8Array(3)), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function link(instanceId, room, identity, name, grants = null) {
  const minted = await post(`instances/${instanceId}/tokens`, { identity, name, room, grants });
  return minted.url;
}

export async function show(ctx, root) {
  const links = h('ul', { class: 'links', id: 'join-links' });
  const more = h('button', { type: 'button', id: 'more-guest', hidden: true }, 'Another guest link');
  const start = h('button', { type: 'button', class: 'primary', id: 'start-meeting' }, 'Start a meeting');
  const roomLine = h('p', { id: 'meeting-room', hidden: true });
  root.append(h('section', { class: 'panel', id: 'meeting' },
    h('h2', {}, 'Start a meeting'),
    h('p', { class: 'muted' }, 'Creates a room and gives you join links: open yours, send one to each guest.'),
    start, roomLine, links, more));

  let current = null;
  let guests = 0;
  async function addGuest() {
    guests += 1;
    const url = await link(current.instanceId, current.room, `guest-${suffix()}`, `Guest ${guests}`);
    links.append(h('li', { class: 'guest-link' }, `Guest ${guests}: `, copyField(url)));
    return url;
  }
  start.addEventListener('click', async () => {
    start.disabled = true;
    try {
      ctx.status('Starting a meeting…');
      const instanceId = await meetingInstance(ctx);
      const room = await post('rooms', { name: `meeting-${suffix()}`, instance_id: instanceId });
      current = { instanceId, room: room.name };
      const hostUrl = await link(instanceId, room.name, `host-${suffix()}`, 'Host', HOST_GRANTS);
      links.replaceChildren(h('li', { class: 'host-link' }, 'You (host): ', copyField(hostUrl), ' ',
        h('a', { href: hostUrl, target: '_blank', rel: 'noopener', id: 'open-host' }, 'Open')));
      guests = 0;
      const guestUrl = await addGuest();
      roomLine.textContent = `Room ${room.name} is open.`;
      roomLine.hidden = false;
      more.hidden = false;
      // The same click copies the first guest's link, ready to paste into a chat or an invite.
      const copied = await Promise.race([
        navigator.clipboard ? navigator.clipboard.writeText(guestUrl).then(() => true, () => false) : false,
        new Promise((resolve) => { setTimeout(() => resolve(false), 2000); }), // a permission prompt left open
      ]);
      ctx.status(copied ? 'Meeting ready: the guest link is copied; paste it to your guest.'
        : 'Meeting ready: copy a link for each guest.');
    } catch (error) {
      ctx.fail(error);
    } finally {
      start.disabled = false;
    }
  });
  more.addEventListener('click', () => addGuest().catch(ctx.fail));
}
