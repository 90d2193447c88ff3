// The operator dashboard's shell: log in (a one-time link's code, or a pasted token), find out
// who we are (the operator, or an instance's administrator), and switch between the views.
// Each view is a module with show(ctx, root) that may return a function stopping its polling.

import { ApiError, get, redeemLoginCode, setToken, token } from './api.js';
import { clear } from './dom.js';
import * as audit from './views/audit.js';
import * as customers from './views/customers.js';
import * as instances from './views/instances.js';
import * as meeting from './views/meeting.js';
import * as nodes from './views/nodes.js';
import * as rooms from './views/rooms.js';
import * as usage from './views/usage.js';
import * as webhooks from './views/webhooks.js';

const VIEWS = { meeting, customers, instances, rooms, nodes, webhooks, usage, audit };

const $ = (id) => document.getElementById(id);
const state = { who: null, view: null, stop: null };
window.gbdash = state;

function status(text, kind = 'info') {
  $('status').textContent = text;
  document.body.dataset.status = kind;
}

function fail(error) {
  console.warn('dashboard:', error);
  const text = error instanceof ApiError ? `${error.code}: ${error.message}` : String(error.message || error);
  status(text, 'error');
}

const ctx = {
  status,
  fail,
  get who() { return state.who; },
  get operator() { return state.who?.kind === 'operator'; },
  go: (view, arg) => show(view, arg, { keepStatus: true }), // after an action: its message stays
};

async function show(name, arg, { keepStatus = false } = {}) {
  if (state.stop) {
    state.stop();
    state.stop = null;
  }
  state.view = name;
  document.body.dataset.view = name;
  for (const button of document.querySelectorAll('#nav button')) {
    button.toggleAttribute('aria-current', button.dataset.view === name);
    if (button.dataset.view === name) button.setAttribute('aria-current', 'page');
  }
  const root = clear($('view'));
  if (!keepStatus) status('');
  try {
    state.stop = (await VIEWS[name].show(ctx, root, arg)) || null;
  } catch (error) {
    fail(error);
  }
}

function showLogin(message) {
  document.body.dataset.phase = 'login';
  $('app').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('login-error').hidden = !message;
  $('login-error').textContent = message || '';
}

async function enter() {
  const who = await get('whoami');
  if (who.kind !== 'operator' && !who.grants.instance_admin) {
    setToken(null);
    throw new ApiError(403, 'grant_missing', 'this token does not administer an instance (it needs instance_admin)');
  }
  state.who = who;
  $('who').textContent = who.kind === 'operator' ? 'operator' : `instance ${who.instance_id} (${who.identity})`;
  for (const button of document.querySelectorAll('#nav [data-operator]')) button.hidden = who.kind !== 'operator';
  $('login').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
  document.body.dataset.phase = 'ready';
  await show('meeting');
}

async function start() {
  $('nav').addEventListener('click', (event) => {
    const view = event.target.closest('button')?.dataset.view;
    if (view) show(view);
  });
  $('logout').addEventListener('click', () => {
    setToken(null);
    if (state.stop) state.stop();
    state.who = null;
    showLogin('');
  });
  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    setToken($('token-input').value.trim());
    $('token-input').value = '';
    try {
      await enter();
    } catch (error) {
      setToken(null);
      showLogin(error instanceof ApiError ? `${error.code}: ${error.message}` : String(error));
    }
  });
  const code = new URLSearchParams(location.hash.slice(1)).get('login');
  if (code) {
    // Out of the address bar (and so of history and bookmarks) before anything else happens.
    history.replaceState(null, '', location.pathname);
    try {
      await redeemLoginCode(code);
    } catch (error) {
      showLogin(error instanceof ApiError ? `${error.code}: ${error.message}` : String(error));
      return;
    }
  }
  if (!token()) {
    showLogin('');
    return;
  }
  try {
    await enter();
  } catch (error) {
    setToken(null);
    showLogin(error instanceof ApiError ? `${error.code}: ${error.message}` : String(error));
  }
}

start();
