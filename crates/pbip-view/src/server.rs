//! The HTTP server: routes, handlers, tile rendering on the runtime's workers (bounded).
//!
//! Routes (ids are slide file stems, percent-encoded in URLs):
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the viewer page |
//! | `GET /assets/<name>` | embedded page assets (OpenSeadragon and its licence, script, style) |
//! | `GET /api/slides` | `[{id, name, width, height, mpp, status, error, inference, ...}]` |
//! | `GET /api/slides/<id>` | one slide with its classes and layers |
//! | `GET /api/slides/<id>/geojson` | the slide's `<id>.geojson` |
//! | `GET /api/stats` | tile cache counters |
//! | `GET /slides/<id>.dzi` | DeepZoom descriptor of the slide |
//! | `GET /slides/<id>_files/<level>/<col>_<row>.jpeg` | slide tile |
//! | `GET /overlays/<id>/<layer>.dzi` | descriptor of an overlay (same geometry as the slide) |
//! | `GET /overlays/<id>/<layer>_files/<level>/<col>_<row>.png[?hide=0,2]` | overlay tile |
//!
//! Overlay layers: `mask` (class colours; `hide` lists classes to leave transparent),
//! `confidence-<k>` (heat map of class `k`), `uncertainty`. Overlay tiles are indexed PNGs with
//! transparency; the page sets their opacity.
//!
//! Unknown ids, layers, levels or tiles → 404; a slide that cannot be opened → 500 on its
//! descriptor with the reason; a tile that cannot be read → an *error tile* (grey with a red cross,
//! or a transparent one with a red cross for overlays) with status 200 and the reason in the
//! `X-Pbip-Error` header, so the viewer draws it and shows the message. Nothing a request does can
//! stop the server: every read error is answered.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pbip_slide::{Backend, OpenOptions, Slide};
use serde::Serialize;

use crate::assets;
use crate::cache::{Layer, OpenSet, TileCache, TileKey};
use crate::catalog::{Catalog, ClassInfo, Entry, LayerStatus, MaskFile, SlideMeta};
use crate::dz::{DeepZoom, TileAddr, parse_tile_name};
use crate::error::{Result, ViewError};
use crate::layers::{ConfidenceMaps, LabelMask, heat_color, heat_palette, mask_palette};
use crate::render::{self, IndexedImage, Palette};
use crate::score::SlideScore;

/// Largest GeoJSON file served (the page draws it).
pub const MAX_GEOJSON_BYTES: u64 = 64 << 20;

/// Header carrying the reason of an error tile.
pub const ERROR_HEADER: &str = "x-pbip-error";

/// Options of [`Viewer::bind`].
#[derive(Debug, Clone)]
pub struct ViewOptions {
    /// Slide files and folders of slides.
    pub inputs: Vec<PathBuf>,
    /// `pbip infer` output folder (or its `predictions/`).
    pub predictions: Option<PathBuf>,
    /// GT masks `<id>.png` to score predictions against (optional).
    pub gt_dir: Option<PathBuf>,
    /// Address to bind (default 127.0.0.1).
    pub host: IpAddr,
    /// Port (0 = any free port).
    pub port: u16,
    /// DeepZoom tile side, px (default 254, as OpenSlide's deepzoom server).
    pub tile_size_px: u32,
    /// DeepZoom overlap, px (default 1).
    pub overlap_px: u32,
    /// JPEG quality of slide tiles, 1..=100 (default 75).
    pub jpeg_quality: u8,
    /// Budget of the encoded-tile cache, bytes (default 64 MiB).
    pub tile_cache_bytes: usize,
    /// Decoded-tile cache of each open slide, bytes (default 64 MiB).
    pub slide_cache_bytes: usize,
    /// Slides held open at once (default 4); memory ≤ this × `slide_cache_bytes` + tile cache.
    pub max_open_slides: usize,
    /// Tiles rendered at once (default: the number of CPUs; at most 8).
    pub render_threads: usize,
    /// Slide reader.
    pub backend: Backend,
}

impl ViewOptions {
    /// Tiles rendered at once: `render_threads` within 1..=8.
    fn render_slots(&self) -> usize {
        self.render_threads.clamp(1, 8)
    }
}

impl Default for ViewOptions {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            predictions: None,
            gt_dir: None,
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            tile_size_px: 254,
            overlap_px: 1,
            jpeg_quality: 75,
            tile_cache_bytes: 64 << 20,
            slide_cache_bytes: 64 << 20,
            max_open_slides: 4,
            render_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            backend: Backend::Auto,
        }
    }
}

/// Score of a slide against its GT mask.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ScoreState {
    /// Being computed.
    Pending,
    /// Computed.
    Done {
        /// The score.
        #[serde(flatten)]
        score: SlideScore,
    },
    /// Could not be computed.
    Failed {
        /// Why.
        error: String,
    },
}

struct Handles {
    slide: Slide,
    mask: OnceLock<std::result::Result<LabelMask, String>>,
    confidence: OnceLock<std::result::Result<ConfidenceMaps, String>>,
}

struct AppState {
    catalog: Catalog,
    dz: Vec<Option<DeepZoom>>,
    scores: RwLock<Vec<Option<ScoreState>>>,
    opts: ViewOptions,
    open: OpenSet<Handles>,
    tiles: TileCache,
    permits: tokio::sync::Semaphore,
    /// `Host` header values accepted (None: any, when bound to a non-loopback address).
    allowed_hosts: Option<Vec<String>>,
    /// Tile errors already logged (each is logged once).
    warned: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl AppState {
    /// Logs a tile error the first time it is seen.
    fn warn_once(&self, msg: &str) {
        let mut w = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() < 10_000 && w.insert(msg.to_string()) {
            tracing::warn!("{msg}");
        }
    }
}

/// A bound viewer, ready to serve.
pub struct Viewer {
    listener: std::net::TcpListener,
    state: Arc<AppState>,
    addr: SocketAddr,
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer").field("addr", &self.addr).finish()
    }
}

/// Counts of a catalog, for the start-up message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogSummary {
    /// Slides listed.
    pub slides: usize,
    /// Slides that cannot be read.
    pub unreadable: usize,
    /// Slides with a prediction folder.
    pub with_predictions: usize,
}

impl Viewer {
    /// Finds the slides and predictions, opens every slide once for its geometry, and binds the
    /// address. Fails on a missing input, a bad option, or an address that cannot be bound; a
    /// slide that cannot be read is listed with its error instead.
    pub fn bind(opts: ViewOptions) -> Result<Viewer> {
        if opts.inputs.is_empty() {
            return Err(ViewError::Invalid(
                "no slides given (a folder or slide files)".into(),
            ));
        }
        if !(1..=100).contains(&opts.jpeg_quality) {
            return Err(ViewError::Invalid(format!(
                "JPEG quality {} is not in 1..=100",
                opts.jpeg_quality
            )));
        }
        // Validate the tile geometry once.
        DeepZoom::new(1, 1, opts.tile_size_px, opts.overlap_px)?;
        if let Some(g) = &opts.gt_dir
            && !g.is_dir()
        {
            return Err(ViewError::Io {
                path: g.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
            });
        }
        let open = OpenOptions {
            backend: opts.backend,
            cache_bytes: 0,
            background_rgb: [255, 255, 255],
        };
        let catalog = Catalog::build(&opts.inputs, opts.predictions.as_deref(), &open)?;
        if catalog.entries().is_empty() {
            return Err(ViewError::Invalid(
                "no slides found in the given folders".into(),
            ));
        }
        let dz = catalog
            .entries()
            .iter()
            .map(|e| {
                let m = e.slide.as_ref().ok()?;
                DeepZoom::new(m.width, m.height, opts.tile_size_px, opts.overlap_px).ok()
            })
            .collect();
        let listener = std::net::TcpListener::bind((opts.host, opts.port)).map_err(|e| {
            ViewError::Server(format!("cannot listen on {}:{}: {e}", opts.host, opts.port))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| ViewError::Server(e.to_string()))?;
        let allowed_hosts = opts.host.is_loopback().then(|| {
            let p = addr.port();
            vec![
                format!("127.0.0.1:{p}"),
                format!("localhost:{p}"),
                format!("[::1]:{p}"),
                format!("{addr}"),
            ]
        });
        let scores = catalog.entries().iter().map(|_| None).collect();
        let state = Arc::new(AppState {
            dz,
            scores: RwLock::new(scores),
            open: OpenSet::new(opts.max_open_slides),
            tiles: TileCache::new(opts.tile_cache_bytes),
            permits: tokio::sync::Semaphore::new(opts.render_slots()),
            allowed_hosts,
            warned: std::sync::Mutex::new(std::collections::HashSet::new()),
            catalog,
            opts,
        });
        Ok(Viewer {
            listener,
            state,
            addr,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        let host = match self.addr.ip() {
            IpAddr::V4(v) if v.is_unspecified() => "127.0.0.1".to_string(),
            IpAddr::V6(v) if v.is_unspecified() => "[::1]".to_string(),
            IpAddr::V6(v) => format!("[{v}]"),
            ip => ip.to_string(),
        };
        format!("http://{host}:{}/", self.addr.port())
    }

    /// Counts of the catalog.
    pub fn summary(&self) -> CatalogSummary {
        let e = self.state.catalog.entries();
        CatalogSummary {
            slides: e.len(),
            unreadable: e.iter().filter(|e| e.slide.is_err()).count(),
            with_predictions: e.iter().filter(|e| e.prediction.is_some()).count(),
        }
    }

    /// Serves until the process ends (or the listener fails).
    pub fn serve(self) -> Result<()> {
        let threads = self.state.opts.render_slots();
        let rt = tokio::runtime::Builder::new_multi_thread()
            // Tiles render on the workers (see `render_tile`): one per render thread, plus one.
            .worker_threads(threads + 1)
            .max_blocking_threads(threads)
            .enable_io()
            .build()
            .map_err(|e| ViewError::Server(format!("runtime: {e}")))?;
        self.listener
            .set_nonblocking(true)
            .map_err(|e| ViewError::Server(e.to_string()))?;
        let state = self.state;
        if let Some(gt) = state.opts.gt_dir.clone() {
            spawn_scoring(state.clone(), gt);
        }
        let app = router(state);
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(self.listener)
                .map_err(|e| ViewError::Server(e.to_string()))?;
            axum::serve(listener, app)
                .await
                .map_err(|e| ViewError::Server(e.to_string()))
        })
    }
}

/// Scores every slide with a prediction against `gt/<id>.png`, one after the other, on a
/// background thread.
fn spawn_scoring(state: Arc<AppState>, gt: PathBuf) {
    let jobs: Vec<(usize, PathBuf, PathBuf, u8)> = state
        .catalog
        .entries()
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let p = e.prediction.as_ref()?;
            let g = gt.join(format!("{}.png", e.id));
            let png = p.dir.join(crate::catalog::MASK_PNG);
            (g.is_file() && png.is_file())
                .then(|| (i, png, g, e.positive_class().unwrap_or(1) as u8))
        })
        .collect();
    {
        let mut s = state.scores.write().unwrap_or_else(|p| p.into_inner());
        for (i, ..) in &jobs {
            s[*i] = Some(ScoreState::Pending);
        }
    }
    let spawned = std::thread::Builder::new()
        .name("pbip-view-score".into())
        .spawn(move || {
            for (i, png, g, positive) in jobs {
                let r = match crate::score::score_slide(&png, &g, positive) {
                    Ok(score) => ScoreState::Done { score },
                    Err(e) => ScoreState::Failed {
                        error: e.to_string(),
                    },
                };
                state.scores.write().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start scoring: {e}");
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/{*name}", get(asset))
        .route("/api/slides", get(api_slides))
        .route("/api/slides/{id}", get(api_slide))
        .route("/api/slides/{id}/geojson", get(api_geojson))
        .route("/api/stats", get(api_stats))
        .route("/slides/{file}", get(slide_dzi))
        .route("/slides/{dir}/{level}/{tile}", get(slide_tile))
        .route("/overlays/{id}/{file}", get(overlay_dzi))
        .route("/overlays/{id}/{dir}/{level}/{tile}", get(overlay_tile))
        .fallback(|| async { not_found("no such page") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Rejects requests whose `Host` is not this loopback server (DNS rebinding) and adds
/// `X-Content-Type-Options: nosniff` to every answer.
async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(allowed) = &st.allowed_hosts {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
            return text(
                StatusCode::FORBIDDEN,
                format!("host {host:?} is not this server"),
            );
        }
    }
    let mut r = next.run(req).await;
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        msg.into(),
    )
        .into_response()
}

fn not_found(msg: impl Into<String>) -> Response {
    text(StatusCode::NOT_FOUND, msg)
}

/// Printable ASCII, at most 400 characters (a valid header value).
fn header_safe(msg: &str) -> HeaderValue {
    let s: String = msg
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(400)
        .collect();
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("error"))
}

fn image(content_type: &'static str, bytes: Bytes, error: Option<&str>) -> Response {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(e) = error {
        h.insert(HeaderName::from_static(ERROR_HEADER), header_safe(e));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    } else {
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=60"),
        );
    }
    (StatusCode::OK, h, Body::from(bytes)).into_response()
}

async fn index() -> Response {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (StatusCode::OK, h, assets::INDEX_HTML).into_response()
}

async fn asset(UrlPath(name): UrlPath<String>) -> Response {
    match assets::get(&name) {
        Some((ct, bytes)) => {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            (StatusCode::OK, h, bytes).into_response()
        }
        None => not_found("no such asset"),
    }
}

#[derive(Serialize)]
struct InferenceJson<'a> {
    status: &'a str,
    error: &'a str,
    num_patches: Option<u64>,
    processing_time_s: Option<&'a str>,
    model_version: Option<&'a str>,
}

#[derive(Serialize)]
struct SlideJson<'a> {
    id: &'a str,
    name: &'a str,
    width: Option<u64>,
    height: Option<u64>,
    mpp: Option<f64>,
    /// `ok` (served) or `error` (cannot be read).
    status: &'static str,
    error: Option<&'a str>,
    /// Row of batch_results.csv.
    inference: Option<InferenceJson<'a>>,
    has_prediction: bool,
    positive_class: Option<&'a str>,
    /// Fraction of labelled output pixels of the positive class.
    positive_fraction: Option<f64>,
    /// Area of the positive class, mm².
    positive_area_mm2: Option<f64>,
    score: Option<ScoreState>,
}

fn slide_json<'a>(e: &'a Entry, score: Option<ScoreState>) -> SlideJson<'a> {
    let meta: Option<&SlideMeta> = e.slide.as_ref().ok();
    let stats = e.positive_stats();
    SlideJson {
        id: &e.id,
        name: &e.name,
        width: meta.map(|m| m.width),
        height: meta.map(|m| m.height),
        mpp: meta.and_then(|m| m.mpp),
        status: if meta.is_some() { "ok" } else { "error" },
        error: e.slide.as_ref().err().map(String::as_str),
        inference: e.batch.as_ref().map(|b| InferenceJson {
            status: &b.status,
            error: &b.error,
            num_patches: b.num_patches,
            processing_time_s: b.processing_time.as_deref(),
            model_version: b.model_version.as_deref(),
        }),
        has_prediction: e.prediction.is_some(),
        positive_class: e
            .positive_class()
            .and_then(|k| e.prediction.as_ref()?.classes.get(k))
            .map(|c| c.name.as_str()),
        positive_fraction: stats.map(|s| s.0),
        positive_area_mm2: stats.and_then(|s| s.1),
        score,
    }
}

fn score_of(st: &AppState, i: usize) -> Option<ScoreState> {
    st.scores
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(i)
        .cloned()
        .flatten()
}

async fn api_slides(State(st): State<Arc<AppState>>) -> Response {
    let list: Vec<SlideJson> = st
        .catalog
        .entries()
        .iter()
        .enumerate()
        .map(|(i, e)| slide_json(e, score_of(&st, i)))
        .collect();
    axum::Json(list).into_response()
}

#[derive(Serialize)]
struct LayerJson<'a> {
    available: bool,
    error: Option<&'a str>,
}

fn layer_json(s: &LayerStatus) -> LayerJson<'_> {
    LayerJson {
        available: s.available,
        error: s.error.as_deref(),
    }
}

#[derive(Serialize)]
struct DetailJson<'a> {
    #[serde(flatten)]
    slide: SlideJson<'a>,
    level_count: Option<usize>,
    vendor: Option<&'a str>,
    backend: Option<&'a str>,
    tile_size: u32,
    overlap: u32,
    dzi: String,
    classes: &'a [ClassInfo],
    output_downsample: Option<f64>,
    layers: Option<LayersJson<'a>>,
    warnings: &'a [String],
    /// Heat-map colours at 0, 0.25, 0.5, 0.75, 1 (for the legend).
    heat_colors: Vec<[u8; 3]>,
}

#[derive(Serialize)]
struct LayersJson<'a> {
    mask: LayerJson<'a>,
    confidence: LayerJson<'a>,
    geojson: LayerJson<'a>,
    geojson_bytes: Option<u64>,
}

fn url_id(id: &str) -> String {
    // Percent-encode everything but unreserved characters (RFC 3986).
    let mut s = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

async fn api_slide(State(st): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(i) = st.catalog.index_of(&id) else {
        return not_found(format!("no slide {id:?}"));
    };
    let Some(e) = st.catalog.get(i) else {
        return not_found("no slide");
    };
    let meta = e.slide.as_ref().ok();
    let p = e.prediction.as_ref();
    let detail = DetailJson {
        slide: slide_json(e, score_of(&st, i)),
        level_count: meta.map(|m| m.level_count),
        vendor: meta.map(|m| m.vendor.as_str()),
        backend: meta.map(|m| m.backend.as_str()),
        tile_size: st.opts.tile_size_px,
        overlap: st.opts.overlap_px,
        dzi: format!("/slides/{}.dzi", url_id(&e.id)),
        classes: p.map_or(&[], |p| p.classes.as_slice()),
        output_downsample: p.and_then(|p| p.output_downsample),
        layers: p.map(|p| LayersJson {
            mask: layer_json(&p.mask),
            confidence: layer_json(&p.confidence),
            geojson: layer_json(&p.geojson),
            geojson_bytes: p
                .geojson_file
                .as_ref()
                .and_then(|f| std::fs::metadata(f).ok())
                .map(|m| m.len()),
        }),
        warnings: p.map_or(&[], |p| p.warnings.as_slice()),
        heat_colors: [0.0, 0.25, 0.5, 0.75, 1.0]
            .into_iter()
            .map(heat_color)
            .collect(),
    };
    axum::Json(detail).into_response()
}

async fn api_geojson(State(st): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(e) = st.catalog.index_of(&id).and_then(|i| st.catalog.get(i)) else {
        return not_found(format!("no slide {id:?}"));
    };
    let Some(path) = e.prediction.as_ref().and_then(|p| p.geojson_file.clone()) else {
        return not_found(format!("no GeoJSON for {id:?}"));
    };
    let read = tokio::task::spawn_blocking(move || -> std::result::Result<Vec<u8>, String> {
        let len = std::fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if len > MAX_GEOJSON_BYTES {
            return Err(format!(
                "{}: {} MiB is too large to draw in the page (limit {} MiB)",
                path.display(),
                len >> 20,
                MAX_GEOJSON_BYTES >> 20
            ));
        }
        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
    })
    .await;
    match read {
        Ok(Ok(bytes)) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/geo+json"),
            )],
            bytes,
        )
            .into_response(),
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn api_stats(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "tile_cache": st.tiles.stats(),
        "open_slides": st.open.len(),
    }))
    .into_response()
}

/// Why a request for a slide or overlay cannot be answered with it.
enum Reject {
    /// No such slide / layer (404).
    NotFound(String),
    /// The slide exists but cannot be read (500).
    Unreadable(String),
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        match self {
            Reject::NotFound(m) => not_found(m),
            Reject::Unreadable(m) => text(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

/// Catalog index and DeepZoom geometry of a readable slide.
fn readable(st: &AppState, id: &str) -> std::result::Result<(usize, DeepZoom), Reject> {
    let i = st
        .catalog
        .index_of(id)
        .ok_or_else(|| Reject::NotFound(format!("no slide {id:?}")))?;
    match (&st.dz[i], st.catalog.get(i).map(|e| &e.slide)) {
        (Some(dz), _) => Ok((i, dz.clone())),
        (None, Some(Err(e))) => Err(Reject::Unreadable(format!(
            "slide {id:?} cannot be read: {e}"
        ))),
        (None, _) => Err(Reject::Unreadable(format!("slide {id:?} cannot be read"))),
    }
}

fn dzi_response(dz: &DeepZoom, format: &str) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        )],
        dz.dzi_xml(format),
    )
        .into_response()
}

async fn slide_dzi(State(st): State<Arc<AppState>>, UrlPath(file): UrlPath<String>) -> Response {
    let Some(id) = file.strip_suffix(".dzi") else {
        return not_found("expected <id>.dzi");
    };
    match readable(&st, id) {
        Ok((_, dz)) => dzi_response(&dz, "jpeg"),
        Err(r) => r.into_response(),
    }
}

fn parse_level_tile(
    dz: &DeepZoom,
    level: &str,
    tile: &str,
    ext: &str,
) -> Option<(usize, u64, u64)> {
    if level.is_empty() || level.len() > 3 || !level.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let level: usize = level.parse().ok()?;
    let (col, row) = parse_tile_name(tile, ext)?;
    dz.tile_rect(level, col, row)?;
    Some((level, col, row))
}

/// Renders a tile (at most `render_threads` at once), caching successes.
///
/// The rendering runs on the runtime's worker thread that took the request (the runtime has one
/// worker more than `render_threads`, so one is always free for other requests) instead of
/// being handed to the blocking pool: that hand-off, two thread wake-ups per tile, cost about
/// 7 % of the server's CPU per random tile (`bench/RESULTS.md`). A panic while rendering is
/// caught and answered with a 500, as before.
async fn render_tile(
    st: Arc<AppState>,
    key: TileKey,
    content_type: &'static str,
    render: impl FnOnce(&AppState) -> Result<Vec<u8>> + Send + 'static,
    on_error: impl FnOnce() -> Result<Vec<u8>> + Send + 'static,
) -> Response {
    if let Some(b) = st.tiles.get(&key) {
        return image(content_type, b, None);
    }
    let Ok(_permit) = st.permits.acquire().await else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match render(&st) {
        Ok(b) => Ok(b),
        Err(e) => Err((e.to_string(), on_error())),
    }));
    match r {
        Ok(Ok(bytes)) => {
            let b = Bytes::from(bytes);
            st.tiles.insert(key, b.clone());
            image(content_type, b, None)
        }
        Ok(Err((msg, Ok(err_tile)))) => {
            st.warn_once(&msg);
            image(content_type, Bytes::from(err_tile), Some(&msg))
        }
        Ok(Err((msg, Err(e)))) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{msg}; error tile: {e}"),
        ),
        Err(panic) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "tile rendering failed: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("panic")
            ),
        ),
    }
}

impl AppState {
    fn handles(&self, i: usize) -> Result<Arc<Handles>> {
        let path = self
            .catalog
            .get(i)
            .and_then(|e| e.path.clone())
            .ok_or_else(|| ViewError::Invalid("no slide file".into()))?;
        let opts = OpenOptions {
            backend: self.opts.backend,
            cache_bytes: self.opts.slide_cache_bytes,
            background_rgb: [255, 255, 255],
        };
        self.open.get_or_open(i, || -> Result<Handles> {
            Ok(Handles {
                slide: Slide::open(&path, &opts)?,
                mask: OnceLock::new(),
                confidence: OnceLock::new(),
            })
        })
    }
}

async fn slide_tile(
    State(st): State<Arc<AppState>>,
    UrlPath((dir, level, tile)): UrlPath<(String, String, String)>,
) -> Response {
    let Some(id) = dir.strip_suffix("_files") else {
        return not_found("expected <id>_files");
    };
    let (i, dz) = match readable(&st, id) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let Some((level, col, row)) = parse_level_tile(&dz, &level, &tile, "jpeg") else {
        return not_found(format!("no tile {level}/{tile}"));
    };
    let key = TileKey {
        entry: i,
        layer: Layer::Slide,
        level,
        col,
        row,
    };
    let q = st.opts.jpeg_quality;
    let dz2 = dz.clone();
    render_tile(
        st,
        key,
        "image/jpeg",
        move |st| {
            let h = st.handles(i)?;
            let img = render::slide_tile(&h.slide, &dz, level, col, row)?;
            render::encode_jpeg(&img, q)
        },
        move || {
            let r = dz2
                .tile_rect(level, col, row)
                .ok_or_else(|| ViewError::Invalid("no tile".into()))?;
            render::encode_jpeg(&render::error_tile_rgb(r.width_px, r.height_px), q)
        },
    )
    .await
}

/// An overlay of a slide's prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OverlayKind {
    Mask,
    Confidence(u8),
    Uncertainty,
}

fn parse_layer(name: &str) -> Option<OverlayKind> {
    match name {
        "mask" => Some(OverlayKind::Mask),
        "uncertainty" => Some(OverlayKind::Uncertainty),
        _ => {
            let k = name.strip_prefix("confidence-")?;
            if k.is_empty() || k.len() > 3 || !k.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(OverlayKind::Confidence(k.parse().ok()?))
        }
    }
}

/// The prediction of slide `i` and a check that `kind` exists for it.
fn overlay_target(
    st: &AppState,
    id: &str,
    kind: OverlayKind,
) -> std::result::Result<(usize, DeepZoom), Reject> {
    let p = st
        .catalog
        .index_of(id)
        .and_then(|i| st.catalog.get(i))
        .and_then(|e| e.prediction.as_ref())
        .ok_or_else(|| Reject::NotFound(format!("no prediction for {id:?}")))?;
    match kind {
        OverlayKind::Mask => {}
        OverlayKind::Uncertainty if p.classes.len() >= 2 => {}
        OverlayKind::Confidence(k) if usize::from(k) < p.classes.len() => {}
        _ => return Err(Reject::NotFound(format!("no such layer for {id:?}"))),
    }
    readable(st, id)
}

async fn overlay_dzi(
    State(st): State<Arc<AppState>>,
    UrlPath((id, file)): UrlPath<(String, String)>,
) -> Response {
    let Some(kind) = file.strip_suffix(".dzi").and_then(parse_layer) else {
        return not_found("expected <layer>.dzi (mask, confidence-<k>, uncertainty)");
    };
    match overlay_target(&st, &id, kind) {
        Ok((_, dz)) => dzi_response(&dz, "png"),
        Err(r) => r.into_response(),
    }
}

#[derive(serde::Deserialize)]
struct OverlayQuery {
    hide: Option<String>,
}

fn parse_hidden(s: Option<&str>) -> Option<[u64; 4]> {
    let mut bits = [0u64; 4];
    for part in s.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
        let k: u8 = part.trim().parse().ok()?;
        bits[usize::from(k / 64)] |= 1 << (k % 64);
    }
    Some(bits)
}

/// Output downsample and class colours of slide `i`'s prediction.
fn prediction_geometry(st: &AppState, i: usize) -> Result<(f64, Vec<[u8; 3]>)> {
    let p = st
        .catalog
        .get(i)
        .and_then(|e| e.prediction.as_ref())
        .ok_or_else(|| ViewError::Invalid("no prediction".into()))?;
    let ds = p
        .output_downsample
        .ok_or_else(|| ViewError::Invalid("unknown output downsample".into()))?;
    Ok((ds, p.classes.iter().map(|c| c.color).collect()))
}

fn open_mask(st: &AppState, i: usize, h: &Handles) -> Result<()> {
    let r = h.mask.get_or_init(|| {
        let p = st.catalog.get(i).and_then(|e| e.prediction.as_ref());
        match p.and_then(|p| p.mask_file.as_ref()) {
            Some(MaskFile::Tiff(f)) => LabelMask::open_tiff(f).map_err(|e| e.to_string()),
            Some(MaskFile::Png(f)) => LabelMask::open_png(f).map_err(|e| e.to_string()),
            None => Err(p
                .and_then(|p| p.mask.error.clone())
                .unwrap_or_else(|| "no class mask".into())),
        }
    });
    r.as_ref()
        .map(|_| ())
        .map_err(|e| ViewError::Invalid(e.clone()))
}

fn open_confidence(st: &AppState, i: usize, h: &Handles) -> Result<()> {
    let r = h.confidence.get_or_init(|| {
        let p = st.catalog.get(i).and_then(|e| e.prediction.as_ref());
        match p.and_then(|p| p.confidence_file.as_ref()) {
            Some(f) => ConfidenceMaps::open(f).map_err(|e| e.to_string()),
            None => Err(p
                .and_then(|p| p.confidence.error.clone())
                .unwrap_or_else(|| "no confidence maps".into())),
        }
    });
    r.as_ref()
        .map(|_| ())
        .map_err(|e| ViewError::Invalid(e.clone()))
}

fn render_overlay(
    st: &AppState,
    i: usize,
    kind: OverlayKind,
    hidden: [u64; 4],
    dz: &DeepZoom,
    at: TileAddr,
) -> Result<Vec<u8>> {
    let h = st.handles(i)?;
    let (ds, colors) = prediction_geometry(st, i)?;
    let (img, pal): (IndexedImage, Palette) = match kind {
        OverlayKind::Mask => {
            open_mask(st, i, &h)?;
            let Some(Ok(m)) = h.mask.get() else {
                return Err(ViewError::Invalid("no class mask".into()));
            };
            let hidden: Vec<bool> = (0..colors.len())
                .map(|k| hidden[k / 64] & (1 << (k % 64)) != 0)
                .collect();
            (m.tile(dz, at, ds)?, mask_palette(&colors, &hidden))
        }
        OverlayKind::Confidence(_) | OverlayKind::Uncertainty => {
            open_confidence(st, i, &h)?;
            let Some(Ok(c)) = h.confidence.get() else {
                return Err(ViewError::Invalid("no confidence maps".into()));
            };
            let img = match kind {
                OverlayKind::Confidence(k) => c.class_tile(usize::from(k), dz, at, ds)?,
                _ => c.uncertainty_tile(dz, at, ds)?,
            };
            (img, heat_palette())
        }
    };
    render::encode_indexed_png(&img, &pal)
}

async fn overlay_tile(
    State(st): State<Arc<AppState>>,
    UrlPath((id, dir, level, tile)): UrlPath<(String, String, String, String)>,
    Query(q): Query<OverlayQuery>,
) -> Response {
    let Some(kind) = dir.strip_suffix("_files").and_then(parse_layer) else {
        return not_found("expected <layer>_files");
    };
    let (i, dz) = match overlay_target(&st, &id, kind) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let Some((level, col, row)) = parse_level_tile(&dz, &level, &tile, "png") else {
        return not_found(format!("no tile {level}/{tile}"));
    };
    let Some(hidden) = parse_hidden(q.hide.as_deref()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "hide must list class indices, e.g. hide=0,2",
        );
    };
    let layer = match kind {
        OverlayKind::Mask => Layer::Mask { hidden },
        OverlayKind::Confidence(k) => Layer::Confidence(k),
        OverlayKind::Uncertainty => Layer::Uncertainty,
    };
    let key = TileKey {
        entry: i,
        layer,
        level,
        col,
        row,
    };
    let dz2 = dz.clone();
    render_tile(
        st,
        key,
        "image/png",
        move |st| render_overlay(st, i, kind, hidden, &dz, TileAddr { level, col, row }),
        move || {
            let r = dz2
                .tile_rect(level, col, row)
                .ok_or_else(|| ViewError::Invalid("no tile".into()))?;
            let (img, pal) = render::error_tile_overlay(r.width_px, r.height_px);
            render::encode_indexed_png(&img, &pal)
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_parse_strictly() {
        assert_eq!(parse_layer("mask"), Some(OverlayKind::Mask));
        assert_eq!(
            parse_layer("confidence-2"),
            Some(OverlayKind::Confidence(2))
        );
        assert_eq!(parse_layer("uncertainty"), Some(OverlayKind::Uncertainty));
        for bad in [
            "",
            "masks",
            "confidence-",
            "confidence-x",
            "confidence-1000",
            "confidence-256",
            "../mask",
        ] {
            assert_eq!(parse_layer(bad), None, "{bad}");
        }
    }

    #[test]
    fn hidden_classes_parse_to_bits() {
        assert_eq!(parse_hidden(None), Some([0; 4]));
        assert_eq!(parse_hidden(Some("0,2,70")), Some([0b101, 1 << 6, 0, 0]));
        assert_eq!(parse_hidden(Some("x")), None);
        assert_eq!(parse_hidden(Some("300")), None);
    }

    #[test]
    fn ids_are_percent_encoded() {
        assert_eq!(url_id("slide_01.a"), "slide_01.a");
        assert_eq!(url_id("a b/c%"), "a%20b%2Fc%25");
        assert_eq!(url_id("é"), "%C3%A9");
    }

    #[test]
    fn error_headers_are_valid_ascii() {
        let v = header_safe("bad\nfile é \u{7f}");
        assert_eq!(v.to_str().unwrap(), "bad?file ? ?");
        assert!(header_safe(&"x".repeat(1000)).len() <= 400);
    }
}
