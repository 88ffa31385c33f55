//! End-to-end demo of the stage-5 outputs on a synthetic 8192 x 6144 level-0 "slide":
//! stitch a smooth fake model's patch maps (block-wise, Gaussian weights), post-process, and write
//! segmentation_mask.png, confidence_maps.npz (float16) + confidence_maps_u8.npz, visualization.png
//! and annotations.geojson into OUT_DIR (first argument). Used to check the files with numpy/PIL/QuPath.

use pbip_post::export::{self, ClassInfo};
use pbip_post::npz::{self, ConfidenceEncoding};
use pbip_post::postprocess::{self, PostProcessParams};
use pbip_post::stitch::{
    FullMap, PatchFootprint, PatchMap, StitchConfig, StitchedBlock, Stitcher, Weighting,
    raster_order,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: demo_outputs OUT_DIR")?,
    );
    std::fs::create_dir_all(&out)?;
    let (sw, sh, ds, patch, stride, map_px) = (8192u64, 6144u64, 16.0, 896i64, 448i64, 56usize);
    let tumour = |x: f64, y: f64| {
        let r = ((x - 3000.0).powi(2) + (y - 2800.0).powi(2)).sqrt();
        let blob = 1.0 / (1.0 + ((r - 1500.0) / 150.0).exp());
        let stripe =
            1.0 / (1.0 + ((6500.0 - x) / 100.0).exp()) * ((y / 700.0).sin() > 0.0) as i32 as f64;
        blob.max(stripe) as f32
    };
    let mut fps = Vec::new();
    let mut y = 0;
    while y < sh as i64 {
        let mut x = 0;
        while x < sw as i64 {
            // Leave a hole of missing tissue (no patches) in one corner.
            if !(x > 6000 && y > 4500) {
                fps.push(PatchFootprint {
                    x_lv0: x,
                    y_lv0: y,
                    size_lv0_px: patch as f64,
                });
            }
            x += stride;
        }
        y += stride;
    }
    let order = raster_order(&fps);
    let cfg = StitchConfig {
        slide_width_lv0: sw,
        slide_height_lv0: sh,
        downsample: ds,
        num_classes: 2,
        weighting: Weighting::Gaussian { sigma_rel: 0.125 },
        block_size_px: 128,
        memory_budget_bytes: 16 << 20,
    };
    let (ow, oh) = (
        (sw as f64 / ds).ceil() as usize,
        (sh as f64 / ds).ceil() as usize,
    );
    let mut full = FullMap::new(ow, oh, 2);
    let mut nblocks = 0;
    let fps_sorted: Vec<PatchFootprint> = order.iter().map(|&i| fps[i]).collect();
    {
        let mut st = Stitcher::new(cfg, fps_sorted.clone(), |b: StitchedBlock| {
            nblocks += 1;
            full.insert_block(&b)
        })?;
        for (i, f) in fps_sorted.iter().enumerate() {
            let step = f.size_lv0_px / map_px as f64;
            let mut m = vec![0f32; 2 * map_px * map_px];
            for v in 0..map_px {
                for u in 0..map_px {
                    let t = tumour(
                        f.x_lv0 as f64 + (u as f64 + 0.5) * step,
                        f.y_lv0 as f64 + (v as f64 + 0.5) * step,
                    );
                    m[map_px * map_px + v * map_px + u] = t;
                    m[v * map_px + u] = 1.0 - t;
                }
            }
            st.add_patch(
                i,
                PatchMap {
                    num_classes: 2,
                    height_px: map_px,
                    width_px: map_px,
                    data: &m,
                },
            )?;
        }
        st.finish()?;
    }
    println!("output grid {ow}x{oh}, {nblocks} blocks");
    let labels = postprocess::argmax_labels(&full.confidence, Some(&full.weight), 2, ow, oh)?;
    let labels = postprocess::postprocess_labels(
        &labels,
        &full.confidence,
        2,
        ow,
        oh,
        &PostProcessParams::default(),
    )?;
    let classes = ClassInfo::from_names(&["benign", "tumor"]);
    let palette: Vec<[u8; 3]> = classes.iter().map(|c| c.color).collect();
    export::write_label_png(
        &out.join("segmentation_mask.png"),
        &labels,
        ow as u32,
        oh as u32,
        &palette,
    )?;
    npz::write_confidence_maps(
        &out.join("confidence_maps.npz"),
        &full.confidence,
        2,
        ow,
        oh,
        ConfidenceEncoding::Float16,
    )?;
    npz::write_confidence_maps(
        &out.join("confidence_maps_u8.npz"),
        &full.confidence,
        2,
        ow,
        oh,
        ConfidenceEncoding::U8,
    )?;
    let thumb: Vec<u8> = (0..ow * oh)
        .flat_map(|i| {
            if (i % ow + i / ow) % 16 < 8 {
                [235, 215, 230]
            } else {
                [220, 190, 215]
            }
        })
        .collect();
    let raster = |data| export::Raster {
        data,
        width_px: ow,
        height_px: oh,
    };
    let vis = export::overlay_labels(raster(&thumb), raster(&labels), &palette, 0.45)?;
    export::write_rgb_png(&out.join("visualization.png"), &vis, ow as u32, oh as u32)?;
    let gj = export::label_map_to_geojson(&labels, ow, oh, ds, &classes)?;
    export::write_geojson(&out.join("annotations.geojson"), &gj)?;
    Ok(())
}
