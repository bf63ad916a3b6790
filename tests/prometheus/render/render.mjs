#!/usr/bin/env node
// pqmesh's own minimal renderer of its Grafana dashboard JSON. NOT Grafana: it reads one file of
// charts/pqmesh/files/dashboards, substitutes Grafana's variables, fetches every panel query from
// a real Prometheus over its HTTP API (/api/v1/query_range; /api/v1/query for tables), lays the
// panels out on Grafana's 24-column grid by their gridPos, draws time series as line charts
// (uPlot, the library Grafana's own time series panel is built on), stat panels as numbers with
// a sparkline and table panels as one row per series, then screenshots the page with headless
// Chromium. The page is self-contained (the charting library is inlined from node_modules, every
// network request of the page is refused), so it works offline. What it leaves out of Grafana:
// panel options beyond unit and thresholds (this chart's dashboards set none), tooltips,
// overrides, transformations, row panels and every panel type but timeseries, stat and table.
//
//   node render.mjs --dashboard FILE.json --prometheus http://127.0.0.1:9090 \
//     --from UNIX|now-15m --to UNIX|now --out dashboard.png \
//     [--var namespace=.*] [--rate-interval 15s] [--step SECONDS] [--width 1600] \
//     [--chromium /usr/bin/chromium] [--html page.html] [--require-data]
//
// Exits non-zero when Prometheus refuses a query, when a variable is left unsubstituted, when
// Chromium cannot render the page, or (with --require-data) when a panel has no series.

import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));

const { values: args } = parseArgs({
  options: {
    dashboard: { type: 'string' },
    prometheus: { type: 'string' },
    from: { type: 'string', default: 'now-15m' },
    to: { type: 'string', default: 'now' },
    out: { type: 'string' },
    var: { type: 'string', multiple: true, default: [] },
    'rate-interval': { type: 'string' },
    'scrape-interval': { type: 'string', default: '1s' },
    step: { type: 'string' },
    width: { type: 'string', default: '1600' },
    chromium: { type: 'string', default: process.env.PQMESH_CHROMIUM || '/usr/bin/chromium' },
    html: { type: 'string' },
    'require-data': { type: 'boolean', default: false },
  },
});
for (const required of ['dashboard', 'prometheus', 'out']) {
  if (!args[required]) die(`--${required} is required (see the comment at the top of ${fileURLToPath(import.meta.url)})`);
}

// The page's charting library and the browser driver first, so a missing install fails at once.
let uplotJs, uplotCss;
try {
  uplotJs = readFileSync(join(here, 'node_modules/uplot/dist/uPlot.iife.min.js'), 'utf8');
  uplotCss = readFileSync(join(here, 'node_modules/uplot/dist/uPlot.min.css'), 'utf8');
} catch (e) {
  die(`uplot missing: run npm install --no-package-lock in ${here} (${e.message})`);
}
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  die(`playwright-core missing: run npm install --no-package-lock in ${here} (${e.message})`);
}

if (!existsSync(args.chromium)) die(`no Chromium at ${args.chromium} (apt-get install chromium, or --chromium PATH)`);

function die(message) {
  console.error(`render.mjs: ${message}`);
  process.exit(1);
}

/** Seconds of a Prometheus/Grafana duration such as "15s", "1m", "1h30m". */
function durationSeconds(text) {
  const units = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400, w: 604800, y: 31536000 };
  let total = 0;
  let rest = String(text).trim();
  if (/^\d+(\.\d+)?$/.test(rest)) return Number(rest);
  while (rest) {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)/.exec(rest);
    if (!m) die(`not a duration: ${text}`);
    total += Number(m[1]) * units[m[2]];
    rest = rest.slice(m[0].length);
  }
  return total;
}

/** A time argument: unix seconds, "now", "now-15m", or anything Date.parse reads. */
function timeArg(text, now) {
  if (text === 'now') return now;
  if (text.startsWith('now-')) return now - durationSeconds(text.slice(4));
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) die(`not a time: ${text}`);
  return ms / 1000;
}

const now = Date.now() / 1000;
const start = Math.floor(timeArg(args.from, now));
const end = Math.ceil(timeArg(args.to, now));
if (!(end > start)) die(`empty time range ${start}..${end}`);
const range = end - start;
const width = Number(args.width);
const scrape = durationSeconds(args['scrape-interval']);
// Grafana: $__interval is the range over the panel's data points (about one a pixel), never
// below the data source's scrape interval; $__rate_interval is max($__interval + scrape, 4 scrapes).
const step = args.step ? durationSeconds(args.step) : Math.max(scrape, Math.ceil(range / (width / 2)));
const rateInterval = args['rate-interval'] || `${Math.max(step + scrape, 4 * scrape)}s`;

const dashboard = JSON.parse(readFileSync(args.dashboard, 'utf8'));
const cliVars = Object.fromEntries(
  args.var.map((kv) => {
    const i = kv.indexOf('=');
    if (i < 1) die(`--var wants NAME=VALUE, got ${kv}`);
    return [kv.slice(0, i), kv.slice(i + 1)];
  }),
);
// Template variables: the value given, else "All" (the variable's allValue, else .*), as the
// e2e test (tests/tests/e2e/prometheus_dashboards.rs) sends them.
const variables = {
  __rate_interval: rateInterval,
  __interval: `${step}s`,
  __interval_ms: String(step * 1000),
  __range: `${range}s`,
  __range_s: String(range),
  __range_ms: String(range * 1000),
};
const shownVariables = [];
for (const v of dashboard.templating?.list ?? []) {
  if (v.type === 'datasource') continue;
  const value = cliVars[v.name] ?? v.allValue ?? '.*';
  variables[v.name] = value;
  shownVariables.push([v.label || v.name, cliVars[v.name] ?? 'All']);
}
for (const [k, v] of Object.entries(cliVars)) variables[k] ??= v;

function substitute(expr, where) {
  const names = Object.keys(variables).sort((a, b) => b.length - a.length);
  let out = expr;
  for (const name of names) {
    const value = variables[name];
    out = out.split(`\${${name}}`).join(value).split(`[[${name}]]`).join(value);
    out = out.replace(new RegExp(`\\$${name}(?![A-Za-z0-9_])`, 'g'), () => value);
  }
  if (out.includes('$')) die(`${where}: unsubstituted variable in ${out}`);
  return out;
}

async function prometheus(path, params) {
  const url = new URL(path, args.prometheus.endsWith('/') ? args.prometheus : `${args.prometheus}/`);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, String(v));
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    die(`${url.origin} unreachable: ${e.cause?.message ?? e.message}`);
  }
  const body = await response.text();
  let json;
  try {
    json = JSON.parse(body);
  } catch {
    die(`${path} ${params.query}: HTTP ${response.status}: ${body.slice(0, 300)}`);
  }
  if (response.status !== 200 || json.status !== 'success') {
    die(`${params.query}: HTTP ${response.status}: ${json.error ?? body.slice(0, 300)}`);
  }
  return json.data;
}

/** Grafana's legendFormat: {{label}} replaced; none given: the series' labels. */
function legendName(format, metric) {
  if (format && format !== '__auto') {
    return format.replace(/\{\{\s*([A-Za-z0-9_]+)\s*\}\}/g, (_, l) => metric[l] ?? '');
  }
  const { __name__: name = '', ...labels } = metric;
  const inner = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(', ');
  return inner ? `${name}{${inner}}` : name || '{}';
}

const panels = [];
const empty = [];
for (const panel of dashboard.panels ?? []) {
  const title = panel.title ?? '';
  const where = `${dashboard.title} / ${title}`;
  const out = {
    type: panel.type,
    title,
    gridPos: panel.gridPos,
    unit: panel.fieldConfig?.defaults?.unit ?? 'short',
    thresholds: panel.fieldConfig?.defaults?.thresholds?.steps ?? null,
    series: [],
    rows: [],
  };
  for (const target of panel.targets ?? []) {
    if (target.hide || !target.expr) continue;
    const expr = substitute(target.expr, where);
    if (panel.type === 'table') {
      const data = await prometheus('api/v1/query', { query: expr, time: end });
      const result = data.resultType === 'vector' ? data.result : [{ metric: {}, value: data.result }];
      for (const r of result) out.rows.push({ metric: r.metric, value: Number(r.value[1]) });
    } else {
      const data = await prometheus('api/v1/query_range', { query: expr, start, end, step });
      const series = data.result
        .map((r) => ({
          name: legendName(target.legendFormat, r.metric),
          points: r.values.map(([t, v]) => [Number(t), Number(v)]),
        }))
        .sort((a, b) => a.name.localeCompare(b.name));
      out.series.push(...series);
    }
  }
  const count = out.series.length + out.rows.length;
  console.log(`  ${where}: ${count} series`);
  if (count === 0) empty.push(where);
  panels.push(out);
}
if (args['require-data'] && empty.length) die(`panels without data:\n  ${empty.join('\n  ')}`);

const page = {
  title: dashboard.title ?? '',
  start,
  end,
  step,
  rateInterval,
  variables: shownVariables,
  width,
  panels,
  source: `query_range from Prometheus, step ${step}s, $__rate_interval = ${rateInterval}`,
};

const html = `<!doctype html>
<html><head><meta charset="utf-8"><title>${escapeHtml(page.title)}</title>
<style>${uplotCss}</style>
<style>${PAGE_CSS()}</style>
</head><body>
<div id="header"></div><div id="grid"></div><div id="footer"></div>
<script>${uplotJs.replace(/<\/script/gi, '<\\/script')}</script>
<script>const PAGE = ${JSON.stringify(page).replace(/</g, '\\u003c')};</script>
<script>${PAGE_SCRIPT.toString()}; PAGE_SCRIPT(PAGE);</script>
</body></html>`;
if (args.html) writeFileSync(args.html, html);

const browser = await chromium.launch({ executablePath: args.chromium, headless: true }).catch((e) =>
  die(`cannot start ${args.chromium}: ${e.message}`),
);
try {
  const context = await browser.newContext({
    viewport: { width, height: 900 },
    deviceScaleFactor: 1,
    timezoneId: 'UTC',
    locale: 'en-GB',
  });
  // Offline: the page may fetch nothing; everything it draws is inlined above.
  await context.route('**/*', (route) => route.abort());
  const tab = await context.newPage();
  const errors = [];
  tab.on('pageerror', (e) => errors.push(e.message));
  await tab.setContent(html, { waitUntil: 'load' });
  await tab.waitForFunction(() => window.__rendered === true || window.__error, null, { timeout: 30000 });
  const failure = await tab.evaluate(() => window.__error ?? null);
  if (failure || errors.length) throw new Error(`page failed: ${failure ?? errors.join('; ')}`);
  const height = await tab.evaluate(() => document.documentElement.scrollHeight);
  await tab.setViewportSize({ width, height });
  await tab.screenshot({ path: args.out, fullPage: true });
  console.log(`render.mjs: ${panels.length} panels of "${page.title}" -> ${args.out}`);
} catch (e) {
  await browser.close();
  die(e.message);
}
await browser.close();

function escapeHtml(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
}

function PAGE_CSS() {
  return `
  * { box-sizing: border-box; }
  body { margin: 0; padding: 16px; background: #111217; color: #ccccdc;
         font: 13px/1.4 "DejaVu Sans", "Liberation Sans", sans-serif; }
  #header { display: flex; align-items: baseline; gap: 16px; margin-bottom: 12px; }
  #header h1 { font-size: 20px; font-weight: 500; margin: 0; color: #d8d9da; }
  #header .meta { color: rgba(204,204,220,0.65); }
  #header .var { background: #181b1f; border: 1px solid rgba(204,204,220,0.15); border-radius: 2px;
                 padding: 2px 8px; }
  #grid { position: relative; }
  .panel { position: absolute; background: #181b1f; border: 1px solid rgba(204,204,220,0.12);
           border-radius: 2px; display: flex; flex-direction: column; overflow: hidden; }
  .panel .title { height: 32px; line-height: 32px; padding: 0 8px; font-weight: 500; font-size: 14px;
                  color: #d8d9da; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
  .panel .body { flex: 1; position: relative; padding: 0 8px 8px; min-height: 0; }
  .nodata { position: absolute; inset: 0; display: flex; align-items: center; justify-content: center;
            color: rgba(204,204,220,0.65); font-size: 16px; }
  .legend { display: flex; flex-wrap: wrap; gap: 2px 16px; padding: 4px 0 0 4px; font-size: 12px; }
  .legend .item { display: flex; align-items: center; gap: 6px; white-space: nowrap; }
  .legend .swatch { width: 14px; height: 4px; border-radius: 2px; }
  .stats { position: absolute; inset: 0 8px 8px; display: flex; gap: 8px; }
  .stat { flex: 1; position: relative; display: flex; flex-direction: column; align-items: center;
          justify-content: center; overflow: hidden; }
  .stat .name { font-size: 14px; color: #ccccdc; position: relative; z-index: 1; }
  .stat .value { font-weight: 500; position: relative; z-index: 1; line-height: 1.1; }
  .stat svg { position: absolute; left: 0; bottom: 0; width: 100%; height: 45%; }
  table { width: 100%; border-collapse: collapse; font-size: 13px; }
  th { text-align: left; font-weight: 500; color: #6e9fff; padding: 6px 8px;
       border-bottom: 1px solid rgba(204,204,220,0.12); }
  td { padding: 6px 8px; border-bottom: 1px solid rgba(204,204,220,0.07); }
  td.num, th.num { text-align: right; }
  .u-legend { display: none; }
  #footer { margin-top: 12px; color: rgba(204,204,220,0.65); font-size: 12px; }
  `;
}

// Runs in the page: lays the panels out and draws them. Self-contained (serialised with toString).
function PAGE_SCRIPT(P) {
  try {
    // Grafana's grid: 24 columns, 30 px rows, 8 px between cells.
    const COLS = 24, ROW = 30, GAP = 8;
    // Grafana's default ("classic") series palette, dark theme.
    const PALETTE = ['#73BF69', '#F2CC0C', '#8AB8FF', '#FF780A', '#F2495C', '#5794F2', '#B877D9',
      '#705DA0', '#37872D', '#FADE2A', '#447EBC', '#C15C17', '#890F02', '#0A437C', '#6D1F62'];
    const NAMED = { green: '#73BF69', red: '#F2495C', yellow: '#FADE2A', orange: '#FF9830', blue: '#5794F2' };
    // Grafana's default thresholds when a panel sets none: green, red from 80.
    const DEFAULT_THRESHOLDS = [{ color: 'green', value: null }, { color: 'red', value: 80 }];

    const trim = (x, digits) => {
      if (!Number.isFinite(x)) return String(x);
      const d = digits ?? (Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : 2);
      return String(Number(x.toFixed(d)));
    };
    const scaled = (x, steps, base, digits) => {
      let i = 0;
      while (i < steps.length - 1 && Math.abs(x) >= base) { x /= base; i++; }
      return `${trim(x, digits)}${steps[i]}`;
    };
    const short = (x, digits) => scaled(x, ['', ' K', ' Mil', ' Bil', ' Tri'], 1000, digits);
    function seconds(x, digits) {
      const a = Math.abs(x);
      if (a === 0) return '0 s';
      if (a < 1e-6) return `${trim(x * 1e9, digits)} ns`;
      if (a < 1e-3) return `${trim(x * 1e6, digits)} µs`;
      if (a < 1) return `${trim(x * 1e3, digits)} ms`;
      if (a < 60) return `${trim(x, digits)} s`;
      if (a < 3600) return `${trim(x / 60, digits)} min`;
      if (a < 86400) return `${trim(x / 3600, digits)} hour`;
      if (a < 604800) return `${trim(x / 86400, digits)} day`;
      if (a < 31536000) return `${trim(x / 604800, digits)} week`;
      return `${trim(x / 31536000, digits)} year`;
    }
    // Grafana's unit formatters, for the units this chart's dashboards use.
    function format(unit, x, digits) {
      if (x == null || Number.isNaN(x)) return 'NaN';
      switch (unit) {
        case 'percentunit': return `${trim(x * 100, digits ?? (Math.abs(x) >= 0.1 ? 1 : 2))}%`;
        case 'percent': return `${trim(x, digits)}%`;
        case 'reqps': return `${short(x, digits)} req/s`;
        case 'ops': return `${short(x, digits)} ops/s`;
        case 's': return seconds(x, digits);
        case 'ms': return seconds(x / 1000, digits);
        case 'bytes': return scaled(x, [' B', ' KiB', ' MiB', ' GiB', ' TiB'], 1024, digits);
        case 'Bps': return scaled(x, [' B/s', ' kB/s', ' MB/s', ' GB/s'], 1000, digits);
        case 'none': return trim(x, digits);
        default: return short(x, digits);
      }
    }
    const thresholdColor = (steps, x) => {
      let color = 'green';
      for (const s of steps ?? DEFAULT_THRESHOLDS) if (s.value == null || x >= s.value) color = s.color;
      return NAMED[color] ?? color;
    };
    const el = (tag, cls, text) => {
      const e = document.createElement(tag);
      if (cls) e.className = cls;
      if (text != null) e.textContent = text;
      return e;
    };
    const hhmmss = (t) => new Date(t * 1000).toISOString().slice(11, 19);
    const day = (t) => new Date(t * 1000).toISOString().slice(0, 10);

    const header = document.getElementById('header');
    header.appendChild(el('h1', null, P.title));
    for (const [name, value] of P.variables) header.appendChild(el('span', 'var', `${name}: ${value}`));
    header.appendChild(el('span', 'meta', `${day(P.start)} ${hhmmss(P.start)} to ${hhmmss(P.end)} UTC`));

    const grid = document.getElementById('grid');
    const W = grid.clientWidth;
    const col = (W - GAP * (COLS - 1)) / COLS;
    let bottom = 0;
    for (const panel of P.panels) {
      const g = panel.gridPos ?? { x: 0, y: bottom, w: 12, h: 8 };
      const box = el('div', 'panel');
      box.style.left = `${g.x * (col + GAP)}px`;
      box.style.top = `${g.y * (ROW + GAP)}px`;
      box.style.width = `${g.w * col + (g.w - 1) * GAP}px`;
      box.style.height = `${g.h * ROW + (g.h - 1) * GAP}px`;
      bottom = Math.max(bottom, (g.y + g.h) * (ROW + GAP));
      box.appendChild(el('div', 'title', panel.title));
      const body = el('div', 'body');
      box.appendChild(body);
      grid.appendChild(box);
      if (panel.series.length === 0 && panel.rows.length === 0) {
        body.appendChild(el('div', 'nodata', 'No data'));
      } else if (panel.type === 'timeseries' || panel.type === 'graph') {
        timeseries(panel, body);
      } else if (panel.type === 'stat' || panel.type === 'gauge' || panel.type === 'singlestat') {
        stat(panel, body);
      } else if (panel.type === 'table') {
        table(panel, body);
      } else {
        body.appendChild(el('div', 'nodata', `panel type ${panel.type}: not drawn by this renderer`));
      }
    }
    grid.style.height = `${bottom}px`;
    document.getElementById('footer').textContent =
      `Drawn by pqmesh's own minimal renderer of the Grafana dashboard JSON ` +
      `(tests/prometheus/render/render.mjs), not by Grafana. Data: ${P.source}.`;

    function timeseries(panel, body) {
      const legend = el('div', 'legend');
      panel.series.forEach((s, i) => {
        const item = el('span', 'item');
        const sw = el('span', 'swatch');
        sw.style.background = PALETTE[i % PALETTE.length];
        item.appendChild(sw);
        item.appendChild(el('span', null, s.name));
        legend.appendChild(item);
      });
      const chart = el('div');
      body.appendChild(chart);
      body.appendChild(legend);
      body.style.display = 'flex';
      body.style.flexDirection = 'column';
      const width = body.clientWidth - 16;
      const height = body.clientHeight - 8 - legend.offsetHeight;
      // One x axis for all series: query_range answers on the same start/step grid.
      const xs = [];
      for (let t = P.start; t <= P.end; t += P.step) xs.push(t);
      const index = new Map(xs.map((t, i) => [t, i]));
      const ys = panel.series.map((s) => {
        const y = new Array(xs.length).fill(null);
        for (const [t, v] of s.points) {
          const i = index.get(t);
          if (i !== undefined) y[i] = Number.isFinite(v) ? v : null;
        }
        return y;
      });
      const axis = {
        stroke: 'rgba(204,204,220,0.65)',
        grid: { stroke: 'rgba(204,204,220,0.08)', width: 1 },
        ticks: { show: false },
        font: '11px "DejaVu Sans", sans-serif',
      };
      new uPlot({
        width,
        height,
        legend: { show: false },
        cursor: { show: false },
        scales: {
          x: { time: true },
          y: {
            // uPlot's own padding, but a flat line sits inside its axis (0 up, or 0-100% for a
            // ratio) instead of in the middle of a range twice its value.
            range: (u, lo, hi) => {
              if (lo == null || hi == null) return [0, 1];
              if (panel.unit === 'percentunit') return [Math.min(lo, 0), Math.max(hi, 1.05)];
              if (lo === hi) return lo >= 0 ? [0, hi === 0 ? 1 : hi * 1.25] : [lo * 1.25, 0];
              return uPlot.rangeNum(lo, hi, 0.1, true);
            },
          },
        },
        axes: [
          { ...axis, space: 90, values: (u, splits) => splits.map(hhmmss) },
          {
            ...axis,
            size: 84,
            values: (u, splits) => {
              // the fewest decimals that show every tick exactly (2.5 stays 2.5, not 3)
              for (let d = 0; d < 6; d++) {
                const labels = splits.map((v) => format(panel.unit, v, d));
                if (labels.every((l, i) => l === format(panel.unit, splits[i], d + 3))) return labels;
              }
              return splits.map((v) => format(panel.unit, v));
            },
          },
        ],
        series: [
          {},
          ...panel.series.map((s, i) => ({
            label: s.name,
            stroke: PALETTE[i % PALETTE.length],
            width: 1.5,
            points: { show: false },
            spanGaps: false,
          })),
        ],
      }, [xs, ...ys], chart);
    }

    function stat(panel, body) {
      const wrap = el('div', 'stats');
      body.appendChild(wrap);
      const many = panel.series.length > 1;
      for (const s of panel.series) {
        const values = s.points.map(([, v]) => v).filter((v) => Number.isFinite(v));
        const last = values.length ? values[values.length - 1] : NaN; // Grafana's "lastNotNull"
        const color = thresholdColor(panel.thresholds, last);
        const cell = el('div', 'stat');
        wrap.appendChild(cell);
        if (many) cell.appendChild(el('div', 'name', s.name));
        const text = format(panel.unit, last);
        const value = el('div', 'value', text);
        value.style.color = color;
        cell.appendChild(value);
        // As large as fits: at most 38% of the cell's height, and 90% of its width.
        let size = Math.floor(cell.clientHeight * 0.38);
        value.style.whiteSpace = 'nowrap';
        do value.style.fontSize = `${size}px`;
        while (value.scrollWidth > cell.clientWidth * 0.9 && (size -= 2) > 12);
        // Grafana's default graph mode "area": the series behind the number.
        if (values.length > 1) {
          const lo = Math.min(...values), hi = Math.max(...values);
          const t0 = P.start, t1 = P.end;
          const pts = s.points.filter(([, v]) => Number.isFinite(v)).map(([t, v]) => {
            const x = ((t - t0) / (t1 - t0)) * 100;
            const y = hi === lo ? 50 : 95 - ((v - lo) / (hi - lo)) * 90;
            return `${x.toFixed(2)},${y.toFixed(2)}`;
          });
          const ns = 'http://www.w3.org/2000/svg';
          const svg = document.createElementNS(ns, 'svg');
          svg.setAttribute('viewBox', '0 0 100 100');
          svg.setAttribute('preserveAspectRatio', 'none');
          const area = document.createElementNS(ns, 'polygon');
          const first = pts[0].split(',')[0], lastX = pts[pts.length - 1].split(',')[0];
          area.setAttribute('points', `${first},100 ${pts.join(' ')} ${lastX},100`);
          area.setAttribute('fill', color);
          area.setAttribute('fill-opacity', '0.18');
          const line = document.createElementNS(ns, 'polyline');
          line.setAttribute('points', pts.join(' '));
          line.setAttribute('fill', 'none');
          line.setAttribute('stroke', color);
          line.setAttribute('stroke-width', '1.5');
          line.setAttribute('vector-effect', 'non-scaling-stroke');
          svg.appendChild(area);
          svg.appendChild(line);
          cell.appendChild(svg);
        }
      }
    }

    // One row per series: its labels and its value at the end of the range (what Grafana shows
    // for an instant query in table format).
    function table(panel, body) {
      body.style.overflow = 'hidden';
      const labels = [];
      for (const r of panel.rows) {
        for (const k of Object.keys(r.metric)) if (k !== '__name__' && !labels.includes(k)) labels.push(k);
      }
      const t = el('table');
      const head = el('tr');
      for (const l of labels) head.appendChild(el('th', null, l));
      head.appendChild(el('th', 'num', 'Value'));
      t.appendChild(head);
      const rows = [...panel.rows].sort((a, b) =>
        labels.map((l) => a.metric[l] ?? '').join('\u0000').localeCompare(labels.map((l) => b.metric[l] ?? '').join('\u0000')));
      for (const r of rows) {
        const tr = el('tr');
        for (const l of labels) tr.appendChild(el('td', null, r.metric[l] ?? ''));
        tr.appendChild(el('td', 'num', format(panel.unit, r.value)));
        t.appendChild(tr);
      }
      body.appendChild(t);
    }
    window.__rendered = true;
  } catch (e) {
    window.__error = `${e.message}\n${e.stack}`;
  }
}
