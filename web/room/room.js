// The meeting page: /web/room/?token=<JWT>[&autojoin=1]
//
// Without a token it only explains that a join link is needed. With one it previews
// camera and microphone and joins on the Join button (or at once with autojoin=1).
// session.js speaks the protocol; this module draws the page from the session's state.
//
// For tests and embedding, window.gbroom is a read-only view of the state plus the
// actions (join, leave, mute toggles, screen share, stats, the active speakers, the
// statistics overlay (quality, toggleStats), and gbroom.chat: the chat
// panel's messages, send, open/close, unread count, who is typing); join() and
// leave() are also plain globals.

import { RoomChat } from './chat.js';
import { ChatPanel } from './chatpanel.js';
import { Grid } from './grid.js';
import { candidatePath } from './ice.js';
import { ViewReporter } from './layers.js';
import { RoomSession, tokenClaims } from './session.js';
import { StatsPanel } from './statspanel.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
const token = params.get('token') || '';
const autojoin = ['1', 'true', 'yes'].includes((params.get('autojoin') || '').toLowerCase());
const claims = token ? tokenClaims(token) : null;

const session = new RoomSession(token);
const grid = new Grid($('grid'));
const views = new ViewReporter((trackId, settings) => session.trackSettings(trackId, settings));
const chat = new RoomChat(session);
const chatPanel = new ChatPanel(chat, {
  panel: $('chat'), list: $('chat-messages'), typing: $('chat-typing'), form: $('chat-form'), input: $('chat-input'),
  toggle: $('chat-toggle'), badge: $('chat-unread'), close: $('chat-close'), empty: $('chat-empty'),
});
const statsPanel = new StatsPanel(session, {
  panel: $('stats'), toggle: $('stats-toggle'), body: $('stats-rows'),
  describe: (trackId) => {
    const owner = session.ownerOf(trackId);
    return owner ? { name: displayName(owner.participant), source: owner.track.source } : { name: '?', source: 'unknown' };
  },
});
const audioElements = new Map(); // remote audio track id -> <audio>
const videoKeys = new Map(); // remote video track id -> tile key
let soundBlocked = false;

const PHASE_TEXT = {
  idle: 'Ready to join',
  joining: 'Joining…',
  joined: '',
  reconnecting: 'Connection lost; reconnecting…',
  leaving: 'Leaving…',
  left: 'You left the meeting',
  ended: 'The meeting is over for you',
  error: 'Could not join',
};

function displayName(participant) {
  return participant.name || participant.identity || 'Guest';
}

function tiles() {
  const wanted = [];
  videoKeys.clear();
  if (!['joined', 'reconnecting', 'leaving'].includes(session.phase)) return wanted;
  const selfName = (session.self && displayName(session.self)) || 'You';
  const speaking = new Set(session.speakers.map((s) => s.participant_id));
  if (session.mayPublish) wanted.push({
    key: 'self', participantId: session.self ? session.self.id : '', name: selfName, self: true, source: 'camera',
    videoTrack: session.cameraTrack, micMuted: session.micMuted || !session.microphoneTrack,
    cameraOff: session.cameraOff || !session.cameraTrack, speaking: Boolean(session.self && speaking.has(session.self.id)),
  });
  if (session.screenTrack) {
    wanted.push({ key: 'self:screen', participantId: session.self ? session.self.id : '', name: selfName, self: true,
      source: 'screen_share', videoTrack: session.screenTrack, micMuted: false, cameraOff: false });
  }
  const media = session.remoteMedia();
  for (const participant of session.participants.values()) {
    const tracks = [...participant.tracks.values()];
    const camera = tracks.find((t) => t.kind === 'video' && t.source !== 'screen_share');
    const mic = tracks.find((t) => t.kind === 'audio' && t.source !== 'screen_share_audio');
    const cameraMedia = camera && media.get(camera.id);
    if (camera) videoKeys.set(camera.id, participant.id);
    wanted.push({
      key: participant.id, participantId: participant.id, name: displayName(participant), self: false,
      source: 'camera', videoTrack: cameraMedia ? cameraMedia.track : null,
      micMuted: !mic || Boolean(mic.muted), cameraOff: !camera || Boolean(camera.muted),
      speaking: speaking.has(participant.id),
    });
    for (const screen of tracks.filter((t) => t.kind === 'video' && t.source === 'screen_share')) {
      const key = `${participant.id}:${screen.id}`;
      const screenMedia = media.get(screen.id);
      videoKeys.set(screen.id, key);
      wanted.push({ key, participantId: participant.id, name: displayName(participant), self: false,
        source: 'screen_share', videoTrack: screenMedia ? screenMedia.track : null, micMuted: false,
        cameraOff: Boolean(screen.muted) });
    }
  }
  return wanted;
}

let lastPhase = null;

// Each remote video we receive, with the element that shows it (for its layer).
function syncViews() {
  const wanted = new Map();
  const media = session.remoteMedia();
  for (const [trackId, key] of videoKeys) {
    const video = grid.videoFor(key);
    if (video && media.has(trackId)) wanted.set(trackId, video);
  }
  views.sync(wanted);
}

function playAudio(element) {
  element.play().then(() => {
    if (soundBlocked && [...audioElements.values()].every((a) => !a.paused)) {
      soundBlocked = false;
      render();
    }
  }, (error) => {
    if (error.name === 'NotAllowedError' && !soundBlocked) {
      soundBlocked = true; // the browser wants a click first
      render();
    }
  });
}

function syncAudio() {
  const wanted = new Map();
  for (const [trackId, media] of session.remoteMedia()) {
    if (media.track.kind === 'audio') wanted.set(trackId, media.track);
  }
  for (const [trackId, element] of audioElements) {
    if (!wanted.has(trackId)) {
      element.srcObject = null;
      element.remove();
      audioElements.delete(trackId);
    }
  }
  for (const [trackId, track] of wanted) {
    let element = audioElements.get(trackId);
    if (!element) {
      element = document.createElement('audio');
      element.autoplay = true;
      element.dataset.trackId = trackId;
      $('audio').append(element);
      audioElements.set(trackId, element);
    }
    const current = element.srcObject && element.srcObject.getTracks()[0];
    if (current !== track) {
      element.srcObject = new MediaStream([track]);
      playAudio(element);
    }
  }
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function render() {
  const phase = token ? session.phase : 'no_token';
  document.body.dataset.phase = phase;
  const inCall = ['joined', 'reconnecting', 'leaving'].includes(phase);
  const lobby = ['idle', 'joining', 'left', 'ended', 'error'].includes(phase);

  $('notice').hidden = phase !== 'no_token';
  $('lobby').hidden = !lobby;
  $('grid').hidden = !inCall;
  $('controls').hidden = phase === 'no_token' || ['left', 'ended'].includes(phase);

  const roomName = (session.room && session.room.name) || (claims && claims.grants && claims.grants.room) || '';
  setText($('room-name'), roomName ? `Meeting: ${roomName}` : 'Meeting');
  document.title = roomName ? `${roomName} · gbmedia` : 'Meeting · gbmedia';

  let status = phase === 'no_token' ? 'No join link' : PHASE_TEXT[phase] || phase;
  if (phase === 'joined') {
    const others = session.participants.size;
    status = others ? `In the meeting with ${others} other${others === 1 ? '' : 's'}` : 'You are the only one here';
  }
  if (inCall && session.message) status = session.message;
  setText($('status'), status);

  if (lobby) {
    const name = (claims && (claims.name || claims.sub)) || '';
    const as = session.mayPublish ? '' : ' to watch and listen';
    setText($('identity'), name ? `You will join as ${name}${as}.` : `Join the meeting${as}.`);
    $('preview-box').hidden = !session.mayPublish; // a viewer sends nothing: nothing to preview
    const preview = $('preview');
    const camera = session.cameraTrack;
    if ((preview.srcObject && preview.srcObject.getVideoTracks()[0]) !== camera) {
      preview.srcObject = camera ? new MediaStream([camera]) : null;
      if (camera) preview.play().catch(() => {});
    }
    $('preview-off').hidden = Boolean(camera) && !session.cameraOff;
    const text = [session.message, session.mediaError].filter(Boolean).join(' ');
    $('lobby-message').hidden = !text;
    setText($('lobby-message'), text);
    const join = $('join');
    join.disabled = phase === 'joining';
    setText(join, phase === 'joining' ? 'Joining…' : ['left', 'ended', 'error'].includes(phase) ? 'Join again' : 'Join');
  }

  grid.update(tiles());
  if (phase === 'joined' && lastPhase !== 'joined') views.reset(); // a new subscriber starts from defaults
  lastPhase = phase;
  syncViews();
  syncAudio();
  $('sound').hidden = !soundBlocked;

  const mic = $('mic');
  mic.hidden = !session.mayPublish; // a viewer has nothing to mute
  mic.setAttribute('aria-pressed', String(session.micMuted));
  setText(mic, session.micMuted ? 'Unmute' : 'Mute');
  mic.disabled = session.camera !== null && !session.microphoneTrack;
  const camera = $('camera');
  camera.hidden = !session.mayPublish;
  camera.setAttribute('aria-pressed', String(session.cameraOff));
  setText(camera, session.cameraOff ? 'Start video' : 'Stop video');
  camera.disabled = session.camera !== null && !session.cameraTrack;
  const screen = $('screen');
  screen.hidden = !inCall || !session.canPublish || !(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
  screen.setAttribute('aria-pressed', String(Boolean(session.screen)));
  setText(screen, session.screen ? 'Stop sharing' : 'Share screen');
  $('leave').hidden = !inCall;
  chatPanel.render(inCall);
  statsPanel.render(inCall);
}

// Resolves to what the subscriber connection receives, per remote track.
async function stats() {
  const result = { video: [], audio: [] };
  for (const [trackId, media] of session.remoteMedia()) {
    const owner = session.ownerOf(trackId);
    const report = await media.receiver.getStats();
    let inbound = null;
    report.forEach((entry) => {
      if (entry.type === 'inbound-rtp') inbound = entry;
    });
    const base = {
      trackId, mid: media.mid,
      participantId: owner ? owner.participant.id : null,
      identity: owner ? owner.participant.identity : null,
      name: owner ? displayName(owner.participant) : null,
      source: owner ? owner.track.source : 'unknown',
      muted: owner ? Boolean(owner.track.muted) : false,
      packetsReceived: inbound ? inbound.packetsReceived || 0 : 0,
      bytesReceived: inbound ? inbound.bytesReceived || 0 : 0,
    };
    if (media.track.kind === 'video') {
      const video = grid.videoFor(videoKeys.get(trackId));
      result.video.push({ ...base, framesDecoded: inbound ? inbound.framesDecoded || 0 : 0,
        frameWidth: inbound ? inbound.frameWidth || 0 : 0,
        videoWidth: video ? video.videoWidth : 0, videoHeight: video ? video.videoHeight : 0 });
    } else {
      const element = audioElements.get(trackId);
      result.audio.push({ ...base, totalSamplesReceived: inbound ? inbound.totalSamplesReceived || 0 : 0,
        playing: Boolean(element && !element.paused) });
    }
  }
  return result;
}

// What our publisher connection sends, per simulcast layer (rid) of each outgoing video.
async function publishing() {
  const layers = [];
  if (!session.publisher) return layers;
  for (const sender of session.publisher.getSenders()) {
    if (!sender.track || sender.track.kind !== 'video') continue;
    const encodings = (sender.getParameters().encodings || []);
    const report = await sender.getStats();
    report.forEach((entry) => {
      if (entry.type !== 'outbound-rtp') return;
      const encoding = encodings.find((e) => e.rid === entry.rid) || {};
      layers.push({ rid: entry.rid || null, active: encoding.active !== false, frameWidth: entry.frameWidth || 0,
        framesEncoded: entry.framesEncoded || 0, bytesSent: entry.bytesSent || 0 });
    });
  }
  return layers;
}

function participantView(participant) {
  return {
    id: participant.id, identity: participant.identity, name: displayName(participant),
    tracks: [...participant.tracks.values()].map((t) => ({ id: t.id, kind: t.kind, source: t.source, muted: Boolean(t.muted) })),
  };
}

function chatMessageView(item) {
  return {
    seq: item.seq, id: item.id, sender: item.sender, name: item.name, own: item.own, kind: item.kind,
    content: item.content, createdAt: item.createdAt, edited: item.edited, deleted: item.deleted,
    status: item.status, readBy: [...item.readBy], deliveredTo: [...item.deliveredTo], error: item.error,
  };
}

const chatView = Object.freeze({
  messages: () => chat.list().map(chatMessageView),
  send: (text) => chat.send(text), // resolves with {seq, duplicate} once stored, or {error}
  open: () => chatPanel.setOpen(true),
  close: () => chatPanel.setOpen(false),
  get isOpen() { return chat.isOpen; },
  unread: () => chat.unread,
  typing: () => chat.typingNames,
  get conversationId() { return chat.conversationId; },
  get lastSeq() { return chat.lastSeq; },
  get ready() { return chat.ready; },
});

async function candidatePaths() {
  return { publisher: await candidatePath(session.publisher), subscriber: await candidatePath(session.subscriber) };
}

const join = () => session.join();
const leave = () => session.leave();

window.gbroom = Object.freeze({
  get phase() { return token ? session.phase : 'no_token'; },
  get joined() { return session.phase === 'joined'; },
  get participantId() { return session.self ? session.self.id : null; },
  get identity() { return session.self ? session.self.identity : null; },
  get room() { return session.room ? { ...session.room } : null; },
  get participants() { return [...session.participants.values()].map(participantView); },
  get canPublish() { return session.mayPublish; },
  get localTracks() { return session.localTracks; },
  get micMuted() { return session.micMuted; },
  get cameraOff() { return session.cameraOff; },
  get sharingScreen() { return Boolean(session.screen); },
  get message() { return session.message; },
  get errorCode() { return session.error ? session.error.code : null; },
  get reconnects() { return session.reconnects; },
  get resumes() { return session.resumes; },
  get rejoins() { return session.rejoins; },
  get moves() { return session.moves; },
  // Media connections replaced after their path failed, and why media cannot connect (null: it can).
  get mediaRestarts() { return session.mediaRestarts; },
  get silentPaths() { return session.silentPaths; },
  get mediaFailure() { return session.mediaFailure; },
  get recoveries() { return session.recoveries.map((r) => ({ ...r })); },
  // The candidate path each connection last reported to the server (media_path).
  get reportedPaths() { return JSON.parse(JSON.stringify(session.paths)); },
  // Replace a connection now, as when its path fails ('publisher' or 'subscriber').
  recoverMedia: (target) => session.recoverMedia(target, 'asked by the page'),
  get connectionStates() {
    return { publisher: session.publisher ? session.publisher.connectionState : null,
      subscriber: session.subscriber ? session.subscriber.connectionState : null };
  },
  stats,
  // Which path each connection's media takes: the selected candidate pair's local candidate type
  // (host, srflx, prflx, relay), its protocol, and for a relay how the page reaches the TURN server.
  candidatePaths,
  get iceServers() { return session.iceServers.map((s) => ({ ...s })); },
  get iceServersExpireAt() { return session.iceServersExpireAt; },
  get iceRefreshes() { return session.iceRefreshes; },
  refreshIceServers: () => session.refreshIceServers(),
  // The server's latest `speakers` event, loudest first.
  get speakers() {
    return session.speakers.map((s) => ({ participantId: s.participant_id, level: s.level, dbov: s.dbov }));
  },
  // The statistics overlay: its rows (refreshed now), and opening or closing it.
  quality: () => statsPanel.refresh(),
  toggleStats: (open) => statsPanel.setOpen(open === undefined ? !statsPanel.isOpen : open),
  get statsOpen() { return statsPanel.isOpen; },
  publishing,
  get activeLayers() { return { ...(session.activeLayers || {}) }; },
  join,
  leave,
  toggleMicrophone: (muted) => session.toggleMicrophone(muted),
  toggleCamera: (off) => session.toggleCamera(off),
  startScreenShare: () => session.startScreenShare(),
  stopScreenShare: () => session.stopScreenShare(),
  simulateNetworkLoss: (ms) => session.simulateNetworkLoss(ms),
  restoreNetwork: () => session.restoreNetwork(),
  chat: chatView,
});
window.join = join;
window.leave = leave;

session.addEventListener('change', render);
$('join').addEventListener('click', () => join());
$('leave').addEventListener('click', () => leave());
$('mic').addEventListener('click', () => session.toggleMicrophone());
$('camera').addEventListener('click', () => session.toggleCamera());
$('screen').addEventListener('click', () => (session.screen ? session.stopScreenShare() : session.startScreenShare()));
$('sound').addEventListener('click', () => {
  soundBlocked = false;
  audioElements.forEach(playAudio);
  render();
});
window.addEventListener('pagehide', () => session.leaveNow());

render();
if (token) {
  if (autojoin) join();
  else session.preview();
}
