// The live page (web/live/?token=...): watch a live room, chat, send hearts; or go live.
//
// One signaling socket (../room/signaling.js, docs/protocol.md) joins the live room
// without subscribing: it carries chat (the room's conversation from `joined`),
// hearts (`reaction`), the viewer count (`viewer_count`), hosts coming and going and
// co-host invitations. Media plays through WHEP (player.js), falling back to LL-HLS.
// A token with can_publish makes this page the host's: "Go live" publishes the camera
// and microphone over the same socket; then the host mutes and unmutes the microphone,
// turns the camera off (the device is released: its light goes off) and on, switches
// between cameras (a phone's front and back: replaceTrack, no renegotiation), and ends
// the live (the page leaves the room and joins again, not live: viewers see the end).
// Mute and camera off are also `mute` requests, so the server stops forwarding the
// track and viewers see `track_muted`. A viewer invited on stage accepts and publishes
// the same way (a co-host), still watching the program.
//
// Query: token (required), transport=hls (skip WebRTC), autolive=1 (host: go live at once),
// room_id (lets a viewer of a full room still watch over HLS, without chat).
// State for tests and tools: window.gblive.

import { Signaling, SignalingError, roomOfToken, signalingUrl } from '../room/signaling.js';
import { MEDIA_FAILURES, RETRY_REFRESH_MS, candidatePath, mediaFailureOf, refreshDelayMs, rtcConfig } from '../room/ice.js';
import { watchSilence } from '../room/liveness.js';
import { CONNECT_MS, HlsPlayer, NotLive, WhepPlayer, gathered } from './player.js';

const CHAT_KEEP = 40;
const HEARTS_MAX = 15;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
const token = params.get('token');

const state = {
  state: 'loading', // loading | joining | waiting | whep | hls | publishing | error | ended
  role: 'viewer', // viewer | host | cohost
  room: null,
  self: null,
  viewerCount: 0,
  hosts: new Map(), // participant id -> {id, identity, name, tracks}
  chat: [], // {seq, sender, name, content}
  reactions: 0, // reactions received (sum of counts)
  heartsShown: 0,
  invite: null,
  transport: null, // "whep" | "hls"
  error: null,
  micMuted: false, // while publishing
  cameraOff: false,
  cameraId: null, // the deviceId of the camera in use (kept while it is off)
  cameras: 0, // video inputs the browser offers
  mediaFailure: null, // a MEDIA_FAILURES code (ice.js) when WebRTC media never connected
  mediaRestarts: 0, // WHEP sessions and host publisher connections replaced after their path failed
  recoveries: [], // each replacement: {target, reason, startedAt, connectedAt} (performance.now() ms)
};

let signaling = null;
let conversationId = null;
let player = null;
let publisher = null;
let localStream = null; // what this page publishes: {audio, video} tracks
let publishedIds = {}; // source -> track id, from the publish answer
let retryTimer = null;
let live = false; // this page publishes (a host on air, or a co-host): it publishes again after a reconnect
let reconnects = 0;
const RECONNECT_FIRST_MS = 250;
const RECONNECT_MAX_MS = 4000;

function setState(next, text = '') {
  state.state = next;
  document.body.dataset.state = next;
  $('status').textContent = text;
}

function hostName() {
  const first = state.hosts.values().next().value;
  if (state.role === 'host' && state.self) return state.self.name;
  return first ? first.name : '';
}

// Whether some host sends video now (else a player shows "away" until one does).
function onAir() {
  return [...state.hosts.values()].some((h) => h.tracks.some((t) => t.kind === 'video'));
}

function render() {
  $('viewer-count').textContent = String(state.viewerCount);
  $('host-name').textContent = hostName();
  document.body.dataset.role = state.role;
  const onStage = live && localStream !== null;
  $('host-controls').hidden = !onStage;
  const mic = $('mic');
  mic.textContent = state.micMuted ? 'Unmute' : 'Mute';
  mic.setAttribute('aria-pressed', String(state.micMuted));
  const camera = $('camera');
  camera.textContent = state.cameraOff ? 'Camera on' : 'Camera off';
  camera.setAttribute('aria-pressed', String(state.cameraOff));
  $('switch-camera').hidden = state.cameras < 2;
  $('end').hidden = state.role !== 'host';
}

// --- chat ------------------------------------------------------------------------------

function nameOf(identity) {
  if (state.self && identity === state.self.identity) return state.self.name;
  for (const host of state.hosts.values()) if (host.identity === identity) return host.name;
  return identity;
}

function addChat(message) {
  if (message.conversation_id !== conversationId || message.kind !== 'text' || message.deleted_at) return;
  if (state.chat.some((m) => m.seq === message.seq)) return;
  // Viewers are not listed to each other: a message names its sender itself (metadata.name, from this page).
  const named = message.metadata && typeof message.metadata.name === 'string' ? message.metadata.name.slice(0, 60) : '';
  state.chat.push({ seq: message.seq, sender: message.sender, name: named || nameOf(message.sender),
    content: message.content });
  state.chat.sort((a, b) => a.seq - b.seq);
  state.chat = state.chat.slice(-CHAT_KEEP);
  const list = $('chat');
  list.replaceChildren(...state.chat.map((m) => {
    const item = document.createElement('li');
    const sender = document.createElement('span');
    sender.className = 'sender';
    sender.textContent = m.name;
    const mine = state.self && m.sender === state.self.identity;
    if (state.role === 'host' && !mine && ![...state.hosts.values()].some((h) => h.identity === m.sender)) {
      sender.classList.add('invitable'); // the host taps a viewer's name to invite them on stage
      sender.title = `Invite ${m.name} on stage`;
      sender.addEventListener('click', () => inviteCohost(m.sender));
    }
    item.append(sender, document.createTextNode(m.content));
    return item;
  }));
}

async function loadChat() {
  if (!conversationId) return;
  const page = await signaling.request({ type: 'chat_history', conversation_id: conversationId, limit: 30 });
  for (const message of page.messages) addChat(message);
}

async function sendChat(content) {
  const key = crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2);
  await signaling.request({ type: 'chat_send', conversation_id: conversationId, content, idempotency_key: key,
    metadata: { name: state.self.name } });
}

// --- hearts ----------------------------------------------------------------------------

function floatHearts(count) {
  const layer = $('hearts');
  for (let i = 0; i < Math.min(count, HEARTS_MAX); i++) {
    const heart = document.createElement('span');
    heart.textContent = '❤';
    heart.style.setProperty('--drift', `${Math.round(Math.random() * 50 - 25)}px`);
    heart.style.animationDelay = `${i * 120}ms`;
    heart.addEventListener('animationend', () => heart.remove());
    layer.append(heart);
    state.heartsShown += 1;
  }
}

async function sendHeart() {
  try {
    await signaling.request({ type: 'reaction', kind: 'heart' });
  } catch (error) {
    if (!(error instanceof SignalingError && error.code === 'reaction_rate_limited')) throw error;
  }
}

// --- watching ----------------------------------------------------------------------------

async function play() {
  clearTimeout(retryTimer);
  if (player) player.stop();
  player = null;
  const forceHls = params.get('transport') === 'hls';
  if (!forceHls) {
    setState('joining', 'Connecting…');
    const whep = new WhepPlayer($('video'), { room: state.room.name, token, iceServers, expectMedia: onAir });
    player = whep; // a reconnect or a newer play() meanwhile replaces it
    try {
      await whep.start();
      if (player !== whep) return;
      state.transport = 'whep';
      state.mediaFailure = null;
      const recovery = state.recoveries.findLast((r) => r.target === 'player');
      if (recovery && recovery.connectedAt === null) recovery.connectedAt = performance.now();
      whep.onFailed = (why) => replacePlayer(whep, why);
      setState('whep');
      showUnmute();
      return;
    } catch (error) {
      if (player !== whep) return;
      player = null;
      if (error instanceof NotLive) {
        setState('waiting', 'The stream has not started yet');
        retryTimer = setTimeout(play, error.retryAfter * 1000);
        return;
      }
      console.warn('gblive: WebRTC playback failed, trying HLS:', error.code || '', error.message);
      state.error = { transport: 'whep', code: error.code || error.name, message: error.message };
      if (['timeout', 'ice_failed'].includes(error.code)) state.mediaFailure = mediaFailureOf(iceServers);
    }
  }
  const hls = new HlsPlayer($('video'), { roomId: state.room.id });
  player = hls;
  state.transport = 'hls';
  await hls.start();
  // WebRTC media could not connect: the page says why, and plays over HLS (plain HTTPS) meanwhile.
  setState('hls', state.mediaFailure ? `${MEDIA_FAILURES[state.mediaFailure]} Playing over HLS instead.` : '');
  showUnmute();
}

// A connected WHEP session lost its path (a network change): a new session replaces it, over whatever
// path works now (TURN over TCP when UDP went away). Viewers keep their socket, chat and count.
function replacePlayer(whep, why) {
  if (player !== whep || state.state === 'ended') return;
  console.warn('gblive: replacing the WHEP session:', why);
  noteRecovery('player', why);
  play().catch(fail);
}

function noteRecovery(target, reason) {
  state.mediaRestarts += 1;
  state.recoveries.push({ target, reason, startedAt: performance.now(), connectedAt: null });
  if (state.recoveries.length > 20) state.recoveries.shift();
}

function showUnmute() {
  const video = $('video');
  $('unmute').hidden = !video.muted;
}

// --- going live --------------------------------------------------------------------------

const VIDEO = { width: { ideal: 720 }, height: { ideal: 1280 }, frameRate: { ideal: 30 } };

async function openCamera(deviceId) {
  const video = deviceId ? { ...VIDEO, deviceId: { exact: deviceId } } : VIDEO;
  const stream = await navigator.mediaDevices.getUserMedia({ video });
  return stream.getVideoTracks()[0];
}

async function countCameras() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  state.cameras = devices.filter((device) => device.kind === 'videoinput').length;
}

function showPreview() {
  const preview = $('preview');
  const video = localStream && !state.cameraOff ? localStream.video : null;
  preview.srcObject = video ? new MediaStream([video]) : null;
  preview.hidden = !video;
}

async function goLive() {
  $('go-live').hidden = true;
  setState('joining', 'Starting the camera…');
  const stream = await navigator.mediaDevices.getUserMedia({ video: VIDEO, audio: true });
  localStream = { audio: stream.getAudioTracks()[0] || null, video: stream.getVideoTracks()[0] || null };
  state.cameraId = localStream.video ? localStream.video.getSettings().deviceId || null : null;
  state.micMuted = false;
  state.cameraOff = false;
  await countCameras();
  showPreview();
  const sending = stream.getTracks().map((track) => ({ kind: track.kind, track }));
  if (!(await publishOn(sending, false))) return;
  live = true;
  if (state.role === 'host') setState('publishing');
  render();
}

// Publishes `sending` ([{kind, track or null}]) on a new publisher connection; `restart` replaces the
// server's publisher connection of this participant, keeping its track ids (docs/protocol.md, "Media
// restart"). False when another connection replaced this one meanwhile.
async function publishOn(sending, restart) {
  const pc = new RTCPeerConnection(rtcConfig(iceServers));
  if (publisher) publisher.close();
  publisher = pc;
  const stream = new MediaStream(sending.map((s) => s.track).filter(Boolean));
  for (const { kind, track } of sending) pc.addTransceiver(track || kind, { direction: 'sendonly', streams: [stream] });
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const tracks = {};
  for (const transceiver of pc.getTransceivers()) {
    tracks[transceiver.mid] = { source: transceiver.receiver.track.kind === 'video' ? 'camera' : 'microphone' };
  }
  const publish = { type: 'publish', sdp: pc.localDescription.sdp, tracks };
  if (restart) publish.restart = true;
  const reply = await signaling.request(publish);
  if (pc !== publisher) return false;
  await pc.setRemoteDescription({ type: 'answer', sdp: reply.sdp });
  publishedIds = {};
  for (const track of reply.tracks || []) publishedIds[track.source] = track.id;
  watchPublisher(pc);
  return true;
}

// The host's publisher connection, as web/room watches its own: one that never connects says why
// (no spinner forever), one whose path fails once connected is replaced by a new one.
function watchPublisher(pc) {
  let connectedOnce = false;
  let grace = null;
  let done = false;
  const replace = (why) => {
    if (done || pc !== publisher || !live) return;
    done = true;
    clearTimeout(grace);
    stopSilence();
    console.warn('gblive: replacing the publisher connection:', why);
    noteRecovery('publisher', why);
    const sending = pc.getTransceivers().map((t) => ({ kind: t.receiver.track.kind, track: t.sender.track }));
    publishOn(sending, true).catch((error) => {
      console.warn('gblive: the publisher connection was not replaced:', error.code || '', error.message || '');
    });
  };
  const stopSilence = watchSilence(pc, {
    expected: () => pc === publisher && pc.getTransceivers().some((t) => t.sender.track),
    onSilent: (ms) => replace(`it received nothing for ${ms} ms`),
  });
  const timeout = setTimeout(() => {
    if (pc !== publisher || pc.connectionState === 'connected' || connectedOnce) return;
    if (state.recoveries.some((r) => r.target === 'publisher')) {
      replace('its replacement did not connect'); // the network is still away: try again
      return;
    }
    state.mediaFailure = mediaFailureOf(iceServers);
    console.warn('gblive: the publisher connection did not connect:', state.mediaFailure);
    setState(state.state, MEDIA_FAILURES[state.mediaFailure]);
  }, CONNECT_MS);
  pc.addEventListener('connectionstatechange', () => {
    if (pc !== publisher) return;
    clearTimeout(grace);
    if (pc.connectionState === 'connected') {
      connectedOnce = true;
      clearTimeout(timeout);
      const recovery = state.recoveries.findLast((r) => r.target === 'publisher');
      if (recovery && recovery.connectedAt === null) recovery.connectedAt = performance.now();
      if (state.mediaFailure) {
        state.mediaFailure = null;
        setState(state.state, '');
      }
    } else if (pc.connectionState === 'failed' && connectedOnce) {
      replace('it failed');
    } else if (pc.connectionState === 'disconnected' && connectedOnce) {
      grace = setTimeout(() => replace('it stopped'), 1000);
    }
  });
}

function senderOf(kind) {
  if (!publisher) return null;
  const transceiver = publisher.getTransceivers().find((t) => t.receiver.track && t.receiver.track.kind === kind);
  return transceiver ? transceiver.sender : null;
}

// Tells the server (which stops forwarding a muted track at once; viewers get `track_muted`).
async function announceMute(source, muted) {
  const trackId = publishedIds[source];
  if (!trackId || !signaling || !signaling.isOpen) return;
  try {
    await signaling.request({ type: 'mute', track_id: trackId, muted });
  } catch (error) {
    console.warn(`gblive: the server refused to ${muted ? 'mute' : 'unmute'} the ${source}:`, error.code, error.message);
  }
}

async function toggleMicrophone(muted = !state.micMuted) {
  if (!localStream || !localStream.audio) return state.micMuted;
  state.micMuted = Boolean(muted);
  localStream.audio.enabled = !state.micMuted; // silence even before the server hears of it
  render();
  await announceMute('microphone', state.micMuted);
  return state.micMuted;
}

// Camera off releases the device (a phone's camera light goes off); on opens it again.
async function toggleCamera(off = !state.cameraOff) {
  const stream = localStream;
  const sender = senderOf('video');
  if (!stream || !sender || Boolean(off) === state.cameraOff) return state.cameraOff;
  if (off) {
    state.cameraOff = true;
    await announceMute('camera', true);
    await sender.replaceTrack(null);
    if (stream.video) stream.video.stop();
    stream.video = null;
  } else {
    let track;
    try {
      track = await openCamera(state.cameraId);
    } catch (error) {
      console.warn('gblive: that camera did not open again; taking any:', error.name, error.message);
      track = await openCamera(null); // unplugged meanwhile, say
    }
    if (localStream !== stream) {
      track.stop(); // the live ended meanwhile
      return state.cameraOff;
    }
    state.cameraId = track.getSettings().deviceId || state.cameraId;
    await sender.replaceTrack(track);
    stream.video = track;
    state.cameraOff = false;
    await announceMute('camera', false);
  }
  showPreview();
  render();
  return state.cameraOff;
}

// The next camera the browser offers (a phone: front, back), or the one named, on the same
// sender: no renegotiation. The camera in use is released first: many phones cannot open both.
async function switchCamera(deviceId = null) {
  if (!localStream) return null;
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'videoinput');
  state.cameras = devices.length;
  const index = devices.findIndex((d) => d.deviceId === state.cameraId);
  const next = deviceId || (devices.length > 1 ? devices[(index + 1) % devices.length].deviceId : null);
  if (!next || next === state.cameraId) return state.cameraId;
  const sender = senderOf('video');
  if (state.cameraOff || !sender) {
    state.cameraId = next; // used when the camera comes on again
    render();
    return next;
  }
  const old = localStream.video;
  if (old) old.stop();
  let track;
  try {
    track = await openCamera(next);
  } catch (error) {
    console.warn('gblive: the other camera did not open:', error.name, error.message);
    track = await openCamera(state.cameraId); // back to the one we had
  }
  if (!localStream || senderOf('video') !== sender) {
    track.stop(); // the live ended meanwhile
    return state.cameraId;
  }
  await sender.replaceTrack(track);
  localStream.video = track;
  state.cameraId = track.getSettings().deviceId || next;
  showPreview();
  render();
  return state.cameraId;
}

function stopPublishing() {
  if (publisher) publisher.close();
  publisher = null;
  if (localStream) [localStream.audio, localStream.video].forEach((track) => track && track.stop());
  localStream = null;
  publishedIds = {};
  live = false;
  state.micMuted = false;
  state.cameraOff = false;
  showPreview();
}

// Ends the live: the page leaves the room (viewers see the host go) and joins it again,
// not live, so the host keeps the chat and the viewer count and may go live again.
async function endLive() {
  if (!live) return false;
  const old = signaling;
  signaling = null; // its close is no drop to recover from
  stopPublishing();
  setState('joining', 'Ending the live…');
  if (old && old.isOpen) {
    try {
      await old.request({ type: 'leave' }, 5000);
    } catch (error) {
      console.warn('gblive: leave got no answer:', error.code);
    }
  }
  if (old) old.close();
  await connect();
  $('go-live').hidden = state.role !== 'host';
  setState('ready', 'The live has ended. You are not live.');
  render();
  return true;
}

async function inviteCohost(identity) {
  try {
    await signaling.request({ type: 'cohost_invite', participant_id: identity });
    $('status').textContent = `Invited ${nameOf(identity)}`;
  } catch (error) {
    console.warn('gblive: invite failed', error.code);
  }
}

async function answerInvite(accept) {
  $('invite').hidden = true;
  state.invite = null;
  const reply = await signaling.request({ type: 'cohost_answer', accept });
  if (accept && reply.type === 'cohost_started') {
    state.role = 'cohost';
    state.self.grants = reply.grants;
    render();
    await goLive();
  }
}

// --- signaling ---------------------------------------------------------------------------

function onMessage(message) {
  switch (message.type) {
    case 'viewer_count':
      state.viewerCount = message.count;
      break;
    case 'participant_joined':
      state.hosts.set(message.participant.id, message.participant);
      break;
    case 'participant_left':
      state.hosts.delete(message.participant_id);
      offAir(message.reason === 'left' ? 'The live has ended' : 'The host is away');
      break;
    case 'track_published': {
      const host = state.hosts.get(message.participant_id);
      if (host) host.tracks.push(message.track);
      if (state.role !== 'host' && state.state === 'waiting') {
        // A player still connected gets the new host on the same connection (the server switches).
        if (player instanceof WhepPlayer && playerConnected()) setState('whep');
        else play();
      }
      break;
    }
    case 'track_unpublished': {
      const host = state.hosts.get(message.participant_id);
      if (host) host.tracks = host.tracks.filter((t) => t.id !== message.track_id);
      offAir();
      break;
    }
    case 'track_muted': {
      const host = state.hosts.get(message.participant_id);
      const track = host && host.tracks.find((t) => t.id === message.track_id);
      if (track) track.muted = message.muted;
      if (message.by_admin && state.self && message.participant_id === state.self.id) {
        // An administrator muted (or unmuted) one of ours: the server forwards nothing meanwhile.
        const source = Object.keys(publishedIds).find((key) => publishedIds[key] === message.track_id);
        if (source === 'microphone' && localStream && localStream.audio) {
          state.micMuted = message.muted;
          localStream.audio.enabled = !message.muted;
        }
      }
      break;
    }
    case 'reaction':
      state.reactions += message.count;
      floatHearts(message.count);
      break;
    case 'chat_message':
      addChat(message.message);
      break;
    case 'cohost_invite':
      state.invite = message.from;
      $('invite-text').textContent = `${message.from.name} invites you on stage`;
      $('invite').hidden = false;
      break;
    case 'cohost_answer':
      $('status').textContent = `${message.identity} ${message.accepted ? 'joins you on stage' : 'declined'}`;
      break;
    case 'room_closed':
    case 'removed':
      if (player) player.stop();
      setState('ended', message.type === 'room_closed' ? 'The live has ended' : 'You were removed');
      break;
    default:
      break;
  }
  render();
}

function playerConnected() {
  return Boolean(player && player.pc && player.pc.connectionState === 'connected');
}

// Nobody on stage sends video: a viewer waits (a host's tracks go before the host does, so
// `participant_left` may only change the words: the host ended the live, or dropped out).
function offAir(text = 'The host is away') {
  if (['whep', 'hls', 'waiting'].includes(state.state) && state.role === 'viewer' && !onAir()) setState('waiting', text);
}

// The socket ended (the room moved to another node, the node went away, the network
// dropped): join again through any node, then publish again (a host on air) or play on.
async function reconnect() {
  if (['ended', 'reconnecting'].includes(state.state)) return;
  const wasLive = live;
  const servedBy = state.room ? state.room.node_id : null;
  setState('reconnecting', 'Reconnecting…');
  stopPublishing();
  let delay = RECONNECT_FIRST_MS;
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, RECONNECT_MAX_MS);
    reconnects += 1;
    try {
      if (!(await connect())) return;
      break;
    } catch (error) {
      console.warn('gblive: reconnect failed:', error.code || error.name || '', error.message || '');
      if (error.code && ['token_expired', 'grant_missing', 'room_required'].includes(error.code)) {
        fail(error);
        return;
      }
    }
  }
  if (wasLive) {
    await goLive();
  } else if (state.role === 'host') {
    $('go-live').hidden = false;
    setState('ready', 'You are not live yet');
  } else if (state.room.node_id !== servedBy || !(player instanceof WhepPlayer) || !playerConnected()) {
    // The room moved to another node (its old node ended the player's session), or the player is gone.
    if (player instanceof WhepPlayer) player.abandon();
    player = null;
    if (onAir()) await play();
    else setState('waiting', 'The host is away'); // track_published starts the player
  } else {
    setState('whep'); // a blip of the socket only: the same node still plays to us
  }
}

// TURN credentials from `joined` / `ice_servers` (docs/protocol.md), renewed before they expire: the
// connections made later (a WHEP player restarting, going live) use the current ones.
let iceServers = [];
let iceTimer = null;

function setIceServers(message) {
  iceServers = message.ice_servers || [];
  clearTimeout(iceTimer);
  const delay = refreshDelayMs(message.ice_servers_expire_at);
  if (delay !== null) iceTimer = setTimeout(refreshIceServers, delay);
}

async function refreshIceServers() {
  const current = signaling;
  if (!current) return; // the next `joined` brings fresh ones
  try {
    const reply = await current.request({ type: 'ice_servers' });
    if (signaling === current) setIceServers(reply);
  } catch (error) {
    console.warn('gblive: ICE servers not renewed:', error.code, error.message);
    iceTimer = setTimeout(refreshIceServers, RETRY_REFRESH_MS);
  }
}

// Opens the socket and joins; false when the page plays over HLS without a socket (a full room).
async function connect() {
  const next = new Signaling(signalingUrl(window.location, roomOfToken(token)), {
    onMessage: (message) => {
      if (signaling === next) onMessage(message);
    },
    onClose: () => {
      if (signaling === next) reconnect().catch(fail);
    },
  });
  await next.open();
  let joined;
  try {
    joined = await next.request({ type: 'join', token, kind: 'live', auto_subscribe: false });
  } catch (error) {
    next.close();
    throw error;
  }
  if (signaling && signaling !== next) signaling.close();
  signaling = next;
  state.room = joined.room;
  state.self = joined.participant;
  state.viewerCount = joined.viewer_count || 0;
  state.hosts = new Map();
  for (const participant of joined.participants) state.hosts.set(participant.id, participant);
  state.role = joined.participant.grants.can_publish ? 'host' : 'viewer';
  conversationId = joined.chat ? joined.chat.conversation_id : null;
  setIceServers(joined);
  render();
  loadChat().catch((error) => console.warn('gblive: chat history failed', error.code));
  return true;
}

async function start() {
  if (!token) {
    setState('error', 'This page needs a link with a token (…/web/live/?token=…)');
    return;
  }
  setState('joining', 'Joining…');
  try {
    await connect();
  } catch (error) {
    // A full room (a huge audience) still plays over HLS when the link names the room's id.
    if (!(error instanceof SignalingError && error.code === 'room_full' && params.get('room_id'))) throw error;
    state.room = { id: params.get('room_id'), name: '' };
    const hls = new HlsPlayer($('video'), { roomId: state.room.id });
    player = hls;
    state.transport = 'hls';
    await hls.start();
    setState('hls');
    showUnmute();
    return;
  }
  if (state.role === 'host') {
    $('go-live').hidden = false;
    setState('ready', 'You are not live yet');
    if (params.get('autolive') === '1') await goLive();
  } else {
    await play();
  }
}

$('chat-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('chat-input');
  const content = input.value.trim();
  if (!content || !conversationId) return;
  input.value = '';
  sendChat(content).catch((error) => console.warn('gblive: chat send failed', error.code));
});
$('heart').addEventListener('click', () => sendHeart().catch((error) => console.warn('gblive: heart', error)));
$('go-live').addEventListener('click', () => goLive().catch(fail));
$('mic').addEventListener('click', () => toggleMicrophone().catch(fail));
$('camera').addEventListener('click', () => toggleCamera().catch(fail));
$('switch-camera').addEventListener('click', () => switchCamera().catch(fail));
$('end').addEventListener('click', () => endLive().catch(fail));
$('invite-accept').addEventListener('click', () => answerInvite(true).catch(fail));
$('invite-decline').addEventListener('click', () => answerInvite(false).catch(fail));
$('unmute').addEventListener('click', () => {
  $('video').muted = false;
  $('unmute').hidden = true;
});

function fail(error) {
  console.error('gblive:', error.code || error.name || '', error.message || error);
  state.error = { code: error.code || error.name, message: error.message };
  setState('error', error.message || 'Something went wrong');
}

window.gblive = {
  state,
  // The path the WHEP player's and the host's media take (ice.js candidatePath), and the socket's ICE servers.
  candidatePaths: async () => ({
    player: player instanceof WhepPlayer ? await candidatePath(player.pc) : null,
    publisher: await candidatePath(publisher),
  }),
  get iceServers() {
    return iceServers.map((s) => ({ ...s }));
  },
  get reconnects() {
    return reconnects;
  },
  sendHeart,
  sendChat,
  toggleMicrophone,
  toggleCamera,
  switchCamera,
  endLive,
  get localTracks() {
    return localStream ? { audio: localStream.audio, video: localStream.video } : null;
  },
  get publishedIds() {
    return { ...publishedIds };
  },
  inviteCohost,
  answerInvite,
  async stats() {
    return player && player.stats ? player.stats() : null;
  },
  get player() {
    return player;
  },
  get publisher() {
    return publisher;
  },
};

start().catch(fail);
