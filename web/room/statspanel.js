// The connection statistics overlay: what this browser's own WebRTC stack measures.
//
// Rows come from RTCPeerConnection.getStats() of the two connections: every track this
// page sends (outbound-rtp, with the server's receiver reports as remote-inbound-rtp)
// and every track it receives (inbound-rtp), then one row per connection naming its path (the
// selected candidate pair: direct, through NAT, or a TURN relay over UDP, TCP or TLS). Bitrates are computed between two
// readings; the overlay refreshes once a second while it is open. Names are set with
// textContent only, never as HTML.

import { candidatePath } from './ice.js';

const REFRESH_MS = 1000;

// How a connection's media travels, in words: direct, through a NAT, or through TURN over UDP, TCP or TLS.
export function pathLabel(path) {
  const how = { host: 'direct', srflx: 'through NAT', prflx: 'direct (learnt)' }[path.candidateType];
  if (how) return `${how} (${path.protocol.toUpperCase()})`;
  return `TURN relay over ${(path.relayProtocol || 'udp').toUpperCase()}`;
}

function entriesOf(report, type) {
  const out = [];
  report.forEach((entry) => {
    if (entry.type === type) out.push(entry);
  });
  return out;
}

// Round-trip time of a connection's selected ICE candidate pair (STUN checks), in ms.
function pairRtt(report) {
  let rtt = null;
  report.forEach((entry) => {
    if (entry.type === 'candidate-pair' && entry.nominated && entry.state === 'succeeded'
        && typeof entry.currentRoundTripTime === 'number') rtt = entry.currentRoundTripTime * 1000;
  });
  return rtt;
}

export class StatsPanel {
  constructor(session, { panel, toggle, body, describe }) {
    this.session = session;
    this.panel = panel;
    this.toggle = toggle;
    this.body = body;
    this.describe = describe; // track id -> {name, source} of a received track
    this.isOpen = false;
    this.rows = [];
    this.previous = new Map(); // row key -> {bytes, at, rate}
    this.timer = null;
    toggle.addEventListener('click', () => this.setOpen(!this.isOpen));
  }

  setOpen(open) {
    this.isOpen = Boolean(open);
    this.panel.hidden = !this.isOpen;
    this.toggle.setAttribute('aria-pressed', String(this.isOpen));
    clearInterval(this.timer);
    this.timer = null;
    if (this.isOpen) {
      this.refresh();
      this.timer = setInterval(() => this.refresh(), REFRESH_MS);
    }
  }

  render(inCall) {
    this.toggle.hidden = !inCall;
    if (!inCall && this.isOpen) this.setOpen(false);
  }

  // Bits per second since the previous reading. Chromium serves a cached report to calls close
  // together (same timestamp): those get the rate already known instead of none.
  _rate(key, bytes, at) {
    const last = this.previous.get(key);
    if (last && at <= last.at) return last.rate;
    const rate = !last || bytes < last.bytes ? null : ((bytes - last.bytes) * 8 * 1000) / (at - last.at);
    this.previous.set(key, { bytes, at, rate });
    return rate;
  }

  // Resolves to one row per track sent or received, and refreshes the table.
  async refresh() {
    const rows = [];
    const { publisher, subscriber } = this.session;
    if (publisher) {
      const report = await publisher.getStats();
      const remote = new Map(entriesOf(report, 'remote-inbound-rtp').map((r) => [r.localId, r]));
      const rtt = pairRtt(report);
      for (const out of entriesOf(report, 'outbound-rtp')) {
        const back = remote.get(out.id);
        const key = `out:${out.id}`;
        rows.push({
          key, direction: 'sent', name: 'You', kind: out.kind, rid: out.rid || null,
          bitrate: this._rate(key, out.bytesSent || 0, out.timestamp),
          packets: out.packetsSent || 0,
          lost: back ? back.packetsLost : null,
          fractionLost: back && typeof back.fractionLost === 'number' ? back.fractionLost : null,
          jitterMs: back && typeof back.jitter === 'number' ? back.jitter * 1000 : null,
          fps: typeof out.framesPerSecond === 'number' ? out.framesPerSecond : null,
          width: out.frameWidth || null, height: out.frameHeight || null,
          rttMs: back && typeof back.roundTripTime === 'number' ? back.roundTripTime * 1000 : rtt,
        });
      }
    }
    if (subscriber) {
      const report = await subscriber.getStats();
      const rtt = pairRtt(report);
      for (const [trackId, media] of this.session.remoteMedia()) {
        const inbound = entriesOf(report, 'inbound-rtp').find((i) => i.trackIdentifier === media.track.id);
        if (!inbound) continue;
        const key = `in:${trackId}`;
        const who = this.describe(trackId);
        rows.push({
          key, direction: 'received', name: who.name, source: who.source, kind: inbound.kind, trackId,
          bitrate: this._rate(key, inbound.bytesReceived || 0, inbound.timestamp),
          packets: inbound.packetsReceived || 0,
          lost: inbound.packetsLost || 0,
          fractionLost: null,
          jitterMs: typeof inbound.jitter === 'number' ? inbound.jitter * 1000 : null,
          fps: typeof inbound.framesPerSecond === 'number' ? inbound.framesPerSecond : null,
          width: inbound.frameWidth || null, height: inbound.frameHeight || null,
          rttMs: rtt,
        });
      }
    }
    for (const [target, pc] of [['publisher', publisher], ['subscriber', subscriber]]) {
      const path = pc ? await candidatePath(pc) : null;
      if (!path) continue;
      rows.push({
        key: `path:${target}`, direction: 'path', name: target === 'publisher' ? 'Sending' : 'Receiving',
        kind: pathLabel(path), path,
        bitrate: null, packets: null, lost: null, fractionLost: null, jitterMs: null, fps: null, width: null,
        height: null, rttMs: null,
      });
    }
    this.rows = rows;
    if (this.isOpen) this._draw();
    return rows;
  }

  _draw() {
    const fmt = (value, digits, unit) => (value === null || value === undefined ? '–' : `${value.toFixed(digits)}${unit}`);
    const lines = this.rows.map((row) => {
      const tr = document.createElement('tr');
      tr.dataset.key = row.key;
      tr.dataset.kind = row.kind;
      tr.dataset.direction = row.direction;
      const size = row.width && row.height ? ` ${row.width}×${row.height}` : '';
      const arrow = { sent: '↑', received: '↓', path: '⇄' }[row.direction];
      const cells = [
        `${arrow} ${row.name}${row.rid ? ` (${row.rid})` : ''}`,
        `${row.kind}${size}`,
        row.bitrate === null ? '–' : `${(row.bitrate / 1000).toFixed(0)} kb/s`,
        row.lost === null ? '–' : String(row.lost),
        fmt(row.jitterMs, 1, ' ms'),
        fmt(row.fps, 0, ''),
        fmt(row.rttMs, 0, ' ms'),
      ];
      for (const text of cells) {
        const td = document.createElement('td');
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    this.body.replaceChildren(...lines);
  }
}
