// Playback of a live room: WebRTC through WHEP first, LL-HLS when that fails.
//
// WHEP (docs/protocol.md, "WHIP and WHEP"): one receive-only offer POSTed to
// /whep/{room} with the access token as a bearer token; the 201 answer carries the
// server's candidates (it does not trickle), so the offer goes out once this side
// has gathered its own. 409 room_not_live means nobody is on stage yet: the caller
// retries (on track_published, or after Retry-After). Any other failure, or a
// connection that does not come up, falls back to HLS at /hls/{room_id}/live.m3u8,
// with the vendored hls.js (imported only then), or natively where the browser has
// no Media Source Extensions but plays HLS itself.
//
// A connected WHEP session whose path fails (a network change: Chromium's `failed`, `disconnected`
// past a short grace, or the silent-path check of ../room/liveness.js) calls `onFailed` once: the
// page starts a new WHEP session (the server has no ICE restart: RFC 9725's PATCH gets 422).

import { rtcConfig } from '../room/ice.js';
import { watchSilence } from '../room/liveness.js';

const GATHER_MS = 3000;
// A connection not connected this long after the answer never will (UDP blocked, no usable TURN).
export const CONNECT_MS = 10000;
const DISCONNECTED_GRACE_MS = 1000; // `disconnected` this long is taken as failed (as in web/room)

export class NotLive extends Error {
  constructor(retryAfter) {
    super('nobody is live yet');
    this.name = 'NotLive';
    this.retryAfter = retryAfter;
  }
}

export class PlaybackError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = 'PlaybackError';
    this.code = code;
  }
}

// Until the connection's candidates are gathered (WHIP/WHEP offers carry them all: no trickling): at most
// GATHER_MS, and RELAY_SETTLE_MS after the first relayed candidate, for on a network that drops UDP the TURN
// over UDP allocation never answers and gathering would take the whole GATHER_MS (a replacement's delay).
const RELAY_SETTLE_MS = 500;

export function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    let settle = null;
    const timer = setTimeout(resolve, GATHER_MS);
    const done = () => {
      clearTimeout(timer);
      clearTimeout(settle);
      resolve();
    };
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') done();
    });
    pc.addEventListener('icecandidate', (event) => {
      if (!settle && event.candidate && / typ relay/.test(event.candidate.candidate)) {
        settle = setTimeout(done, RELAY_SETTLE_MS);
      }
    });
  });
}

function connected(pc) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new PlaybackError('timeout', 'the WebRTC connection did not come up')),
      CONNECT_MS);
    const check = () => {
      if (pc.connectionState === 'connected') {
        clearTimeout(timer);
        resolve();
      } else if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
        clearTimeout(timer);
        reject(new PlaybackError('ice_failed', 'the WebRTC connection failed'));
      }
    };
    pc.addEventListener('connectionstatechange', check);
    check();
  });
}

export class WhepPlayer {
  constructor(video, { room, token, iceServers, expectMedia }) {
    this.video = video;
    this.expectMedia = expectMedia || (() => true); // whether the server should be sending now (a host on air)
    this.iceServers = iceServers || []; // from the socket's `joined`: the offer gathers relay candidates too
    this.room = room;
    this.token = token;
    this.pc = null;
    this.location = null;
    this.stream = null;
  }

  async start() {
    const pc = new RTCPeerConnection(rtcConfig(this.iceServers));
    this.pc = pc;
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    this.stream = new MediaStream();
    pc.ontrack = (event) => {
      this.stream.addTrack(event.track);
      if (this.video.srcObject !== this.stream) this.video.srcObject = this.stream;
    };
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    let response;
    try {
      response = await fetch(`/whep/${encodeURIComponent(this.room)}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${this.token}` },
        body: pc.localDescription.sdp,
      });
    } catch (error) {
      this.stop();
      throw new PlaybackError('network', String(error));
    }
    if (response.status !== 201) {
      let code = `http_${response.status}`;
      let message = '';
      try {
        const body = await response.json();
        code = body.error.code;
        message = body.error.message;
      } catch { /* not the API's JSON */ }
      this.stop();
      if (code === 'room_not_live') throw new NotLive(Number(response.headers.get('Retry-After') || 5));
      throw new PlaybackError(code, message);
    }
    this.location = response.headers.get('Location');
    await pc.setRemoteDescription({ type: 'answer', sdp: await response.text() });
    try {
      await connected(pc);
    } catch (error) {
      this.stop(); // its session at the server goes too
      throw error;
    }
    this._watchPath(pc);
  }

  _watchPath(pc) {
    let done = false;
    let grace = null;
    const failed = (why) => {
      if (done || pc !== this.pc) return;
      done = true;
      clearTimeout(grace);
      stopSilence();
      if (this.onFailed) this.onFailed(why);
    };
    const stopSilence = watchSilence(pc, {
      expected: () => this.expectMedia(),
      onSilent: (ms) => failed(`it received nothing for ${ms} ms`),
    });
    pc.addEventListener('connectionstatechange', () => {
      clearTimeout(grace);
      if (pc.connectionState === 'failed') failed('it failed');
      else if (pc.connectionState === 'disconnected') grace = setTimeout(() => failed('it stopped'), DISCONNECTED_GRACE_MS);
    });
  }

  async stats() {
    if (!this.pc) return null;
    const report = await this.pc.getStats();
    let video = null;
    let audio = null;
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') video = s;
      if (s.type === 'inbound-rtp' && s.kind === 'audio') audio = s;
    });
    return {
      framesDecoded: video ? video.framesDecoded || 0 : 0,
      frameWidth: video ? video.frameWidth || 0 : 0,
      frameHeight: video ? video.frameHeight || 0 : 0,
      codec: video && video.codecId && report.get(video.codecId) ? report.get(video.codecId).mimeType : null,
      audioPackets: audio ? audio.packetsReceived || 0 : 0,
    };
  }

  // Drops the connection without ending the session at the server: its node ended it (the room
  // moved to another node), and a DELETE there would only fail.
  abandon() {
    this.location = null;
    this.stop();
  }

  stop() {
    if (this.location) {
      fetch(this.location, { method: 'DELETE', headers: { Authorization: `Bearer ${this.token}` } })
        .catch(() => {});
      this.location = null;
    }
    if (this.pc) this.pc.close();
    this.pc = null;
  }
}

export class HlsPlayer {
  constructor(video, { roomId }) {
    this.video = video;
    this.url = `/hls/${encodeURIComponent(roomId)}/live.m3u8`;
    this.hls = null;
    this.engine = null; // "native" | "hls.js"
    this.lastError = null;
  }

  // hls.js wherever Media Source Extensions exist (it tunes low-latency playback); the
  // browser's own HLS only where they do not (older iPhones). /hls takes no credentials
  // (docs/streaming.md: the room id is what a viewer needs, a CDN may serve it), so none
  // is sent: a token in a media URL would land in access logs, CDN logs and referers.
  async start() {
    const { default: Hls } = await import('./vendor/hls.light.min.mjs');
    if (!Hls.isSupported()) {
      if (!this.video.canPlayType('application/vnd.apple.mpegurl')) {
        throw new PlaybackError('hls_unsupported', 'this browser plays neither WebRTC nor HLS');
      }
      this.engine = 'native';
      this.video.src = this.url;
      return;
    }
    this.engine = 'hls.js';
    this.hls = new Hls({
      lowLatencyMode: true,
      enableWorker: false, // the page's CSP allows no blob: workers
    });
    this.hls.on(Hls.Events.ERROR, (_event, data) => {
      this.lastError = { type: data.type, details: data.details, fatal: data.fatal,
        status: data.response ? data.response.code : undefined };
      if (data.fatal && data.type === Hls.ErrorTypes.NETWORK_ERROR) {
        setTimeout(() => this.hls && this.hls.startLoad(), 3000); // the stream may not have started yet
      }
    });
    this.hls.loadSource(this.url);
    this.hls.attachMedia(this.video);
  }

  stop() {
    if (this.hls) this.hls.destroy();
    this.hls = null;
    if (this.engine === 'native') this.video.removeAttribute('src');
  }
}
