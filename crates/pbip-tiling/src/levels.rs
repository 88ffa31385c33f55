//! Pyramid level selection and tile geometry, as hs2p computes them
//! (`hs2p.wsi.geometry`: `select_level_for_downsample`, `select_level`,
//! `plan_spacing_read`, `tile_size_lv0_from_plan`). Python's `round` (half to even) is
//! reproduced with `f64::round_ties_even`.

use crate::error::TilingError;

fn py_round(v: f64) -> f64 {
    v.round_ties_even()
}

fn check_downsamples(level_downsamples: &[f64]) -> Result<(), TilingError> {
    if level_downsamples.is_empty() {
        return Err(TilingError::param("level_downsamples", "is empty"));
    }
    if let Some((i, d)) = level_downsamples
        .iter()
        .enumerate()
        .find(|(_, d)| !d.is_finite() || **d <= 0.0)
    {
        return Err(TilingError::param(
            "level_downsamples",
            format!("level {i} has downsample {d}, expected a finite value > 0"),
        ));
    }
    Ok(())
}

fn check_positive(name: &'static str, v: f64) -> Result<(), TilingError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(TilingError::param(
            name,
            format!("{v} must be finite and > 0"),
        ))
    }
}

/// Index of the level whose downsample is closest to `requested_downsample` (first one on
/// ties), e.g. the segmentation level for hs2p's `seg_params.downsample = 64`.
pub fn select_level_for_downsample(
    level_downsamples: &[f64],
    requested_downsample: f64,
) -> Result<usize, TilingError> {
    check_downsamples(level_downsamples)?;
    check_positive("requested downsample", requested_downsample)?;
    let mut best = 0usize;
    let mut best_err = f64::INFINITY;
    for (i, &d) in level_downsamples.iter().enumerate() {
        let err = (d - requested_downsample).abs();
        if err < best_err {
            best = i;
            best_err = err;
        }
    }
    Ok(best)
}

/// A pyramid level chosen for a requested spacing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelSelection {
    /// Chosen level.
    pub level: usize,
    /// Spacing of that level: `base_spacing_um * level_downsamples[level]` (µm/px).
    pub read_spacing_um: f64,
    /// Whether `|read - requested| / requested <= tolerance`.
    pub is_within_tolerance: bool,
}

/// hs2p `select_level_for_spacing_read(content_kind="image")`: the level whose spacing is
/// closest to `requested_spacing_um`; if that is not within `tolerance` (relative), step to
/// finer levels until the spacing is `<= requested` (never upsample). Errors if the requested
/// spacing is finer than level 0 and not within tolerance.
pub fn select_level_for_spacing(
    requested_spacing_um: f64,
    base_spacing_um: f64,
    level_downsamples: &[f64],
    tolerance: f64,
) -> Result<LevelSelection, TilingError> {
    check_downsamples(level_downsamples)?;
    check_positive("requested spacing (µm/px)", requested_spacing_um)?;
    check_positive("base spacing (µm/px)", base_spacing_um)?;
    if !(tolerance.is_finite() && tolerance >= 0.0) {
        return Err(TilingError::param(
            "tolerance",
            format!("{tolerance} must be finite and >= 0"),
        ));
    }
    let spacings: Vec<f64> = level_downsamples
        .iter()
        .map(|d| base_spacing_um * d)
        .collect();
    let mut level = 0usize;
    let mut best_err = f64::INFINITY;
    for (i, &s) in spacings.iter().enumerate() {
        let err = (s - requested_spacing_um).abs();
        if err < best_err {
            level = i;
            best_err = err;
        }
    }
    let mut best = spacings[level];
    let rel = |s: f64| (s - requested_spacing_um).abs() / requested_spacing_um;
    let mut within = rel(best) <= tolerance;
    if !within {
        while level > 0 && best > requested_spacing_um {
            level -= 1;
            best = spacings[level];
            within = rel(best) <= tolerance;
        }
    }
    if requested_spacing_um < base_spacing_um && !within {
        return Err(TilingError::param(
            "requested spacing (µm/px)",
            format!(
                "{requested_spacing_um} is finer than the finest available spacing \
                 {base_spacing_um} (beyond tolerance {tolerance}); upsampling is not allowed"
            ),
        ));
    }
    Ok(LevelSelection {
        level,
        read_spacing_um: best,
        is_within_tolerance: within,
    })
}

/// Pixels to read at the chosen level: `requested_tile_size_px` when within tolerance,
/// otherwise `round(requested * requested_spacing / read_spacing)` (half to even).
pub fn read_tile_size_px(
    requested_tile_size_px: u32,
    requested_spacing_um: f64,
    sel: &LevelSelection,
) -> u32 {
    if sel.is_within_tolerance {
        requested_tile_size_px
    } else {
        let v = py_round(
            f64::from(requested_tile_size_px) * requested_spacing_um / sel.read_spacing_um,
        );
        v.clamp(1.0, f64::from(u32::MAX)) as u32
    }
}

/// Tile footprint in level-0 px: `round(read_tile_size_px * read_spacing / base_spacing)`.
pub fn tile_size_lv0(read_tile_size_px: u32, read_spacing_um: f64, base_spacing_um: f64) -> u32 {
    let v = py_round(f64::from(read_tile_size_px) * read_spacing_um / base_spacing_um);
    v.clamp(1.0, f64::from(u32::MAX)) as u32
}

/// Grid step in level-0 px, per the notes (§6.1): `max(1, round(tile_size_lv0 * (1 - overlap)))`.
///
/// hs2p HEAD (`resolve_tile_stride`) instead rounds the step at the read level first
/// (`round(read * (1 - overlap))`, then scales it to level 0); see [`step_lv0_via_read_level`].
/// Both are equal for `overlap = 0`.
pub fn step_lv0(tile_size_lv0: u32, overlap: f64) -> u32 {
    let v = py_round(f64::from(tile_size_lv0) * (1.0 - overlap));
    v.clamp(1.0, f64::from(u32::MAX)) as u32
}

/// hs2p HEAD's `resolve_tile_stride(...).step_px_lv0`:
/// `max(1, round(max(1, round(read * (1 - overlap))) * tile_size_lv0 / read))`.
pub fn step_lv0_via_read_level(read_tile_size_px: u32, tile_size_lv0: u32, overlap: f64) -> u32 {
    let read = f64::from(read_tile_size_px.max(1));
    let read_step = py_round(read * (1.0 - overlap)).max(1.0);
    let v = py_round(read_step * f64::from(tile_size_lv0) / read);
    v.clamp(1.0, f64::from(u32::MAX)) as u32
}

/// The full tile geometry for a slide.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TilePlan {
    /// Requested output tile size (px at the requested spacing).
    pub requested_tile_size_px: u32,
    /// Requested spacing (µm/px).
    pub requested_spacing_um: f64,
    /// Level read.
    pub read_level: u32,
    /// Spacing of the read level (µm/px).
    pub read_spacing_um: f64,
    /// Whether the read level is within tolerance of the requested spacing.
    pub is_within_tolerance: bool,
    /// Size read at `read_level` (px).
    pub read_tile_size_px: u32,
    /// Tile footprint in level-0 px.
    pub tile_size_lv0: u32,
    /// Grid step in level-0 px.
    pub step_lv0: u32,
    /// Overlap fraction used for the step.
    pub overlap: f64,
    /// Relative spacing tolerance.
    pub tolerance: f64,
}

/// Computes the [`TilePlan`] for a slide (`base_spacing_um` = level-0 mpp).
/// `overlap` must be in `[0, 1)`.
pub fn plan_tiles(
    requested_tile_size_px: u32,
    requested_spacing_um: f64,
    base_spacing_um: f64,
    level_downsamples: &[f64],
    tolerance: f64,
    overlap: f64,
) -> Result<TilePlan, TilingError> {
    if requested_tile_size_px == 0 {
        return Err(TilingError::param(
            "requested tile size (px)",
            "must be > 0",
        ));
    }
    if !(overlap.is_finite() && (0.0..1.0).contains(&overlap)) {
        return Err(TilingError::param(
            "overlap",
            format!("{overlap} must be in [0, 1)"),
        ));
    }
    let sel = select_level_for_spacing(
        requested_spacing_um,
        base_spacing_um,
        level_downsamples,
        tolerance,
    )?;
    let read = read_tile_size_px(requested_tile_size_px, requested_spacing_um, &sel);
    let lv0 = tile_size_lv0(read, sel.read_spacing_um, base_spacing_um);
    let read_level = u32::try_from(sel.level)
        .map_err(|_| TilingError::param("level", format!("{} does not fit u32", sel.level)))?;
    Ok(TilePlan {
        requested_tile_size_px,
        requested_spacing_um,
        read_level,
        read_spacing_um: sel.read_spacing_um,
        is_within_tolerance: sel.is_within_tolerance,
        read_tile_size_px: read,
        tile_size_lv0: lv0,
        step_lv0: step_lv0(lv0, overlap),
        overlap,
        tolerance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seg_level_closest_to_64() {
        assert_eq!(
            select_level_for_downsample(&[1.0, 4.0, 16.0, 64.0], 64.0).ok(),
            Some(3)
        );
        assert_eq!(
            select_level_for_downsample(&[1.0, 4.0, 16.0, 32.0], 64.0).ok(),
            Some(3)
        );
        assert_eq!(
            select_level_for_downsample(&[1.0, 4.0, 16.0], 64.0).ok(),
            Some(2)
        );
        // tie between 32 and 96: first wins (numpy argmin)
        assert_eq!(
            select_level_for_downsample(&[1.0, 32.0, 96.0], 64.0).ok(),
            Some(1)
        );
        assert!(select_level_for_downsample(&[], 64.0).is_err());
        assert!(select_level_for_downsample(&[1.0, f64::NAN], 64.0).is_err());
    }

    #[test]
    fn spacing_selection_cases() {
        // 0.25 mpp base, levels 1,4,16: 0.5 requested -> no level within 5 % -> finest <= 0.5
        let s = select_level_for_spacing(0.5, 0.25, &[1.0, 4.0, 16.0], 0.05)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.level, 0);
        assert!(!s.is_within_tolerance);
        assert_eq!(read_tile_size_px(224, 0.5, &s), 448);
        assert_eq!(tile_size_lv0(448, s.read_spacing_um, 0.25), 448);
        // levels 1,2,4: 0.5 exactly at level 1
        let s = select_level_for_spacing(0.5, 0.25, &[1.0, 2.0, 4.0], 0.05)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.level, s.is_within_tolerance), (1, true));
        assert_eq!(read_tile_size_px(224, 0.5, &s), 224);
        assert_eq!(tile_size_lv0(224, s.read_spacing_um, 0.25), 448);
        // within tolerance but not exact: 0.252 * 2 = 0.504 vs 0.5 -> 0.8 % off, read 224,
        // footprint round(224 * 0.504 / 0.252) = 448
        let s = select_level_for_spacing(0.5, 0.252, &[1.0, 2.0, 4.0], 0.05)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.level, s.is_within_tolerance), (1, true));
        // 0.499 mpp base, requested 0.5 -> level 0 within tolerance
        let s = select_level_for_spacing(0.5, 0.499, &[1.0, 4.0], 0.05)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.level, s.is_within_tolerance), (0, true));
        // requested 0.25 on a 0.5 slide: upsampling refused
        assert!(select_level_for_spacing(0.25, 0.5, &[1.0, 4.0], 0.05).is_err());
        // coarse request 3.0 with levels at 0.25, 1.0, 4.0: closest is 4.0 (1.0 off) but 4.0 > 3.0
        // and not within tolerance -> step to level 1 (1.0)
        let s = select_level_for_spacing(3.0, 0.25, &[1.0, 4.0, 16.0], 0.05)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.level, s.is_within_tolerance), (1, false));
        assert_eq!(read_tile_size_px(256, 3.0, &s), 768);
    }

    #[test]
    fn python_rounding_and_steps() {
        // round(0.5 * 7) = round(3.5) = 4, round(2.5) = 2 (half to even)
        assert_eq!(step_lv0(5, 0.5), 2);
        assert_eq!(step_lv0(7, 0.5), 4);
        assert_eq!(step_lv0(448, 0.0), 448);
        assert_eq!(step_lv0(448, 0.5), 224);
        assert_eq!(step_lv0(1, 0.9), 1);
        // hs2p docstring example: read 16, lv0 32, overlap 0.1 -> read step 14 -> lv0 28
        assert_eq!(step_lv0_via_read_level(16, 32, 0.1), 28);
        assert_eq!(step_lv0(32, 0.1), 29);
        let p = plan_tiles(224, 0.5, 0.25, &[1.0, 4.0, 16.0], 0.05, 0.5)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                p.read_level,
                p.read_tile_size_px,
                p.tile_size_lv0,
                p.step_lv0
            ),
            (0, 448, 448, 224)
        );
        assert!(plan_tiles(224, 0.5, 0.25, &[1.0], 0.05, 1.0).is_err());
        assert!(plan_tiles(0, 0.5, 0.25, &[1.0], 0.05, 0.0).is_err());
    }
}
