// The dialog debugger: /web/debugger/?token=<JWT>[&dialog=name][&instance_id=<uuid> for the operator]
//
// Loads a stored dialog's source, shows it with line numbers (a click on a number sets
// or clears a breakpoint), and drives a debug run through /api/v1/debugger: start,
// step, resume, stop, and the user's answers when the dialog waits at a HEAR. Every
// answer of the API is the run's context (state, line, variables, what the bot said),
// which the page shows: the current line highlighted, the variables panel, the
// conversation, and an error on the line where the run failed. A run still busy when
// its answer came is asked again until it pauses, waits or ends. Rename and Reformat
// change the source shown (through /api/v1/debugger/refactor; lines stay where they
// are, so breakpoints do too); a changed source is what the next Start debugs, and it
// is not stored. The engine menu picks the interpreter or the compiled engine for the
// next Start (the node's GBMEDIA_BOT_ENGINE when left at its first choice).

const params = new URLSearchParams(location.search);
const token = params.get('token') || '';
const instanceId = params.get('instance_id') || '';
const POLL_MS = 400;

const $ = (id) => document.getElementById(id);
const state = {
  source: '',
  dialog: '',
  breakpoints: new Set(),
  edited: false, // the source shown is a refactored one, not the stored dialog's
  run: null, // the last context the API gave
};

function url(path) {
  return instanceId ? `${path}?instance_id=${encodeURIComponent(instanceId)}` : path;
}

class ApiFailure extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = error?.code || 'http_error';
    this.details = error?.details || {};
  }
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(url(path), init);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new ApiFailure(resp.status, data.error);
  return data;
}

function setStatus(text) {
  $('status').textContent = text;
}

function renderSource() {
  const list = $('source');
  list.replaceChildren();
  state.source.split('\n').forEach((text, i) => {
    const line = i + 1;
    const item = document.createElement('li');
    item.dataset.line = String(line);
    const num = document.createElement('span');
    num.className = 'num';
    num.textContent = String(line);
    item.title = 'Click to set or clear a breakpoint';
    item.addEventListener('click', () => toggleBreakpoint(line)); // a click anywhere on the line
    const code = document.createElement('code');
    code.textContent = text || ' ';
    item.append(num, code);
    list.append(item);
  });
  paint();
}

function paint() {
  const run = state.run;
  for (const item of $('source').children) {
    const line = Number(item.dataset.line);
    item.classList.toggle('breakpoint', state.breakpoints.has(line));
    const current = run && run.state !== 'stopped' && run.line === line;
    item.classList.toggle('current', Boolean(current));
    const failed = run?.error && run.error.line === line;
    item.classList.toggle('error', Boolean(failed));
    item.querySelector('.errmsg')?.remove();
    if (failed) {
      const message = document.createElement('span');
      message.className = 'errmsg';
      message.textContent = run.error.message;
      item.append(message);
    }
  }
  const live = run && run.state !== 'stopped';
  $('start').disabled = !state.source || Boolean(live);
  $('step').disabled = !(run && run.state === 'break');
  $('resume').disabled = !(run && run.state === 'break');
  $('stop').disabled = !live;
  $('rename').disabled = !state.source || Boolean(live);
  $('reformat').disabled = !state.source || Boolean(live);
  const waiting = Boolean(run && run.waiting_for_input);
  $('chat-input').disabled = !waiting;
  $('send').disabled = !waiting;
  document.body.dataset.state = run ? (run.waiting_for_input ? 'waiting' : run.state) : 'idle';
  renderVariables(run ? run.variables : {});
}

function renderVariables(variables) {
  const body = $('variables').tBodies[0];
  body.replaceChildren();
  const names = Object.keys(variables || {}).sort();
  for (const name of names) {
    const row = body.insertRow();
    row.dataset.name = name;
    row.insertCell().textContent = name;
    row.insertCell().textContent = JSON.stringify(variables[name]);
  }
  $('no-variables').hidden = names.length > 0;
}

function say(text, who) {
  const item = document.createElement('li');
  item.className = who;
  item.textContent = text;
  $('chat').append(item);
  item.scrollIntoView({ block: 'end' });
}

function describe(run) {
  if (run.state === 'break') return `Paused at line ${run.line}${run.function ? ` in ${run.function}` : ''}`;
  if (run.waiting_for_input) return `Waiting for an answer at line ${run.line}`;
  if (run.state === 'running') return 'Running…';
  if (run.outcome === 'failed') return `Failed at line ${run.error?.line ?? '?'}: ${run.error?.message ?? ''}`;
  return `Ended (${run.outcome})`;
}

function show(run) {
  state.run = run;
  for (const text of run.messages || []) say(text, 'bot');
  for (const entry of run.logs || []) say(`[${entry.level}] ${entry.text}`, 'log');
  setStatus(describe(run));
  paint();
  if (run.state === 'running' && !run.waiting_for_input) setTimeout(poll, POLL_MS);
}

async function poll() {
  if (!state.run || state.run.state !== 'running' || state.run.waiting_for_input) return;
  await act(() => api('GET', `/api/v1/debugger/runs/${state.run.id}`));
}

async function act(call) {
  try {
    show(await call());
  } catch (error) {
    failed(error);
  }
}

function failed(error) {
  if (error instanceof ApiFailure && error.code === 'bot_syntax_error' && error.details.line) {
    state.run = { state: 'stopped', error: { line: error.details.line, message: error.details.message || error.message } };
    paint();
  }
  if (error instanceof ApiFailure && error.code === 'debug_run_not_found' && state.run) {
    state.run = { ...state.run, state: 'stopped', outcome: 'stopped' };
    paint();
  }
  setStatus(error.message);
}

async function toggleBreakpoint(line) {
  const enabled = !state.breakpoints.has(line);
  if (enabled) state.breakpoints.add(line);
  else state.breakpoints.delete(line);
  paint();
  const run = state.run;
  if (run && run.id && run.state !== 'stopped') {
    await act(() => api('POST', `/api/v1/debugger/runs/${run.id}/breakpoints`, { line, enabled }));
  }
}

async function load(name) {
  try {
    const dialog = await api('GET', `/api/v1/bots/dialogs/${encodeURIComponent(name)}`);
    state.dialog = dialog.name;
    state.source = dialog.source;
    state.edited = false;
    state.run = null;
    state.breakpoints.clear();
    $('chat').replaceChildren();
    renderSource();
    setStatus(`Loaded ${dialog.name}`);
  } catch (error) {
    failed(error);
  }
}

$('load-form').addEventListener('submit', (event) => {
  event.preventDefault();
  load($('dialog-name').value.trim());
});
$('start').addEventListener('click', () => {
  $('chat').replaceChildren();
  const body = { dialog: state.dialog, breakpoints: [...state.breakpoints], stop_on_entry: state.breakpoints.size === 0 };
  if (state.edited) body.source = state.source;
  if ($('engine').value) body.engine = $('engine').value; // else the node's GBMEDIA_BOT_ENGINE
  act(() => api('POST', '/api/v1/debugger/runs', body));
});

async function refactor(change) {
  try {
    const result = await api('POST', '/api/v1/debugger/refactor', { ...change, dialog: state.dialog, source: state.source });
    state.source = result.source;
    state.edited = true;
    state.run = null;
    renderSource();
    setStatus(change.action === 'rename' ? `Renamed ${change.old} to ${change.new}` : 'Reformatted');
  } catch (error) {
    failed(error);
  }
}

$('rename-form').addEventListener('submit', (event) => {
  event.preventDefault();
  refactor({ action: 'rename', old: $('rename-old').value.trim(), new: $('rename-new').value.trim() });
});
$('reformat').addEventListener('click', () => refactor({ action: 'reformat' }));
$('step').addEventListener('click', () => act(() => api('POST', `/api/v1/debugger/runs/${state.run.id}/step`)));
$('resume').addEventListener('click', () => act(() => api('POST', `/api/v1/debugger/runs/${state.run.id}/resume`)));
$('stop').addEventListener('click', () => act(() => api('DELETE', `/api/v1/debugger/runs/${state.run.id}`)));
$('chat-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('chat-input').value;
  if (!state.run || !state.run.waiting_for_input) return;
  $('chat-input').value = '';
  say(text, 'user');
  act(() => api('POST', `/api/v1/debugger/runs/${state.run.id}/messages`, { text }));
});

// For tests and the curious: what the page holds.
window.gbDebugger = {
  get run() {
    return state.run;
  },
  get breakpoints() {
    return [...state.breakpoints].sort((a, b) => a - b);
  },
};

if (!token) {
  $('notice').hidden = false;
  setStatus('No token');
} else if (params.get('dialog')) {
  $('dialog-name').value = params.get('dialog');
  load(params.get('dialog'));
}
