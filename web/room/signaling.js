// The signaling WebSocket (GET /rtc, docs/protocol.md): requests with ids, replies matched to them.
//
// request(message) sends the message with a fresh id and resolves with the reply that
// carries the same id, or rejects with a SignalingError (the server's error code, or
// "connection_lost" / "timeout"). Everything else the server sends (offers and room
// events) goes to onMessage. onClose is called once, when the socket closes for any
// reason other than close() from this side.

export class SignalingError extends Error {
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = 'SignalingError';
    this.code = code;
    this.details = details;
  }
}

// The room a participant token is for (its `grants.room` claim), or '' when it names none.
export function roomOfToken(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(payload)).grants.room || '';
  } catch (error) {
    return '';
  }
}

// The socket's URL. `room` goes in the query so a room-aware load balancer (deploy/haproxy)
// can send the socket to the room's node; any node would relay it there anyway.
export function signalingUrl(location = window.location, room = '') {
  const base = (location.protocol === 'https:' ? 'wss' : 'ws') + '://' + location.host + '/rtc';
  return room ? `${base}?room=${encodeURIComponent(room)}` : base;
}

export class Signaling {
  constructor(url, { onMessage = () => {}, onClose = () => {} } = {}) {
    this.url = url;
    this.onMessage = onMessage;
    this.onClose = onClose;
    this.ws = null;
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.nextId = 1;
    this.closedByUs = false;
    this.closed = false;
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  // Resolves once the socket is open; rejects if it closes first.
  open(timeoutMs = 15000) {
    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new WebSocket(this.url);
      this.ws = ws;
      const timer = setTimeout(() => {
        if (!settled) {
          settled = true;
          this.close();
          reject(new SignalingError('timeout', 'the signaling server did not answer'));
        }
      }, timeoutMs);
      ws.onopen = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve();
      };
      ws.onmessage = (event) => this._receive(event.data);
      ws.onclose = (event) => {
        clearTimeout(timer);
        this._closed(event);
        if (!settled) {
          settled = true;
          reject(new SignalingError('connection_lost', 'could not reach the signaling server'));
        }
      };
    });
  }

  // Sends a message without waiting for a reply; false when the socket is not open.
  send(message) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  // Sends a message with an id; resolves with the reply, rejects with SignalingError.
  request(message, timeoutMs = 20000) {
    if (!this.isOpen) {
      return Promise.reject(new SignalingError('connection_lost', 'the signaling connection is closed'));
    }
    const id = 'c' + this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new SignalingError('timeout', `no reply to ${message.type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...message, id }));
    });
  }

  close(code = 1000, reason = 'bye') {
    this.closedByUs = true;
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(code, reason);
    this._failPending('the signaling connection was closed');
  }

  // Closes the socket as if the network had dropped it: onClose still runs.
  drop() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(4000, 'dropped');
  }

  _receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      console.warn('gbroom: ignoring a signaling frame that is not JSON');
      return;
    }
    const waiter = message.id !== undefined ? this.pending.get(message.id) : undefined;
    if (waiter) {
      this.pending.delete(message.id);
      clearTimeout(waiter.timer);
      if (message.type === 'error') {
        waiter.reject(new SignalingError(message.code, message.message, message.details || {}));
      } else {
        waiter.resolve(message);
      }
      return;
    }
    this.onMessage(message);
  }

  _closed(event) {
    if (this.closed) return;
    this.closed = true;
    this._failPending('the signaling connection was lost');
    if (!this.closedByUs) this.onClose(event);
  }

  _failPending(text) {
    for (const [id, waiter] of this.pending) {
      clearTimeout(waiter.timer);
      waiter.reject(new SignalingError('connection_lost', text));
      this.pending.delete(id);
    }
  }
}
