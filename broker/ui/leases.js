// The tenant page (live leases, spend, queue) and the lease page (timeline, runner, cost),
// both kept current by the tenant's event stream.

import { $, el, fill, api, follow, money, timeEl, stateBadge, link, throttle } from './dom.js';
import { meter, spendChart, queueChart } from './charts.js';

const ENDED = ['released', 'expired', 'failed', 'canceled'];
const ACTIVE = ['provisioning', 'ready', 'releasing'];
/** How far along its life a lease is: an event never moves a row back. */
const RANK = { queued: 0, provisioning: 1, ready: 2, releasing: 3 };
const rank = (state) => (ENDED.includes(state) ? 4 : RANK[state] ?? 0);

const path = (tenant, rest = '') => `/v1/tenants/${encodeURIComponent(tenant)}${rest}`;

/** Whether `lease` passes the list's filters. */
function matches(lease, filter) {
  if (filter.state === 'active' && !ACTIVE.includes(lease.state)) return false;
  if (filter.state === 'ended' && !ENDED.includes(lease.state)) return false;
  if (filter.state && !['active', 'ended'].includes(filter.state) && lease.state !== filter.state) return false;
  if (filter.pool && lease.pool !== filter.pool) return false;
  if (filter.label) {
    const at = filter.label.indexOf(':');
    const key = filter.label.slice(0, at);
    const value = filter.label.slice(at + 1);
    if ((lease.labels ?? {})[key] !== value) return false;
  }
  return true;
}

/** Asks for confirmation, then releases the lease; resolves to the released lease or null. */
export function confirmRelease(ctx, tenant, lease, trigger) {
  const dialog = $('confirm');
  $('confirm-text').textContent =
    `Release ${lease.id} (pool ${lease.pool}, ${lease.state})? Its runner is destroyed and the job on it stops.`;
  return new Promise((resolve) => {
    const closed = async () => {
      dialog.removeEventListener('close', closed);
      trigger?.focus();
      if (dialog.returnValue !== 'ok') return resolve(null);
      try {
        const released = await api(path(tenant, `/leases/${encodeURIComponent(lease.id)}/release`), { method: 'POST' });
        ctx.say(`Lease ${released.id} is ${released.state}.`);
        resolve(released);
      } catch (err) {
        ctx.say(`Could not release ${lease.id}: ${err.message}`, true);
        resolve(null);
      }
    };
    dialog.returnValue = '';
    dialog.addEventListener('close', closed);
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}

function releasable(ctx, lease) {
  return ctx.may('leases:write') && !ENDED.includes(lease.state) && lease.state !== 'releasing'
    && lease.state !== 'warm';
}

/** The tenant page. */
export async function showTenant(ctx, tenant) {
  const filter = { state: '', pool: '', label: '' };
  const rows = new Map(); // lease id -> { lease, tr }
  let cursor = null;
  let left = false;
  ctx.onLeave(() => {
    left = true;
  });

  let status;
  try {
    status = await api(path(tenant, '/status'));
  } catch (err) {
    if (err.status === 404) return ctx.missing(`No tenant "${tenant}" that this token may see.`);
    return ctx.say(err.message, true);
  }
  if (left) return;
  ctx.show('view-tenant');
  $('tenant-title').textContent = tenant;
  $('filter-state').value = filter.state;
  $('filter-pool').value = '';
  $('filter-label').value = '';
  fill($('lease-table').tBodies[0]);

  const showStatus = (s) => {
    const counts = [['Active', `${s.active} / ${s.max_active_leases}`], ['Provisioning', s.provisioning],
      ['Ready', s.ready], ['Releasing', s.releasing], ['Queued', `${s.queued} / ${s.max_queued}`],
      ['Warm', `${s.warm_ready ?? 0} ready, ${s.warm_provisioning ?? 0} booting`]];
    fill($('tenant-counts'), counts.map(([k, v]) => el('div', {}, el('dt', { text: k }), el('dd', { text: v }))));
    fill($('spend-bars'), meter('Today', s.day), meter('This month', s.month),
      s.at_cap.length ? el('p', {}, s.at_cap.map((c) => el('span', { class: 'flag', text: `at ${c.replace('_', ' ')} cap` }))) : null);
  };
  showStatus(status);

  const refreshStatus = throttle(async () => {
    try {
      if (!left) showStatus(await api(path(tenant, '/status')));
    } catch (err) { /* the next event retries */ }
  }, 500);
  const refreshQueue = throttle(async () => {
    try {
      const history = await api(path(tenant, '/stats/queue?minutes=60'));
      if (!left) fill($('queue-chart'), queueChart(history));
    } catch (err) {
      if (!left) fill($('queue-chart'), el('p', { class: 'muted', text: err.message }));
    }
  }, 2000);
  const refreshSpend = throttle(async () => {
    try {
      const history = await api(path(tenant, '/stats/spend?days=30'));
      if (!left) fill($('spend-chart'), spendChart(history));
    } catch (err) {
      if (!left) fill($('spend-chart'), el('p', { class: 'muted', text: err.message }));
    }
  }, 2000);
  refreshQueue();
  refreshSpend();
  const minute = setInterval(refreshQueue, 60000);
  ctx.onLeave(() => clearInterval(minute));

  const row = (lease) => {
    const labels = Object.entries(lease.labels ?? {}).map(([k, v]) => el('span', { class: 'label', text: `${k}=${v}` }));
    const cost = lease.cost.charged_micros > 0 || ENDED.includes(lease.state)
      ? `${money(lease.cost.charged_micros)} charged`
      : `${money(lease.cost.reserved_micros)} reserved`;
    const actions = el('td');
    if (releasable(ctx, lease)) {
      const button = el('button', { type: 'button', class: 'secondary release', text: 'Release…', 'aria-label': `Release ${lease.id}` });
      button.addEventListener('click', async () => {
        const released = await confirmRelease(ctx, tenant, lease, button);
        if (released) upsert(released);
      });
      actions.append(button);
    }
    const tr = el('tr', { 'data-lease-id': lease.id, 'data-state': lease.state },
      el('td', {}, el('a', { href: link(tenant, 'lease', lease.id) }, el('code', { text: lease.id }))),
      el('td', {}, stateBadge(lease.state), lease.queue_position ? ` #${lease.queue_position}` : ''),
      el('td', { text: lease.pool }),
      el('td', {}, labels),
      el('td', {}, timeEl(lease.created_at)),
      el('td', { text: cost }),
      actions);
    return tr;
  };

  const upsert = (lease, { append = false } = {}) => {
    const known = rows.get(lease.id);
    if (known && rank(lease.state) < rank(known.lease.state)) return;
    const tbody = $('lease-table').tBodies[0];
    if (!matches(lease, filter)) {
      if (known) {
        known.tr.remove();
        rows.delete(lease.id);
      }
    } else {
      const tr = row(lease);
      if (known) known.tr.replaceWith(tr);
      else if (append) tbody.append(tr);
      else tbody.prepend(tr);
      rows.set(lease.id, { lease, tr });
    }
    $('lease-empty').hidden = rows.size > 0;
  };

  const query = () => {
    const params = new URLSearchParams({ limit: '50' });
    if (filter.state) params.set('state', filter.state);
    if (filter.pool) params.set('pool', filter.pool);
    if (filter.label) params.set('label', filter.label);
    if (cursor) params.set('cursor', cursor);
    return path(tenant, `/leases?${params}`);
  };
  const loadLeases = async (more = false) => {
    if (!more) {
      cursor = null;
      rows.clear();
      fill($('lease-table').tBodies[0]);
    }
    try {
      const page = await api(query());
      if (left) return;
      for (const lease of page.items) upsert(lease, { append: true });
      cursor = page.next_cursor;
      $('lease-more').hidden = !cursor;
      $('lease-empty').hidden = rows.size > 0;
    } catch (err) {
      ctx.say(err.status === 400 ? `Filter: ${err.message}` : err.message, true);
    }
  };

  const form = $('lease-filters');
  const onFilter = (event) => {
    event.preventDefault();
    filter.state = $('filter-state').value;
    filter.pool = $('filter-pool').value.trim();
    filter.label = $('filter-label').value.trim();
    if (filter.label && !filter.label.includes(':')) {
      ctx.say('A label filter reads key:value.', true);
      return;
    }
    ctx.say('');
    loadLeases();
  };
  const onMore = () => loadLeases(true);
  form.addEventListener('submit', onFilter);
  $('lease-more').addEventListener('click', onMore);
  ctx.onLeave(() => {
    form.removeEventListener('submit', onFilter);
    $('lease-more').removeEventListener('click', onMore);
  });

  // The list is read once the stream is open, so no change falls between the two.
  let opened = false;
  const stop = follow(tenant, {
    onOpen: () => {
      if (!opened) loadLeases();
      opened = true;
    },
    onLive: (live) => {
      $('live').hidden = !live;
    },
    onEvent: (type, message) => {
      if (type.startsWith('lease.') && message.data?.id) {
        upsert(message.data);
        refreshQueue();
        if (['lease.released', 'lease.expired', 'lease.failed'].includes(type)) refreshSpend();
      }
      refreshStatus();
    },
  });
  ctx.onLeave(stop);
  // A stream that cannot open (a proxy that buffers, berth overloaded) still gets a list.
  const fallback = setTimeout(() => {
    if (!opened && !left) {
      opened = true;
      loadLeases();
    }
  }, 3000);
  ctx.onLeave(() => {
    clearTimeout(fallback);
    $('live').hidden = true;
  });
}

/** The lease page. */
export async function showLease(ctx, tenant, id) {
  let left = false;
  ctx.onLeave(() => {
    left = true;
  });
  let lease;
  try {
    lease = await api(path(tenant, `/leases/${encodeURIComponent(id)}`));
  } catch (err) {
    if (err.status === 404) return ctx.missing(`No lease "${id}" of a tenant "${tenant}" that this token may see.`);
    return ctx.say(err.message, true);
  }
  if (left) return;
  ctx.show('view-lease');
  $('lease-back').setAttribute('href', link(tenant));

  const facts = (node, pairs) => fill(node, pairs.filter(([, v]) => v !== null && v !== undefined && v !== '')
    .flatMap(([k, v]) => [el('dt', { text: k }), el('dd', {}, v)]));

  const draw = () => {
    $('lease-title').textContent = lease.id;
    const steps = [
      ['Requested', lease.created_at],
      [lease.granted_at && lease.granted_at !== lease.created_at ? 'Granted (left the queue)' : 'Granted', lease.granted_at],
      ['Runner ready', lease.ready_at],
      ['Last heartbeat', lease.last_heartbeat_at],
      [lease.end_reason ? `Ended: ${lease.end_reason}` : 'Ended', lease.ended_at],
      ['Runner destroyed', lease.runner_destroyed_at],
    ].filter(([, at]) => at).sort((a, b) => new Date(a[1]) - new Date(b[1]));
    if (lease.state === 'queued') steps.push([`Waiting in the queue (position ${lease.queue_position ?? '?'}) until`, lease.wait_until]);
    else if (!ENDED.includes(lease.state) && lease.expires_at) steps.push(['Expires', lease.expires_at]);
    fill($('lease-timeline'), steps.map(([what, at]) => el('li', {}, el('strong', { text: what }), timeEl(at))));
    const runner = lease.runner;
    facts($('lease-runner'), runner ? [
      ['Provider', runner.provider], ['Id', runner.id], ['Address', runner.address],
      ...Object.entries(runner.metadata ?? {}).map(([k, v]) => [k, v]),
    ] : [['Runner', 'none yet']]);
    facts($('lease-cost'), [
      ['Price', `${money(lease.cost.hourly_price_micros)} / hour`],
      ['Reserved', money(lease.cost.reserved_micros)],
      ['Charged', money(lease.cost.charged_micros)],
    ]);
    facts($('lease-details'), [
      ['State', stateBadge(lease.state)], ['Pool', lease.pool], ['TTL', `${lease.ttl_s} s`],
      ['Idle timeout', lease.idle_timeout_s === null ? 'none' : `${lease.idle_timeout_s} s`],
      ['Labels', Object.keys(lease.labels ?? {}).length
        ? el('span', {}, Object.entries(lease.labels).map(([k, v]) => el('span', { class: 'label', text: `${k}=${v}` })))
        : 'none'],
      ['Provider calls', String(lease.provider_attempts)], ['Last provider error', lease.last_error],
    ]);
    $('lease-release').hidden = !releasable(ctx, lease);
  };
  draw();

  const button = $('lease-release');
  const onRelease = async () => {
    const released = await confirmRelease(ctx, tenant, lease, button);
    if (released && !left) {
      lease = released;
      draw();
    }
  };
  button.addEventListener('click', onRelease);
  ctx.onLeave(() => button.removeEventListener('click', onRelease));

  const stop = follow(tenant, {
    onOpen: async () => {
      try {
        const fresh = await api(path(tenant, `/leases/${encodeURIComponent(id)}`));
        if (!left && rank(fresh.state) >= rank(lease.state)) {
          lease = fresh;
          draw();
        }
      } catch (err) { /* keep what is shown */ }
    },
    onEvent: (type, message) => {
      if (type.startsWith('lease.') && message.data?.id === id && rank(message.data.state) >= rank(lease.state) && !left) {
        lease = message.data;
        draw();
      }
    },
  });
  ctx.onLeave(stop);
}
