// The lab's player and dashboard. No framework: a <video>, a few tables and canvases,
// refreshed every second from /_lab/api/status (served by `cdn lab`, forwarded by the router).
// The auto-scaling panel polls /_lab/api/autoscale (hidden when the lab does not auto-scale).
//
// URL parameters: ?region=NAME&rendition=hls|mp4|webm&autoplay=1 choose and start a viewer;
// &hlsjs=1 plays HLS with hls.js even where the browser plays it natively.
// Over https:// (the lab's `[https]`), the page keeps the scheme: the video comes over HTTPS.
// window.labViewer holds what the viewer measured, window.labAutoscale what the auto-scaling
// panel has (tests read them).
'use strict';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const COLORS = ['#2563eb', '#16a34a', '#d97706', '#9333ea', '#dc2626', '#0891b2', '#4d7c0f', '#be185d'];

let info = null;        // static facts from the lab
let hls = null;         // hls.js instance, when used
let viewerId = 0;
let labClock = null;    // the lab's clock (status `t`, seconds) and when the page read it
const viewer = window.labViewer = {
  state: 'idle', region: null, rendition: null, edge: null, routeReason: null,
  currentTime: 0, ttffMs: null, stalls: 0, stallMs: 0, error: null, requests: [], player: null,
};

function text(el, s) { el.textContent = s; }
function fmt(x, digits) { return x == null || isNaN(x) ? '-' : x.toFixed(digits); }
function el(tag, content, cls) {
  const e = document.createElement(tag);
  if (content instanceof Node) e.appendChild(content); else e.textContent = content == null ? '' : content;
  if (cls) e.className = cls;
  return e;
}
function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) tr.appendChild(c instanceof Node && c.tagName === 'TD' ? c : el('td', c));
  return tr;
}

// The router's base URL in the scheme of this page (http:// unless the lab serves HTTPS and
// the page came over it).
function routerBase() {
  return location.protocol === 'https:' && info.https ? info.https.router : info.router;
}

function clientLink(region, edge) {
  return (info.links || []).find((l) => l.kind === 'client' && l.from === region && l.to === edge);
}

// ---- the player ----

function report() {
  if (!viewer.region) return;
  const r = info.regions.find((x) => x.name === viewer.region);
  fetch('/_lab/api/viewers', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-cdn-lab': 'player' },
    body: JSON.stringify({
      id: viewerId, region: viewer.region, city: r ? r.city : viewer.region,
      rendition: viewer.rendition, edge: viewer.edge, ttff_ms: viewer.ttffMs,
      stalls: viewer.stalls, stall_ms: Math.round(viewer.stallMs), error: viewer.error,
    }),
  }).catch(() => {});
}

async function route(path, region) {
  // The router explains its choice at /_route (same origin when the page comes through it).
  try {
    const r = await fetch(`/_route?region=${encodeURIComponent(region)}&path=${encodeURIComponent(path)}`);
    if (r.ok) return await r.json();
  } catch (e) { /* the page was opened on the lab API's own port */ }
  return null;
}

function loadHlsJs() {
  return new Promise((resolve, reject) => {
    if (window.Hls) return resolve(window.Hls);
    const s = document.createElement('script');
    s.src = '/_lab/vendor/hls.light.min.js';
    s.onload = () => resolve(window.Hls);
    s.onerror = reject;
    document.head.appendChild(s);
  });
}

async function play() {
  const region = $('region').value;
  const rend = info.renditions.find((r) => r[0] === $('rendition').value) || info.renditions[0];
  const [id, , path, mime] = rend;
  const video = $('video');
  if (hls) { hls.destroy(); hls = null; }
  video.removeAttribute('src');
  video.load();
  viewerId = Date.now() + Math.random();
  Object.assign(viewer, {
    state: 'loading', region, rendition: id, edge: null, routeReason: null, currentTime: 0,
    ttffMs: null, stalls: 0, stallMs: 0, error: null,
  });
  text($('ttff'), '…'); text($('stalls'), '0'); text($('state'), 'loading');
  const d = await route(path, region);
  if (d) {
    viewer.edge = d.edge || 'origin';
    viewer.routeReason = d.reason;
    const l = clientLink(region, d.edge);
    text($('edge'), `${viewer.edge} (${d.region || '-'}, ${d.reason})`);
    text($('link'), l ? `${l.from} → ${l.to}: RTT ${fmt(l.rtt_ms, 0)} ms, ${fmt(l.mbps, 0)} Mbit/s` : '-');
  }
  // The router over the scheme the page came with: an https:// page plays over HTTPS (h2 or,
  // where the browser takes the edges' Alt-Svc, HTTP/3), its links to the edges too.
  const src = `${routerBase()}${path}?region=${encodeURIComponent(region)}`;
  const t0 = performance.now();
  let stallStart = null;
  const onPlaying = () => {
    if (viewer.ttffMs == null) {
      viewer.ttffMs = Math.round(performance.now() - t0);
      text($('ttff'), `${viewer.ttffMs} ms`);
      report();
    }
    if (stallStart != null) { viewer.stallMs += performance.now() - stallStart; stallStart = null; }
    viewer.state = 'playing'; text($('state'), 'playing');
  };
  const onWaiting = () => {
    if (viewer.ttffMs == null || stallStart != null) return;
    viewer.stalls += 1; stallStart = performance.now();
    text($('stalls'), `${viewer.stalls} stalls`);
  };
  video.onplaying = onPlaying;
  video.onwaiting = onWaiting;
  video.ontimeupdate = () => {
    viewer.currentTime = video.currentTime;
    text($('position'), `${fmt(video.currentTime, 1)} s of ${fmt(video.duration, 1)} s`);
  };
  video.onended = () => { viewer.state = 'ended'; text($('state'), 'ended'); report(); };
  video.onerror = () => {
    const e = video.error;
    viewer.error = e ? `${e.code}: ${e.message || 'media error'}` : 'media error';
    viewer.state = 'error'; text($('state'), `error ${viewer.error}`); report();
  };
  const nativeHls = video.canPlayType('application/vnd.apple.mpegurl') !== '';
  // ?hlsjs=1 forces hls.js where HLS would play natively (the tests check that path too).
  const useHlsJs = !nativeHls || params.get('hlsjs') === '1';
  if (id === 'hls' && useHlsJs && window.MediaSource) {
    try {
      const Hls = await loadHlsJs();
      hls = new Hls();
      viewer.player = 'hls.js';
      hls.on(Hls.Events.ERROR, (_, data) => {
        if (data.fatal) { viewer.error = `hls.js: ${data.details}`; viewer.state = 'error'; }
      });
      hls.loadSource(src);
      hls.attachMedia(video);
    } catch (e) {
      viewer.error = 'hls.js did not load'; viewer.state = 'error';
    }
  } else {
    viewer.player = 'native';
    if (video.canPlayType(mime) === '' && id !== 'hls') {
      text($('state'), `this browser cannot play ${mime}`);
    }
    let url = src;
    if (id === 'hls') {
      // Some native HLS players (Chromium's) resolve segment URLs against the playlist's URL
      // before the router's redirect, so each segment would be routed without the region:
      // follow the redirect once and play from the edge's link, as hls.js does.
      try {
        const r = await fetch(src, { method: 'HEAD' });
        if (r.ok && r.url) url = r.url;
      } catch (e) { /* play from the router's URL */ }
    }
    video.src = url;
  }
  video.play().catch((e) => { text($('state'), `press play (${e.name})`); });
}

// ---- the dashboard ----

// Series are { color, values, dash }, one value a second: the last `opts.points` are drawn,
// newest at the right. With `opts.xRange: [from, to]` (seconds) a series also has `ts` (the time of
// each value, seconds), x follows time and the times are labelled underneath; `step` draws
// the series as steps, `offset` shifts it by a few pixels (so equal lines stay visible).
// `opts.ticks` are the values of the horizontal grid lines (default 0, half and the top).
function drawChart(canvas, series, opts) {
  const ctx = canvas.getContext('2d');
  const w = canvas.width, h = canvas.height, pad = 22;
  const xr = opts.xRange;
  const bottom = pad / 2 + (xr ? 12 : 0);
  const span = h - pad / 2 - bottom;
  ctx.clearRect(0, 0, w, h);
  let max = opts.max;
  if (max == null) {
    max = 0;
    for (const s of series) for (const v of s.values) if (v != null && v > max) max = v;
    max = max <= 0 ? 1 : max * 1.15;
  }
  const yOf = (v) => h - bottom - Math.min(v / max, 1) * span;
  ctx.strokeStyle = '#e6e8ee'; ctx.fillStyle = '#6b7488'; ctx.font = '10px sans-serif';
  for (const v of opts.ticks || [0, 0.5 * max, max]) {
    const y = yOf(v);
    ctx.beginPath(); ctx.moveTo(30, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(opts.fmt ? opts.fmt(v) : fmt(v, 1), 2, y + 3);
  }
  if (xr) {
    drawTimeSeries(ctx, series, xr, yOf, w, h);
  } else {
    const n = opts.points;
    for (const s of series) {
      const vals = s.values.slice(-n);
      ctx.strokeStyle = s.color; ctx.lineWidth = 1.6;
      ctx.setLineDash(s.dash ? [4, 3] : []);
      ctx.beginPath();
      let pen = false;
      vals.forEach((v, i) => {
        const x = 30 + (w - 32) * (i + n - vals.length) / (n - 1);
        if (v == null) { pen = false; return; }
        const y = yOf(v);
        if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        pen = true;
      });
      ctx.stroke();
    }
  }
  ctx.setLineDash([]);
}

function drawTimeSeries(ctx, series, [x0, x1], yOf, w, h) {
  const xOf = (t) => 30 + (w - 32) * (t - x0) / Math.max(x1 - x0, 1e-9);
  // Time labels: a round step giving at most about eight of them.
  const step = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600]
    .find((d) => (x1 - x0) / d <= 8) || 7200;
  ctx.textAlign = 'center';
  for (let t = Math.ceil(x0 / step) * step; t <= x1; t += step) {
    const x = xOf(t);
    ctx.beginPath(); ctx.moveTo(x, h - 13); ctx.lineTo(x, h - 10); ctx.stroke();
    ctx.fillText(`${t} s`, Math.min(Math.max(x, 42), w - 14), h - 1);
  }
  ctx.textAlign = 'start';
  ctx.save();
  ctx.beginPath(); ctx.rect(30, 0, w - 30, h); ctx.clip();
  for (const s of series) {
    const gap = s.gap || Infinity;
    ctx.strokeStyle = s.color; ctx.lineWidth = 1.6;
    ctx.setLineDash(s.dash ? [4, 3] : []);
    ctx.beginPath();
    let prev = null;  // [t, y] of the last point drawn
    s.values.forEach((v, i) => {
      const t = s.ts[i];
      if (v == null) { prev = null; return; }
      const x = xOf(t), y = yOf(v) + (s.offset || 0);
      if (prev && t - prev[0] <= gap) {
        if (s.step) ctx.lineTo(x, prev[1]);
        ctx.lineTo(x, y);
      } else {
        ctx.moveTo(x, y);
      }
      prev = [t, y];
    });
    ctx.stroke();
  }
  ctx.restore();
}

async function action(name, what) {
  // JSON and X-CDN-Lab: what the lab API requires of a POST (a cross-site form cannot send them).
  const r = await fetch(`/_lab/api/edges/${encodeURIComponent(name)}/${what}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-cdn-lab': 'dashboard' },
    body: '{}',
  });
  if (!r.ok) {
    const j = await r.json().catch(() => ({}));
    alert(`${what} ${name}: ${j.error || r.status}`);
  }
  refresh();
}

function cacheCell(cs, cls) {
  const td = el('td', cs, `cs ${cls}`);
  td.title = cs;
  return td;
}

function last(a) { for (let i = a.length - 1; i >= 0; i--) if (a[i] != null) return a[i]; return null; }

function render(st) {
  if (st.t != null) labClock = { t: st.t, at: performance.now() };
  const nodes = st.nodes || [];
  const pills = $('nodes'); pills.textContent = '';
  for (const n of nodes) {
    const down = !n.running || (n.router_view && n.router_view !== 'up');
    // A spare the autoscaler has not started is not a fault.
    const cls = n.spare && !n.running ? 'pill spare' : down ? 'pill down' : 'pill';
    pills.appendChild(el('span', n.name, cls));
  }
  const edges = nodes.filter((n) => n.kind === 'edge');
  const series = (st.series && st.series.edges) || {};
  const tb = $('edges').querySelector('tbody'); tb.textContent = '';
  const legend = $('legend'); legend.textContent = '';
  edges.forEach((e, i) => {
    const s = series[e.name] || { req_s: [], hit_ratio: [], origin_mbps: [], peer_mbps: [], tier_mbps: [] };
    // Tiered caching: shield (upper tier, fills for the other regions), lower, or flat.
    const role = ((st.info && st.info.tiers) || {})[e.name] || 'flat';
    const view = e.running ? (e.router_view || '?') : e.spare ? 'spare' : 'stopped';
    // Spares belong to the autoscaler: no buttons.
    let btn = '';
    if (!e.spare) {
      btn = el('button', e.running ? 'stop' : 'start');
      btn.onclick = () => action(e.name, e.running ? 'stop' : 'start');
    }
    const hit = last(s.hit_ratio);
    tb.appendChild(row([
      el('td', e.spare ? `${e.name} (spare)` : e.name), el('td', e.region),
      el('td', role === 'flat' ? '-' : role),
      el('td', view, view === 'up' ? 'up' : view === 'spare' ? 'spare' : 'down'),
      el('td', fmt(last(s.req_s), 1), 'num'),
      el('td', hit == null ? '-' : `${Math.round(hit * 100)}%`, 'num'),
      el('td', fmt(last(s.origin_mbps), 2), 'num'), el('td', fmt(last(s.peer_mbps), 2), 'num'),
      el('td', role === 'lower' ? fmt(last(s.tier_mbps || []), 2) : '-', 'num'),
      el('td', btn),
    ]));
    const sw = el('i', ''); sw.style.background = COLORS[i % COLORS.length];
    const item = el('span', sw); item.appendChild(document.createTextNode(e.name));
    legend.appendChild(item);
  });
  const pick = (k) => edges.map((e, i) => ({
    color: COLORS[i % COLORS.length], values: (series[e.name] || {})[k] || [],
  }));
  // Up to two minutes; fewer while the lab is young, so the lines fill the chart.
  const points = Math.max(30, Math.min(120, ((st.series && st.series.t) || []).length));
  drawChart($('chart-req'), pick('req_s'), { points });
  drawChart($('chart-hit'), pick('hit_ratio'), { points, max: 1, fmt: (v) => `${Math.round(v * 100)}%` });
  const origin = pick('origin_mbps');
  origin.push({ color: '#1d2330', dash: true, values: (st.series && st.series.origin_mbps) || [] });
  drawChart($('chart-origin'), origin, { points });

  // Requests on this viewer's links.
  const mine = (st.exchanges || []).filter((x) => x.region === viewer.region).slice(0, 8);
  viewer.requests = mine;
  const sb = $('segments').querySelector('tbody'); sb.textContent = '';
  for (const x of mine) {
    const cs = x.cache_status || '-';
    const cls = /;\s*hit/.test(cs) ? 'hit' : /fwd=/.test(cs) ? 'miss' : '';
    sb.appendChild(row([
      el('td', x.path.split('?')[0].split('/').slice(-2).join('/')), el('td', x.edge),
      el('td', String(x.status)), cacheCell(cs, cls),
      el('td', fmt(x.bytes / 1024, x.bytes < 10240 ? 1 : 0), 'num'), el('td', fmt(x.ms, 0), 'num'),
    ]));
  }
  const vb = $('viewers').querySelector('tbody'); vb.textContent = '';
  for (const v of (st.viewers || []).slice(0, 8)) {
    vb.appendChild(row([
      el('td', v.city || v.region), el('td', v.rendition), el('td', v.edge || '-'),
      el('td', v.ttff_ms == null ? (v.error || '-') : `${v.ttff_ms} ms`, 'num'),
      el('td', String(v.stalls || 0), 'num'),
    ]));
  }
}

async function refresh() {
  try {
    const r = await fetch('/_lab/api/status', { cache: 'no-store' });
    if (r.ok) render(await r.json());
  } catch (e) { /* the lab is restarting or gone */ }
}

// ---- auto-scaling ----
// GET /_lab/api/autoscale every second, with ?since= the newest at_ms held so only new history
// points and events come back. {"enabled": false}, a 404 (an older lab) or an error hides the
// panel. window.labAutoscale holds what the page has (tests read it).
// The autoscaler's clock (at_ms) starts when the autoscaler does, once the lab's edges are
// healthy; the page shows times on the lab's clock (as the other charts), adding `offsetMs`
// (the response's `lab_offset_ms`).

const AUTOSCALE_POINTS = 600;   // history points kept per region (10 min at one a second)
const AUTOSCALE_EVENTS = 300;   // events kept
const AUTOSCALE_SHOWN = 30;     // events shown
const autoscale = window.labAutoscale = {
  enabled: null, error: null, startedUnixMs: null, nowMs: 0, intervalMs: 1000, since: null,
  offsetMs: null, regions: [], history: {}, events: [],
};
const regionColors = {};        // region -> colour, in the order first seen

function regionColor(name) {
  if (!(name in regionColors)) {
    regionColors[name] = COLORS[Object.keys(regionColors).length % COLORS.length];
  }
  return regionColors[name];
}

function swatch(color) {
  const i = el('i', '', 'sw'); i.style.background = color;
  return i;
}

function resetAutoscale() {
  Object.assign(autoscale, {
    startedUnixMs: null, nowMs: 0, since: null, offsetMs: null, regions: [], history: {}, events: [],
  });
}

function showAutoscale(on) { $('autoscale').hidden = !on; }

// Adds a response to what the page has; `since` is what the request asked for.
function mergeAutoscale(a, since) {
  const newer = (at) => since == null || at > since;
  let maxAt = since == null ? -1 : since;
  autoscale.startedUnixMs = a.started_unix_ms;
  autoscale.nowMs = a.now_ms;
  // The lab says how far its clock is ahead of the autoscaler's (`lab_offset_ms`); an older
  // lab does not, and then the offset is estimated from the two clocks as the page read them,
  // kept steady unless a fresh estimate is off by more than a second.
  if (a.lab_offset_ms != null) {
    autoscale.offsetMs = a.lab_offset_ms;
  } else if (labClock && performance.now() - labClock.at < 5000) {
    const labMs = labClock.t * 1000 + performance.now() - labClock.at;
    const est = Math.max(0, Math.round(labMs - a.now_ms));
    if (autoscale.offsetMs == null || Math.abs(est - autoscale.offsetMs) > 1000) {
      autoscale.offsetMs = est;
    }
  }
  autoscale.intervalMs = a.interval_ms || 1000;
  autoscale.regions = a.regions || [];
  for (const r of autoscale.regions) {
    regionColor(r.region);
    const h = autoscale.history[r.region] || (autoscale.history[r.region] = []);
    for (const p of r.history || []) {
      if (!newer(p.at_ms)) continue;
      h.push(p);
      maxAt = Math.max(maxAt, p.at_ms);
    }
    if (h.length > AUTOSCALE_POINTS) h.splice(0, h.length - AUTOSCALE_POINTS);
  }
  for (const e of a.events || []) {
    if (!newer(e.at_ms)) continue;
    autoscale.events.push(e);
    maxAt = Math.max(maxAt, e.at_ms);
  }
  if (autoscale.events.length > AUTOSCALE_EVENTS) {
    autoscale.events.splice(0, autoscale.events.length - AUTOSCALE_EVENTS);
  }
  if (maxAt >= 0) autoscale.since = maxAt;
}

// Seconds on the lab's clock of a time on the autoscaler's.
function labSecs(atMs) { return (atMs + (autoscale.offsetMs || 0)) / 1000; }

function renderAutoscale() {
  const tb = $('autoscale-regions').querySelector('tbody'); tb.textContent = '';
  const legend = $('autoscale-legend'); legend.textContent = '';
  const series = [];
  let top = 1;
  const n = autoscale.regions.length;
  autoscale.regions.forEach((r, i) => {
    const c = r.config || {};
    const color = regionColor(r.region);
    const h = autoscale.history[r.region] || [];
    const p = h.length ? h[h.length - 1] : null;
    const name = el('td', swatch(color)); name.appendChild(document.createTextNode(r.region));
    const edges = r.edges || [];
    const serving = el('td', `${edges.length}${edges.length ? `: ${edges.join(', ')}` : ''}`, 'names');
    const draining = r.draining || [];
    const util = p ? p.utilisation_pct : null;
    const target = c.target_utilisation_pct;
    const utilCell = el('td', `${util == null ? '-' : `${Math.round(util)}%`} / ${fmt(target, 0)}%`,
      util != null && util > target ? 'num over' : 'num');
    const tr = row([
      name, serving, el('td', String(r.starting || 0), 'num'),
      el('td', `${draining.length}${draining.length ? ` (${draining.join(', ')})` : ''}`, 'num names'),
      el('td', `${c.min_edges}–${c.max_edges}`, 'num'),
      el('td', p ? String(p.wanted) : '-', 'num'),
      el('td', fmt(p && p.rate, 1), 'num'), utilCell,
    ]);
    tr.dataset.region = r.region;
    tr.title = `${fmt(c.capacity_rps, 0)} req/s per edge` +
      (c.inflight_per_edge == null ? '' : `, ${fmt(c.inflight_per_edge, 0)} in flight per edge`) +
      `; cooldowns: out ${fmt(c.scale_out_cooldown / 1000, 0)} s, in ${fmt(c.scale_in_cooldown / 1000, 0)} s`;
    tb.appendChild(tr);

    const ts = h.map((q) => labSecs(q.at_ms));
    const offset = (i - (n - 1) / 2) * 1.5;   // equal counts in two regions stay apart
    const gap = Math.max(5, 5 * autoscale.intervalMs / 1000);   // a longer silence breaks the line
    series.push({ color, ts, values: h.map((q) => q.wanted), dash: true, step: true, offset, gap });
    series.push({ color, ts, values: h.map((q) => q.edges), step: true, offset, gap });
    for (const q of h) top = Math.max(top, q.edges, q.wanted);
    top = Math.max(top, c.min_edges || 0, edges.length + (r.starting || 0) + draining.length);
    legend.appendChild(el('span', swatch(color))).appendChild(document.createTextNode(r.region));
  });
  const dash = el('span', el('i', '', 'dash')); dash.appendChild(document.createTextNode('wanted'));
  legend.appendChild(dash);

  // x: the kept history (up to ten minutes), at least 30 s wide so a young lab's lines grow.
  let first = Infinity, lastT = -Infinity;
  for (const s of series) if (s.ts.length) {
    first = Math.min(first, s.ts[0]); lastT = Math.max(lastT, s.ts[s.ts.length - 1]);
  }
  if (first === Infinity) { first = lastT = labSecs(autoscale.nowMs); }
  const x1 = Math.max(lastT, first + 30);
  const every = Math.max(1, Math.ceil(top / 5));
  const ticks = [];
  for (let v = 0; v <= top; v += every) ticks.push(v);
  drawChart($('chart-edges'), series, {
    xRange: [first, x1], max: top + 0.5, ticks, fmt: (v) => String(v),
  });

  const eb = $('autoscale-events').querySelector('tbody'); eb.textContent = '';
  const shown = autoscale.events.map((e, i) => [e, i])
    .sort((a, b) => b[0].at_ms - a[0].at_ms || b[1] - a[1]).slice(0, AUTOSCALE_SHOWN);
  for (const [e] of shown) {
    const change = e.from != null && e.to != null ? `${e.from} → ${e.to}` : e.edge || '-';
    const region = el('td', swatch(regionColor(e.region)));
    region.appendChild(document.createTextNode(e.region));
    const tr = row([
      el('td', fmt(labSecs(e.at_ms), 1), 'num'), region, el('td', e.kind, `ev-${e.kind}`),
      el('td', change), el('td', e.reason, 'reason'),
    ]);
    tr.dataset.kind = e.kind;
    eb.appendChild(tr);
  }
  if (!shown.length) {
    const td = el('td', 'no scaling yet', 'k'); td.colSpan = 5;
    eb.appendChild(row([td]));
  }
}

async function pollAutoscale() {
  let delay = 1000;
  try {
    const since = autoscale.since;
    const url = since == null ? '/_lab/api/autoscale' : `/_lab/api/autoscale?since=${since}`;
    const r = await fetch(url, { cache: 'no-store' });
    if (r.status === 404) {
      // An older lab without the endpoint: look again now and then (it may be restarted).
      Object.assign(autoscale, { enabled: false, error: 'not found' });
      showAutoscale(false);
      delay = 10000;
    } else if (!r.ok) {
      throw new Error(`HTTP ${r.status}`);
    } else {
      const a = await r.json();
      autoscale.error = null;
      if (!a.enabled) {
        resetAutoscale();
        autoscale.enabled = false;
        showAutoscale(false);   // (the lab starts its autoscaler once its edges are healthy)
      } else if (since != null && a.started_unix_ms !== autoscale.startedUnixMs) {
        // A new autoscaler (the lab restarted): its clock started over, so fetch everything.
        resetAutoscale();
        delay = 0;
      } else {
        autoscale.enabled = true;
        mergeAutoscale(a, since);
        showAutoscale(true);
        renderAutoscale();
      }
    }
  } catch (e) {
    autoscale.error = String(e);
    showAutoscale(false);
    delay = 2000;
  }
  setTimeout(pollAutoscale, delay);
}

async function main() {
  const st = await (await fetch('/_lab/api/status', { cache: 'no-store' })).json();
  info = st.info;
  for (const r of info.regions) {
    const o = el('option', `${r.city} (${r.name})`); o.value = r.name;
    $('region').appendChild(o);
  }
  for (const [id, label] of info.renditions) {
    const o = el('option', label); o.value = id;
    $('rendition').appendChild(o);
  }
  if (params.get('region')) $('region').value = params.get('region');
  if (params.get('rendition')) $('rendition').value = params.get('rendition');
  $('play').onclick = play;
  render(st);
  setInterval(refresh, 1000);
  pollAutoscale();
  if (params.get('autoplay')) play();
}

main().catch((e) => { text($('state'), `cannot reach the lab: ${e}`); });
