// The room's chat: the room's conversation, spoken on the signaling socket.
//
// The `joined` reply names the conversation (`chat: {conversation_id, last_seq}`).
// Messages are kept by seq, the conversation's gap-free sequence number; lastSeq is
// the highest seq up to which everything (from the first page loaded) is here. The
// first connection loads the newest page of history; later ones (a resumed or fresh
// session) fetch everything after lastSeq, and a message whose seq leaves a hole
// fetches the hole: nothing is skipped, and a seq seen twice is one message.
//
// Own messages show at once, as pending, and go out one at a time in order, each
// with an idempotency key of its own: a send whose answer was lost with the socket is
// sent again with the same key after the reconnect, so the server stores it once.
//
// Receipts: `delivered_seq` for whatever arrived, `read_seq` while the panel is open
// and the page visible. Others' receipts mark own messages delivered or read (read as
// soon as any other member has read it). Typing is sent at most every 2 s while typing
// and cleared on send or blur; others' typing shows until they stop, send, or go quiet
// for 5 s.
//
// Fires "change" whenever something the panel shows may have changed.

const HISTORY_PAGE = 50;
const CATCH_UP_PAGE = 200;
const TYPING_SEND_MS = 2000;
const TYPING_SHOW_MS = 5000;
const TIMEOUT_RETRY_MS = 1000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, '0')).join('');
}

function time(iso) {
  const value = Date.parse(iso || '');
  return Number.isNaN(value) ? 0 : value;
}

// Whether `incoming` is a later state of the same message than `current` (an edit or a delete).
function isNewer(incoming, current) {
  if (incoming.deleted_at && !current.deleted_at) return true;
  if (current.deleted_at) return false;
  return time(incoming.edited_at) > time(current.edited_at);
}

export class RoomChat extends EventTarget {
  constructor(session) {
    super();
    this.session = session;
    this.conversationId = null;
    this.socket = null; // the Signaling this chat speaks on once ready
    this.ready = false; // may chat requests go out on this.socket?
    this.loaded = false; // the newest page of history is here
    this.catchUp = false; // fetch everything after lastSeq (after a reconnect)
    this.messages = new Map(); // seq -> message as the server sends it
    this.lastSeq = 0;
    this.maxSeq = 0;
    this.pending = []; // own messages not acknowledged yet: {key, content, createdAt, state, error, resolve}
    this.receipts = new Map(); // other identity -> {delivered, read}
    this.readMark = 0; // others' messages after this seq are unread
    this.sentDelivered = 0;
    this.sentRead = 0;
    this.typers = new Map(); // identity -> timer that hides them
    this.typingSentAt = 0;
    this.typingActive = false;
    this.isOpen = false;
    this.names = new Map(); // identity -> display name, remembered after they leave
    this._syncing = false;
    this._syncAgain = false;
    this._pumping = false;
    this._pumpAgain = false;
    this._receipting = false;
    this._receiptAgain = false;
    session.addEventListener('connected', (event) => this._onConnected(event.detail));
    session.addEventListener('chat', (event) => this._onEvent(event.detail));
    session.addEventListener('change', () => this._onSessionChange());
    document.addEventListener('visibilitychange', () => this._sendReceipts());
  }

  _changed() {
    this.dispatchEvent(new Event('change'));
  }

  get identity() {
    return this.session.self ? this.session.self.identity : null;
  }

  nameOf(identity) {
    const self = this.session.self;
    if (self && identity === self.identity) return self.name || identity;
    for (const participant of this.session.participants.values()) {
      if (participant.identity === identity) return participant.name || identity;
    }
    return this.names.get(identity) || identity || 'Someone';
  }

  // --- the connection --------------------------------------------------------------------

  _onSessionChange() {
    const session = this.session;
    if (session.self) this.names.set(session.self.identity, session.self.name || session.self.identity);
    for (const participant of session.participants.values()) {
      this.names.set(participant.identity, participant.name || participant.identity);
    }
    if (this.ready && (session.phase !== 'joined' || session.signaling !== this.socket)) {
      this.ready = false; // requests wait for the next connection
    }
    if (!['joined', 'reconnecting'].includes(session.phase) && this.typers.size) {
      this.typers.forEach((timer) => clearTimeout(timer));
      this.typers.clear();
      this._changed();
    }
  }

  _onConnected(joined) {
    const signaling = this.session.signaling;
    this.ready = false;
    this.socket = signaling;
    this.typingActive = false;
    if (joined.chat) {
      if (this.conversationId !== joined.chat.conversation_id) {
        this.conversationId = joined.chat.conversation_id;
        this.readMark = Math.max(this.readMark, Number(joined.chat.last_seq) || 0); // earlier history is not news
      }
      this._ready(signaling);
      return;
    }
    if (!this.conversationId) return; // a server without chat
    // A resumed session: the server's `joined` names no conversation and the new socket
    // is not signed in to chat, so sign it in with the same token.
    signaling.request({ type: 'auth', token: this.session.token, protocol: 1 }).then(
      () => this._ready(signaling),
      (error) => {
        if (error.code === 'already_authenticated') this._ready(signaling);
        else if (!['connection_lost', 'timeout'].includes(error.code)) {
          console.warn('gbroom: chat is not available on this connection:', error.code, error.message);
        }
      },
    );
  }

  _ready(signaling) {
    if (this.socket !== signaling || !signaling.isOpen || this.session.phase !== 'joined') return;
    this.ready = true;
    if (this.loaded) this.catchUp = true; // whatever was said while away
    this._sync();
    this._pump();
    this._sendReceipts();
    this._changed();
  }

  _request(message, timeoutMs) {
    if (!this.ready || !this.socket) {
      return Promise.reject(Object.assign(new Error('chat is not connected'), { code: 'connection_lost' }));
    }
    return this.socket.request({ ...message, conversation_id: this.conversationId }, timeoutMs);
  }

  // --- incoming ----------------------------------------------------------------------------

  _onEvent(event) {
    const other = event.conversation_id !== undefined && event.conversation_id !== this.conversationId;
    if (!this.conversationId || other) return; // not ours, or before the join named ours (history covers that)
    if (event.type === 'chat_message') {
      if (!event.message || event.message.conversation_id !== this.conversationId) return;
      this._store([event.message]);
      if (this.maxSeq > this.lastSeq) this._sync(); // a hole: fetch it
      this._sendReceipts();
    } else if (event.type === 'chat_receipt') {
      const delivered = Number(event.delivered_seq) || 0;
      const read = Number(event.read_seq) || 0;
      if (event.identity === this.identity) { // another tab or device of ours
        this.sentDelivered = Math.max(this.sentDelivered, delivered);
        this.sentRead = Math.max(this.sentRead, read);
        this.readMark = Math.max(this.readMark, read);
      } else {
        const known = this.receipts.get(event.identity) || { delivered: 0, read: 0 };
        this.receipts.set(event.identity, { delivered: Math.max(known.delivered, delivered, read),
          read: Math.max(known.read, read) });
      }
    } else if (event.type === 'typing') {
      if (event.identity === this.identity) return;
      clearTimeout(this.typers.get(event.identity));
      if (event.active) {
        this.typers.set(event.identity, setTimeout(() => {
          this.typers.delete(event.identity);
          this._changed();
        }, TYPING_SHOW_MS));
      } else {
        this.typers.delete(event.identity);
      }
    }
    this._changed();
  }

  // Keeps messages by seq (a later edit or delete replaces the earlier state).
  _store(messages) {
    const me = this.identity;
    for (const message of messages) {
      const seq = Number(message.seq);
      if (!Number.isInteger(seq) || seq < 1) continue;
      const current = this.messages.get(seq);
      if (!current) this.messages.set(seq, message);
      else if (isNewer(message, current)) this.messages.set(seq, { ...current, ...message });
      this.maxSeq = Math.max(this.maxSeq, seq);
      if (message.sender === me && message.idempotency_key) {
        const index = this.pending.findIndex((entry) => entry.key === message.idempotency_key);
        if (index >= 0) this._settle(this.pending.splice(index, 1)[0], { seq, duplicate: false });
      }
      if (this.typers.has(message.sender)) {
        clearTimeout(this.typers.get(message.sender));
        this.typers.delete(message.sender);
      }
    }
    while (this.messages.has(this.lastSeq + 1)) this.lastSeq += 1;
  }

  // Loads history until nothing is missing; one run at a time.
  async _sync() {
    if (this._syncing) {
      this._syncAgain = true;
      return;
    }
    this._syncing = true;
    try {
      while (this.ready) {
        if (!this.loaded) {
          const page = await this._request({ type: 'chat_history', limit: HISTORY_PAGE });
          const messages = page.messages || [];
          this.loaded = true;
          if (messages.length) this.lastSeq = Math.max(this.lastSeq, Number(messages[messages.length - 1].seq));
          this._store(messages);
        } else if (this.catchUp || this.maxSeq > this.lastSeq) {
          const after = this.lastSeq;
          this.catchUp = false;
          const page = await this._request({ type: 'chat_history', after_seq: after, limit: CATCH_UP_PAGE });
          const messages = page.messages || [];
          this._store(messages);
          if (page.has_more) this.catchUp = true;
          else if (this.lastSeq === after && this.maxSeq > this.lastSeq) {
            // The server has nothing after lastSeq yet holds a later seq: do not ask forever.
            console.warn(`gbroom: chat history has no messages after ${after}; skipping to what is here`);
            this.lastSeq = Math.min(...[...this.messages.keys()].filter((seq) => seq > after)) - 1;
            while (this.messages.has(this.lastSeq + 1)) this.lastSeq += 1;
          }
        } else {
          break;
        }
        this._sendReceipts();
        this._changed();
      }
    } catch (error) {
      if (this.loaded) this.catchUp = true; // done on the next connection
      if (!['connection_lost', 'timeout'].includes(error.code)) {
        console.warn('gbroom: chat history failed:', error.code, error.message);
      }
    } finally {
      this._syncing = false;
      if (this._syncAgain) {
        this._syncAgain = false;
        if (this.ready) this._sync();
      }
    }
  }

  // --- sending -------------------------------------------------------------------------------

  // Queues a message; resolves once the server stored it ({seq, duplicate}) or refused it ({error}).
  send(text) {
    const content = String(text);
    if (!content.trim()) return Promise.resolve({ error: 'empty_message' });
    this.stopTyping();
    const entry = { key: newIdempotencyKey(), content, createdAt: new Date().toISOString(), state: 'sending',
      error: null, resolve: null };
    const done = new Promise((resolve) => { entry.resolve = resolve; });
    this.pending.push(entry);
    this._changed();
    this._pump();
    return done;
  }

  // Sends a message that the server refused once more (same key).
  retry(key) {
    const entry = this.pending.find((e) => e.key === key);
    if (!entry || entry.state !== 'failed') return;
    entry.state = 'sending';
    entry.error = null;
    this._changed();
    this._pump();
  }

  _settle(entry, result) {
    if (entry.resolve) entry.resolve(result);
    entry.resolve = null;
  }

  // Sends pending messages one at a time, in order.
  async _pump() {
    if (this._pumping) {
      this._pumpAgain = true;
      return;
    }
    this._pumping = true;
    try {
      while (this.ready) {
        const entry = this.pending.find((e) => e.state === 'sending');
        if (!entry) break;
        const socket = this.socket;
        let ack;
        try {
          ack = await this._request({ type: 'chat_send', content: entry.content, idempotency_key: entry.key,
            kind: 'text' });
        } catch (error) {
          if (!this.pending.includes(entry)) continue; // its message arrived meanwhile
          if (error.code === 'connection_lost') {
            if (this.socket === socket) break; // sent again once the session is back
            continue;
          }
          if (error.code === 'timeout') {
            await sleep(TIMEOUT_RETRY_MS); // the same key: stored once, however often it goes out
          } else if (error.code === 'chat_rate_limited') {
            await sleep(Math.max(500, 1000 * (Number(error.details && error.details.retry_after) || 1)));
          } else {
            console.warn('gbroom: a chat message was refused:', error.code, error.message);
            entry.state = 'failed';
            entry.error = error.message || error.code;
            this._settle(entry, { error: error.code });
            this._changed();
          }
          continue;
        }
        this._acked(entry, ack);
      }
    } finally {
      this._pumping = false;
      if (this._pumpAgain) {
        this._pumpAgain = false;
        if (this.ready) this._pump();
      }
    }
  }

  _acked(entry, ack) {
    const index = this.pending.indexOf(entry);
    if (index >= 0) this.pending.splice(index, 1);
    const seq = Number(ack.seq);
    if (!this.messages.has(seq)) {
      this._store([{ id: ack.message_id, conversation_id: this.conversationId, seq, sender: this.identity,
        kind: 'text', content: entry.content, metadata: {}, idempotency_key: entry.key,
        created_at: ack.created_at, edited_at: null, deleted_at: null }]);
      if (this.maxSeq > this.lastSeq) this._sync();
    }
    this._settle(entry, { seq, duplicate: Boolean(ack.duplicate) });
    this._sendReceipts();
    this._changed();
  }

  // --- receipts and typing ---------------------------------------------------------------

  get visible() {
    return this.isOpen && document.visibilityState === 'visible';
  }

  setOpen(open) {
    this.isOpen = Boolean(open);
    if (!this.isOpen) this.stopTyping();
    this._sendReceipts();
    this._changed();
  }

  async _sendReceipts() {
    if (this.visible && this.readMark < this.lastSeq) {
      this.readMark = this.lastSeq;
      this._changed();
    }
    if (!this.ready) return;
    const delivered = this.lastSeq > this.sentDelivered ? this.lastSeq : null;
    const read = this.visible && this.lastSeq > this.sentRead ? this.lastSeq : null;
    if (delivered === null && read === null) return;
    if (this._receipting) {
      this._receiptAgain = true;
      return;
    }
    this._receipting = true;
    const message = { type: 'chat_receipt' };
    if (delivered !== null) message.delivered_seq = delivered;
    if (read !== null) message.read_seq = read;
    try {
      const reply = await this._request(message);
      this.sentDelivered = Math.max(this.sentDelivered, delivered || 0, Number(reply.delivered_seq) || 0);
      this.sentRead = Math.max(this.sentRead, read || 0, Number(reply.read_seq) || 0);
    } catch (error) {
      if (!['connection_lost', 'timeout'].includes(error.code)) {
        console.warn('gbroom: a chat receipt was refused:', error.code, error.message);
        this.sentDelivered = Math.max(this.sentDelivered, delivered || 0); // do not insist
        this.sentRead = Math.max(this.sentRead, read || 0);
      }
    } finally {
      this._receipting = false;
      if (this._receiptAgain) {
        this._receiptAgain = false;
        this._sendReceipts();
      }
    }
  }

  // The input changed: tell the others, at most every 2 s; an emptied input stops.
  typing(text) {
    if (!String(text || '').trim()) {
      this.stopTyping();
      return;
    }
    const now = Date.now();
    if (now - this.typingSentAt < TYPING_SEND_MS) return;
    this.typingSentAt = now;
    this.typingActive = true;
    this._sendTyping(true);
  }

  stopTyping() {
    this.typingSentAt = 0;
    if (!this.typingActive) return;
    this.typingActive = false;
    this._sendTyping(false);
  }

  _sendTyping(active) {
    if (!this.ready) return;
    this._request({ type: 'typing', active }).catch((error) => {
      if (!['connection_lost', 'timeout'].includes(error.code)) {
        console.warn('gbroom: typing was refused:', error.code, error.message);
      }
    });
  }

  // --- what the panel shows ------------------------------------------------------------

  get typingNames() {
    return [...this.typers.keys()].map((identity) => this.nameOf(identity));
  }

  get unread() {
    const me = this.identity;
    let count = 0;
    for (const [seq, message] of this.messages) {
      if (seq > this.readMark && message.sender !== me && !message.deleted_at && message.kind !== 'system') count += 1;
    }
    return count;
  }

  // How far others got with an own message: sent, delivered or read, and by whom.
  receiptOf(seq) {
    const deliveredTo = [];
    const readBy = [];
    for (const [identity, receipt] of this.receipts) {
      if (receipt.read >= seq) readBy.push(this.nameOf(identity));
      else if (receipt.delivered >= seq) deliveredTo.push(this.nameOf(identity));
    }
    const status = readBy.length ? 'read' : deliveredTo.length ? 'delivered' : 'sent';
    return { status, readBy, deliveredTo };
  }

  // Everything to show, in order: stored messages by seq, then own pending ones.
  list() {
    const me = this.identity;
    const out = [];
    for (const seq of [...this.messages.keys()].sort((a, b) => a - b)) {
      const m = this.messages.get(seq);
      const own = Boolean(me) && m.sender === me;
      const receipt = own ? this.receiptOf(seq) : null;
      out.push({
        key: own && m.idempotency_key ? `k:${m.idempotency_key}` : `s:${seq}`,
        seq, id: m.id, sender: m.sender, name: this.nameOf(m.sender), own, kind: m.kind,
        content: m.deleted_at ? '' : m.content, createdAt: m.created_at,
        edited: Boolean(m.edited_at) && !m.deleted_at, deleted: Boolean(m.deleted_at),
        status: receipt ? receipt.status : null, readBy: receipt ? receipt.readBy : [],
        deliveredTo: receipt ? receipt.deliveredTo : [], error: null,
      });
    }
    for (const entry of this.pending) {
      out.push({
        key: `k:${entry.key}`, seq: null, id: null, sender: me, name: me ? this.nameOf(me) : 'You', own: true,
        kind: 'text', content: entry.content, createdAt: entry.createdAt, edited: false, deleted: false,
        status: entry.state, readBy: [], deliveredTo: [], error: entry.error, retryKey: entry.key,
      });
    }
    return out;
  }
}
