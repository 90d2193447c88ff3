// The participant grid: one tile per camera (or screen share), updated in place by key.
//
// update(tiles) takes the whole wanted list, each
//   {key, participantId, name, self, source, videoTrack, micMuted, cameraOff, speaking}
// and creates, updates or removes tile elements so the DOM matches it. A tile's
// <video> gets a new MediaStream only when its track changes, so nothing flickers.

export class Grid {
  constructor(container) {
    this.container = container;
    this.tiles = new Map(); // key -> {element, video, name, track}
  }

  update(wanted) {
    const keys = new Set(wanted.map((tile) => tile.key));
    for (const [key, tile] of this.tiles) {
      if (!keys.has(key)) {
        tile.video.srcObject = null;
        tile.element.remove();
        this.tiles.delete(key);
      }
    }
    wanted.forEach((spec, index) => {
      let tile = this.tiles.get(spec.key);
      if (!tile) {
        tile = createTile(spec);
        this.tiles.set(spec.key, tile);
      }
      updateTile(tile, spec);
      if (this.container.children[index] !== tile.element) {
        this.container.insertBefore(tile.element, this.container.children[index] || null);
      }
    });
    this.container.dataset.count = String(wanted.length);
  }

  videoFor(key) {
    const tile = this.tiles.get(key);
    return tile ? tile.video : null;
  }
}

function createTile(spec) {
  const element = document.createElement('figure');
  element.className = 'tile';
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  video.muted = true; // sound plays from separate <audio> elements; a tile never echoes
  const avatar = document.createElement('div');
  avatar.className = 'avatar';
  avatar.setAttribute('aria-hidden', 'true');
  const caption = document.createElement('figcaption');
  const name = document.createElement('span');
  name.className = 'name';
  const mic = document.createElement('span');
  mic.className = 'badge mic-muted';
  mic.textContent = 'mic off';
  mic.title = 'Microphone muted';
  const cam = document.createElement('span');
  cam.className = 'badge camera-off';
  cam.textContent = 'camera off';
  cam.title = 'Camera off';
  caption.append(name, mic, cam);
  element.append(video, avatar, caption);
  return { element, video, name, avatar, track: undefined, spec };
}

function updateTile(tile, spec) {
  const { element } = tile;
  element.dataset.key = spec.key;
  element.dataset.participantId = spec.participantId || '';
  element.dataset.source = spec.source;
  element.classList.toggle('self', Boolean(spec.self));
  element.classList.toggle('screen', spec.source === 'screen_share');
  element.classList.toggle('mirrored', Boolean(spec.self) && spec.source !== 'screen_share');
  setFlag(element, 'micMuted', spec.micMuted);
  setFlag(element, 'cameraOff', spec.cameraOff || !spec.videoTrack);
  setFlag(element, 'speaking', spec.speaking);
  const label = spec.source === 'screen_share' ? `${spec.name} (screen)` : spec.self ? `${spec.name} (you)` : spec.name;
  if (tile.name.textContent !== label) tile.name.textContent = label;
  const initial = (spec.name || '?').trim().charAt(0).toUpperCase() || '?';
  if (tile.avatar.textContent !== initial) tile.avatar.textContent = initial;
  element.setAttribute('aria-label', label);
  const track = spec.videoTrack || null;
  if (tile.track !== track) {
    tile.track = track;
    tile.video.srcObject = track ? new MediaStream([track]) : null;
    if (track) tile.video.play().catch(() => {}); // muted video may autoplay; a newer srcObject aborts this one
  }
}

function setFlag(element, name, on) {
  if (on) element.dataset[name] = 'true';
  else delete element.dataset[name];
}
