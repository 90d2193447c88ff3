// Pieces several views share: which instances the caller administers, and copying text.

import { get } from '../api.js';
import { h } from '../dom.js';

/** [{instance, customer}] the caller may administer: every active one for the operator, else its own. */
export async function administeredInstances(ctx) {
  if (!ctx.operator) {
    const instance = await get(`instances/${ctx.who.instance_id}`);
    return [{ instance, customer: null }];
  }
  const { customers } = await get('customers?limit=200');
  const lists = await Promise.all(customers.map((c) => get(`customers/${c.id}/instances`)));
  return customers.flatMap((customer, i) => lists[i].instances
    .filter((instance) => instance.status !== 'deleted')
    .map((instance) => ({ instance, customer })));
}

/** A <select> of instances; `onchange(id)` runs with the chosen one (and once for the first). */
export function instanceSelect(choices, onchange, selected = null) {
  const select = h('select', { class: 'instance-select', 'aria-label': 'Instance' },
    choices.map(({ instance, customer }) => h('option', { value: instance.id, selected: instance.id === selected },
      customer ? `${customer.name} / ${instance.name}` : instance.name)));
  select.addEventListener('change', () => onchange(select.value));
  return select;
}

export async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    if (button) button.textContent = 'Copied';
  } catch {
    // No clipboard permission (an insecure origin): select the text so Ctrl+C copies it.
    const field = button?.parentElement?.querySelector('input');
    if (field) field.select();
    if (button) button.textContent = 'Press Ctrl+C';
  }
}

/** A read-only field with a Copy button: for join links, keys and secrets. */
export function copyField(text, attrs = {}) {
  const button = h('button', { type: 'button', class: 'copy' }, 'Copy');
  button.addEventListener('click', () => copy(text, button));
  return h('span', { class: 'copy-field', ...attrs },
    h('input', { value: text, readOnly: true, size: 60, class: 'mono' }), button);
}
