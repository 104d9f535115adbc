// DOM building, formatting, the API client and the event stream.
//
// Safety rule of the whole dashboard: text from the server (tenant names, pool names, labels,
// runner facts, webhook answers) only ever reaches the page as text nodes or attribute values
// (`el(...)`, `textContent`, `setAttribute`): nothing here ever parses a string as HTML.

export const $ = (id) => document.getElementById(id);

/** An element with attributes (`text` sets its text, `class` its class) and children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

const SVG = 'http://www.w3.org/2000/svg';

/** An SVG element, built like `el`. */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'text') node.textContent = String(value);
    else if (key === 'onclick') node.addEventListener('click', value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces every child of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** Micros as an amount of the tenant's currency: `1.25`. */
export function money(micros) {
  if (micros === null || micros === undefined) return '—';
  const value = Number(micros) / 1e6;
  return value.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 4 });
}

/** An RFC 3339 time as local date and time, or `—`. */
export function when(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

/** An RFC 3339 time relative to now: `3m ago`, `in 20m`. */
export function ago(iso) {
  if (!iso) return '';
  const ms = Date.now() - new Date(iso).getTime();
  if (Number.isNaN(ms)) return '';
  const abs = Math.abs(ms);
  const units = [[86400000, 'd'], [3600000, 'h'], [60000, 'm'], [1000, 's']];
  for (const [size, unit] of units) {
    if (abs >= size || unit === 's') {
      const n = Math.floor(abs / size);
      return ms >= 0 ? `${n}${unit} ago` : `in ${n}${unit}`;
    }
  }
  return '';
}

/** A `<time>` element: local time, with the exact instant in `datetime`. */
export function timeEl(iso) {
  if (!iso) return document.createTextNode('—');
  return el('time', { datetime: iso, title: iso, text: `${when(iso)} (${ago(iso)})` });
}

/** A lease state as a badge. */
export function stateBadge(state) {
  return el('span', { class: `state state-${String(state).replace(/[^a-z]/g, '')}`, text: state });
}

/** `#/t/<tenant>/<rest>` with each part encoded. */
export function link(tenant, ...rest) {
  return ['#', 't', tenant, ...rest].map((part, i) => (i === 0 ? part : encodeURIComponent(part))).join('/');
}

// ---- the API ---------------------------------------------------------------------------

const TOKEN_KEY = 'berth.token';

/** The signed-in token (this tab's session storage), or null. */
export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A problem+json answer (or a network failure, status 0). */
export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/** Called when the server no longer accepts the token (401). */
let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

/** Calls the API with the token as `Authorization: Bearer`; resolves to the JSON answer. */
export async function api(path, { method = 'GET', body, auth = token() } = {}) {
  const headers = { Accept: 'application/json' };
  if (auth) headers.Authorization = `Bearer ${auth}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    });
  } catch (err) {
    throw new ApiError(0, 'network', 'berth did not answer; is it running?');
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const error = new ApiError(response.status, json?.code ?? 'error', json?.detail ?? response.statusText);
    if (response.status === 401 && auth === token()) onUnauthorized(error);
    throw error;
  }
  return json;
}

/**
 * Follows a tenant's Server-Sent Events with `fetch()` (so the token travels in a header,
 * never in the URL), resuming with `Last-Event-ID` after a dropped connection. Calls
 * `onOpen()` when the stream's first message arrives (from then on no event is missed) and
 * `onEvent(type, message)` for each event. Returns a function that stops it.
 */
export function follow(tenant, { onOpen, onEvent, onLive }) {
  const controller = new AbortController();
  let last = null;
  let delay = 1000;
  const run = async () => {
    while (!controller.signal.aborted) {
      try {
        const headers = { Accept: 'text/event-stream', Authorization: `Bearer ${token()}` };
        if (last !== null) headers['Last-Event-ID'] = last;
        const response = await fetch(`/v1/tenants/${encodeURIComponent(tenant)}/events`, {
          headers,
          signal: controller.signal,
          cache: 'no-store',
          credentials: 'omit',
        });
        if (response.status === 401) {
          onUnauthorized(new ApiError(401, 'unauthorized', 'token refused'));
          return;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        let opened = false;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, '\n');
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const message = parseBlock(block);
            if (message.id !== null) last = message.id;
            if (!opened && (message.id !== null || message.data !== null)) {
              opened = true;
              delay = 1000;
              onLive?.(true);
              onOpen?.();
            }
            if (message.data !== null) {
              try {
                onEvent(message.event, JSON.parse(message.data));
              } catch (err) {
                console.warn('bad event', err);
              }
            }
          }
        }
      } catch (err) {
        if (controller.signal.aborted) return;
      }
      onLive?.(false);
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 30000);
    }
  };
  run();
  return () => controller.abort();
}

function parseBlock(block) {
  const message = { id: null, event: 'message', data: null };
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'id') message.id = value;
    else if (field === 'event') message.event = value;
    else if (field === 'data') message.data = message.data === null ? value : `${message.data}\n${value}`;
  }
  return message;
}

/** Runs `fn` at most once per `ms`, trailing. */
export function throttle(fn, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, ms);
  };
}
