// Charts as inline SVG built element by element (no library, no inline style): spend against a
// cap, spend per day per pool, queue length over time. Each chart has a text equivalent in
// `aria-label`, and each bar a `<title>` for pointer users.

import { el, svg, money } from './dom.js';

/** Charged and reserved spend of a period against its cap, as a bar with a caption. */
export function meter(label, spend) {
  const charged = Number(spend.charged_micros);
  const reserved = Number(spend.reserved_micros);
  const spent = charged + reserved;
  const cap = spend.cap_micros === null ? null : Number(spend.cap_micros);
  const text = cap === null
    ? `${money(charged)} charged + ${money(reserved)} reserved, no cap`
    : `${money(spent)} of ${money(cap)} (${cap > 0 ? Math.round((spent / cap) * 100) : 100} %): ${money(charged)} charged + ${money(reserved)} reserved`;
  const node = el('div', {
    class: 'meter',
    'data-period': spend.period,
    'data-spent-micros': spent,
  });
  node.append(el('div', { class: 'meter-head' }, el('strong', { text: label }), el('span', { class: 'meter-text', text })));
  if (cap !== null) {
    const scale = Math.max(cap, 1);
    const w = (x) => Math.max(0, Math.min(100, (x / scale) * 100));
    const over = spent >= cap;
    const bar = svg('svg', { viewBox: '0 0 100 10', preserveAspectRatio: 'none', role: 'img', 'aria-label': `${label}: ${text}` },
      svg('rect', { x: 0, y: 0, height: 10, width: w(charged), class: over ? 'fill-over' : 'fill-charged' }),
      svg('rect', { x: w(charged), y: 0, height: 10, width: w(reserved), class: over ? 'fill-over' : 'fill-reserved' }));
    node.append(el('div', { class: 'meter-track' }, bar));
  }
  return node;
}

/** Stacked bars: what each pool was charged each day. */
export function spendChart(history) {
  const width = 1000;
  const height = 200;
  const left = 56;
  const bottom = 20;
  const days = history.days;
  const pools = history.pools;
  const colour = (pool) => `swatch-${pools.indexOf(pool) % 6}`;
  const max = Math.max(1, ...days.map((d) => Number(d.charged_micros)));
  const total = days.reduce((sum, d) => sum + Number(d.charged_micros), 0);
  const slot = (width - left) / Math.max(days.length, 1);
  const plot = height - bottom;
  const chart = svg('svg', {
    viewBox: `0 0 ${width} ${height}`,
    role: 'img',
    'aria-label': `Spend per day over the last ${days.length} days: ${money(total)} in all, at most ${money(max === 1 ? 0 : max)} a day`,
  });
  chart.append(
    svg('line', { x1: left, y1: plot, x2: width, y2: plot, class: 'axis' }),
    svg('text', { x: left - 4, y: 10, 'text-anchor': 'end', text: money(max === 1 ? 0 : max) }),
    svg('text', { x: left - 4, y: plot, 'text-anchor': 'end', text: '0' }),
  );
  days.forEach((day, i) => {
    let y = plot;
    const x = left + i * slot + slot * 0.15;
    for (const part of day.by_pool) {
      const h = (Number(part.charged_micros) / max) * (plot - 4);
      y -= h;
      chart.append(svg('rect', { x, y, width: slot * 0.7, height: Math.max(h, 0), class: colour(part.pool) },
        svg('title', { text: `${day.date} · ${part.pool}: ${money(part.charged_micros)}` })));
    }
    // A date every week, counted back from today (so labels never crowd).
    if ((days.length - 1 - i) % 7 === 0) {
      chart.append(svg('text', { x: x + slot * 0.35, y: height - 4, 'text-anchor': 'middle', text: day.date.slice(5) }));
    }
  });
  const legend = el('ul', { class: 'legend', 'aria-label': 'Pools' },
    pools.map((pool) => el('li', {}, el('span', { class: colour(pool), 'aria-hidden': 'true' }), pool)));
  return [chart, pools.length ? legend : el('p', { class: 'muted', text: 'Nothing charged in these days.' })];
}

/** A step line: the queue's length once a minute. */
export function queueChart(history) {
  const width = 300;
  const height = 130;
  const left = 28;
  const bottom = 18;
  const points = history.points;
  const values = points.map((p) => Number(p.queued));
  const max = Math.max(1, ...values);
  const now = values.length ? values[values.length - 1] : 0;
  const plot = height - bottom;
  const x = (i) => left + (i / Math.max(points.length - 1, 1)) * (width - left - 4);
  const y = (v) => plot - (v / max) * (plot - 8);
  let d = '';
  values.forEach((v, i) => {
    d += i === 0 ? `M${x(i)},${y(v)}` : `H${x(i)}V${y(v)}`;
  });
  return svg('svg', {
    viewBox: `0 0 ${width} ${height}`,
    role: 'img',
    'aria-label': `Queue length over the last hour: ${now} now, at most ${Math.max(...values, 0)}`,
    'data-queued-now': now,
  },
  svg('line', { x1: left, y1: plot, x2: width, y2: plot, class: 'axis' }),
  svg('text', { x: left - 4, y: 10, 'text-anchor': 'end', text: String(max) }),
  svg('text', { x: left - 4, y: plot, 'text-anchor': 'end', text: '0' }),
  svg('text', { x: left, y: height - 3, text: '−60 min' }),
  svg('text', { x: width - 4, y: height - 3, 'text-anchor': 'end', text: 'now' }),
  svg('path', { d, class: 'line' }));
}
