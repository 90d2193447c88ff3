// One participant's session in a room: the signaling socket and the two peer connections.
//
// docs/protocol.md is the contract. The publisher connection carries everything this
// page sends (camera, microphone, screen share) and this side makes its offers
// (`publish` / `publish_answer`); the subscriber connection carries everything it
// receives and the server makes its offers (`offer` / `answer`). Which participant a
// received track belongs to comes from the `tracks` map (mid -> track id) of the
// latest offer, never from the receiver's track object: transceivers are reused.
//
// A socket that drops is reconnected with backoff and the session resumed (`join`
// with `resume`) within the server's grace period; the media connections never stop.
// When resuming fails the page joins from scratch with new connections.
//
// The session fires "change" whenever something the page shows may have changed,
// "connected" (detail: the `joined` reply) each time a socket has joined or resumed,
// and "chat" (detail: the event) for the chat events the server pushes (chat.js).

import { applyActiveLayers, cameraEncodings } from './layers.js';
import { MEDIA_FAILURES, RETRY_REFRESH_MS, candidatePath, mediaFailureOf, refreshDelayMs, rtcConfig } from './ice.js';
import { watchSilence } from './liveness.js';
import { Signaling, SignalingError, roomOfToken, signalingUrl } from './signaling.js';

const VIDEO = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 8000;
const TRANSIENT = new Set(['connection_lost', 'timeout']);
// A media connection that stays `disconnected` this long is taken as failed (a network change):
// Chromium says `failed` only after about 30 s, far past a short freeze.
const DISCONNECTED_GRACE_MS = 1000;
// A media connection that has not connected this long after its negotiation never will (UDP blocked):
// the page says why. Chromium itself may stay `connecting` far longer. Should it connect later after
// all, the message goes away.
const CONNECT_TIMEOUT_MS = 10000;
const PATH_CHECK_MS = 3000; // how often a connected connection's candidate pair is read (reported when changed)
export { MEDIA_FAILURES }; // why media cannot flow, as the page says it (set on `mediaFailure`)

// Codes the page explains to the user: they are no fault of the page.
export const USER_ERRORS = {
  auth_required: 'This join link has no access token.',
  token_malformed: 'This join link is not valid. Ask for a new one.',
  token_expired: 'This join link has expired. Ask for a new one.',
  token_not_yet_valid: 'This join link is not valid yet. Try again later.',
  token_signature_invalid: 'This join link is not valid. Ask for a new one.',
  unknown_api_key: 'This join link is not valid. Ask for a new one.',
  api_key_revoked: 'This join link has been revoked. Ask for a new one.',
  instance_suspended: 'This meeting service is suspended.',
  customer_suspended: 'This meeting service is suspended.',
  grant_missing: 'This join link does not allow joining the meeting.',
  room_required: 'This join link names no meeting.',
  room_full: 'The meeting is full.',
  room_closed: 'The meeting has ended.',
  quota_max_concurrent_rooms_exceeded: 'Too many meetings are running on this account right now.',
  connection_lost: 'Could not reach the meeting server. Check your network and try again.',
  timeout: 'The meeting server did not answer. Try again.',
};
const FATAL = new Set(Object.keys(USER_ERRORS).filter((code) => !TRANSIENT.has(code)));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function describeError(error) {
  if (error && USER_ERRORS[error.code]) return USER_ERRORS[error.code];
  return `Something went wrong${error && error.message ? `: ${error.message}` : '.'}`;
}

// The claims of a JWT, unverified (for display only), or null.
export function tokenClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const binary = atob(part.padEnd(Math.ceil(part.length / 4) * 4, '='));
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
  } catch {
    return null;
  }
}

function toParticipant(json) {
  return {
    id: json.id,
    identity: json.identity,
    name: json.name || json.identity,
    tracks: new Map((json.tracks || []).map((track) => [track.id, { ...track }])),
  };
}

export class RoomSession extends EventTarget {
  constructor(token) {
    super();
    this.token = token;
    this.phase = 'idle'; // idle | joining | joined | reconnecting | leaving | left | ended | error
    this.message = '';
    this.error = null; // the last SignalingError that ended a join
    this.room = null;
    this.self = null; // {id, identity, name, grants}
    this.participants = new Map(); // the others: id -> {id, identity, name, tracks: Map(id -> track)}
    this.resumeToken = null;
    this.graceSeconds = 0;
    this.reconnects = 0; // sockets reopened after a drop
    this.resumes = 0; // of which resumed the session
    this.rejoins = 0; // fresh joins after a failed resume
    this.moves = 0; // `moved`: the room went to another node
    this.moving = false;
    this.camera = null; // MediaStream of camera and microphone
    this.screen = null; // MediaStream of the screen share
    this.mediaError = '';
    this.micMuted = false;
    this.cameraOff = false;
    this.offlineUntil = 0; // simulateNetworkLoss(): no reconnecting before this
    this.speakers = []; // the latest `speakers` event: [{participant_id, level, dbov}], loudest first
    this.signaling = null;
    this.iceServers = []; // from `joined` / `ice_servers`: TURN URLs with this session's credential
    this.iceServersExpireAt = null; // unix seconds
    this.iceRefreshes = 0; // credentials renewed by an `ice_servers` request
    this._iceTimer = null;
    this.mediaRestarts = 0; // media connections replaced after their path failed (a network change)
    this.silentPaths = 0; // of which found by the silent-path check (nothing received for SILENT_MS)
    this.recoveries = []; // each replacement: {target, reason, startedAt, connectedAt} (performance.now() ms)
    this.mediaFailure = null; // a MEDIA_FAILURES code while media cannot connect at all
    this.subscriberEpoch = 0; // bumped when the subscriber connection is replaced: older offers are stale
    this._previewing = null;
    const claims = tokenClaims(token);
    this._publishClaim = Boolean(claims && claims.grants && claims.grants.can_publish === true);
    this._resetMedia();
  }

  // What the server granted, once joined.
  get canPublish() {
    return Boolean(this.self && this.self.grants && this.self.grants.can_publish);
  }

  // Whether this participant sends camera and microphone: the server's grants once joined,
  // the token's (unverified) claim before. A viewer is never asked for a camera.
  get mayPublish() {
    return this.self ? this.canPublish : this._publishClaim;
  }

  get localTracks() {
    const out = {};
    for (const [source, id] of Object.entries(this.trackIds)) {
      out[source] = { id, muted: source === 'microphone' ? this.micMuted : source === 'camera' ? this.cameraOff : false };
    }
    return out;
  }

  _changed() {
    this.dispatchEvent(new Event('change'));
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _resetMedia() {
    this.publisher = null;
    this.subscriber = null;
    this.sources = new Map(); // publisher transceiver -> source
    this.trackIds = {}; // source -> published track id
    this.remoteMids = {}; // subscriber mid -> track id
    this.trickle = { publisher: false, subscriber: false }; // may candidates go to the server yet?
    this.queued = { publisher: [], subscriber: [] };
    this.publishChain = Promise.resolve();
    this.subscriberChain = Promise.resolve();
    this.publishNeeded = false;
    this.screenTransceiver = null;
    this.ackedMute = new Map(); // track id -> muted, as the server knows it
    this.muting = new Set(); // track ids with a mute request in flight
    this.publishRestart = false; // the next publish replaces the server's publisher connection
    this.awaitingRestartOffer = false; // after subscriber_restart: only an offer marked `restart` is ours
    this.paths = {}; // per connection: the candidate path last reported
    this.everConnected = { publisher: false, subscriber: false };
    this._watch = { publisher: null, subscriber: null }; // per connection: its disconnect or connect timer
  }

  // --- local media ---------------------------------------------------------------------

  // Camera and microphone, asked for once (a second call while the first waits gets the same promise);
  // null, without asking the browser, for a participant that may not publish.
  preview() {
    if (!this.mayPublish) return Promise.resolve(null);
    if (this.camera && this.camera.getTracks().some((track) => track.readyState === 'live')) {
      return Promise.resolve(this.camera);
    }
    if (!this._previewing) this._previewing = this._openLocalMedia().finally(() => { this._previewing = null; });
    return this._previewing;
  }

  async _openLocalMedia() {
    const devices = navigator.mediaDevices;
    let stream = null;
    let failure = null;
    if (!devices || !devices.getUserMedia) {
      failure = new Error('this page is not a secure context (https), so the browser offers no camera');
    } else {
      for (const constraints of [{ video: VIDEO, audio: true }, { audio: true }, { video: VIDEO }]) {
        try {
          stream = await devices.getUserMedia(constraints);
          break;
        } catch (error) {
          failure = failure || error;
        }
      }
    }
    this.mediaError = '';
    if (!stream) {
      this.mediaError = `No camera or microphone (${failure && failure.message}); you can still watch and listen.`;
      console.warn('gbroom: no local media:', failure);
      stream = new MediaStream();
    } else if (failure) {
      this.mediaError = `Only part of camera and microphone is available (${failure.message}).`;
    }
    this.camera = stream;
    this._applyMute();
    this._changed();
    return stream;
  }

  get cameraTrack() {
    return this.camera ? this.camera.getVideoTracks()[0] || null : null;
  }

  get microphoneTrack() {
    return this.camera ? this.camera.getAudioTracks()[0] || null : null;
  }

  get screenTrack() {
    return this.screen ? this.screen.getVideoTracks()[0] || null : null;
  }

  _applyMute() {
    if (this.microphoneTrack) this.microphoneTrack.enabled = !this.micMuted;
    if (this.cameraTrack) this.cameraTrack.enabled = !this.cameraOff;
  }

  _stopLocalMedia() {
    for (const stream of [this.camera, this.screen]) {
      if (stream) stream.getTracks().forEach((track) => track.stop());
    }
    this.camera = null;
    this.screen = null;
  }

  toggleMicrophone(muted = !this.micMuted) {
    if (!this.mayPublish) return this.micMuted;
    this.micMuted = Boolean(muted);
    this._applyMute();
    this._syncMute('microphone');
    this._changed();
    return this.micMuted;
  }

  toggleCamera(off = !this.cameraOff) {
    if (!this.mayPublish) return this.cameraOff;
    this.cameraOff = Boolean(off);
    this._applyMute();
    this._syncMute('camera');
    this._changed();
    return this.cameraOff;
  }

  _wantedMute(source) {
    return source === 'microphone' ? this.micMuted : source === 'camera' ? this.cameraOff : false;
  }

  // Tells the server a track's mute state once it differs from what the server knows.
  _syncMute(source) {
    const trackId = this.trackIds[source];
    const signaling = this.signaling;
    if (!trackId || this.muting.has(trackId) || this.phase !== 'joined' || !signaling) return;
    const muted = this._wantedMute(source);
    if (this.ackedMute.get(trackId) === muted) return;
    this.muting.add(trackId);
    signaling.request({ type: 'mute', track_id: trackId, muted }).then(
      () => {
        this.ackedMute.set(trackId, muted);
      },
      (error) => {
        if (TRANSIENT.has(error.code)) return; // tried again once the session is back
        console.warn('gbroom: mute was refused:', error.code, error.message);
        this.ackedMute.set(trackId, muted); // do not insist
      },
    ).finally(() => {
      this.muting.delete(trackId);
      if (this.trackIds[source] === trackId && this._wantedMute(source) !== this.ackedMute.get(trackId)) {
        if (this.phase === 'joined' && this.signaling && this.signaling.isOpen) this._syncMute(source);
      }
    });
  }

  // --- joining and leaving -------------------------------------------------------------

  async join() {
    if (['joining', 'joined', 'reconnecting', 'leaving'].includes(this.phase)) return this.phase === 'joined';
    this.phase = 'joining';
    this.message = '';
    this.error = null;
    this._changed();
    await this.preview();
    try {
      await this._connect(false);
      return true;
    } catch (error) {
      if (error.code === 'cancelled') return false;
      this._fail(error);
      return false;
    }
  }

  async leave() {
    if (!['joining', 'joined', 'reconnecting'].includes(this.phase)) return false;
    const signaling = this.signaling;
    this.phase = 'leaving';
    this._changed();
    if (signaling && signaling.isOpen) {
      try {
        await signaling.request({ type: 'leave' }, 5000);
      } catch (error) {
        console.warn('gbroom: leave got no answer:', error.code);
      }
    }
    this._end('left', 'You left the meeting.');
    return true;
  }

  // Leaves at once, without waiting: the page is going away.
  leaveNow() {
    if (this.signaling && this.phase === 'joined') this.signaling.send({ type: 'leave' });
  }

  _end(phase, message) {
    clearTimeout(this._iceTimer);
    this._iceTimer = null;
    const signaling = this.signaling;
    this.signaling = null;
    if (signaling) signaling.close();
    this._closeMedia();
    this._stopLocalMedia();
    this.participants = new Map();
    this.speakers = [];
    this.resumeToken = null;
    this.phase = phase;
    this.message = message;
    this._changed();
  }

  _fail(error) {
    this.error = error;
    const expected = Boolean(USER_ERRORS[error.code]);
    (expected ? console.warn : console.error)('gbroom: could not join:', error.code || '', error.message || error);
    const signaling = this.signaling;
    this.signaling = null;
    if (signaling) signaling.close();
    this._closeMedia();
    this.participants = new Map();
    this.resumeToken = null;
    this.phase = 'error';
    this.message = describeError(error);
    this._changed();
  }

  // Opens a socket and joins (or resumes); on success the session is 'joined'.
  async _connect(resume) {
    if (Date.now() < this.offlineUntil) throw new SignalingError('connection_lost', 'offline');
    const signaling = new Signaling(signalingUrl(window.location, roomOfToken(this.token)), {
      onMessage: (message) => {
        if (this.signaling === signaling) this._onMessage(message);
      },
      onClose: () => this._onSocketLost(signaling),
    });
    await signaling.open();
    const previous = this.signaling;
    this.signaling = signaling;
    if (previous && previous !== signaling) previous.close();
    const message = { type: 'join', token: this.token, protocol: 1 };
    if (resume) message.resume = this.resumeToken;
    let joined;
    try {
      joined = await signaling.request(message);
    } catch (error) {
      if (this.signaling === signaling) this.signaling = null;
      signaling.close();
      throw error;
    }
    if (!['joining', 'reconnecting'].includes(this.phase) || this.signaling !== signaling) {
      signaling.send({ type: 'leave' }); // left (or gave up) while this join was on its way
      signaling.close();
      throw new SignalingError('cancelled', 'the join was cancelled');
    }
    // Nothing awaits between here and the end of _joined/_resumed: the next server
    // message (an offer, an event) is handled only after the state is in place.
    if (joined.resumed) this._resumed(joined);
    else this._joined(joined);
  }

  _adopt(joined) {
    this.speakers = []; // the server announces the next change; an old list may be stale
    this.room = joined.room;
    this.self = joined.participant;
    this.resumeToken = joined.resume_token;
    this.graceSeconds = Number(joined.resume_grace_seconds) || 0;
    this.participants = new Map(joined.participants.map((p) => [p.id, toParticipant(p)]));
    this.phase = 'joined';
    this.message = '';
    this._setIceServers(joined);
  }

  // New TURN credentials (`joined`, `ice_servers`): the connections use them from their next gathering,
  // and they are renewed before they expire. A running TURN allocation keeps the credential it was made with.
  _setIceServers(message) {
    this.iceServers = message.ice_servers || [];
    this.iceServersExpireAt = message.ice_servers_expire_at || null;
    for (const pc of [this.publisher, this.subscriber]) {
      if (!pc || pc.signalingState === 'closed') continue;
      try {
        pc.setConfiguration({ ...pc.getConfiguration(), iceServers: rtcConfig(this.iceServers).iceServers });
      } catch (error) {
        console.warn('gbroom: new ICE servers not applied:', error.name, error.message);
      }
    }
    clearTimeout(this._iceTimer);
    this._iceTimer = null;
    const delay = refreshDelayMs(this.iceServersExpireAt);
    if (delay !== null) this._iceTimer = setTimeout(() => this._refreshIceServers(), delay);
  }

  async _refreshIceServers() {
    this._iceTimer = null;
    const signaling = this.signaling;
    if (this.phase !== 'joined' || !signaling || !signaling.isOpen) return; // the next `joined` brings fresh ones
    try {
      const reply = await signaling.request({ type: 'ice_servers' });
      if (this.signaling !== signaling) return;
      this.iceRefreshes += 1;
      this._setIceServers(reply);
    } catch (error) {
      console.warn('gbroom: ICE servers not renewed:', error.code, error.message);
      if (this.phase === 'joined') this._iceTimer = setTimeout(() => this._refreshIceServers(), RETRY_REFRESH_MS);
    }
  }

  // For tests: renew the TURN credentials now rather than near their expiry.
  refreshIceServers() {
    clearTimeout(this._iceTimer);
    return this._refreshIceServers();
  }

  _joined(joined) {
    this._closeMedia(); // a fresh session after a failed resume starts with new connections
    this._adopt(joined);
    if (!this.canPublish) this._stopLocalMedia(); // the token claimed more than the server grants
    this._changed();
    if (this.canPublish) this._publishLocal();
    this._emit('connected', joined);
  }

  _resumed(joined) {
    this._adopt(joined);
    this.resumes += 1;
    for (const target of ['publisher', 'subscriber']) {
      const pc = this[target];
      // A connection whose path failed while the socket was away is replaced now, in the session.
      if (pc && pc.connectionState === 'failed') this._pathFailed(target, pc);
    }
    this._flushCandidates('publisher');
    this._flushCandidates('subscriber');
    if (this.publishNeeded) this._requestPublish();
    this._syncMute('microphone');
    this._syncMute('camera');
    this._changed();
    this._emit('connected', joined);
  }

  _onSocketLost(signaling) {
    if (this.signaling !== signaling) return;
    this.signaling = null;
    if (this.phase !== 'joined') return; // a join in flight reports its own failure
    this._reconnect();
  }

  // The socket dropped (or the session must start over): reconnect with backoff.
  async _reconnect() {
    this.phase = 'reconnecting';
    const moving = this.moving;
    this.moving = false;
    this.message = moving ? 'Moving to another server…' : 'Connection lost; reconnecting…';
    this._changed();
    const deadline = Date.now() + this.graceSeconds * 1000;
    let delay = moving ? 0 : RETRY_FIRST_MS;
    while (this.phase === 'reconnecting') {
      await sleep(delay);
      delay = Math.min(delay * 2, RETRY_MAX_MS);
      if (this.phase !== 'reconnecting') return;
      const resume = Boolean(this.resumeToken) && Date.now() < deadline;
      this.reconnects += 1;
      try {
        await this._connect(resume);
        if (!resume) this.rejoins += 1;
        this._changed();
        return;
      } catch (error) {
        if (this.phase !== 'reconnecting') return;
        if (error.code === 'resume_failed') {
          console.info('gbroom: the session could not be resumed; joining again');
          this.resumeToken = null;
          delay = 0;
        } else if (FATAL.has(error.code)) {
          this._fail(error);
          return;
        }
      }
    }
  }

  // For tests: the socket drops as on a network loss, and stays away for `ms`.
  simulateNetworkLoss(ms = 0) {
    this.offlineUntil = Date.now() + ms;
    if (this.signaling) this.signaling.drop();
  }

  // For tests: ends a simulated network loss early (the next reconnect attempt goes through).
  restoreNetwork() {
    this.offlineUntil = 0;
  }

  // --- server messages -----------------------------------------------------------------

  _onMessage(message) {
    const participant = this.participants.get(message.participant_id);
    switch (message.type) {
      case 'offer':
        if (this.awaitingRestartOffer && !message.restart) return; // made for the connection we discarded
        this.awaitingRestartOffer = false;
        this._onOffer(message);
        return;
      case 'chat_message':
      case 'chat_receipt':
      case 'typing':
        this._emit('chat', message);
        return;
      case 'participant_joined':
        if (message.participant.id !== (this.self && this.self.id)) {
          this.participants.set(message.participant.id, toParticipant(message.participant));
        }
        break;
      case 'participant_left':
        this.participants.delete(message.participant_id);
        break;
      case 'track_published':
        if (participant) participant.tracks.set(message.track.id, { ...message.track });
        break;
      case 'track_unpublished':
        if (participant) participant.tracks.delete(message.track_id);
        break;
      case 'speakers':
        this.speakers = Array.isArray(message.speakers) ? message.speakers : [];
        break;
      case 'publisher_layers':
        this._applyLayers(message.track_id, message.active);
        return;
      case 'track_muted': {
        const track = participant && participant.tracks.get(message.track_id);
        if (track) track.muted = message.muted;
        break;
      }
      case 'removed':
        this._end('ended', message.reason === 'duplicate_identity'
          ? 'You joined this meeting from another tab or device.'
          : 'You were removed from the meeting.');
        return;
      case 'room_closed':
        this._end('ended', 'The meeting has ended.');
        return;
      case 'moved':
        // The room moves to another node (a drain, or its node changed): the server ends this
        // socket; join again at once, afresh (the session stays behind), through any node.
        this.resumeToken = null;
        this.moving = true;
        this.moves += 1;
        return;
      case 'error':
        console.warn('gbroom: server error:', message.code, message.message);
        this.message = describeError(message);
        break;
      default:
        return; // pong, or a reply whose request timed out
    }
    this._changed();
  }

  // --- publishing ----------------------------------------------------------------------

  // Dynacast: the server says which simulcast layers of one of our tracks anyone watches.
  _applyLayers(trackId, active) {
    const pc = this.publisher;
    if (!pc || !Array.isArray(active)) return;
    this.pendingLayers = { ...(this.pendingLayers || {}), [trackId]: [...active] };
    for (const [transceiver, source] of this.sources) {
      if (this.trackIds[source] !== trackId || !pc.getTransceivers().includes(transceiver)) continue;
      this.activeLayers = { ...(this.activeLayers || {}), [trackId]: [...active] };
      delete this.pendingLayers[trackId];
      applyActiveLayers(transceiver.sender, active).catch((error) => {
        console.warn('gbroom: could not change the simulcast layers:', error.name || '', error.message || error);
      });
    }
  }

  // How a remote video is shown (size or paused): the server picks its layer from it.
  trackSettings(trackId, settings) {
    const signaling = this.signaling;
    if (this.phase !== 'joined' || !signaling || !signaling.isOpen) return;
    signaling.request({ type: 'track_settings', track_id: trackId, ...settings }).catch((error) => {
      if (!TRANSIENT.has(error.code) && error.code !== 'track_not_subscribed') {
        console.warn('gbroom: track settings refused:', error.code, error.message);
      }
    });
  }

  _ensurePublisher() {
    if (this.publisher) return this.publisher;
    const pc = new RTCPeerConnection(rtcConfig(this.iceServers));
    pc.onicecandidate = (event) => this._onLocalCandidate('publisher', pc, event);
    pc.onconnectionstatechange = () => this._onConnectionState(pc);
    this.publisher = pc;
    return pc;
  }

  _addLocal(track, stream, source) {
    const init = { direction: 'sendonly', streams: [stream] };
    const encodings = source === 'camera' ? cameraEncodings(track) : null;
    if (encodings) init.sendEncodings = encodings; // simulcast: the server forwards each viewer one layer
    const transceiver = this._ensurePublisher().addTransceiver(track, init);
    this.sources.set(transceiver, source);
    return transceiver;
  }

  _publishLocal() {
    const camera = this.camera;
    if (camera) {
      if (this.microphoneTrack) this._addLocal(this.microphoneTrack, camera, 'microphone');
      if (this.cameraTrack) this._addLocal(this.cameraTrack, camera, 'camera');
    }
    if (this.sources.size) this._requestPublish();
    if (this.screenTrack) {
      // A screen share that outlived a fresh rejoin goes in a second negotiation, once
      // the connection is bundled: the server's aiortc mishandles two video m-lines in
      // the first offer (see the report in tests/web/test_room_page.py).
      this.publishChain = this.publishChain.then(() => {
        if (this.screenTrack && !this.screenTransceiver && this.phase === 'joined') {
          this.screenTransceiver = this._addLocal(this.screenTrack, this.screen, 'screen_share');
        }
      });
      this._requestPublish();
    }
  }

  // Negotiations of the publisher connection run one at a time.
  _requestPublish() {
    const pc = this.publisher;
    this.publishChain = this.publishChain.then(() => this._negotiatePublisher()).catch((error) => {
      if (pc !== this.publisher) return; // closed because the session ended or started over
      console.error('gbroom: publishing failed:', error.code || error.name || '', error.message || error);
      this.message = `Your camera and microphone could not be sent: ${error.message || error}`;
      this._changed();
    });
    return this.publishChain;
  }

  async _negotiatePublisher() {
    const pc = this.publisher;
    const signaling = this.signaling;
    if (!pc || pc !== this.publisher) return;
    if (this.phase !== 'joined' || !signaling || !signaling.isOpen) {
      this.publishNeeded = true; // done after the session resumes
      return;
    }
    this.publishNeeded = false;
    await pc.setLocalDescription(await pc.createOffer());
    const tracks = {};
    for (const transceiver of pc.getTransceivers()) {
      const source = this.sources.get(transceiver);
      if (transceiver.mid !== null && source && transceiver.sender.track) tracks[transceiver.mid] = { source };
    }
    const publish = { type: 'publish', sdp: pc.localDescription.sdp, tracks };
    if (this.publishRestart) publish.restart = true; // a fresh connection: the server keeps our track ids
    const reply = signaling.request(publish);
    // The server reads its socket in order: candidates sent after publish find its connection.
    this.trickle.publisher = true;
    this._flushCandidates('publisher');
    let answer;
    try {
      answer = await reply;
    } catch (error) {
      if (pc !== this.publisher) return; // the session ended or started over meanwhile
      if (TRANSIENT.has(error.code)) {
        this.publishNeeded = true;
        if (this.phase === 'joined' && this.signaling && this.signaling.isOpen) this._requestPublish();
        return;
      }
      if (pc.signalingState === 'have-local-offer') await pc.setLocalDescription({ type: 'rollback' });
      throw error;
    }
    if (pc !== this.publisher || pc.signalingState !== 'have-local-offer') return;
    if (publish.restart) this.publishRestart = false;
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    this._watchConnect('publisher', pc);
    const byMid = new Map(answer.tracks.map((track) => [track.mid, track]));
    const trackIds = {};
    for (const transceiver of pc.getTransceivers()) {
      const source = this.sources.get(transceiver);
      const published = byMid.get(transceiver.mid);
      if (source && published && transceiver.sender.track) {
        trackIds[source] = published.id;
        if (!this.ackedMute.has(published.id)) this.ackedMute.set(published.id, Boolean(published.muted));
      }
    }
    this.trackIds = trackIds;
    // Dynacast news may come before the publish answer that names the track.
    for (const [trackId, active] of Object.entries(this.pendingLayers || {})) this._applyLayers(trackId, active);
    this._syncMute('microphone');
    this._syncMute('camera');
    this._changed();
  }

  async startScreenShare() {
    if (this.screen || this.phase !== 'joined' || !this.canPublish) return false;
    const devices = navigator.mediaDevices;
    if (!devices || !devices.getDisplayMedia) return false;
    let stream;
    try {
      stream = await devices.getDisplayMedia({ video: true, audio: false });
    } catch (error) {
      console.info('gbroom: screen share not started:', error.name, error.message);
      return false;
    }
    const track = stream.getVideoTracks()[0];
    if (!track || this.phase !== 'joined') {
      stream.getTracks().forEach((t) => t.stop());
      return false;
    }
    if ('contentHint' in track) track.contentHint = 'detail';
    track.addEventListener('ended', () => this.stopScreenShare());
    this.screen = stream;
    this.screenTransceiver = this._addLocal(track, stream, 'screen_share');
    this._changed();
    await this._requestPublish();
    return true;
  }

  async stopScreenShare() {
    if (!this.screen) return false;
    const stream = this.screen;
    this.screen = null;
    stream.getTracks().forEach((track) => track.stop());
    const transceiver = this.screenTransceiver;
    this.screenTransceiver = null;
    if (transceiver && this.publisher && this.publisher.getTransceivers().includes(transceiver)) {
      this.publisher.removeTrack(transceiver.sender); // the m-line goes inactive: the server unpublishes it
      this.sources.delete(transceiver);
      this._changed();
      await this._requestPublish();
    }
    this._changed();
    return true;
  }

  // --- receiving -----------------------------------------------------------------------

  _ensureSubscriber() {
    if (this.subscriber) return this.subscriber;
    const pc = new RTCPeerConnection(rtcConfig(this.iceServers));
    pc.onicecandidate = (event) => this._onLocalCandidate('subscriber', pc, event);
    pc.onconnectionstatechange = () => this._onConnectionState(pc);
    pc.ontrack = () => this._changed();
    this.subscriber = pc;
    return pc;
  }

  _onOffer(offer) {
    let pc = null;
    const deliveredOn = this.signaling; // an offer belongs to the socket (the session) that brought it
    const epoch = this.subscriberEpoch; // and to the subscriber connection it was made for
    this.subscriberChain = this.subscriberChain.then(async () => {
      // A resumed session gets the pending offer again; an offer of an earlier session (still queued
      // when the room moved and the page joined afresh) must not be answered on the new one.
      if (this.phase !== 'joined' || this.signaling !== deliveredOn || this.subscriberEpoch !== epoch) return;
      pc = this._ensureSubscriber();
      await pc.setRemoteDescription({ type: 'offer', sdp: offer.sdp });
      this.remoteMids = { ...offer.tracks };
      await pc.setLocalDescription(await pc.createAnswer());
      // Still the session the offer came on (the room may have moved while the answer was made).
      const signaling = this.signaling;
      if (pc !== this.subscriber || signaling !== deliveredOn || !signaling || !signaling.isOpen) return;
      signaling.request({ type: 'answer', sdp: pc.localDescription.sdp }).catch((error) => {
        if (TRANSIENT.has(error.code)) return;
        // The room moved away after the answer left: its old node dropped the offer with the session.
        if (error.code === 'unexpected_answer' && (this.moving || this.signaling !== signaling)) return;
        console.error('gbroom: the server refused our answer:', error.code, error.message);
      });
      this.trickle.subscriber = true;
      this._flushCandidates('subscriber');
      this._watchConnect('subscriber', pc);
      this._changed();
    }).catch((error) => {
      if (pc !== this.subscriber) return; // closed because the session ended or started over
      console.error('gbroom: could not apply the server offer:', error.name || '', error.message || error);
    });
  }

  // What the subscriber connection receives now: track id -> {mid, track, receiver}.
  remoteMedia() {
    const media = new Map();
    const pc = this.subscriber;
    if (!pc) return media;
    for (const transceiver of pc.getTransceivers()) {
      const trackId = transceiver.mid !== null ? this.remoteMids[transceiver.mid] : undefined;
      const direction = transceiver.currentDirection;
      if (!trackId || (direction !== 'recvonly' && direction !== 'sendrecv')) continue;
      media.set(trackId, { mid: transceiver.mid, track: transceiver.receiver.track, receiver: transceiver.receiver });
    }
    return media;
  }

  // The participant that publishes a track, and the track's description.
  ownerOf(trackId) {
    for (const participant of this.participants.values()) {
      const track = participant.tracks.get(trackId);
      if (track) return { participant, track };
    }
    return null;
  }

  // --- ICE -----------------------------------------------------------------------------

  _onLocalCandidate(target, pc, event) {
    if (pc !== this[target]) return;
    const found = event.candidate;
    const candidate = found && found.candidate
      ? { candidate: found.candidate, sdpMid: found.sdpMid, sdpMLineIndex: found.sdpMLineIndex }
      : null; // end of candidates
    this.queued[target].push(candidate);
    this._flushCandidates(target);
  }

  _flushCandidates(target) {
    const signaling = this.signaling;
    if (!this.trickle[target] || this.phase !== 'joined' || !signaling || !signaling.isOpen) return;
    const pc = this[target];
    for (const candidate of this.queued[target].splice(0)) {
      signaling.request({ type: 'candidate', target, candidate }).catch((error) => {
        if (TRANSIENT.has(error.code)) {
          if (pc === this[target]) this.queued[target].push(candidate); // sent again after resuming
        } else {
          console.warn(`gbroom: the server refused a ${target} ICE candidate:`, error.code, error.message);
        }
      });
    }
  }

  // A connection's state: connected (its path is reported), disconnected for a while or failed (its path
  // is gone: replaced by a fresh connection within the session), failed before ever connecting (media
  // cannot reach the server: said on the page).
  _onConnectionState(pc) {
    const target = pc === this.publisher ? 'publisher' : pc === this.subscriber ? 'subscriber' : null;
    if (!target) return;
    if (this.phase !== 'joined') {
      this._changed();
      return;
    }
    const state = pc.connectionState;
    clearTimeout(this._watch[target]);
    this._watch[target] = null;
    if (state === 'connected') {
      this.everConnected[target] = true;
      const recovery = this.recoveries.findLast((r) => r.target === target);
      if (recovery && recovery.connectedAt === null) recovery.connectedAt = performance.now();
      if (this.mediaFailure) {
        this.mediaFailure = null;
        if (Object.values(MEDIA_FAILURES).includes(this.message)) this.message = '';
      }
      this._reportPath(target, pc);
      this._followPairChanges(target, pc);
      this._watchLiveness(target, pc);
    } else if (state === 'disconnected') {
      this._watch[target] = setTimeout(() => this._pathFailed(target, pc), DISCONNECTED_GRACE_MS);
    } else if (state === 'failed') {
      this._pathFailed(target, pc);
    }
    this._changed();
  }

  // Until a negotiated connection connects: past CONNECT_TIMEOUT_MS it is taken as failed.
  _watchConnect(target, pc) {
    if (pc.connectionState === 'connected' || this._watch[target]) return;
    this._watch[target] = setTimeout(() => {
      this._watch[target] = null;
      if (pc === this[target] && pc.connectionState !== 'connected') this._pathFailed(target, pc);
    }, CONNECT_TIMEOUT_MS);
  }

  _pathFailed(target, pc) {
    if (pc !== this[target] || this.phase !== 'joined') return;
    if (!this.everConnected[target]) {
      // It never connected: a new connection would fail the same way. Say why, once, and wait.
      this.mediaFailure = mediaFailureOf(this.iceServers);
      this.message = MEDIA_FAILURES[this.mediaFailure];
      console.warn(`gbroom: the ${target} connection did not connect:`, this.mediaFailure);
      this._changed();
      return;
    }
    this.recoverMedia(target, `the ${target} connection ${pc.connectionState === 'failed' ? 'failed' : 'stopped'}`);
  }

  // Replaces a connection whose path failed with a fresh one over the same session: aiortc (the server)
  // has no ICE restart. The server keeps this participant, its track ids and subscriptions, so the
  // others see a short freeze and nothing else (docs/protocol.md, "Media restart").
  recoverMedia(target, reason = 'asked') {
    if (this.phase !== 'joined' || !this.signaling) return false;
    const old = this[target];
    if (!old) return false;
    console.warn(`gbroom: replacing the ${target} connection:`, reason);
    this.mediaRestarts += 1;
    this.recoveries.push({ target, reason, startedAt: performance.now(), connectedAt: null });
    if (this.recoveries.length > 20) this.recoveries.shift();
    this._dropConnection(target);
    if (target === 'publisher') {
      const sent = [...this.sources].filter(([transceiver]) => transceiver.sender.track);
      this.sources = new Map();
      this.screenTransceiver = null;
      this.publishRestart = true;
      for (const [transceiver, source] of sent) {
        if (source === 'screen_share') continue; // in a second negotiation, as after a rejoin (_publishLocal)
        this._addLocal(transceiver.sender.track, this.camera || new MediaStream(), source);
      }
      if (this.sources.size) this._requestPublish();
      if (this.screenTrack) {
        this.publishChain = this.publishChain.then(() => {
          if (this.screenTrack && !this.screenTransceiver && this.phase === 'joined') {
            this.screenTransceiver = this._addLocal(this.screenTrack, this.screen, 'screen_share');
          }
        });
        this._requestPublish();
      }
    } else {
      this.subscriberEpoch += 1;
      this.awaitingRestartOffer = true; // offers of the discarded connection may still be on their way
      this.remoteMids = {};
      this.signaling.request({ type: 'subscriber_restart' }).catch((error) => {
        console.warn('gbroom: the subscriber connection was not restarted:', error.code, error.message);
      });
    }
    // A replacement that does not connect within CONNECT_TIMEOUT_MS of its negotiation (the network is
    // still away) is replaced again (_watchConnect, _pathFailed): this one has connected before.
    this._changed();
    return true;
  }

  _dropConnection(target) {
    const pc = this[target];
    clearTimeout(this._watch[target]);
    this._watch[target] = null;
    if (pc) {
      if (pc.gbLiveness) pc.gbLiveness();
      pc.onicecandidate = null;
      pc.onconnectionstatechange = null;
      pc.ontrack = null;
      pc.close();
    }
    this[target] = null;
    this.trickle[target] = false;
    this.queued[target] = [];
  }

  // Whether a connection should be receiving RTCP from the node now: the subscriber connection while it
  // receives a track (the node's sender reports), the publisher connection while it sends one (the
  // node's receiver reports).
  _mediaExpected(target, pc) {
    return pc.getTransceivers().some((t) => {
      const direction = t.currentDirection;
      if (target === 'subscriber') return direction === 'recvonly' || direction === 'sendrecv';
      return (direction === 'sendonly' || direction === 'sendrecv') && Boolean(t.sender.track);
    });
  }

  // The silent-path check (liveness.js): a connection that received nothing for SILENT_MS while carrying
  // media is replaced at once, without waiting for Chromium's own `disconnected`.
  _watchLiveness(target, pc) {
    if (pc.gbLiveness) return;
    pc.gbLiveness = watchSilence(pc, {
      expected: () => pc === this[target] && this.phase === 'joined' && this._mediaExpected(target, pc),
      onSilent: (ms) => {
        if (pc !== this[target] || this.phase !== 'joined') return;
        this.silentPaths += 1;
        this.recoverMedia(target, `the ${target} connection received nothing for ${ms} ms`);
      },
    });
  }

  // ICE may move a connection to another candidate pair by itself (a relayed one it held in reserve, when
  // the direct path stops): each move is reported too.
  // Chromium does not always fire selectedcandidatepairchange: the path is also read every few seconds.
  _followPairChanges(target, pc) {
    const transports = [...pc.getSenders(), ...pc.getReceivers()].map((x) => x.transport).filter(Boolean);
    const ice = transports.length ? transports[0].iceTransport : null;
    if (ice && !ice.gbFollowed) {
      ice.gbFollowed = true;
      ice.addEventListener('selectedcandidatepairchange', () => {
        if (pc === this[target] && pc.connectionState === 'connected') this._reportPath(target, pc);
      });
    }
    if (pc.gbPathTimer) return;
    pc.gbPathTimer = setInterval(() => {
      if (pc !== this[target] || pc.signalingState === 'closed') {
        clearInterval(pc.gbPathTimer);
      } else if (pc.connectionState === 'connected') {
        this._reportPath(target, pc, true);
      }
    }, PATH_CHECK_MS);
  }

  // Tells the server which candidate pair a connection uses (shown in its stats API and counted).
  async _reportPath(target, pc, onlyChanged = false) {
    let path = null;
    for (let tries = 0; tries < 5 && !path && pc === this[target]; tries += 1) {
      path = await candidatePath(pc);
      if (!path) await sleep(200); // the selected pair shows in getStats a moment after `connected`
    }
    const signaling = this.signaling;
    if (!path || pc !== this[target] || !signaling || !signaling.isOpen) return;
    const last = this.paths[target];
    const same = last && last.candidateType === path.candidateType && last.protocol === path.protocol
      && last.relayProtocol === path.relayProtocol;
    if (onlyChanged && same) return;
    this.paths = { ...this.paths, [target]: path };
    const report = { type: 'media_path', target, candidate_type: path.candidateType, protocol: path.protocol };
    if (path.relayProtocol) report.relay_protocol = path.relayProtocol;
    signaling.request(report).catch((error) => {
      if (!TRANSIENT.has(error.code)) console.warn('gbroom: media path not reported:', error.code, error.message);
    });
    this._changed();
  }

  _closeMedia() {
    for (const target of ['publisher', 'subscriber']) this._dropConnection(target);
    this._resetMedia();
  }
}
