// The lab's player and dashboard. No framework: a <video>, a few tables and canvases,
// refreshed every second from /_lab/api/status (served by `cdn lab`, forwarded by the router).
//
// URL parameters: ?region=NAME&rendition=hls|mp4|webm&autoplay=1 choose and start a viewer;
// &hlsjs=1 plays HLS with hls.js even where the browser plays it natively.
// window.labViewer holds what the viewer measured (tests read it).
'use strict';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const COLORS = ['#2563eb', '#16a34a', '#d97706', '#9333ea', '#dc2626', '#0891b2', '#4d7c0f', '#be185d'];

let info = null;        // static facts from the lab
let hls = null;         // hls.js instance, when used
let viewerId = 0;
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

function clientLink(region, edge) {
  return (info.links || []).find((l) => l.kind === 'client' && l.from === region && l.to === edge);
}

// ---- the player ----

function report() {
  if (!viewer.region) return;
  const r = info.regions.find((x) => x.name === viewer.region);
  fetch('/_lab/api/viewers', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
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
  const src = `${info.router}${path}?region=${encodeURIComponent(region)}`;
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
    video.src = src;
  }
  video.play().catch((e) => { text($('state'), `press play (${e.name})`); });
}

// ---- the dashboard ----

function drawChart(canvas, series, opts) {
  const ctx = canvas.getContext('2d');
  const w = canvas.width, h = canvas.height, pad = 22;
  ctx.clearRect(0, 0, w, h);
  let max = opts.max;
  if (max == null) {
    max = 0;
    for (const s of series) for (const v of s.values) if (v != null && v > max) max = v;
    max = max <= 0 ? 1 : max * 1.15;
  }
  ctx.strokeStyle = '#e6e8ee'; ctx.fillStyle = '#6b7488'; ctx.font = '10px sans-serif';
  for (const f of [0, 0.5, 1]) {
    const y = h - pad / 2 - f * (h - pad);
    ctx.beginPath(); ctx.moveTo(30, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(opts.fmt ? opts.fmt(f * max) : fmt(f * max, 1), 2, y + 3);
  }
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
      const y = h - pad / 2 - Math.min(v / max, 1) * (h - pad);
      if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      pen = true;
    });
    ctx.stroke();
  }
  ctx.setLineDash([]);
}

async function action(name, what) {
  const r = await fetch(`/_lab/api/edges/${encodeURIComponent(name)}/${what}`, { method: 'POST' });
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
  const nodes = st.nodes || [];
  const pills = $('nodes'); pills.textContent = '';
  for (const n of nodes) {
    const down = !n.running || (n.router_view && n.router_view !== 'up');
    pills.appendChild(el('span', n.name, down ? 'pill down' : 'pill'));
  }
  const edges = nodes.filter((n) => n.kind === 'edge');
  const series = (st.series && st.series.edges) || {};
  const tb = $('edges').querySelector('tbody'); tb.textContent = '';
  const legend = $('legend'); legend.textContent = '';
  edges.forEach((e, i) => {
    const s = series[e.name] || { req_s: [], hit_ratio: [], origin_mbps: [], peer_mbps: [] };
    const view = e.running ? (e.router_view || '?') : 'stopped';
    const btn = el('button', e.running ? 'stop' : 'start');
    btn.onclick = () => action(e.name, e.running ? 'stop' : 'start');
    const hit = last(s.hit_ratio);
    tb.appendChild(row([
      el('td', e.name), el('td', e.region), el('td', view, view === 'up' ? 'up' : 'down'),
      el('td', fmt(last(s.req_s), 1), 'num'),
      el('td', hit == null ? '-' : `${Math.round(hit * 100)}%`, 'num'),
      el('td', fmt(last(s.origin_mbps), 2), 'num'), el('td', fmt(last(s.peer_mbps), 2), 'num'),
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
  if (params.get('autoplay')) play();
}

main().catch((e) => { text($('state'), `cannot reach the lab: ${e}`); });
