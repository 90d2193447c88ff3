// The REST API as the dashboard uses it: the bearer token lives in sessionStorage (this tab
// only, gone when it closes), never in a URL; every error is the API's {error: {code, message}}.

const TOKEN_KEY = 'gbmedia.dashboard.token';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return new ApiError(response.status, body.error.code, body.error.message);
  } catch {
    // not JSON: fall through
  }
  return new ApiError(response.status, 'http_error', `HTTP ${response.status}`);
}

/** fetch with the token; JSON in and out. `path` is under /api/v1 unless it starts with '/'. */
export async function call(method, path, body = undefined, { raw = false } = {}) {
  const headers = {};
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const url = path.startsWith('/') ? path : `/api/v1/${path}`;
  const response = await fetch(url, init);
  if (!response.ok) throw await errorOf(response);
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

export const get = (path) => call('GET', path);
export const post = (path, body = {}) => call('POST', path, body);
export const patch = (path, body) => call('PATCH', path, body);
export const del = (path) => call('DELETE', path);

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

/** Trade the one-time code of a login link (#login=...) for the operator token. */
export async function redeemLoginCode(code) {
  const answer = await call('POST', '/dashboard/login', { code });
  setToken(answer.token);
  return answer;
}
