"""The labelling page: one HTML document with its script and style inline (no build step, no CDN, works
offline). It talks to annotate_app's JSON endpoints; every key press is saved before the next item
shows. Keys: 1..9 label, s skip, u or Backspace undo. The annotator id comes from ?annotator=, else
from localStorage, else a prompt (then kept in localStorage).
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>tunesmith annotate</title>
<style>
body{font-family:system-ui,sans-serif;max-width:860px;margin:2em auto;padding:0 1em;color:#222;background:#fafafa}
header{display:flex;justify-content:space-between;align-items:baseline;gap:1em;flex-wrap:wrap}
h1{font-size:1.2em;margin:0}.muted{color:#666;font-size:.9em}
#instructions{color:#444;margin:.5em 0 1em}
#card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:1.2em 1.4em;min-height:6em;font-size:1.15em;
line-height:1.5;white-space:pre-wrap;overflow-wrap:anywhere}
#labels{display:flex;flex-wrap:wrap;gap:.5em;margin:1em 0}
button{font-size:1em;padding:.5em .9em;border:1px solid #bbb;border-radius:6px;background:#fff;cursor:pointer}
button:hover{background:#eef}button kbd{font-family:monospace;color:#555;margin-right:.4em}
#bar{height:6px;background:#e6e6e6;border-radius:3px;margin:.6em 0}#bar div{height:100%;background:#4a7;border-radius:3px;width:0}
#status{min-height:1.4em;margin:.5em 0}.error{color:#b00}#suggestion{color:#666;font-size:.9em;margin-top:.5em}
</style></head><body>
<header><h1 id="title">annotate</h1><span class="muted">annotator: <b id="annotator"></b>
(<a href="#" id="change">change</a>)</span></header>
<div id="instructions"></div>
<div id="bar"><div></div></div><div id="progress" class="muted"></div>
<div id="card">loading…</div><div id="suggestion"></div>
<div id="labels"></div>
<div><button id="skip"><kbd>s</kbd>skip</button> <button id="undo"><kbd>u</kbd>undo</button></div>
<div id="status"></div>
<p class="muted">Keys: 1–9 choose a label, s skips, u or Backspace undoes your last answer. Each answer is saved at once.</p>
<script>
"use strict";
const KEY = "tunesmith-annotator";
let task = null, item = null, busy = false;
const $ = (id) => document.getElementById(id);

function annotatorId(ask) {
  const fromUrl = new URLSearchParams(location.search).get("annotator");
  if (fromUrl) { localStorage.setItem(KEY, fromUrl); return fromUrl; }
  let id = ask ? null : localStorage.getItem(KEY);
  while (!id) { id = (prompt("Your annotator id (name or initials):") || "").trim(); }
  localStorage.setItem(KEY, id);
  return id;
}
let annotator = annotatorId(false);

async function api(method, path, body) {
  const res = await fetch(path, {method, headers: {"Content-Type": "application/json"},
                                 body: body ? JSON.stringify(body) : undefined});
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}
function say(text, error) { $("status").textContent = text; $("status").className = error ? "error" : ""; }

function show(next, progress) {
  item = next;
  $("card").textContent = item ? item.text : "Nothing left for you in this task. Thank you!";
  $("card").dataset.itemId = item ? item.item_id : "";
  const s = item && item.suggestion;
  $("suggestion").textContent = s ? `model suggests: ${s.label} (${Math.round(100 * s.confidence)}%)` : "";
  if (progress) {
    $("progress").textContent = `you: ${progress.labelled} labelled, ${progress.skipped} skipped, ${progress.left} left` +
      ` · task: ${progress.done} of ${progress.total} done`;
    $("bar").firstElementChild.style.width = (progress.total ? 100 * progress.done / progress.total : 0) + "%";
  }
}

async function run(action) {
  if (busy) return;
  busy = true;
  try { await action(); } catch (err) { say(err.message, true); } finally { busy = false; }
}
const q = () => "?annotator=" + encodeURIComponent(annotator);
const load = () => run(async () => { const r = await api("GET", "api/next" + q()); show(r.item, r.progress); });
const choose = (label) => run(async () => {
  if (!item) return;
  const r = await api("POST", "api/label", {annotator, item_id: item.item_id, label});
  say(`saved: ${label}`); show(r.item, r.progress);
});
const skip = () => run(async () => {
  if (!item) return;
  const r = await api("POST", "api/skip", {annotator, item_id: item.item_id});
  say("skipped"); show(r.item, r.progress);
});
const undo = () => run(async () => {
  const r = await api("POST", "api/undo", {annotator});
  if (!r.undone) { say("nothing to undo"); return; }
  say(`undid: ${r.undone.undone}`); show(r.undone, r.progress);
});

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || !task) return;
  const n = parseInt(e.key, 10);
  if (n >= 1 && n <= task.labels.length) { e.preventDefault(); choose(task.labels[n - 1]); }
  else if (e.key === "s") { e.preventDefault(); skip(); }
  else if (e.key === "u" || e.key === "Backspace") { e.preventDefault(); undo(); }
});
$("skip").onclick = skip;
$("undo").onclick = undo;
$("change").onclick = (e) => {
  e.preventDefault(); localStorage.removeItem(KEY); history.replaceState(null, "", location.pathname);
  annotator = annotatorId(true); $("annotator").textContent = annotator; load();
};

(async () => {
  $("annotator").textContent = annotator;
  try { task = await api("GET", "api/task"); } catch (err) { say(err.message, true); return; }
  document.title = `annotate: ${task.name}`;
  $("title").textContent = task.name;
  $("instructions").textContent = task.instructions;
  task.labels.forEach((label, i) => {
    const b = document.createElement("button");
    b.className = "label"; b.dataset.label = label;
    b.innerHTML = `<kbd>${i + 1}</kbd>`; b.append(label);
    b.onclick = () => choose(label);
    $("labels").append(b);
  });
  load();
})();
</script></body></html>
"""
