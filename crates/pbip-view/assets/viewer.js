// pbip view: slide list, OpenSeadragon viewer with prediction layers.
// Every string from the server is inserted with textContent (slide names and errors are data).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const state = {
    slides: [],
    current: -1,
    detail: null,
    hidden: new Set(),
    maskOn: params.get("mask") !== "0",
    maskOpacity: clamp01(parseFloat(params.get("opacity") ?? "0.5")),
    heat: params.get("heat") || "",
    heatOpacity: clamp01(parseFloat(params.get("heat_opacity") ?? "0.6")),
    contoursOn: params.get("contours") === "1",
    items: { slide: null, mask: null, heat: null },
    geojson: null, // {id, paths: [{classIndex, color, path}]}
    generation: 0,
    userMoved: false,
  };

  function clamp01(v) {
    return Number.isFinite(v) ? Math.min(1, Math.max(0, v)) : 0.5;
  }

  function enc(id) {
    return encodeURIComponent(id);
  }

  function rgb(c) {
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function message(text, kind) {
    const box = $("messages");
    const key = String(text);
    for (const m of box.children) if (m.dataset.key === key) return;
    const m = el("div", text, "msg" + (kind === "info" ? " info" : ""));
    m.dataset.key = key;
    box.appendChild(m);
    while (box.children.length > 30) box.removeChild(box.firstChild);
  }

  function clearMessages() {
    $("messages").replaceChildren();
  }

  function setState(s) {
    document.body.dataset.state = s;
  }

  // ---- viewer ------------------------------------------------------------------------------
  const viewer = OpenSeadragon({
    element: $("viewer"),
    prefixUrl: "/assets/openseadragon/images/",
    drawer: "canvas",
    loadTilesWithAjax: true,
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    navigatorAutoFade: false,
    showRotationControl: false,
    maxZoomPixelRatio: 4,
    visibilityRatio: 0.3,
    animationTime: 0.4,
    timeout: 120000,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
  });

  viewer.addHandler("tile-loaded", (e) => {
    const r = e.tileRequest;
    const err = r && r.getResponseHeader ? r.getResponseHeader("X-Pbip-Error") : null;
    if (err) message(err);
  });
  viewer.addHandler("tile-load-failed", (e) => {
    const r = e.tileRequest;
    const body = r && typeof r.responseText === "string" && r.status ? ` (${r.status})` : "";
    message(`tile ${e.tile ? e.tile.level + "/" + e.tile.x + "_" + e.tile.y : ""} failed: ${e.message || "error"}${body}`);
  });
  viewer.addHandler("open-failed", (e) => {
    message(`cannot open the slide: ${e.message || "error"}`);
    setState("error");
  });

  function checkReady() {
    const n = viewer.world.getItemCount();
    // Which layers are still loading, for people (and tests) reading the page's state.
    const layers = [];
    for (let i = 0; i < n; i++) {
      const it = viewer.world.getItemAt(i);
      const url = it.source && it.source.tilesUrl ? it.source.tilesUrl : "?";
      layers.push(`${url}:${it.getFullyLoaded() ? "loaded" : "loading"}`);
    }
    document.body.dataset.layers = layers.join(" ");
    if (n === 0) return;
    for (let i = 0; i < n; i++) {
      if (!viewer.world.getItemAt(i).getFullyLoaded()) {
        setState("loading");
        return;
      }
    }
    setState("ready");
  }

  viewer.world.addHandler("add-item", (e) => {
    e.item.addHandler("fully-loaded-change", checkReady);
    checkReady();
  });
  viewer.world.addHandler("remove-item", checkReady);
  // OpenSeadragon re-evaluates "fully loaded" while it updates; a change that raises no event
  // (e.g. an item that finished loading while another was being replaced) is caught here.
  viewer.addHandler("update-viewport", checkReady);

  // ---- contours ----------------------------------------------------------------------------
  const contourCanvas = el("canvas");
  contourCanvas.id = "contours";
  viewer.canvas.appendChild(contourCanvas);

  function drawContours() {
    const c = contourCanvas;
    const dpr = window.devicePixelRatio || 1;
    const w = viewer.canvas.clientWidth, h = viewer.canvas.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
      c.style.width = w + "px";
      c.style.height = h + "px";
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, c.width, c.height);
    const item = state.items.slide;
    const g = state.geojson;
    if (!state.contoursOn || !item || !g || !state.detail || g.id !== state.detail.id) return;
    const p0 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const p1 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(1000, 1000));
    const sx = (p1.x - p0.x) / 1000, sy = (p1.y - p0.y) / 1000;
    ctx.setTransform(dpr * sx, 0, 0, dpr * sy, dpr * p0.x, dpr * p0.y);
    ctx.lineWidth = 2 / sx;
    ctx.lineJoin = "round";
    for (const p of g.paths) {
      if (p.classIndex !== null && state.hidden.has(p.classIndex)) continue;
      ctx.strokeStyle = p.color;
      ctx.stroke(p.path);
    }
  }

  function buildPaths(id, fc) {
    const classes = state.detail ? state.detail.classes : [];
    const byName = new Map(classes.map((c) => [c.name, c]));
    const paths = [];
    const ring = (path, pts) => {
      pts.forEach((pt, i) => (i === 0 ? path.moveTo(pt[0], pt[1]) : path.lineTo(pt[0], pt[1])));
      path.closePath();
    };
    for (const f of (fc && fc.features) || []) {
      const geom = f.geometry || {};
      const cls = (f.properties && f.properties.classification) || {};
      const known = byName.get(cls.name);
      const color = known ? rgb(known.color) : Array.isArray(cls.color) ? rgb(cls.color) : "#000";
      const path = new Path2D();
      if (geom.type === "Polygon") geom.coordinates.forEach((r) => ring(path, r));
      else if (geom.type === "MultiPolygon") geom.coordinates.forEach((poly) => poly.forEach((r) => ring(path, r)));
      else continue;
      paths.push({ classIndex: known ? known.index : null, color, path });
    }
    return { id, paths };
  }

  async function ensureGeojson() {
    const d = state.detail;
    if (!d || !state.contoursOn) return;
    if (state.geojson && state.geojson.id === d.id) return;
    if (!d.layers || !d.layers.geojson.available) {
      message(`contours: ${(d.layers && d.layers.geojson.error) || "no GeoJSON for this slide"}`);
      return;
    }
    const gen = state.generation;
    try {
      const r = await fetch(`/api/slides/${enc(d.id)}/geojson`);
      if (!r.ok) throw new Error(await r.text());
      const fc = await r.json();
      if (gen !== state.generation) return;
      state.geojson = buildPaths(d.id, fc);
      drawContours();
    } catch (e) {
      message(`contours: ${e.message || e}`);
    }
  }

  // ---- scale bar ---------------------------------------------------------------------------
  function updateScalebar() {
    const item = state.items.slide;
    const mpp = state.detail && state.detail.mpp;
    const bar = $("scalebar");
    if (!item || !mpp) {
      bar.hidden = true;
      return;
    }
    const p0 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const p1 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(1000, 0));
    const screenPerPx = (p1.x - p0.x) / 1000; // screen px per level-0 px
    if (!(screenPerPx > 0)) return;
    const umPerScreen = mpp / screenPerPx;
    const target = 120 * umPerScreen;
    const pow = Math.pow(10, Math.floor(Math.log10(target)));
    let nice = pow;
    for (const m of [1, 2, 5, 10]) if (m * pow <= target) nice = m * pow;
    $("scalebar-bar").style.width = `${nice / umPerScreen}px`;
    $("scalebar-label").textContent = nice >= 1000 ? `${+(nice / 1000).toPrecision(3)} mm` : `${+nice.toPrecision(3)} µm`;
    bar.hidden = false;
  }

  viewer.addHandler("update-viewport", () => {
    drawContours();
    updateScalebar();
  });
  // Until the user moves the view, the whole slide stays in view when the window resizes.
  viewer.addHandler("resize", () => {
    if (!state.userMoved && state.items.slide) viewer.viewport.goHome(true);
    drawContours();
  });
  for (const ev of ["canvas-drag", "canvas-scroll", "canvas-pinch", "canvas-double-click", "canvas-key", "navigator-click", "navigator-drag"]) {
    viewer.addHandler(ev, () => {
      state.userMoved = true;
    });
  }

  // ---- layers ------------------------------------------------------------------------------
  function hideQuery() {
    const h = [...state.hidden].sort((a, b) => a - b);
    return h.length ? `?hide=${h.join(",")}` : "";
  }

  function setItem(slot, url, opacity) {
    const old = state.items[slot];
    const gen = state.generation;
    if (!url) {
      if (old) viewer.world.removeItem(old);
      state.items[slot] = null;
      checkReady();
      return;
    }
    const opts = {
      tileSource: url,
      opacity,
      success: (e) => {
        if (gen !== state.generation) {
          viewer.world.removeItem(e.item);
          return;
        }
        state.items[slot] = e.item;
        checkReady();
      },
      error: (e) => message(`${slot} layer: ${e.message || "cannot be opened"}`),
    };
    if (old) {
      opts.index = viewer.world.getIndexOfItem(old);
      opts.replace = true;
    } else if (slot === "mask" && state.items.heat) {
      opts.index = viewer.world.getIndexOfItem(state.items.heat);
    }
    viewer.addTiledImage(opts);
  }

  function applyMask() {
    const d = state.detail;
    const ok = d && d.layers && d.layers.mask.available;
    setItem("mask", state.maskOn && ok ? `/overlays/${enc(d.id)}/mask.dzi${hideQuery()}` : null, state.maskOpacity);
  }

  function applyHeat() {
    const d = state.detail;
    const ok = d && d.layers && d.layers.confidence.available;
    const valid = ok && [...$("heat").options].some((o) => o.value === state.heat);
    $("heat-legend").hidden = !(valid && state.heat);
    setItem("heat", valid && state.heat ? `/overlays/${enc(d.id)}/${state.heat}.dzi` : null, state.heatOpacity);
  }

  function renderLegend() {
    const d = state.detail;
    const box = $("legend");
    box.replaceChildren();
    for (const c of (d && d.classes) || []) {
      const row = el("div", null, "legend-item" + (state.hidden.has(c.index) ? " off" : ""));
      row.title = "click to show / hide";
      const sw = el("span", null, "swatch");
      sw.style.background = rgb(c.color);
      row.append(sw, el("span", c.name, "name"));
      row.addEventListener("click", () => {
        if (state.hidden.has(c.index)) state.hidden.delete(c.index);
        else state.hidden.add(c.index);
        renderLegend();
        applyMask();
        drawContours();
      });
      box.appendChild(row);
    }
    const sel = $("heat");
    const keep = state.heat;
    sel.replaceChildren(el("option", "none"));
    sel.options[0].value = "";
    if (d && d.layers && d.layers.confidence.available) {
      for (const c of d.classes) {
        const o = el("option", `confidence: ${c.name}`);
        o.value = `confidence-${c.index}`;
        sel.appendChild(o);
      }
      if (d.classes.length >= 2) {
        const o = el("option", "uncertainty (1 − margin)");
        o.value = "uncertainty";
        sel.appendChild(o);
      }
    }
    sel.value = [...sel.options].some((o) => o.value === keep) ? keep : "";
    if (d && d.heat_colors) {
      $("heat-bar").style.background = `linear-gradient(to right, ${d.heat_colors.map(rgb).join(", ")})`;
    }
  }

  // ---- slide list --------------------------------------------------------------------------
  function pct(v) {
    return v === null || v === undefined ? "" : `${(100 * v).toFixed(v < 0.1 ? 1 : 0)}%`;
  }

  function scoreText(s) {
    if (!s) return ["", ""];
    if (s.state === "pending") return ["…", "scoring"];
    if (s.state === "failed") return ["!", s.error];
    if (s.tumour_iou !== null && s.tumour_iou !== undefined) return [`IoU ${s.tumour_iou.toFixed(2)}`, "tumour IoU against the GT mask"];
    return [`FP ${pct(s.false_positive_tissue_fraction)}`, "benign slide: tissue called tumour"];
  }

  function statusOf(s) {
    if (s.status === "error") return ["unreadable", "error", s.error];
    if (s.inference) {
      const st = s.inference.status || "?";
      return [st, st, s.inference.error || ""];
    }
    return [s.has_prediction ? "pred." : "no pred.", s.has_prediction ? "ok" : "none", ""];
  }

  function renderList() {
    const tb = $("slides").tBodies[0];
    tb.replaceChildren();
    state.slides.forEach((s, i) => {
      const tr = el("tr");
      tr.dataset.index = i;
      if (i === state.current) tr.className = "selected";
      const name = el("td", s.id);
      name.title = s.name;
      const [label, cls, why] = statusOf(s);
      const st = el("td");
      const b = el("span", label, "badge " + cls);
      if (why) b.title = why;
      st.appendChild(b);
      const tum = el("td", pct(s.positive_fraction));
      if (s.positive_area_mm2 !== null && s.positive_area_mm2 !== undefined) {
        tum.title = `${s.positive_class || "positive class"}: ${s.positive_area_mm2.toFixed(3)} mm²`;
      }
      const [sc, scTitle] = scoreText(s.score);
      const score = el("td", sc);
      if (scTitle) score.title = scTitle;
      tr.append(name, st, tum, score);
      tr.addEventListener("click", () => openSlide(i));
      tb.appendChild(tr);
    });
    $("count").textContent = `${state.slides.length} slide${state.slides.length === 1 ? "" : "s"}`;
  }

  async function refreshList() {
    const r = await fetch("/api/slides");
    if (!r.ok) throw new Error(await r.text());
    state.slides = await r.json();
    renderList();
    return state.slides;
  }

  function updateUrl() {
    const d = state.detail;
    const p = new URLSearchParams(location.search);
    if (d) p.set("slide", d.id);
    history.replaceState(null, "", `?${p.toString()}`);
  }

  async function openSlide(i) {
    if (i < 0 || i >= state.slides.length) return;
    state.current = i;
    state.generation += 1;
    const gen = state.generation;
    renderList();
    const row = $("slides").tBodies[0].rows[i];
    if (row) row.scrollIntoView({ block: "nearest" });
    clearMessages();
    setState("loading");
    const s = state.slides[i];
    $("slide-title").textContent = s.name;
    let d;
    try {
      const r = await fetch(`/api/slides/${enc(s.id)}`);
      if (!r.ok) throw new Error(await r.text());
      d = await r.json();
    } catch (e) {
      message(`${s.id}: ${e.message || e}`);
      setState("error");
      return;
    }
    if (gen !== state.generation) return;
    state.detail = d;
    state.items = { slide: null, mask: null, heat: null };
    state.geojson = null;
    viewer.world.removeAll();
    drawContours();
    updateScalebar();
    updateUrl();
    if (s.inference && s.inference.status === "failed") message(`inference failed: ${s.inference.error}`);
    for (const w of d.warnings || []) message(w, "info");
    if (d.layers) {
      for (const [k, v] of Object.entries(d.layers)) if (v && v.available === false && v.error) message(`${k}: ${v.error}`, "info");
    }
    renderLegend();
    $("no-prediction").hidden = !!d.layers;
    $("layer-controls").hidden = !d.layers;
    if (d.status !== "ok") {
      message(`${d.id}: ${d.error || "cannot be read"}`);
      setState("error");
      return;
    }
    viewer.addTiledImage({
      tileSource: d.dzi,
      index: 0,
      success: (e) => {
        if (gen !== state.generation) return;
        state.items.slide = e.item;
        state.userMoved = false;
        viewer.viewport.goHome(true);
        if (d.layers) {
          applyMask();
          applyHeat();
          ensureGeojson();
        }
        updateScalebar();
        checkReady();
      },
      error: (e) => {
        message(`${d.id}: ${e.message || "cannot open"}`);
        setState("error");
      },
    });
  }

  // ---- controls ----------------------------------------------------------------------------
  $("mask-on").checked = state.maskOn;
  $("mask-opacity").value = state.maskOpacity;
  $("heat-opacity").value = state.heatOpacity;
  $("contours-on").checked = state.contoursOn;

  $("mask-on").addEventListener("change", (e) => {
    state.maskOn = e.target.checked;
    applyMask();
  });
  $("mask-opacity").addEventListener("input", (e) => {
    state.maskOpacity = parseFloat(e.target.value);
    if (state.items.mask) state.items.mask.setOpacity(state.maskOpacity);
  });
  $("heat").addEventListener("change", (e) => {
    state.heat = e.target.value;
    applyHeat();
  });
  $("heat-opacity").addEventListener("input", (e) => {
    state.heatOpacity = parseFloat(e.target.value);
    if (state.items.heat) state.items.heat.setOpacity(state.heatOpacity);
  });
  $("contours-on").addEventListener("change", (e) => {
    state.contoursOn = e.target.checked;
    ensureGeojson();
    drawContours();
  });

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) return;
    const k = e.key;
    if (k === "n" || k === "j" || k === "PageDown") openSlide(Math.min(state.slides.length - 1, state.current + 1));
    else if (k === "p" || k === "k" || k === "PageUp") openSlide(Math.max(0, state.current - 1));
    else if (k === "m") {
      $("mask-on").checked = !$("mask-on").checked;
      $("mask-on").dispatchEvent(new Event("change"));
    } else if (k === "c") {
      $("contours-on").checked = !$("contours-on").checked;
      $("contours-on").dispatchEvent(new Event("change"));
    } else if (k === "h") {
      const sel = $("heat");
      if (sel.options.length) {
        sel.selectedIndex = (sel.selectedIndex + 1) % sel.options.length;
        sel.dispatchEvent(new Event("change"));
      }
    } else if (k === "0") viewer.viewport.goHome();
    else return;
    e.preventDefault();
  });

  // ---- start -------------------------------------------------------------------------------
  refreshList()
    .then((slides) => {
      if (!slides.length) {
        message("no slides");
        setState("error");
        return;
      }
      const want = params.get("slide");
      const i = want === null ? 0 : slides.findIndex((s) => s.id === want);
      if (want !== null && i < 0) message(`no slide ${want}`);
      openSlide(Math.max(0, i));
      // Scores computed in the background appear when ready.
      if (slides.some((s) => s.score && s.score.state === "pending")) {
        const poll = setInterval(async () => {
          const list = await refreshList().catch(() => []);
          if (!list.some((s) => s.score && s.score.state === "pending")) clearInterval(poll);
        }, 3000);
      }
    })
    .catch((e) => {
      message(`cannot list slides: ${e.message || e}`);
      setState("error");
    });
})();
