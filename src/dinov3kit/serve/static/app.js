// dinov3kit web app: one page over the JSON API (no build step, no external resources).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, hits: new Set(), queryRow: null, modalRow: null };

// --- API calls and errors -------------------------------------------------------------------
class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    throw new ApiError(`the server cannot be reached (${error.message})`, 0);
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new ApiError(message, response.status);
  }
  return response;
}

const getJSON = async (url, options) => (await api(url, options)).json();

function showError(error) {
  $("error-text").textContent = error instanceof Error ? error.message : String(error);
  $("error").hidden = false;
}

function clearError() { $("error").hidden = true; }

async function guarded(action) {
  try {
    await action();
  } catch (error) {
    showError(error);
  }
}

// Load a PNG/JPEG answer into an <img> through fetch, so that a JSON error can be shown.
async function loadInto(img, url) {
  const blob = await (await api(url)).blob();
  const old = img.dataset.blob;
  img.src = URL.createObjectURL(blob);
  img.dataset.blob = img.src;
  if (old) URL.revokeObjectURL(old);
  await img.decode().catch(() => {});
}

const thumb = (row, size = 256) => `/api/thumbnails/${row}?size=${size}`;
const basename = (path) => path.split(/[\\/]/).pop();

// --- tabs --------------------------------------------------------------------------------------
function showTab(name) {
  for (const button of document.querySelectorAll("#tabs button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const section of document.querySelectorAll(".tab")) section.hidden = section.id !== `tab-${name}`;
  if (name === "map") MapView.open();
  if (name === "duplicates" && !$("groups").dataset.loaded) Duplicates.load();
}

// --- cards (search hits, duplicate groups) -----------------------------------------------------
function card({ row, path, label, size = 256 }) {
  const element = document.createElement("div");
  element.className = "card";
  element.dataset.row = row;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = basename(path);
  img.src = thumb(row, size);
  img.title = "search by this image";
  img.addEventListener("click", () => guarded(() => Search.byRow(row)));
  img.addEventListener("error", () => { img.alt = "(image unavailable)"; });
  const meta = document.createElement("div");
  meta.className = "meta";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = label;
  const where = document.createElement("span");
  where.className = "path";
  where.append(Object.assign(document.createElement("bdi"), { textContent: path })); // clipped on the left
  where.title = `row ${row}: ${path}`;
  const actions = document.createElement("div");
  actions.className = "actions";
  for (const [text, action] of [["dense", () => Dense.openRow(row)], ["ref", () => Dense.setRefRow(row)], ["open", () => Modal.open(row)]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = text;
    button.addEventListener("click", () => guarded(action));
    actions.append(button);
  }
  meta.append(score, where, actions);
  element.append(img, meta);
  return element;
}

// --- search ------------------------------------------------------------------------------------
const Search = {
  k() {
    const k = Math.round(Number($("search-k").value));
    if (!(k >= 1 && k <= 1000)) throw new ApiError("results must be a number from 1 to 1000", 0);
    return k;
  },
  async byFile(file) {
    if (!file) return;
    const k = this.k();
    this.setQuery(URL.createObjectURL(file), `uploaded: ${file.name}`);
    state.queryRow = null;
    const form = new FormData();
    form.append("file", file);
    form.append("k", k);
    $("search-status").textContent = "embedding the query…";
    const result = await getJSON("/api/search", { method: "POST", body: form });
    this.show(result, `embedding ${result.query.embed_ms.toFixed(0)} ms, `);
  },
  async byRow(row) {
    showTab("search");
    const k = this.k();
    const info = await getJSON(`/api/rows/${row}`);
    this.setQuery(thumb(row, 128), `row ${row}: ${basename(info.path)}`);
    state.queryRow = row;
    $("search-status").textContent = "searching…";
    this.show(await getJSON(`/api/search?row=${row}&k=${k}`), "");
  },
  setQuery(src, text) {
    const img = $("query-image");
    if (img.dataset.blob) URL.revokeObjectURL(img.dataset.blob);
    img.dataset.blob = src.startsWith("blob:") ? src : "";
    img.src = src;
    $("query-text").textContent = text;
    $("query").hidden = false;
  },
  show(result, prefix) {
    clearError();
    const grid = $("hits");
    grid.replaceChildren(...result.hits.map((hit) => card({ row: hit.row, path: hit.path, label: `#${hit.rank}  ${hit.score.toFixed(4)}` })));
    $("search-status").textContent = `${result.hits.length} results (${prefix}search ${result.search_ms.toFixed(1)} ms)`;
    state.hits = new Set(result.hits.map((hit) => hit.row));
    MapView.draw();
  },
};

// --- duplicates --------------------------------------------------------------------------------
const Duplicates = {
  request: 0,
  timer: null,
  changed() {
    $("dup-value").textContent = Number($("dup-threshold").value).toFixed(3);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.load(), 150);
  },
  async load() {
    const threshold = Number($("dup-threshold").value);
    const request = ++this.request;
    $("groups").classList.add("busy");
    $("dup-summary").textContent = "grouping… (the first time, all pairs are compared: large indexes take a while)";
    try {
      const result = await getJSON(`/api/duplicates?threshold=${threshold}&limit=100`);
      if (request !== this.request) return;
      this.show(result);
    } catch (error) {
      if (request === this.request) { $("dup-summary").textContent = ""; showError(error); }
    } finally {
      if (request === this.request) $("groups").classList.remove("busy");
    }
  },
  show(result) {
    clearError();
    $("groups").dataset.loaded = "1";
    $("dup-summary").textContent =
      `${result.groups} groups, ${result.duplicates} images duplicating another at similarity ≥ ${result.threshold}` +
      (result.groups > result.listed.length ? ` (largest ${result.listed.length} shown)` : "");
    $("groups").replaceChildren(...result.listed.map((group) => {
      const section = document.createElement("div");
      section.className = "group";
      const title = document.createElement("h3");
      title.textContent = `${group.size} images`;
      const grid = document.createElement("div");
      grid.className = "grid";
      grid.append(...group.members.map((m) => card({ row: m.row, path: m.path, label: `sim ${m.similarity.toFixed(4)}`, size: 128 })));
      section.append(title, grid);
      return section;
    }));
  },
};

// --- the map -----------------------------------------------------------------------------------
const MapView = {
  points: null, // {x: Float32Array, y: Float32Array, n}
  method: null,
  view: { scale: 1, dx: 0, dy: 0 },
  buckets: null,
  hover: -1,
  async open() {
    const method = $("map-method").value || "pca";
    if (this.points && this.method === method) { this.resize(); return; }
    $("map-status").textContent = `computing the ${method.toUpperCase()} projection…`;
    try {
      const data = await getJSON(`/api/map?method=${method}`);
      this.method = method;
      this.points = { x: Float32Array.from(data.x), y: Float32Array.from(data.y), n: data.rows };
      this.index();
      this.reset();
      $("map-status").textContent = `${data.rows.toLocaleString()} images, ${method.toUpperCase()} of the features. Scroll to zoom, drag to pan, click a point to open it; search hits are orange.`;
    } catch (error) {
      $("map-status").textContent = "";
      showError(error);
    }
  },
  index() { // a 64 x 64 grid of point lists over [0, 1]^2 for hover look-ups
    const size = 64, { x, y, n } = this.points;
    const buckets = Array.from({ length: size * size }, () => []);
    for (let i = 0; i < n; i++) buckets[Math.min(size - 1, (y[i] * size) | 0) * size + Math.min(size - 1, (x[i] * size) | 0)].push(i);
    this.buckets = { size, lists: buckets };
  },
  reset() { this.view = { scale: 1, dx: 0, dy: 0 }; this.resize(); },
  resize() {
    const canvas = $("map"), ratio = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    canvas.height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    this.draw();
  },
  frame() { // the plotting area of the canvas: margin m, width w, height h (canvas pixels)
    const canvas = $("map"), m = 12 * (window.devicePixelRatio || 1);
    return { m, w: Math.max(1, canvas.width - 2 * m), h: Math.max(1, canvas.height - 2 * m) };
  },
  toScreen(px, py) { // data [0, 1] → canvas pixels
    const { m, w, h } = this.frame(), { scale, dx, dy } = this.view;
    return [m + (px * scale + dx) * w, m + (py * scale + dy) * h];
  },
  toData(sx, sy) {
    const { m, w, h } = this.frame(), { scale, dx, dy } = this.view;
    return [((sx - m) / w - dx) / scale, ((sy - m) / h - dy) / scale];
  },
  draw() {
    const canvas = $("map");
    if (!this.points || canvas.offsetParent === null) return;
    const started = performance.now();
    const context = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
    const image = context.createImageData(W, H), pixels = new Uint32Array(image.data.buffer);
    pixels.fill(0xff120f0d);
    const { x, y, n } = this.points, ratio = window.devicePixelRatio || 1;
    const { m, w, h } = this.frame(), { scale, dx, dy } = this.view;
    const ax = scale * w, bx = m + dx * w, ay = scale * h, by = m + dy * h; // screen = a * data + b
    const plot = (i, color, size) => {
      const left = Math.round(ax * x[i] + bx) - (size >> 1), top = Math.round(ay * y[i] + by) - (size >> 1);
      if (left >= W || top >= H || left + size <= 0 || top + size <= 0) return;
      for (let v = Math.max(0, top); v < Math.min(H, top + size); v++)
        for (let u = Math.max(0, left); u < Math.min(W, left + size); u++) pixels[v * W + u] = color;
    };
    const dot = Math.round((n < 2000 ? 6 : n < 20000 ? 3 : 2) * Math.min(2, ratio));
    for (let i = 0; i < n; i++) plot(i, 0xffffb34f, dot); // ABGR: accent blue
    for (const row of state.hits) if (row < n) plot(row, 0xff3b9dff, dot + 3); // orange
    if (state.queryRow !== null && state.queryRow < n) plot(state.queryRow, 0xffffffff, dot + 5);
    if (this.hover >= 0) plot(this.hover, 0xffffffff, dot + 3);
    context.putImageData(image, 0, 0);
    this.drawMs = performance.now() - started;
  },
  redraw() { // at most one drawing per frame while zooming, panning or hovering
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  },
  nearest(sx, sy, radius) { // nearest point to canvas pixel (sx, sy) within `radius` pixels, or -1
    const [px, py] = this.toData(sx, sy), { size, lists } = this.buckets;
    const [rx] = this.toData(sx + radius, sy), reach = Math.abs(rx - px);
    let best = -1, bestDistance = radius * radius;
    const c0 = Math.max(0, ((px - reach) * size) | 0), c1 = Math.min(size - 1, ((px + reach) * size) | 0);
    const r0 = Math.max(0, ((py - reach) * size) | 0), r1 = Math.min(size - 1, ((py + reach) * size) | 0);
    for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) for (const i of lists[r * size + c]) {
      const [qx, qy] = this.toScreen(this.points.x[i], this.points.y[i]);
      const distance = (qx - sx) ** 2 + (qy - sy) ** 2;
      if (distance < bestDistance) { best = i; bestDistance = distance; }
    }
    return best;
  },
  canvasPoint(event) {
    const canvas = $("map"), box = canvas.getBoundingClientRect(), ratio = canvas.width / box.width;
    return [(event.clientX - box.left) * ratio, (event.clientY - box.top) * ratio, ratio];
  },
  paths: new Map(),
  async showTip(row, event) {
    const tip = $("map-tip"), wrap = $("map-wrap").getBoundingClientRect();
    tip.hidden = false;
    tip.style.left = `${Math.min(event.clientX - wrap.left + 14, wrap.width - 230)}px`;
    tip.style.top = `${Math.min(event.clientY - wrap.top + 14, wrap.height - 170)}px`;
    $("map-tip-image").src = thumb(row, 128);
    if (!this.paths.has(row)) this.paths.set(row, (await getJSON(`/api/rows/${row}`)).path);
    if (this.hover === row) $("map-tip-text").textContent = `row ${row}: ${basename(this.paths.get(row))}`;
  },
  setup() {
    const canvas = $("map");
    let drag = null;
    canvas.addEventListener("wheel", (event) => {
      if (!this.points) return;
      event.preventDefault();
      const [sx, sy] = this.canvasPoint(event), [px, py] = this.toData(sx, sy);
      const factor = Math.exp(-event.deltaY * 0.0015), scale = Math.min(500, Math.max(0.5, this.view.scale * factor));
      const { m, w, h } = this.frame();
      this.view.dx = (sx - m) / w - px * scale;
      this.view.dy = (sy - m) / h - py * scale;
      this.view.scale = scale;
      this.redraw();
    }, { passive: false });
    canvas.addEventListener("mousedown", (event) => { drag = { x: event.clientX, y: event.clientY, dx: this.view.dx, dy: this.view.dy, moved: false }; });
    window.addEventListener("mouseup", () => { setTimeout(() => { drag = null; }, 0); });
    canvas.addEventListener("mousemove", (event) => {
      if (!this.points) return;
      if (drag && (event.buttons & 1)) {
        const ratio = canvas.width / canvas.getBoundingClientRect().width, { w, h } = this.frame();
        drag.moved = drag.moved || Math.abs(event.clientX - drag.x) + Math.abs(event.clientY - drag.y) > 3;
        this.view.dx = drag.dx + ((event.clientX - drag.x) * ratio) / w;
        this.view.dy = drag.dy + ((event.clientY - drag.y) * ratio) / h;
        this.redraw();
        return;
      }
      const [sx, sy, ratio] = this.canvasPoint(event), row = this.nearest(sx, sy, 8 * ratio);
      if (row !== this.hover) {
        this.hover = row;
        this.redraw();
        if (row < 0) $("map-tip").hidden = true;
        else { $("map-tip-text").textContent = `row ${row}`; this.showTip(row, event).catch(showError); }
      }
    });
    canvas.addEventListener("mouseleave", () => { this.hover = -1; $("map-tip").hidden = true; this.redraw(); });
    canvas.addEventListener("click", (event) => {
      if (!this.points || (drag && drag.moved)) return;
      const [sx, sy, ratio] = this.canvasPoint(event), row = this.nearest(sx, sy, 8 * ratio);
      if (row >= 0) guarded(() => Modal.open(row));
    });
    $("map-reset").addEventListener("click", () => this.reset());
    $("map-method").addEventListener("change", () => this.open());
    window.addEventListener("resize", () => this.resize());
  },
};

// --- dense features ----------------------------------------------------------------------------
const Dense = {
  source: null, // {file} or {row}
  refSource: null,
  view: null,
  ref: null,
  point: null,
  resolution() { return Number($("dense-res").value); },
  async post(source) {
    const form = new FormData();
    if (source.file) form.append("file", source.file); else form.append("row", source.row);
    form.append("resolution", this.resolution());
    return getJSON("/api/dense", { method: "POST", body: form });
  },
  async open(source) {
    showTab("dense");
    this.source = source;
    $("dense-status").textContent = "computing patch features…";
    this.view = await this.post(source);
    this.point = null;
    await Promise.all([loadInto($("dense-image"), this.view.image), loadInto($("dense-pca"), this.view.pca)]);
    this.clearMarker();
    $("dense-heat").removeAttribute("src");
    $("dense-caption").textContent = `${this.view.width}x${this.view.height} px, ${this.view.grid[0]}x${this.view.grid[1]} patches: PCA of the patch features as RGB (click a patch)`;
    $("dense-status").textContent = "Click a patch of the image.";
    clearError();
    if (this.refSource && (!this.ref || this.ref.resolution !== this.view.resolution)) await this.setRef(this.refSource);
  },
  openRow(row) { return this.open({ row }); },
  async setRef(source) {
    this.refSource = source;
    this.ref = await this.post(source);
    if (this.point && this.view) await this.similarity(...this.point);
    else await loadInto($("dense-ref"), this.ref.image);
    $("ref-caption").textContent = source.file ? `reference: ${source.file.name}` : `reference: row ${source.row}`;
  },
  setRefRow(row) { showTab("dense"); return this.setRef({ row }); },
  async similarity(x, y) {
    this.point = [x, y];
    this.drawMarker(x, y);
    const base = `/api/dense/${this.view.id}/similarity.png?x=${x.toFixed(5)}&y=${y.toFixed(5)}`;
    const jobs = [loadInto($("dense-heat"), base)];
    if (this.ref) jobs.push(loadInto($("dense-ref"), `${base}&target=${this.ref.id}`));
    try {
      await Promise.all(jobs);
    } catch (error) {
      if (error.status !== 404) throw error; // views dropped from the server's memory: compute them again
      this.view = await this.post(this.source);
      if (this.refSource) this.ref = await this.post(this.refSource);
      const retry = `/api/dense/${this.view.id}/similarity.png?x=${x.toFixed(5)}&y=${y.toFixed(5)}`;
      await Promise.all([loadInto($("dense-heat"), retry), ...(this.ref ? [loadInto($("dense-ref"), `${retry}&target=${this.ref.id}`)] : [])]);
    }
    const [rows, cols] = this.view.grid;
    $("heat-caption").textContent = `similarity of patch (${Math.min(rows - 1, (y * rows) | 0)}, ${Math.min(cols - 1, (x * cols) | 0)}) over the same image`;
    $("dense-status").textContent = "Click another patch, or change the resolution.";
    clearError();
  },
  clearMarker() {
    const canvas = $("dense-marker");
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  },
  drawMarker(x, y) {
    const canvas = $("dense-marker"), box = canvas.getBoundingClientRect();
    canvas.width = Math.round(box.width);
    canvas.height = Math.round(box.height);
    const context = canvas.getContext("2d"), [rows, cols] = this.view.grid;
    const cw = canvas.width / cols, ch = canvas.height / rows;
    const c = Math.min(cols - 1, (x * cols) | 0), r = Math.min(rows - 1, (y * rows) | 0);
    context.lineWidth = 2;
    context.strokeStyle = "#00ffff";
    context.strokeRect(c * cw, r * ch, cw, ch);
  },
  setup() {
    $("dense-stack").addEventListener("click", (event) => {
      if (!this.view) return;
      const box = $("dense-stack").getBoundingClientRect();
      const x = Math.min(0.99999, Math.max(0, (event.clientX - box.left) / box.width));
      const y = Math.min(0.99999, Math.max(0, (event.clientY - box.top) / box.height));
      guarded(() => this.similarity(x, y));
    });
    $("dense-opacity").addEventListener("input", () => { $("dense-pca").style.opacity = $("dense-opacity").value; });
    $("dense-pca").style.opacity = $("dense-opacity").value;
    $("dense-res").addEventListener("input", () => { $("dense-res-value").textContent = $("dense-res").value; });
    $("dense-res").addEventListener("change", () => { if (this.source) guarded(() => this.open(this.source)); });
    $("dense-file").addEventListener("change", (event) => guarded(() => this.open({ file: event.target.files[0] })));
    $("ref-file").addEventListener("change", (event) => guarded(() => this.setRef({ file: event.target.files[0] })));
    dropTarget($("dense-drop"), (file) => this.open({ file }));
    dropTarget($("ref-drop"), (file) => this.setRef({ file }));
  },
};

// --- the row dialog ----------------------------------------------------------------------------
const Modal = {
  async open(row) {
    const info = await getJSON(`/api/rows/${row}`);
    state.modalRow = row;
    $("modal-image").src = thumb(row, 512);
    $("modal-path").textContent = `row ${row}: ${info.path}`;
    $("modal").hidden = false;
  },
  close() { $("modal").hidden = true; },
  setup() {
    const act = (action) => () => { this.close(); guarded(() => action(state.modalRow)); };
    $("modal-search").addEventListener("click", act((row) => Search.byRow(row)));
    $("modal-dense").addEventListener("click", act((row) => Dense.openRow(row)));
    $("modal-ref").addEventListener("click", act((row) => Dense.setRefRow(row)));
    $("modal-close").addEventListener("click", () => this.close());
    $("modal").addEventListener("click", (event) => { if (event.target === $("modal")) this.close(); });
    document.addEventListener("keydown", (event) => { if (event.key === "Escape") this.close(); });
  },
};

// --- drag and drop -----------------------------------------------------------------------------
function dropTarget(element, onFile) {
  element.addEventListener("dragover", (event) => { event.preventDefault(); element.classList.add("over"); });
  element.addEventListener("dragleave", () => element.classList.remove("over"));
  element.addEventListener("drop", (event) => {
    event.preventDefault();
    element.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) guarded(() => onFile(file));
    else showError("drop an image file (from your files, not a link)");
  });
}

// --- start -------------------------------------------------------------------------------------
async function start() {
  for (const button of document.querySelectorAll("#tabs button")) button.addEventListener("click", () => showTab(button.dataset.tab));
  $("error-close").addEventListener("click", clearError);
  $("search-file").addEventListener("change", (event) => guarded(() => Search.byFile(event.target.files[0])));
  dropTarget($("search-drop"), (file) => Search.byFile(file));
  dropTarget($("hits"), (file) => Search.byFile(file));
  $("dup-threshold").addEventListener("input", () => Duplicates.changed());
  MapView.setup();
  Dense.setup();
  Modal.setup();
  const info = await getJSON("/api/info");
  state.info = info;
  $("summary").textContent = `${info.rows.toLocaleString()} images · ${basename(info.model)}${info.model_loaded ? "" : " (not loaded: search by clicking)"}`;
  $("summary").title = `${info.index}\nmodel: ${info.model}\nfeature: ${info.feature}, ${info.dim} dims`;
  $("dup-threshold").min = info.dedup_floor;
  $("dense-res").min = info.dense_resolution[0];
  $("dense-res").max = info.dense_resolution[1];
  $("search-k").max = info.max_k;
  $("map-method").replaceChildren(...info.map_methods.map((method) => new Option(method.toUpperCase(), method)));
  if (!info.model_loaded) showError(`No model is loaded, so uploads and dense views are off; click images to search. ${info.model_error || ""}`);
  document.body.dataset.ready = "1";
}

window.addEventListener("DOMContentLoaded", () => guarded(start));
