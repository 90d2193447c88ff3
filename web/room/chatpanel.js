// The chat side panel: draws a RoomChat (chat.js) and turns input into its actions.
//
// Every text from the server goes in with textContent, never as markup. Message
// elements are kept by key and updated in place, so a pending message that becomes
// sent (or an edit, or a delete) changes where it stands.

const MARKS = {
  sending: 'sending…',
  sent: '✓ sent',
  delivered: '✓✓ delivered',
  read: '✓✓ read',
  failed: 'not sent · retry',
};

function clock(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return { short: '', long: '' };
  return {
    short: date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }),
    long: date.toLocaleString(),
  };
}

function names(list) {
  if (list.length <= 2) return list.join(' and ');
  return `${list.slice(0, -1).join(', ')} and ${list[list.length - 1]}`;
}

function markTitle(item) {
  switch (item.status) {
    case 'sending': return 'Sending… (sent again automatically when the connection is back)';
    case 'failed': return `Not sent: ${item.error || 'refused'}. Click to try again.`;
    case 'sent': return 'Sent; nobody else has received it yet';
    case 'delivered': return `Delivered to ${names(item.deliveredTo)}; not read yet`;
    case 'read': {
      const also = item.deliveredTo.length ? `; delivered to ${names(item.deliveredTo)}` : '';
      return `Read by ${names(item.readBy)}${also} (marked read once anyone has read it)`;
    }
    default: return '';
  }
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

export class ChatPanel {
  constructor(chat, elements) {
    this.chat = chat;
    this.el = elements; // {panel, list, typing, form, input, toggle, badge, close, empty}
    this.items = new Map(); // key -> {element, sender, time, edited, text, mark}
    this.available = false;
    const { form, input, toggle, close, list } = elements;
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });
    input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    input.addEventListener('input', () => chat.typing(input.value));
    input.addEventListener('blur', () => chat.stopTyping());
    toggle.addEventListener('click', () => this.setOpen(!chat.isOpen));
    close.addEventListener('click', () => this.setOpen(false));
    list.addEventListener('click', (event) => {
      const mark = event.target.closest('.chat-mark[data-retry]');
      if (mark) chat.retry(mark.dataset.retry);
    });
    chat.addEventListener('change', () => this.render());
  }

  submit() {
    const input = this.el.input;
    if (!input.value.trim()) return;
    this.chat.send(input.value);
    input.value = '';
    input.focus();
  }

  setOpen(open) {
    this.chat.setOpen(open);
    if (open) {
      this.el.list.scrollTop = this.el.list.scrollHeight;
      this.el.input.focus();
    }
  }

  // available: the page is in the meeting (the panel and its button show only then).
  render(available = this.available) {
    this.available = available;
    const { chat } = this;
    const { panel, list, typing, toggle, badge, empty } = this.el;
    const open = available && chat.isOpen;
    toggle.hidden = !available;
    toggle.setAttribute('aria-pressed', String(chat.isOpen));
    toggle.setAttribute('aria-expanded', String(chat.isOpen));
    const unread = chat.unread;
    badge.hidden = unread === 0;
    setText(badge, unread > 99 ? '99+' : String(unread));
    const label = unread ? `Chat, ${unread} unread message${unread === 1 ? '' : 's'}` : 'Chat';
    toggle.title = label;
    toggle.setAttribute('aria-label', label);
    panel.hidden = !open;
    if (!open) return;

    const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 48;
    const wanted = chat.list();
    const keys = new Set(wanted.map((item) => item.key));
    for (const [key, item] of this.items) {
      if (!keys.has(key)) {
        item.element.remove();
        this.items.delete(key);
      }
    }
    wanted.forEach((spec, index) => {
      let item = this.items.get(spec.key);
      if (!item) {
        item = createItem();
        this.items.set(spec.key, item);
      }
      updateItem(item, spec);
      if (list.children[index] !== item.element) list.insertBefore(item.element, list.children[index] || null);
    });
    empty.hidden = wanted.length > 0;
    const who = chat.typingNames;
    setText(typing, who.length === 0 ? '' : who.length > 3 ? `${who.length} people are typing…`
      : `${names(who)} ${who.length === 1 ? 'is' : 'are'} typing…`);
    if (nearBottom) list.scrollTop = list.scrollHeight;
  }
}

function createItem() {
  const element = document.createElement('li');
  element.className = 'chat-msg';
  const meta = document.createElement('div');
  meta.className = 'chat-meta';
  const sender = document.createElement('span');
  sender.className = 'chat-sender';
  const time = document.createElement('time');
  time.className = 'chat-time';
  const edited = document.createElement('span');
  edited.className = 'chat-edited';
  edited.textContent = '(edited)';
  meta.append(sender, time, edited);
  const text = document.createElement('div');
  text.className = 'chat-text';
  const mark = document.createElement('span');
  mark.className = 'chat-mark';
  element.append(meta, text, mark);
  return { element, sender, time, edited, text, mark };
}

function updateItem(item, spec) {
  const { element } = item;
  element.classList.toggle('own', spec.own);
  element.classList.toggle('deleted', spec.deleted);
  element.classList.toggle('system', spec.kind === 'system');
  if (spec.seq !== null) element.dataset.seq = String(spec.seq);
  else delete element.dataset.seq;
  element.dataset.sender = spec.sender || '';
  setText(item.sender, spec.own ? `${spec.name} (you)` : spec.name);
  const when = clock(spec.createdAt);
  setText(item.time, when.short);
  item.time.dateTime = spec.createdAt || '';
  item.time.title = when.long;
  item.edited.hidden = !spec.edited;
  setText(item.text, spec.deleted ? 'message deleted' : spec.content);
  const mark = item.mark;
  mark.hidden = !spec.own || !spec.status;
  if (spec.own && spec.status) {
    element.dataset.status = spec.status;
    setText(mark, MARKS[spec.status] || spec.status);
    mark.title = markTitle(spec);
    if (spec.status === 'failed') {
      mark.dataset.retry = spec.retryKey;
      mark.setAttribute('role', 'button');
      mark.tabIndex = 0;
    } else {
      delete mark.dataset.retry;
      mark.removeAttribute('role');
      mark.removeAttribute('tabindex');
    }
  } else {
    delete element.dataset.status;
  }
}
