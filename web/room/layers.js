// Tells the server how each remote video is shown, so it sends the simulcast layer that
// fits (docs/protocol.md, track_settings): the size of the <video> element in device
// pixels, or paused when the page is hidden or the element is not laid out. The server
// picks the smallest layer at least that large; a paused video costs no bandwidth.
// Sizes are sent again whenever the layout changes (the element resizes, the window
// moves to a screen of another density, the page is zoomed).
//
// Device pixels count up to MAX_PIXEL_DENSITY per CSS pixel: a phone's 2.5-3 would ask
// for the top layer for a tile a few centimetres wide, where the eye cannot tell it from
// the middle one (LiveKit's adaptive stream caps the density the same way).
//
// sync(views) takes the wanted map trackId -> <video> element after every render.

const SETTLE_MS = 250; // resizes are batched: a window drag sends one message
export const MAX_PIXEL_DENSITY = 1.5;

// Device pixels per CSS pixel that a video's size is reported in.
export function pixelDensity(ratio = window.devicePixelRatio || 1) {
  return Math.min(ratio, MAX_PIXEL_DENSITY); // below 1 (zoomed out) the element really is that small
}

export class ViewReporter {
  constructor(send) {
    this.send = send; // (trackId, {width, height, paused}) => void
    this.elements = new Map(); // trackId -> element
    this.sent = new Map(); // trackId -> JSON of the last settings sent
    this.timer = null;
    this.observer = typeof ResizeObserver === 'function' ? new ResizeObserver(() => this._schedule()) : null;
    document.addEventListener('visibilitychange', () => this._schedule());
    window.addEventListener('resize', () => this._schedule()); // also fires when devicePixelRatio changes
  }

  sync(views) {
    for (const [trackId, element] of this.elements) {
      if (views.get(trackId) !== element) {
        if (this.observer) this.observer.unobserve(element);
        this.elements.delete(trackId);
        this.sent.delete(trackId);
      }
    }
    for (const [trackId, element] of views) {
      if (!element || this.elements.has(trackId)) continue;
      this.elements.set(trackId, element);
      if (this.observer) this.observer.observe(element);
    }
    this._schedule();
  }

  // Forget what was sent: a new subscriber connection (rejoin) starts from the defaults.
  reset() {
    this.sent.clear();
    this._schedule();
  }

  _schedule() {
    if (this.timer !== null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this._report();
    }, SETTLE_MS);
  }

  _report() {
    const hidden = document.visibilityState === 'hidden';
    const ratio = pixelDensity();
    for (const [trackId, element] of this.elements) {
      const box = element.getBoundingClientRect();
      const width = Math.round(box.width * ratio);
      const height = Math.round(box.height * ratio);
      const paused = hidden || width < 1 || height < 1;
      const settings = paused ? { paused: true } : { paused: false, width, height };
      const json = JSON.stringify(settings);
      if (this.sent.get(trackId) === json) continue;
      this.sent.set(trackId, json);
      this.send(trackId, settings);
    }
  }
}

// Simulcast for a camera: three layers when it is large enough, two for a small one,
// none below. rids q/h/f, lowest first (what the server and LiveKit expect).
export function cameraEncodings(track) {
  const settings = track.getSettings ? track.getSettings() : {};
  const width = settings.width || 0;
  if (width >= 640) {
    return [
      { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
      { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
      { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
    ];
  }
  if (width >= 320) {
    return [
      { rid: 'q', scaleResolutionDownBy: 2, maxBitrate: 150_000 },
      { rid: 'h', scaleResolutionDownBy: 1, maxBitrate: 500_000 },
    ];
  }
  return null;
}

// Dynacast: encode only the layers the server says someone watches.
export async function applyActiveLayers(sender, active) {
  const parameters = sender.getParameters();
  if (!parameters.encodings || parameters.encodings.length < 2) return false;
  let changed = false;
  for (const encoding of parameters.encodings) {
    const on = active.includes(encoding.rid);
    if (encoding.active !== on) {
      encoding.active = on;
      changed = true;
    }
  }
  if (changed) await sender.setParameters(parameters);
  return changed;
}
