// ICE configuration shared by web/room and web/live: the ICE servers (TURN, with a credential
// for this session) come from the server's `joined` reply and `ice_servers` answers
// (docs/protocol.md, "ICE servers"); the server's own candidates are in its SDP.

// Test-only: `?ice=relay` makes a page use relayed (TURN) candidates only, the way a test proves
// the TURN path (docs/testing.md); `relay-udp`, `relay-tcp`, `relay-tls` also keep only the TURN
// URLs of that transport. Nobody else needs it: ICE picks the best path by itself.
const ICE_PARAM = new URLSearchParams(window.location.search).get('ice') || '';
export const FORCE_RELAY = ICE_PARAM.startsWith('relay');
const ONLY = { 'relay-udp': /^turn:.*transport=udp$/, 'relay-tcp': /^turn:.*transport=tcp$/, 'relay-tls': /^turns:/ }[ICE_PARAM];

function restricted(iceServers) {
  if (!ONLY) return iceServers;
  return iceServers
    .map((server) => ({ ...server, urls: [].concat(server.urls).filter((url) => ONLY.test(url)) }))
    .filter((server) => server.urls.length);
}

const REFRESH_SHARE = 0.8; // fresh TURN credentials are asked for after this share of their lifetime
const REFRESH_MIN_MS = 30000;

export function rtcConfig(iceServers) {
  const config = { iceServers: restricted(iceServers || []), bundlePolicy: 'max-bundle' };
  if (FORCE_RELAY) config.iceTransportPolicy = 'relay';
  return config;
}

// Milliseconds until credentials expiring at `expireAt` (unix seconds) should be renewed; null: never.
export function refreshDelayMs(expireAt) {
  if (!expireAt) return null;
  return Math.max(REFRESH_MIN_MS, (expireAt * 1000 - Date.now()) * REFRESH_SHARE);
}

export const RETRY_REFRESH_MS = REFRESH_MIN_MS;

// Why media cannot flow, as a page says it, when a connection never connected.
export const MEDIA_FAILURES = {
  no_turn: 'Media could not connect: UDP to the server seems blocked and no TURN server is configured.',
  turn_failed: 'Media could not connect, not even through the TURN relay. Check your network or firewall.',
};

// Which MEDIA_FAILURES code fits a connection that never connected with these ICE servers.
export function mediaFailureOf(iceServers) {
  const relayed = (iceServers || []).some((server) => [].concat(server.urls).some((url) => /^turns?:/.test(url)));
  return relayed ? 'turn_failed' : 'no_turn';
}

// Which path a connection's media takes: the selected candidate pair's local candidate type
// (host, srflx, prflx, relay), its protocol, and for a relay how this side reaches the TURN
// server (udp, tcp, tls); null before a pair is selected.
export async function candidatePath(pc) {
  if (!pc) return null;
  const report = await pc.getStats();
  let pair = null;
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) || pair;
  });
  if (!pair) {
    report.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
    });
  }
  const local = pair ? report.get(pair.localCandidateId) : null;
  if (!local) return null;
  return {
    candidateType: local.candidateType,
    protocol: local.protocol,
    relayProtocol: local.relayProtocol || null,
    bytesSent: pair.bytesSent || 0,
    bytesReceived: pair.bytesReceived || 0,
  };
}


// Everything a connection has received (RTP, RTCP, DTLS; not STUN), summed over its transports: what the
// silent-path check watches grow (liveness.js).
export async function receivedBytes(pc) {
  if (!pc) return 0;
  const report = await pc.getStats();
  let total = 0;
  report.forEach((s) => {
    if (s.type === 'transport') total += s.bytesReceived || 0;
  });
  return total;
}
