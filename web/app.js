// The demo page: state lives in the URL (?q=…&k=…&dedup=0 or ?id=…), so links are shareable
// and Back/Forward replay searches. No framework, no network access beyond this origin.
// Up to 1,000 results: images past the first screenful load lazily; "Download JSON" saves the
// shown results (ids, URLs, captions, scores) with the query and the generation.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search"), input = $("q"), kSelect = $("k"), dedupBox = $("dedup");
const results = $("results"), stats = $("stats"), errorBox = $("error"), partialBox = $("partial");
const similar = $("similar"), emptyHint = $("empty"), downloadButton = $("download");
const K_CHOICES = ["10", "20", "50", "100", "200", "500", "1000"];
let generation = 0;
// What "Download JSON" saves: the last answer shown, with what was asked.
let lastAnswer = null;

function stateFromUrl() {
  const params = new URLSearchParams(location.search);
  const k = params.get("k");
  return {
    q: params.get("q") || "",
    id: params.has("id") ? params.get("id") : null,
    k: K_CHOICES.includes(k) ? k : "20",
    dedup: params.get("dedup") !== "0",
  };
}

function urlFor(state) {
  const params = new URLSearchParams();
  if (state.id !== null) params.set("id", state.id); else if (state.q) params.set("q", state.q);
  if (state.k !== "20") params.set("k", state.k);
  if (!state.dedup) params.set("dedup", "0");
  const query = params.toString();
  return query ? `?${query}` : location.pathname;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function renderStats(body, roundTripMs) {
  const t = body.timings;
  stats.textContent = `${body.results.length} results · encode ${t.encode.toFixed(1)} ms · ` +
    `probe ${t.probe.toFixed(2)} ms · scan ${t.scan.toFixed(2)} ms · merge ${t.merge.toFixed(2)} ms · ` +
    `${body.stats.gets} GETs, ${formatBytes(body.stats.bytes)} · round trip ${roundTripMs.toFixed(0)} ms`;
}

function setDownload(answer) {
  lastAnswer = answer;
  downloadButton.disabled = !answer || answer.results.length === 0;
}

function downloadResults() {
  if (!lastAnswer) return;
  const file = {
    query: lastAnswer.query,
    generation: lastAnswer.generation,
    results: lastAnswer.results.map((item) => ({
      id: item.id,
      url: item.url ? new URL(item.url, location.href).href : "",
      caption: item.caption,
      score: item.score,
    })),
  };
  const blob = new Blob([JSON.stringify(file, null, 2)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "clipedge-results.json";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 0);
}

function renderResults(items) {
  results.replaceChildren();
  for (const [rank, item] of items.entries()) {
    const li = document.createElement("li");
    li.className = "result";
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = String(item.id);
    button.setAttribute("aria-label", `More like: ${item.caption} (score ${item.score.toFixed(3)})`);
    const img = document.createElement("img");
    img.src = item.url;
    img.alt = item.caption;
    img.loading = rank < 12 ? "eager" : "lazy";
    img.width = 128;
    img.height = 128;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `#${rank + 1} · score ${item.score.toFixed(3)}`;
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = item.caption;
    button.append(img, score, caption);
    button.addEventListener("click", () => navigate({ ...stateFromUrl(), id: String(item.id), q: "" }));
    li.append(button);
    results.append(li);
  }
}

async function showSimilar(id) {
  similar.hidden = true;
  if (id === null) return;
  try {
    const response = await fetch(`/v1/items/${encodeURIComponent(id)}`);
    if (!response.ok) return;
    const item = await response.json();
    $("similar-img").src = item.url;
    $("similar-img").alt = item.caption;
    $("similar-caption").textContent = item.caption;
    similar.hidden = false;
  } catch (_) { /* the search itself reports errors */ }
}

async function run(state) {
  const mine = ++generation;
  input.value = state.q;
  kSelect.value = state.k;
  dedupBox.checked = state.dedup;
  showError("");
  setDownload(null);
  partialBox.hidden = true;
  showSimilar(state.id);
  if (state.id === null && !state.q.trim()) {
    results.replaceChildren();
    stats.textContent = "";
    emptyHint.hidden = false;
    return;
  }
  emptyHint.hidden = true;
  const body = { k: Number(state.k), dedup: state.dedup };
  if (state.id !== null) body.id = Number(state.id); else body.text = state.q;
  stats.textContent = "Searching…";
  const started = performance.now();
  let response, payload;
  try {
    response = await fetch("/v1/search", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    payload = await response.json();
  } catch (error) {
    if (mine !== generation) return;
    stats.textContent = "";
    showError(`The search service did not answer (${error.message}).`);
    return;
  }
  if (mine !== generation) return;
  if (!response.ok) {
    results.replaceChildren();
    stats.textContent = "";
    const detail = payload && payload.error ? `${payload.error.message} (${payload.error.code})` : `HTTP ${response.status}`;
    showError(`Search failed: ${detail}`);
    return;
  }
  if (payload.partial) {
    partialBox.textContent = `Partial results: lists ${payload.failed_lists.join(", ")} could not be read.`;
    partialBox.hidden = false;
  }
  renderResults(payload.results);
  renderStats(payload, performance.now() - started);
  const query = state.id !== null ? { id: Number(state.id) } : { text: state.q };
  setDownload({ query: { ...query, k: body.k, dedup: body.dedup }, generation: payload.generation, results: payload.results });
  if (payload.results.length === 0) showError("No results.");
}

function navigate(state) {
  const url = urlFor(state);
  if (url !== location.search && !(url === location.pathname && !location.search)) {
    history.pushState(null, "", url);
  }
  run(state);
  if (state.id !== null) window.scrollTo({ top: 0, behavior: "smooth" });
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  navigate({ q: input.value.trim(), id: null, k: kSelect.value, dedup: dedupBox.checked });
});
kSelect.addEventListener("change", () => navigate({ ...stateFromUrl(), k: kSelect.value }));
dedupBox.addEventListener("change", () => navigate({ ...stateFromUrl(), dedup: dedupBox.checked }));
downloadButton.addEventListener("click", downloadResults);
$("similar-clear").addEventListener("click", (event) => {
  event.preventDefault();
  navigate({ ...stateFromUrl(), id: null });
  input.focus();
});
window.addEventListener("popstate", () => run(stateFromUrl()));
document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (event.key === "/" && !typing) {
    event.preventDefault();
    input.focus();
    input.select();
  } else if (event.key === "Escape" && document.activeElement === input) {
    input.value = "";
  }
});

fetch("/v1/health")
  .then((response) => response.json())
  .then((health) => {
    $("label").textContent = `${health.count.toLocaleString()} images · ${health.label || health.model}`;
  })
  .catch(() => {});
run(stateFromUrl());
