// The viewer: queries GET /search and shows one card per hit (thumbnail, score, doc_id, page, snippet, source).
// Text from the index is put in with textContent only, never as HTML.
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

async function search(event) {
  if (event) event.preventDefault();
  const q = $("q").value.trim();
  if (!q) return;
  const params = new URLSearchParams({ q, modality: $("modality").value, k: $("k").value });
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
    status.className = "error";
    status.textContent = error.message;
    results.replaceChildren();
    return;
  }
  $("maps").disabled = !answer.similarity_map;
  results.replaceChildren(...answer.hits.map((hit) => card(hit, $("maps").checked && answer.similarity_map)));
  status.textContent = `${answer.hits.length} results from the ${answer.modality} index (${answer.model}) in ` +
    `${(answer.seconds * 1000).toFixed(0)} ms`;
}

document.addEventListener("DOMContentLoaded", () => {
  $("search").addEventListener("submit", search);
  $("maps").addEventListener("change", () => search());
  const initial = new URLSearchParams(location.search);
  if (initial.get("modality")) $("modality").value = initial.get("modality");
  if (initial.get("k")) $("k").value = initial.get("k");
  if (initial.get("q")) { $("q").value = initial.get("q"); search(); }
});
