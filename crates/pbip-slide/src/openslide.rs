//! OpenSlide backend: libopenslide loaded at run time with `libloading` (no build-time dependency).
//!
//! The loader tries `libopenslide.so.1` (OpenSlide 4.x) then `libopenslide.so.0` (3.4.x, Debian).
//! `PBIP_OPENSLIDE_LIB` may name an explicit library path (e.g. the `openslide-bin` wheel's file).

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Result, SlideError};
use crate::{LevelRegion, RgbImage};

type OpenFn = unsafe extern "C" fn(*const c_char) -> *mut c_void;
type CloseFn = unsafe extern "C" fn(*mut c_void);
type GetErrorFn = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type LevelCountFn = unsafe extern "C" fn(*mut c_void) -> i32;
type LevelDimsFn = unsafe extern "C" fn(*mut c_void, i32, *mut i64, *mut i64);
type LevelDsFn = unsafe extern "C" fn(*mut c_void, i32) -> f64;
type ReadRegionFn = unsafe extern "C" fn(*mut c_void, *mut u32, i64, i64, i32, i64, i64);
type NamesFn = unsafe extern "C" fn(*mut c_void) -> *const *const c_char;
type PropValueFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *const c_char;
type DetectVendorFn = unsafe extern "C" fn(*const c_char) -> *const c_char;
type VersionFn = unsafe extern "C" fn() -> *const c_char;
type AssocDimsFn = unsafe extern "C" fn(*mut c_void, *const c_char, *mut i64, *mut i64);
type AssocReadFn = unsafe extern "C" fn(*mut c_void, *const c_char, *mut u32);

/// The resolved OpenSlide C API.
struct Api {
    _lib: libloading::Library,
    file: String,
    open: OpenFn,
    close: CloseFn,
    get_error: GetErrorFn,
    level_count: LevelCountFn,
    level_dims: LevelDimsFn,
    level_ds: LevelDsFn,
    read_region: ReadRegionFn,
    prop_names: NamesFn,
    prop_value: PropValueFn,
    detect_vendor: DetectVendorFn,
    version: VersionFn,
    assoc_names: NamesFn,
    assoc_dims: AssocDimsFn,
    assoc_read: AssocReadFn,
}

fn load_api() -> std::result::Result<Api, String> {
    let mut candidates: Vec<String> = Vec::new();
    if let Ok(p) = std::env::var("PBIP_OPENSLIDE_LIB")
        && !p.is_empty()
    {
        candidates.push(p);
    }
    candidates.push("libopenslide.so.1".into());
    candidates.push("libopenslide.so.0".into());
    let mut errors = Vec::new();
    for name in candidates {
        // SAFETY: loading libopenslide runs its (trusted, system-installed) initialisers only.
        let lib = match unsafe { libloading::Library::new(&name) } {
            Ok(l) => l,
            Err(e) => {
                errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        macro_rules! sym {
            ($n:literal, $t:ty) => {{
                // SAFETY: the symbol has this C signature in OpenSlide 3.4 and 4.x.
                match unsafe { lib.get::<$t>($n) } {
                    Ok(s) => *s,
                    Err(e) => {
                        errors.push(format!("{name}: missing symbol: {e}"));
                        continue;
                    }
                }
            }};
        }
        let api = Api {
            open: sym!(b"openslide_open\0", OpenFn),
            close: sym!(b"openslide_close\0", CloseFn),
            get_error: sym!(b"openslide_get_error\0", GetErrorFn),
            level_count: sym!(b"openslide_get_level_count\0", LevelCountFn),
            level_dims: sym!(b"openslide_get_level_dimensions\0", LevelDimsFn),
            level_ds: sym!(b"openslide_get_level_downsample\0", LevelDsFn),
            read_region: sym!(b"openslide_read_region\0", ReadRegionFn),
            prop_names: sym!(b"openslide_get_property_names\0", NamesFn),
            prop_value: sym!(b"openslide_get_property_value\0", PropValueFn),
            detect_vendor: sym!(b"openslide_detect_vendor\0", DetectVendorFn),
            version: sym!(b"openslide_get_version\0", VersionFn),
            assoc_names: sym!(b"openslide_get_associated_image_names\0", NamesFn),
            assoc_dims: sym!(b"openslide_get_associated_image_dimensions\0", AssocDimsFn),
            assoc_read: sym!(b"openslide_read_associated_image\0", AssocReadFn),
            file: name.clone(),
            _lib: lib,
        };
        return Ok(api);
    }
    Err(format!(
        "cannot load libopenslide (install libopenslide0): {}",
        errors.join("; ")
    ))
}

fn api() -> std::result::Result<&'static Api, String> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(load_api).as_ref().map_err(Clone::clone)
}

/// Whether libopenslide can be loaded on this machine.
pub fn openslide_available() -> bool {
    api().is_ok()
}

/// The loaded OpenSlide library version (e.g. "3.4.1") and file name, if it can be loaded.
pub fn openslide_version() -> Option<(String, String)> {
    let a = api().ok()?;
    // SAFETY: returns a static NUL-terminated string.
    let v = unsafe { cstr((a.version)()) }?;
    Some((v, a.file.clone()))
}

/// Why libopenslide cannot be loaded (every candidate tried), None when it can.
pub fn openslide_load_error() -> Option<String> {
    api().err()
}

/// OpenSlide's vendor for `path` (`openslide_detect_vendor`), None when OpenSlide cannot be
/// loaded or does not recognise the file.
pub(crate) fn detect_vendor(path: &Path) -> Option<String> {
    let a = api().ok()?;
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: valid C string; the result is a static string or NULL.
    unsafe { cstr((a.detect_vendor)(c.as_ptr())) }
}

/// # Safety
/// `p` must be null or a valid NUL-terminated string.
unsafe fn cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: guaranteed by the caller.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// # Safety
/// `p` must be null or a NULL-terminated array of valid strings.
unsafe fn cstr_list(p: *const *const c_char) -> Vec<String> {
    let mut out = Vec::new();
    if p.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        // SAFETY: guaranteed by the caller; the array is NULL-terminated.
        let s = unsafe { *p.add(i) };
        if s.is_null() {
            break;
        }
        // SAFETY: element is a valid string.
        if let Some(v) = unsafe { cstr(s) } {
            out.push(v);
        }
        i += 1;
    }
    out
}

/// An open OpenSlide handle. OpenSlide handles are thread-safe.
pub(crate) struct OsSlide {
    api: &'static Api,
    osr: *mut c_void,
    pub path: PathBuf,
    pub level_dims: Vec<(u64, u64)>,
    pub downsamples: Vec<f64>,
    pub properties: BTreeMap<String, String>,
    pub associated: Vec<(String, (u64, u64))>,
    pub vendor: String,
}

// SAFETY: openslide_t is documented as thread-safe (all API calls may be made concurrently);
// the handle is only closed in Drop, when no other reference exists.
unsafe impl Send for OsSlide {}
// SAFETY: see above.
unsafe impl Sync for OsSlide {}

impl Drop for OsSlide {
    fn drop(&mut self) {
        // SAFETY: osr is a valid handle from openslide_open, closed exactly once.
        unsafe { (self.api.close)(self.osr) }
    }
}

fn os_err(path: &Path, msg: impl Into<String>) -> SlideError {
    SlideError::OpenSlide {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

impl OsSlide {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let api = api().map_err(|m| os_err(path, m))?;
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| os_err(path, "path contains NUL"))?;
        // SAFETY: valid C string.
        let vendor = unsafe { cstr((api.detect_vendor)(c.as_ptr())) };
        // SAFETY: valid C string.
        let osr = unsafe { (api.open)(c.as_ptr()) };
        if osr.is_null() {
            return Err(os_err(path, "unsupported or missing image file"));
        }
        let mut s = Self {
            api,
            osr,
            path: path.to_path_buf(),
            level_dims: Vec::new(),
            downsamples: Vec::new(),
            properties: BTreeMap::new(),
            associated: Vec::new(),
            vendor: vendor.unwrap_or_else(|| "unknown".into()),
        };
        s.check_error()?;
        // SAFETY: valid handle.
        let n = unsafe { (api.level_count)(osr) };
        if n < 1 {
            s.check_error()?;
            return Err(os_err(path, "no levels"));
        }
        for l in 0..n {
            let (mut w, mut h) = (-1i64, -1i64);
            // SAFETY: valid handle and out pointers.
            unsafe { (api.level_dims)(osr, l, &mut w, &mut h) };
            // SAFETY: valid handle.
            let ds = unsafe { (api.level_ds)(osr, l) };
            if w < 1 || h < 1 {
                return Err(os_err(path, format!("invalid dimensions of level {l}")));
            }
            s.level_dims.push((w as u64, h as u64));
            s.downsamples.push(ds);
        }
        // SAFETY: valid handle; returned list is owned by OpenSlide.
        for name in unsafe { cstr_list((api.prop_names)(osr)) } {
            let Ok(cn) = CString::new(name.as_bytes()) else {
                continue;
            };
            // SAFETY: valid handle and C string.
            if let Some(v) = unsafe { cstr((api.prop_value)(osr, cn.as_ptr())) } {
                s.properties.insert(name, v);
            }
        }
        // SAFETY: valid handle.
        for name in unsafe { cstr_list((api.assoc_names)(osr)) } {
            let Ok(cn) = CString::new(name.as_bytes()) else {
                continue;
            };
            let (mut w, mut h) = (-1i64, -1i64);
            // SAFETY: valid handle, C string and out pointers.
            unsafe { (api.assoc_dims)(osr, cn.as_ptr(), &mut w, &mut h) };
            if w > 0 && h > 0 {
                s.associated.push((name, (w as u64, h as u64)));
            }
        }
        if let Some(v) = s.properties.get("openslide.vendor") {
            s.vendor = v.clone();
        }
        s.check_error()?;
        Ok(s)
    }

    fn check_error(&self) -> Result<()> {
        // SAFETY: valid handle.
        match unsafe { cstr((self.api.get_error)(self.osr)) } {
            Some(e) => Err(os_err(&self.path, e)),
            None => Ok(()),
        }
    }

    /// Read a region and composite it over `bg` into RGB `buf`.
    pub(crate) fn read_region(&self, r: &LevelRegion, bg: [u8; 3], buf: &mut [u8]) -> Result<()> {
        let &LevelRegion {
            x_lv0: x,
            y_lv0: y,
            level,
            w,
            h,
        } = r;
        let n = w as usize * h as usize;
        let mut argb = vec![0u32; n];
        // SAFETY: valid handle; argb has w*h elements.
        unsafe {
            (self.api.read_region)(
                self.osr,
                argb.as_mut_ptr(),
                x,
                y,
                level as i32,
                i64::from(w),
                i64::from(h),
            )
        };
        self.check_error()?;
        argb_to_rgb(&argb, bg, buf);
        Ok(())
    }

    pub(crate) fn read_associated(&self, name: &str) -> Result<Option<RgbImage>> {
        let Some((_, (w, h))) = self.associated.iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        let n = w.saturating_mul(*h);
        if n.saturating_mul(4) > crate::MAX_DECODE_BYTES as u64 {
            return Err(os_err(
                &self.path,
                format!("associated image {name} is too large"),
            ));
        }
        let cn = CString::new(name.as_bytes())
            .map_err(|_| os_err(&self.path, "bad associated image name"))?;
        let mut argb = vec![0u32; n as usize];
        // SAFETY: valid handle, C string, buffer of w*h u32.
        unsafe { (self.api.assoc_read)(self.osr, cn.as_ptr(), argb.as_mut_ptr()) };
        self.check_error()?;
        let mut data = vec![0u8; n as usize * 3];
        argb_to_rgb(&argb, [255, 255, 255], &mut data);
        Ok(Some(RgbImage {
            width: *w as u32,
            height: *h as u32,
            data,
        }))
    }
}

/// Premultiplied ARGB (native u32) composited over `bg` into RGB8.
///
/// `out = c + bg * (255 - a) / 255`: alpha 255 keeps the colour, alpha 0 gives the background.
pub(crate) fn argb_to_rgb(argb: &[u32], bg: [u8; 3], out: &mut [u8]) {
    for (p, o) in argb.iter().zip(out.chunks_exact_mut(3)) {
        let a = (p >> 24) & 0xFF;
        let r = (p >> 16) & 0xFF;
        let g = (p >> 8) & 0xFF;
        let b = p & 0xFF;
        if a == 255 {
            o.copy_from_slice(&[r as u8, g as u8, b as u8]);
        } else {
            let k = 255 - a;
            let mix = |c: u32, bgc: u8| (c + (u32::from(bgc) * k + 127) / 255).min(255) as u8;
            o.copy_from_slice(&[mix(r, bg[0]), mix(g, bg[1]), mix(b, bg[2])]);
        }
    }
}
