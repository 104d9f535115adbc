// The berth dashboard: sign-in, navigation and the hash router. Pages live in `pages.js`
// (overview, ledger, webhooks) and `leases.js` (tenant and lease pages); helpers in `dom.js`
// and `charts.js`. Routes:
//
//   #/                         the admin's overview, or the tenant token's own tenant
//   #/t/<tenant>               a tenant: live leases, spend, queue
//   #/t/<tenant>/lease/<id>    a lease
//   #/t/<tenant>/ledger        the ledger, paged
//   #/t/<tenant>/webhooks      webhook endpoints and their deliveries

import { $, el, fill, api, token, setToken, whenUnauthorized } from './dom.js';
import { showOverview, showLedger, showWebhooks } from './pages.js';
import { showTenant, showLease } from './leases.js';

/** What the current page started (an event stream, timers); stopped when the page changes. */
const session = { me: null, cleanup: [] };

/** What pages get: who is signed in, and how to register what must stop on leaving. */
const ctx = {
  get me() {
    return session.me;
  },
  /** Whether the token may do `scope` (`leases:read` < `leases:write` < `tenant:admin`). */
  may(scope) {
    const me = session.me;
    if (!me) return false;
    if (me.admin) return true;
    const order = ['leases:read', 'leases:write', 'tenant:admin'];
    return me.scopes.some((s) => order.indexOf(s) >= order.indexOf(scope));
  },
  onLeave(fn) {
    session.cleanup.push(fn);
  },
  say(text, error = false) {
    const status = $('status');
    status.textContent = text;
    status.classList.toggle('error', error);
    status.hidden = !text;
  },
  show(id) {
    show(id);
  },
  missing(text) {
    show('view-missing');
    $('missing-text').textContent = text;
  },
};

const VIEWS = ['view-signin', 'view-overview', 'view-tenant', 'view-lease', 'view-ledger', 'view-webhooks', 'view-missing'];

/** Shows one view and hides the others. */
function show(id) {
  for (const view of VIEWS) $(view).hidden = view !== id;
}

function leave() {
  for (const fn of session.cleanup.splice(0)) {
    try {
      fn();
    } catch (err) {
      console.warn(err);
    }
  }
  ctx.say('');
}

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  if (parts[0] !== 't' || parts.length < 2) return { page: 'home' };
  const tenant = parts[1];
  if (parts.length === 2) return { page: 'tenant', tenant };
  if (parts[2] === 'lease' && parts.length === 4) return { page: 'lease', tenant, id: parts[3] };
  if (parts[2] === 'ledger' && parts.length === 3) return { page: 'ledger', tenant };
  if (parts[2] === 'webhooks' && parts.length === 3) return { page: 'webhooks', tenant };
  return { page: 'unknown' };
}

function navigation(route) {
  const me = session.me;
  const items = [];
  if (me.admin) items.push(['Tenants', '#/', route.page === 'home']);
  // A tenant token's links are always its own tenant's (another tenant's page is refused).
  const tenant = me.admin ? route.tenant : me.tenant;
  if (tenant) {
    const base = `#/t/${encodeURIComponent(tenant)}`;
    const label = me.admin ? `Leases of ${tenant}` : 'Leases';
    items.push([label, base, route.page === 'tenant' || route.page === 'lease']);
    items.push(['Ledger', `${base}/ledger`, route.page === 'ledger']);
    if (ctx.may('tenant:admin')) items.push(['Webhooks', `${base}/webhooks`, route.page === 'webhooks']);
  }
  fill($('nav-links'), items.map(([text, href, current]) =>
    el('li', {}, el('a', { href, text, 'aria-current': current ? 'page' : null }))));
  $('nav').hidden = false;
  $('who-label').textContent = me.admin ? 'operator (admin token)' : `${me.tenant} · ${me.scopes.join(', ')}`;
  $('who').hidden = false;
}

async function render() {
  leave();
  if (!token()) {
    signedOut();
    return;
  }
  if (!session.me) {
    try {
      session.me = await api('/v1/whoami');
    } catch (err) {
      if (err.status === 401) return;
      ctx.say(err.message, true);
      return;
    }
  }
  const route = parseRoute();
  if (route.page === 'home' && !session.me.admin) {
    location.replace(`#/t/${encodeURIComponent(session.me.tenant)}`);
    return;
  }
  navigation(route);
  switch (route.page) {
    case 'home': return showOverview(ctx);
    case 'tenant': return showTenant(ctx, route.tenant);
    case 'lease': return showLease(ctx, route.tenant, route.id);
    case 'ledger': return showLedger(ctx, route.tenant);
    case 'webhooks': return showWebhooks(ctx, route.tenant);
    default: return ctx.missing('There is no such page.');
  }
}

function signedOut(message = '') {
  session.me = null;
  $('nav').hidden = true;
  $('who').hidden = true;
  show('view-signin');
  $('signin-error').textContent = message;
  $('signin-token').focus();
}

function signOut(message = '') {
  leave();
  setToken(null);
  signedOut(message);
}

async function signIn(event) {
  event.preventDefault();
  const input = $('signin-token');
  const candidate = input.value.trim();
  input.value = '';
  if (!candidate) {
    $('signin-error').textContent = 'Paste a token first.';
    return;
  }
  const button = event.submitter ?? null;
  if (button) button.disabled = true;
  try {
    session.me = await api('/v1/whoami', { auth: candidate });
    setToken(candidate);
    $('signin-error').textContent = '';
    if (location.hash && location.hash !== '#/') render();
    else if (session.me.admin) render();
    else location.hash = `#/t/${encodeURIComponent(session.me.tenant)}`;
    $('main').focus();
  } catch (err) {
    $('signin-error').textContent = err.status === 401
      ? 'berth does not know this token (or it was revoked).'
      : err.message;
  } finally {
    if (button) button.disabled = false;
  }
}

function start() {
  whenUnauthorized(() => signOut('berth no longer accepts this token: sign in again.'));
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', () => {
    signOut();
    history.replaceState(null, '', '#/');
  });
  window.addEventListener('hashchange', () => {
    render();
    $('main').focus({ preventScroll: true });
  });
  render();
}

start();
