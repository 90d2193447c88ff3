// The silent-path check, shared by web/room and web/live: a connected media connection that receives
// nothing at all for SILENT_MS has lost its path (a network change), though Chromium says `disconnected`
// only after 5-8 s and `failed` after about 30 s.
//
// Nothing the users do makes a healthy connection to the node silent. The node's aiortc sends an RTCP
// sender report on each sending track every 0.5-1.5 s whether or not it forwards media (a paused video,
// a muted host), and an RTCP receiver report every 0.5-1.5 s for each track it receives (a muted track
// still sends RTP: silence, black frames). So the page watches the bytes its connection receives (RTP,
// RTCP, DTLS; not STUN) and only while `expected()` says media is negotiated; a connection that has
// received nothing yet is not judged (it is not connected in any useful sense: the connect timeout is).

import { receivedBytes } from './ice.js';

export const SILENT_MS = 2000;
const CHECK_MS = 250;

// Calls onSilent(ms) once when `pc`, connected and expected to carry media, received nothing for SILENT_MS.
// The clock restarts whenever the connection is not connected, not stable (renegotiating) or not expected
// to carry media. Returns a function that stops the check; it stops by itself once `pc` is closed.
export function watchSilence(pc, { expected, onSilent }) {
  let bytes = -1;
  let changedAt = performance.now();
  let busy = false;
  const timer = setInterval(async () => {
    if (pc.signalingState === 'closed') {
      clearInterval(timer);
      return;
    }
    if (busy) return;
    if (pc.connectionState !== 'connected' || pc.signalingState !== 'stable' || !expected()) {
      changedAt = performance.now();
      return;
    }
    busy = true;
    let now;
    let received;
    try {
      received = await receivedBytes(pc);
      now = performance.now();
    } catch {
      return; // closed meanwhile
    } finally {
      busy = false;
    }
    if (received !== bytes) {
      bytes = received;
      changedAt = now;
    } else if (bytes > 0 && now - changedAt >= SILENT_MS && pc.signalingState !== 'closed') {
      clearInterval(timer);
      onSilent(Math.round(now - changedAt));
    }
  }, CHECK_MS);
  return () => clearInterval(timer);
}
