"use strict";
// The kiosk page: photo -> /api/recognise -> tap to add -> /api/basket -> /api/recommend.
// Plain browser JavaScript, no build step. Text from the server is set with textContent only.

const $ = (id) => document.getElementById(id);

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("api-key").value || localStorage.getItem("shelfedge-api-key") || "";
  if (key) h["X-API-Key"] = key;
  return h;
}

async function api(method, url, body, json) {
  const init = { method, credentials: "same-origin", headers: headers(json ? { "Content-Type": "application/json" } : {}) };
  if (body !== undefined) init.body = json ? JSON.stringify(body) : body;
  const response = await fetch(url, init);
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function showError(e) { $("error").textContent = e ? String(e.message || e) : ""; }

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function thumb(product) {
  const img = el("img");
  img.alt = product.name;
  img.src = `/api/products/${encodeURIComponent(product.label)}/image`;
  return img;
}

async function recognise(blob, name) {
  showError();
  $("preview").src = URL.createObjectURL(blob);
  $("preview").hidden = false;
  const form = new FormData();
  form.append("image", blob, name || "photo.jpg");
  try {
    showResult(await api("POST", "/api/recognise", form, false));
  } catch (e) { showError(e); }
}

function showProduct(data) {
  const p = data.product;
  $("product-name").classList.toggle("unknown", !data.known);
  $("product-add").hidden = !data.enrolled;
  if (!p) {  // the bundle's rule says this is none of the products: say so instead of guessing
    const rule = data.unknown_rule;
    $("product-name").textContent = data.message || "I don't know this product";
    $("product-description").textContent = (rule ? `(${rule.rule} rule, threshold ${rule.threshold.toFixed(3)}) ` : "") +
      "Pick it below if it is one of these, or enrol it as a new product.";
    $("product-image").hidden = true;
    return;
  }
  const how = data.enrolled ? `enrolled product, similarity ${(100 * p.score).toFixed(1)}%` : `${(100 * p.score).toFixed(1)}%`;
  $("product-name").textContent = `${p.name || p.label} (${how})`;
  $("product-description").textContent = p.description || "";
  $("product-add").onclick = () => addToBasket(p.label);
  $("product-image").hidden = !p.has_image;
  if (p.has_image) { $("product-image").src = thumb(p).src; $("product-image").alt = p.name; }
}

function showResult(data) {
  $("result").hidden = false;
  showProduct(data);
  const list = $("top");
  list.replaceChildren();
  for (const c of data.top) {
    const button = el("button", `${c.name || c.label} — ${(100 * c.score).toFixed(1)}%`);
    const bar = el("span", undefined, "bar");
    bar.style.width = `${Math.max(2, Math.round(100 * c.score))}px`;
    button.append(bar);
    button.type = "button";
    button.addEventListener("click", () => addToBasket(c.label));
    const li = el("li");
    li.append(button);
    list.append(li);
  }
  const t = data.timings, r = data.ran;
  $("latency").textContent = `decode ${t.decode_ms} ms · preprocess ${t.preprocess_ms} ms · inference ${t.inference_ms} ms · ` +
    `postprocess ${t.postprocess_ms} ms · server ${t.server_ms} ms — ${r.runtime} ${r.runtime_version} on ${r.device} (${r.precision})` +
    (r.fell_back ? ` — fell back: ${r.fallback_reason}` : "");
  $("runtime").textContent = `${r.runtime} on ${r.device}`;
}

async function addToBasket(label) {
  try { showBasket(await api("POST", "/api/basket", { label }, true)); await refreshRecs(); } catch (e) { showError(e); }
}

async function removeFromBasket(label) {
  const url = label ? `/api/basket?label=${encodeURIComponent(label)}` : "/api/basket";
  try { showBasket(await api("DELETE", url)); await refreshRecs(); } catch (e) { showError(e); }
}

function showBasket(data) {
  const list = $("basket");
  list.replaceChildren();
  if (!data.items.length) list.append(el("li", "The basket is empty.", "muted"));
  for (const item of data.items) {
    const li = el("li");
    if (item.has_image) li.append(thumb(item));
    li.append(el("span", `${item.name}${item.category ? ` (${item.category})` : ""} `));
    const remove = el("button", "remove", "small");
    remove.type = "button";
    remove.addEventListener("click", () => removeFromBasket(item.label));
    li.append(remove);
    list.append(li);
  }
}

async function refreshRecs() {
  const data = await api("GET", "/api/recommend?k=5");
  const list = $("recs");
  list.replaceChildren();
  for (const item of data.items) {
    const li = el("li");
    li.append(el("strong", item.name));
    if (item.products.length) {
      const thumbs = el("span", undefined, "thumbs");
      thumbs.append(el("span", " — in store: "));
      for (const p of item.products.slice(0, 4)) {
        if (p.has_image) thumbs.append(thumb(p));
        thumbs.append(el("span", `${p.name}  `));
      }
      li.append(thumbs);
    }
    list.append(li);
  }
  const notes = data.notes.length ? ` — ${data.notes.join("; ")}` : "";
  $("rec-latency").textContent = `encode ${data.timings.encode_ms} ms · score ${data.timings.score_ms} ms · ` +
    `total ${data.timings.total_ms} ms — ${data.ran.runtime} on ${data.ran.device}${notes}`;
}

async function refreshEnrolled() {
  let data;
  try { data = await api("GET", "/api/enrol"); } catch (e) { $("enrol-status").textContent = e.message; return; }
  const list = $("enrolled");
  list.replaceChildren();
  for (const p of data.products) {
    const li = el("li", `${p.name}${p.category ? ` (${p.category})` : ""} — ${p.photos} photo(s) `);
    const remove = el("button", "delete", "small");
    remove.type = "button";
    remove.addEventListener("click", async () => {
      try { await api("DELETE", `/api/enrol/${p.id}`); await refreshEnrolled(); } catch (e) { showError(e); }
    });
    li.append(remove);
    list.append(li);
  }
}

async function enrol(event) {
  event.preventDefault();
  const files = $("enrol-photos").files;
  if (files.length < 1 || files.length > 5) { $("enrol-status").textContent = "Choose 1 to 5 photos."; return; }
  const form = new FormData();
  for (const f of files) form.append("photos", f, f.name);
  form.append("name", $("enrol-name").value);
  form.append("category", $("enrol-category").value);
  try {
    const data = await api("POST", "/api/enrol", form, false);
    $("enrol-status").textContent = `Enrolled ${data.product.name} from ${data.product.photos} photo(s).`;
    $("enrol-form").reset();
    await refreshEnrolled();
  } catch (e) { $("enrol-status").textContent = e.message; }
}

let stream = null;

async function startCamera() {
  showError();
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  } catch (e) { showError(`camera unavailable: ${e.message || e}; upload a photo instead`); return; }
  $("video").srcObject = stream;
  $("video").hidden = false;
  $("camera-snap").hidden = false;
}

function snap() {
  const video = $("video"), canvas = $("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => blob && recognise(blob, "camera.jpg"), "image/jpeg", 0.92);
}

$("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) recognise(f, f.name); });
$("camera-start").addEventListener("click", startCamera);
$("camera-snap").addEventListener("click", snap);
$("basket-clear").addEventListener("click", () => removeFromBasket(null));
$("api-key").value = localStorage.getItem("shelfedge-api-key") || "";
$("api-key").addEventListener("change", (e) => localStorage.setItem("shelfedge-api-key", e.target.value));
api("GET", "/api/basket").then(showBasket).then(refreshRecs).catch(showError);
$("enrol-form").addEventListener("submit", enrol);
refreshEnrolled();
