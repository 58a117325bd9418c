// The supervisor's status page, in the spirit of Spark's UI: every job with its state, its recent
// batches, input and processing rates over time as a chart, lag, dead letters and the latest
// dead-letter errors. One self-contained HTML page (no external assets) that polls /api/jobs.
#pragma once

namespace dataflow::supervisor {

inline constexpr const char* kStatusPage = R"HTML(<!doctype html>
<html><head><meta charset="utf-8"><title>dataflow — jobs</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
 h1 { font-size: 20px; margin: 0 0 4px; } .sub { color: #666; margin-bottom: 16px; }
 table { border-collapse: collapse; background: #fff; margin: 8px 0 16px; }
 th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; } th { background: #f0f0f0; }
 .job { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 12px 16px; margin: 12px 0; }
 .job h2 { font-size: 16px; margin: 0 0 8px; } .state-running { color: #18794e; } .state-restarting, .state-stopping { color: #b35900; }
 .state-stopped, .state-finished { color: #666; } .kpi { display: inline-block; margin-right: 24px; }
 .kpi b { font-size: 18px; display: block; } .legend span { margin-right: 16px; } .err { color: #b00020; font-family: monospace; font-size: 12px; }
</style></head>
<body>
<h1>dataflow — streaming jobs</h1><div class="sub" id="updated">loading…</div>
<table id="jobs"><thead><tr><th>job</th><th>state</th><th>pid</th><th>restarts</th><th>last batch</th><th>rows in</th><th>lag</th><th>dead letters</th><th>command</th></tr></thead><tbody></tbody></table>
<div id="details"></div>
<script>
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c])); }
function lagOf(p) { const m = (p.sources && p.sources[0] && p.sources[0].metrics) || {}; return m.maxOffsetsBehindLatest ?? '–'; }
function chart(progress) {
  const w = 640, h = 160, pad = 30;
  if (!progress.length) return '<div class="sub">no batch yet</div>';
  const inp = progress.map(p => p.inputRowsPerSecond || 0), proc = progress.map(p => p.processedRowsPerSecond || 0);
  const max = Math.max(1, ...inp, ...proc);
  const pts = vals => vals.map((v, i) => (pad + i * (w - 2 * pad) / Math.max(1, vals.length - 1)).toFixed(1) + ',' +
                                         (h - pad - v / max * (h - 2 * pad)).toFixed(1)).join(' ');
  return `<svg width="${w}" height="${h}" role="img" aria-label="rates"><rect x="0" y="0" width="${w}" height="${h}" fill="#fff"/>
    <line x1="${pad}" y1="${h-pad}" x2="${w-pad}" y2="${h-pad}" stroke="#999"/><line x1="${pad}" y1="${pad}" x2="${pad}" y2="${h-pad}" stroke="#999"/>
    <text x="${pad+4}" y="${pad-8}" font-size="11">${Math.round(max).toLocaleString()} rows/s</text>
    <polyline fill="none" stroke="#1f77b4" stroke-width="2" points="${pts(inp)}"/>
    <polyline fill="none" stroke="#d62728" stroke-width="2" points="${pts(proc)}"/></svg>
    <div class="legend"><span style="color:#1f77b4">■ input rows/s</span><span style="color:#d62728">■ processed rows/s</span>
    <span class="sub">last ${progress.length} batches</span></div>`;
}
async function refresh() {
  try {
    const jobs = await (await fetch('/api/jobs')).json();
    const rows = [], details = [];
    for (const j of jobs) {
      const progress = j.progress || [], last = progress[progress.length - 1] || {};
      const dead = (j.deadLetters || []);
      const totalIn = progress.reduce((a, p) => a + (p.numInputRows || 0), 0);
      const deadTotal = progress.reduce((a, p) => a + ((p.sink && p.sink.numDeadLetters) || 0), 0);
      rows.push(`<tr><td>${esc(j.name)}</td><td class="state-${esc(j.state)}">${esc(j.state)}</td><td>${j.pid || '–'}</td>
        <td>${j.restarts}</td><td>${last.batchId ?? '–'}</td><td>${totalIn}</td><td>${lagOf(last)}</td><td>${deadTotal}</td><td>${esc(j.command)}</td></tr>`);
      const batches = progress.slice(-8).reverse().map(p => `<tr><td>${p.batchId}</td><td>${esc(p.timestamp)}</td><td>${p.numInputRows}</td>
        <td>${(p.sink && p.sink.numOutputRows) ?? ''}</td><td>${(p.sink && p.sink.numDeadLetters) ?? ''}</td><td>${(p.durationMs || {}).triggerExecution ?? ''} ms</td><td>${lagOf(p)}</td></tr>`).join('');
      const errors = dead.slice(-5).reverse().map(d => `<div class="err">${esc(d.topic)}[${d.partition}]@${d.offset} ${esc(d.kind)}: ${esc(d.message)}</div>`).join('');
      details.push(`<div class="job"><h2>${esc(j.name)} <span class="state-${esc(j.state)}">${esc(j.state)}</span></h2>
        <span class="kpi"><b>${Math.round(last.inputRowsPerSecond || 0)}</b>input rows/s</span>
        <span class="kpi"><b>${Math.round(last.processedRowsPerSecond || 0)}</b>processed rows/s</span>
        <span class="kpi"><b>${lagOf(last)}</b>offsets behind latest</span>
        <span class="kpi"><b>${deadTotal}</b>dead letters (recent batches)</span>
        ${(last.stateOperators || []).length ? `<span class="kpi"><b>${last.stateOperators.reduce((a, o) => a + o.numRowsTotal, 0)}</b>rows in state (${last.stateOperators.map(o => esc(o.operatorName)).join(', ')})</span>` : ''}
        ${last.eventTime && last.eventTime.watermark ? `<span class="kpi"><b>${esc(last.eventTime.watermark)}</b>watermark</span>` : ''}
        ${j.source && j.source.slot ? `<span class="kpi"><b>${j.source.slotLagBytes}</b>slot ${esc(j.source.slot)} lag (bytes)</span>` : ''}
        ${j.source && j.source.connector ? `<span class="kpi"><b class="${j.source.connectorState === 'RUNNING' ? 'state-running' : 'err'}">${esc(j.source.connectorState)}</b>connector ${esc(j.source.connector)}</span>` : ''}
        ${chart(progress)}
        <table><thead><tr><th>batch</th><th>trigger</th><th>rows in</th><th>rows out</th><th>dead letters</th><th>duration</th><th>lag</th></tr></thead><tbody>${batches}</tbody></table>
        <div><b>latest dead letters</b>${errors || '<div class="sub">none</div>'}</div></div>`);
    }
    document.querySelector('#jobs tbody').innerHTML = rows.join('');
    document.getElementById('details').innerHTML = details.join('');
    document.getElementById('updated').textContent = jobs.length + ' job(s), updated ' + new Date().toLocaleTimeString();
  } catch (e) { document.getElementById('updated').textContent = 'cannot reach the supervisor: ' + e; }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
)HTML";

}  // namespace dataflow::supervisor
