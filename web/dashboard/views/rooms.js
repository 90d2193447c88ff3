// Live rooms: each room's participants, their tracks and live quality (bitrate, loss, RTT,
// simulcast layer, and the ICE path when the node reports one), with mute and remove through
// the moderator routes; a bitrate chart over time; the room's recordings (play, download).

import { call, del, get, post, query } from '../api.js';
import { bps, bytes, h, table, when } from '../dom.js';
import { History, lineChart } from '../chart.js';

const POLL_MS = 1000;

function lossOf(stats) {
  const received = stats.published.reduce((n, t) => n + t.packets_received, 0);
  const lost = stats.published.reduce((n, t) => n + t.packets_lost, 0);
  return received + lost > 0 ? lost / (received + lost) : null;
}

function layersOf(stats) {
  const layers = stats.subscribed.filter((s) => s.kind === 'video' && s.layer !== null).map((s) => s.layer);
  return layers.length ? layers.join(', ') : '–';
}

function figures(stats) {
  const loss = stats ? lossOf(stats) : null;
  const path = stats?.path_type ?? stats?.candidate_type ?? null;
  return [
    ['in', 'bitrate-in', stats ? bps(stats.bitrate_in_bps) : '–'],
    ['out', 'bitrate-out', stats ? bps(stats.bitrate_out_bps) : '–'],
    ['RTT', 'rtt', stats?.rtt_ms != null ? `${Math.round(stats.rtt_ms)} ms` : '–'],
    ['loss', 'loss', loss != null ? `${(loss * 100).toFixed(1)} %` : '–'],
    ['layer', 'layer', stats ? layersOf(stats) : '–'],
    ['path', 'path', path || '–'],
  ];
}

class RoomWatch {
  constructor(ctx, box, room) {
    this.ctx = ctx;
    this.box = box;
    this.room = room;
    this.cards = new Map();
    this.history = new History(90);
    this.rtt = new History(90);
    this.loss = new History(90);
    this.list = h('div', { id: 'participants' });
    this.chart = h('div', { id: 'bitrate-chart' });
    this.rttChart = h('div', { id: 'rtt-chart' });
    this.lossChart = h('div', { id: 'loss-chart' });
    this.recordings = h('div', { id: 'recordings' });
    this.timer = null;
    this.stopped = false;
  }

  async start() {
    const close = h('button', { type: 'button', class: 'danger', id: 'close-room' }, 'Close room');
    close.addEventListener('click', async () => {
      try {
        await del(`rooms/${this.room.id}`);
        this.ctx.go('rooms');
      } catch (error) {
        this.ctx.fail(error);
      }
    });
    const record = h('button', { type: 'button', id: 'record-room' }, 'Start recording');
    record.addEventListener('click', async () => {
      try {
        await post(`rooms/${this.room.id}/recordings`, {});
        await this.showRecordings();
      } catch (error) {
        this.ctx.fail(error);
      }
    });
    this.box.replaceChildren(
      h('h2', {}, `Room ${this.room.name}`),
      h('p', { class: 'muted' }, `${this.room.kind} · node ${this.room.node_id ?? '–'} · `, h('code', {}, this.room.id), ' ', close),
      h('h3', {}, 'Participants'), this.list,
      h('h3', {}, 'Bitrate received from each participant'), this.chart,
      h('h3', {}, 'Round-trip time and packet loss'), this.rttChart, this.lossChart,
      h('h3', {}, 'Recordings ', record), this.recordings);
    this.box.dataset.roomId = this.room.id;
    await this.showRecordings();
    await this.poll();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  async poll() {
    if (this.stopped) return;
    try {
      const detail = await get(`rooms/${this.room.id}`);
      const participants = detail.participants || [];
      const stats = await Promise.all(participants.map((p) =>
        get(`rooms/${this.room.id}/participants/${p.id}/stats`).catch(() => null)));
      if (this.stopped) return;
      this.render(participants, stats);
    } catch (error) {
      this.ctx.fail(error);
    }
    this.timer = setTimeout(() => this.poll(), POLL_MS);
  }

  render(participants, stats) {
    const seen = new Set();
    participants.forEach((participant, i) => {
      seen.add(participant.id);
      let card = this.cards.get(participant.id);
      if (!card) {
        card = this.card(participant);
        this.cards.set(participant.id, card);
        this.list.append(card.node);
      }
      card.update(participant, stats[i]);
      const name = participant.name || participant.identity;
      if (stats[i]) {
        this.history.add(name, stats[i].bitrate_in_bps ?? 0);
        if (stats[i].rtt_ms != null) this.rtt.add(name, stats[i].rtt_ms);
        const loss = lossOf(stats[i]);
        if (loss != null) this.loss.add(name, loss * 100);
      }
    });
    for (const [id, card] of this.cards) {
      if (!seen.has(id)) {
        card.node.remove();
        this.cards.delete(id);
      }
    }
    this.list.dataset.count = String(participants.length);
    this.chart.replaceChildren(lineChart(this.history.toSeries(), { format: bps, title: 'bitrate in' }));
    this.rttChart.replaceChildren(lineChart(this.rtt.toSeries(), { format: (v) => `${Math.round(v)} ms`, title: 'RTT' }));
    this.lossChart.replaceChildren(lineChart(this.loss.toSeries(), { format: (v) => `${v.toFixed(1)} %`, title: 'loss (since the track started)' }));
  }

  card(participant) {
    const remove = h('button', { type: 'button', class: 'remove danger' }, 'Remove');
    remove.addEventListener('click', async () => {
      try {
        await del(`rooms/${this.room.id}/participants/${encodeURIComponent(participant.id)}`);
        this.ctx.status(`${participant.identity} removed.`);
      } catch (error) {
        this.ctx.fail(error);
      }
    });
    const figs = h('div', { class: 'figures' });
    const tracks = h('div', { class: 'tracks' });
    const title = h('strong', { class: 'name' });
    const node = h('div', { class: 'participant', dataset: { participantId: participant.id, identity: participant.identity } },
      h('div', {}, title, ' ', remove), figs, tracks);
    let signature = '';
    const update = (p, stats) => {
      title.textContent = `${p.name || p.identity} (${p.identity}, ${p.state})`;
      figs.replaceChildren(...figures(stats).map(([label, cls, value]) => h('span', {}, `${label} `, h('b', { class: cls }, value))));
      if (stats) node.dataset.bitrateIn = String(stats.bitrate_in_bps ?? 0);
      if (stats) node.dataset.sampledAt = stats.sampled_at;
      const now = p.tracks.map((t) => `${t.id}:${t.muted}`).join(',');
      if (now !== signature) {
        signature = now;
        tracks.replaceChildren(...p.tracks.map((track) => this.trackRow(p, track)));
      }
    };
    return { node, update };
  }

  trackRow(participant, track) {
    const button = h('button', { type: 'button', class: 'mute' }, track.muted ? 'Unmute' : 'Mute');
    button.addEventListener('click', async () => {
      try {
        await post(`rooms/${this.room.id}/participants/${encodeURIComponent(participant.id)}/tracks/${encodeURIComponent(track.id)}/mute`,
          { muted: !track.muted });
      } catch (error) {
        this.ctx.fail(error);
      }
    });
    return h('div', { class: 'track', dataset: { trackId: track.id, kind: track.kind, source: track.source, muted: String(track.muted) } },
      h('span', { class: 'track-name' }, `${track.kind} · ${track.source}`), h('span', {}, track.muted ? 'muted' : 'live'), button);
  }

  async showRecordings() {
    const { recordings } = await get(`rooms/${this.room.id}/recordings`);
    if (recordings.length === 0) {
      this.recordings.replaceChildren(h('p', { class: 'muted' }, 'No recordings of this room.'));
      return;
    }
    this.recordings.replaceChildren(...recordings.map((rec) => recordingBlock(this.ctx, rec, () => this.showRecordings())));
  }
}

async function fileBlob(rec, file) {
  const response = await call('GET', `recordings/${rec.id}/files/${encodeURIComponent(file.name)}`, undefined, { raw: true });
  return URL.createObjectURL(await response.blob());
}

const RUNNING = ['waiting', 'recording', 'stopping'];

function recordingBlock(ctx, rec, refresh) {
  const player = h('div', { class: 'player' });
  const files = (rec.files || []).map((file) => {
    const attrs = { dataset: { file: file.name, kind: file.kind, status: file.status } };
    const who = file.participant_identity || 'composite';
    if (file.status !== 'completed') return { cells: [file.name, who, file.status, ''], attrs };
    const play = h('button', { type: 'button', class: 'play' }, 'Play');
    play.addEventListener('click', async () => {
      try {
        const tag = file.content_type.startsWith('audio/') ? 'audio' : 'video';
        player.replaceChildren(h(tag, { src: await fileBlob(rec, file), controls: true, autoplay: true, class: 'playback' }));
      } catch (error) {
        ctx.fail(error);
      }
    });
    const download = h('button', { type: 'button', class: 'download' }, 'Download');
    download.addEventListener('click', async () => {
      try {
        const anchor = h('a', { href: await fileBlob(rec, file), download: file.name });
        document.body.append(anchor);
        anchor.click();
        anchor.remove();
      } catch (error) {
        ctx.fail(error);
      }
    });
    return { cells: [file.name, who, bytes(file.size_bytes ?? 0), h('span', {}, play, ' ', download)], attrs };
  });
  const running = RUNNING.includes(rec.status);
  const remove = h('button', { type: 'button', class: 'delete danger', hidden: running }, 'Delete recording');
  const stop = h('button', { type: 'button', class: 'stop', hidden: !running }, 'Stop recording');
  stop.addEventListener('click', async () => {
    try {
      await post(`recordings/${rec.id}/stop`);
      await refresh();
    } catch (error) {
      ctx.fail(error);
    }
  });
  const block = h('div', { class: 'recording', dataset: { recordingId: rec.id, status: rec.status } },
    h('p', {}, `${when(rec.created_at)} · ${rec.status} · ${Math.round(rec.duration_seconds)} s · ${bytes(rec.size_bytes)} `, stop, remove),
    table(['File', 'Who', 'Size', ''], files), player);
  remove.addEventListener('click', async () => {
    if (!window.confirm('Delete this recording and its files for good?')) return;
    try {
      await del(`recordings/${rec.id}`);
      block.remove();
      ctx.status('Recording deleted.');
    } catch (error) {
      ctx.fail(error);
    }
  });
  return block;
}

export async function show(ctx, root, arg = {}) {
  const status = arg.status || 'open';
  const { rooms } = await get(`rooms${query({ status, limit: 100 })}`);
  const pick = h('select', { id: 'room-status', 'aria-label': 'Rooms' },
    ['open', 'closed', 'all'].map((s) => h('option', { value: s, selected: s === status }, `${s} rooms`)));
  pick.addEventListener('change', () => ctx.go('rooms', { status: pick.value }));
  const detail = h('section', { class: 'panel', id: 'room-detail', hidden: true });
  let watch = null;
  const open = async (room) => {
    if (watch) watch.stop();
    detail.hidden = false;
    watch = new RoomWatch(ctx, detail, room);
    await watch.start();
  };
  const rows = rooms.map((room) => {
    const button = h('button', { type: 'button', class: 'open' }, 'Open');
    button.addEventListener('click', () => open(room).catch(ctx.fail));
    return { cells: [h('span', { class: 'name' }, room.name), room.kind, room.status, h('code', {}, room.instance_id), when(room.created_at), button],
      attrs: { dataset: { roomId: room.id, name: room.name } } };
  });
  root.append(h('section', { class: 'panel', id: 'rooms' }, h('h2', {}, 'Rooms '), pick,
    rooms.length ? table(['Name', 'Kind', 'Status', 'Instance', 'Created', ''], rows, { id: 'room-table' })
      : h('p', { class: 'muted' }, 'No rooms.')), detail);
  if (arg.roomId) {
    const room = rooms.find((r) => r.id === arg.roomId);
    if (room) await open(room);
  }
  return () => watch?.stop();
}
