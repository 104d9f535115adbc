// The operator's overview of every tenant, a tenant's ledger (paged) and its webhook
// endpoints with their deliveries.

import { $, el, fill, api, money, timeEl, link } from './dom.js';

const path = (tenant, rest = '') => `/v1/tenants/${encodeURIComponent(tenant)}${rest}`;

function spendCell(spend) {
  const spent = Number(spend.charged_micros) + Number(spend.reserved_micros);
  if (spend.cap_micros === null) return `${money(spent)} (no cap)`;
  const cap = Number(spend.cap_micros);
  const pct = cap > 0 ? Math.round((spent / cap) * 100) : 100;
  return `${money(spent)} of ${money(cap)} (${pct} %)`;
}

/** The admin's overview: every tenant with its counts, spend and what needs attention. */
export async function showOverview(ctx) {
  let left = false;
  ctx.onLeave(() => {
    left = true;
  });
  ctx.show('view-overview');
  const tbody = $('overview-table').tBodies[0];
  fill(tbody);
  let cursor = null;
  /** Reads a page of tenants; `fresh` reads the first again and swaps the rows in one step. */
  const load = async (fresh = false) => {
    const params = new URLSearchParams({ limit: '50' });
    if (cursor && !fresh) params.set('cursor', cursor);
    let page;
    try {
      page = await api(`/v1/overview?${params}`);
    } catch (err) {
      return ctx.say(err.message, true);
    }
    if (left) return;
    const rows = [];
    for (const t of page.items) {
      const flags = t.at_cap.map((c) => el('span', { class: 'flag', text: `at ${c.replace('_', ' ')} cap` }));
      if (t.dead_deliveries) flags.push(el('span', { class: 'flag', text: `${t.dead_deliveries} dead webhook deliveries` }));
      rows.push(el('tr', { 'data-tenant': t.tenant, 'data-attention': flags.length > 0 },
        el('th', { scope: 'row' }, el('a', { href: link(t.tenant), text: t.tenant })),
        el('td', { class: 'num', text: `${t.active} / ${t.max_active_leases}` }),
        el('td', { class: 'num', text: `${t.queued} / ${t.max_queued}` }),
        el('td', { class: 'num', text: t.ready }),
        el('td', { text: spendCell(t.day) }),
        el('td', { text: spendCell(t.month) }),
        el('td', {}, flags.length ? flags : el('span', { class: 'muted', text: 'ok' }))));
    }
    for (const name of page.unavailable ?? []) {
      rows.push(el('tr', { 'data-tenant': name },
        el('th', { scope: 'row' }, el('a', { href: link(name), text: name })),
        el('td', { colspan: 6, class: 'muted', text: 'status unavailable right now' })));
    }
    if (fresh) fill(tbody, rows);
    else tbody.append(...rows);
    cursor = page.next_cursor;
    $('overview-more').hidden = !cursor;
    $('overview-empty').hidden = tbody.rows.length > 0;
  };
  const more = () => load();
  $('overview-more').addEventListener('click', more);
  ctx.onLeave(() => $('overview-more').removeEventListener('click', more));
  await load(true);
  // Counts move on their own: read the first page again now and then while it is open.
  const timer = setInterval(() => load(true), 30000);
  ctx.onLeave(() => clearInterval(timer));
}

/** The ledger, oldest first, 50 rows a page. */
export async function showLedger(ctx, tenant) {
  let left = false;
  ctx.onLeave(() => {
    left = true;
  });
  const trail = []; // the `after` of each page shown before this one
  let after = '';
  let next = null;
  const load = async () => {
    const params = new URLSearchParams({ limit: '50' });
    if (after) params.set('after', after);
    let page;
    try {
      page = await api(path(tenant, `/ledger?${params}`));
    } catch (err) {
      if (err.status === 404) return ctx.missing(`No tenant "${tenant}" that this token may see.`);
      return ctx.say(err.message, true);
    }
    if (left) return;
    ctx.show('view-ledger');
    $('ledger-title').textContent = `Ledger of ${tenant}`;
    fill($('ledger-table').tBodies[0], page.items.map((row) => el('tr', {},
      el('td', { class: 'num', text: row.seq }),
      el('td', {}, timeEl(row.at)),
      el('td', { text: row.kind }),
      el('td', { class: 'num', text: money(row.amount_micros) }),
      el('td', { text: row.pool }),
      el('td', {}, el('a', { href: link(tenant, 'lease', row.lease_id) }, el('code', { text: row.lease_id }))))));
    next = page.next_cursor;
    $('ledger-empty').hidden = page.items.length > 0;
    $('ledger-next').disabled = !next;
    $('ledger-prev').disabled = trail.length === 0;
    $('ledger-first').disabled = trail.length === 0;
  };
  const handlers = {
    'ledger-next': () => {
      if (!next) return;
      trail.push(after);
      after = next;
      load();
    },
    'ledger-prev': () => {
      if (!trail.length) return;
      after = trail.pop();
      load();
    },
    'ledger-first': () => {
      trail.length = 0;
      after = '';
      load();
    },
  };
  for (const [id, fn] of Object.entries(handlers)) {
    $(id).addEventListener('click', fn);
    ctx.onLeave(() => $(id).removeEventListener('click', fn));
  }
  await load();
}

/** Webhook endpoints, each with its latest deliveries and a "send test" button. */
export async function showWebhooks(ctx, tenant) {
  let left = false;
  ctx.onLeave(() => {
    left = true;
  });
  let hooks;
  try {
    hooks = await api(path(tenant, '/webhooks'));
  } catch (err) {
    if (err.status === 404) return ctx.missing(`No tenant "${tenant}" that this token may see.`);
    if (err.status === 403) return ctx.missing('Webhooks are for a tenant:admin token (or the admin token).');
    return ctx.say(err.message, true);
  }
  if (left) return;
  ctx.show('view-webhooks');
  $('webhooks-title').textContent = `Webhooks of ${tenant}`;
  $('webhooks-empty').hidden = hooks.items.length > 0;
  const list = fill($('webhooks-list'));
  for (const hook of hooks.items) {
    const deliveries = el('tbody');
    const counts = el('span', { class: 'muted' });
    const refresh = async () => {
      try {
        const [fresh, page] = await Promise.all([
          api(path(tenant, `/webhooks/${encodeURIComponent(hook.name)}`)),
          api(path(tenant, `/webhooks/${encodeURIComponent(hook.name)}/deliveries?limit=20`)),
        ]);
        if (left) return;
        counts.textContent = `${fresh.pending} pending · ${fresh.dead} dead`;
        fill(deliveries, page.items.map((d) => el('tr', { 'data-delivery-id': d.id, 'data-status': d.status },
          el('td', { class: 'num', text: d.id }),
          el('td', { text: d.event_type }),
          el('td', {}, el('span', { class: `state state-${d.status === 'delivered' ? 'ready' : d.status === 'dead' ? 'failed' : 'queued'}`, text: d.status })),
          el('td', { class: 'num', text: d.attempts }),
          el('td', { text: [d.last_status, d.last_error].filter((x) => x !== null && x !== undefined).join(' · ') || '—' }),
          el('td', {}, timeEl(d.created_at)),
          el('td', {}, d.status === 'pending' ? timeEl(d.next_attempt_at) : timeEl(d.finished_at)))));
        if (!page.items.length) deliveries.append(el('tr', {}, el('td', { colspan: 7, class: 'muted', text: 'No deliveries kept.' })));
      } catch (err) {
        if (!left) ctx.say(err.message, true);
      }
    };
    const test = el('button', { type: 'button', class: 'secondary', text: 'Send test', 'aria-label': `Send a test event to ${hook.name}` });
    test.addEventListener('click', async () => {
      test.disabled = true;
      try {
        const delivery = await api(path(tenant, `/webhooks/${encodeURIComponent(hook.name)}/test`), { method: 'POST' });
        ctx.say(`Test delivery ${delivery.id} queued for ${hook.name}.`);
        await refresh();
        // Follow the attempt for a little while.
        for (let i = 0; i < 5 && !left; i += 1) {
          await new Promise((resolve) => setTimeout(resolve, 1500));
          await refresh();
        }
      } catch (err) {
        ctx.say(`Could not send a test: ${err.message}`, true);
      } finally {
        test.disabled = false;
      }
    });
    list.append(el('section', { class: 'card webhook', 'data-webhook': hook.name, 'aria-label': `Webhook ${hook.name}` },
      el('div', { class: 'head' }, el('h2', { text: hook.name }), test),
      el('dl', { class: 'facts' },
        el('dt', { text: 'Target' }), el('dd', {}, el('code', { text: hook.url })),
        el('dt', { text: 'Events' }), el('dd', { text: hook.events.length ? hook.events.join(', ') : 'all' }),
        el('dt', { text: 'Enabled' }), el('dd', { text: hook.enabled ? 'yes' : 'no' }),
        el('dt', { text: 'Deliveries' }), el('dd', {}, counts)),
      el('div', { class: 'table-wrap' }, el('table', {},
        el('caption', { class: 'sr-only', text: `Latest deliveries to ${hook.name}` }),
        el('thead', {}, el('tr', {}, ['#', 'Event', 'Status', 'Attempts', 'Last answer', 'Created', 'Finished / next try']
          .map((h) => el('th', { scope: 'col', text: h })))),
        deliveries))));
    refresh();
  }
}
