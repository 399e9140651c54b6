// The viewer: lists the corpora (GET /corpora), queries GET /search in the chosen one and shows one card per
// hit (thumbnail, score, doc_id, page, snippet, source). Text from the index is put in with textContent only.
"use strict";

const THUMBNAIL = 320;
const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function card(hit, showMap) {
  const box = element("article", "card");
  if (hit.image_url) {
    const thumb = element("div", "thumb");
    const img = element("img", "page");
    img.alt = `page ${hit.page ?? ""} of ${hit.doc_id}`;
    img.src = `${hit.image_url}&size=${THUMBNAIL}`;
    thumb.append(img);
    if (showMap && hit.similarity_url) {
      const overlay = element("img", "overlay");
      overlay.alt = "";
      overlay.src = `${hit.similarity_url}&format=png&size=${THUMBNAIL}`;
      thumb.append(overlay);
    }
    box.append(thumb);
  }
  const meta = element("div", "meta");
  meta.append(element("span", "score", hit.score.toFixed(4)), element("span", "doc", hit.doc_id));
  if (hit.page !== null && hit.page !== undefined) meta.append(element("span", "pageno", `page ${hit.page}`));
  box.append(meta);
  if (hit.snippet) box.append(element("p", "snippet", hit.snippet));
  const link = element("a", "source", "source");
  link.href = hit.source_url + (hit.page ? `#page=${hit.page}` : "");
  link.target = "_blank";
  link.rel = "noopener";
  link.title = hit.source_uri;
  box.append(link);
  return box;
}

const MODALITY_NAMES = { images: "page images", text: "text documents" };
let catalog = {};

function showError(message) {
  const status = $("status");
  status.className = "error";
  status.textContent = message;
  $("results").replaceChildren();
}

// The corpus choice: one option per corpus served (the default first); a name from the address that the
// service does not serve is kept, so the search says which corpora there are.
async function loadCorpora(wanted) {
  const select = $("corpus");
  let answer;
  try {
    const response = await fetch("/corpora", { headers: { Accept: "application/json" } });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  } catch (error) {
    showError(`The corpora cannot be listed: ${error.message}`);
    return;
  }
  catalog = Object.fromEntries(answer.corpora.map((corpus) => [corpus.name, corpus]));
  const options = answer.corpora.map((corpus) => {
    const option = element("option", null, corpus.name);
    option.value = corpus.name;
    option.title = corpus.root;
    return option;
  });
  if (wanted && !catalog[wanted]) {
    const unknown = element("option", null, `${wanted} (not served)`);
    unknown.value = wanted;
    options.push(unknown);
  }
  select.replaceChildren(...options);
  select.value = wanted || answer.default;
  showIndexes();
}

// Marks the modalities the chosen corpus has no index for, with the reason as a tooltip.
function showIndexes() {
  const corpus = catalog[$("corpus").value];
  for (const option of $("modality").options) {
    const index = corpus && corpus.indexes[option.value];
    const missing = index && index.error;
    option.textContent = MODALITY_NAMES[option.value] + (missing ? " (no index)" : "");
    option.title = missing ? index.error : index ? `model ${index.model}, ${index.documents} documents` : "";
  }
}

async function search(event) {
  if (event) event.preventDefault();
  const q = $("q").value.trim();
  if (!q) return;
  const corpus = $("corpus").value;
  const params = new URLSearchParams({ q, modality: $("modality").value, k: $("k").value });
  if (corpus) params.set("corpus", corpus);
  history.replaceState(null, "", `/?${params}`);
  const status = $("status");
  status.className = "";
  status.textContent = "Searching…";
  const results = $("results");
  let answer;
  try {
    const response = await fetch(`/search?${params}`, { headers: { Accept: "application/json" } });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  } catch (error) {
    showError(error.message);
    return;
  }
  $("maps").disabled = !answer.similarity_map;
  results.replaceChildren(...answer.hits.map((hit) => card(hit, $("maps").checked && answer.similarity_map)));
  status.textContent = `${answer.hits.length} results from corpus ${answer.corpus}, ${answer.modality} index ` +
    `(${answer.model}) in ${(answer.seconds * 1000).toFixed(0)} ms`;
}

document.addEventListener("DOMContentLoaded", async () => {
  $("search").addEventListener("submit", search);
  $("maps").addEventListener("change", () => search());
  $("corpus").addEventListener("change", () => { showIndexes(); search(); });
  const initial = new URLSearchParams(location.search);
  if (initial.get("modality")) $("modality").value = initial.get("modality");
  if (initial.get("k")) $("k").value = initial.get("k");
  await loadCorpora(initial.get("corpus"));
  if (initial.get("q")) { $("q").value = initial.get("q"); search(); }
});
