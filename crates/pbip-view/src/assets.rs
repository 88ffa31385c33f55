//! The page and its assets, embedded in the binary (no CDN, nothing read from disk at run time).
//!
//! OpenSeadragon 6.1.1 comes from the npm registry (`npm pack openseadragon@6.1.1`:
//! `build/openseadragon/openseadragon.min.js`, the navigation button images used, and
//! `LICENSE.txt`, BSD-3-Clause), unmodified; it is served with its licence at
//! `/assets/openseadragon/LICENSE.txt`.

/// The viewer page.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");

macro_rules! osd_images {
    ($($name:literal),* $(,)?) => {
        &[$((concat!("openseadragon/images/", $name), "image/png",
             include_bytes!(concat!("../assets/openseadragon/images/", $name)) as &[u8])),*]
    };
}

const FILES: &[(&str, &str, &[u8])] = &[
    (
        "viewer.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/viewer.js"),
    ),
    (
        "viewer.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/viewer.css"),
    ),
    (
        "openseadragon/openseadragon.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/openseadragon/openseadragon.min.js"),
    ),
    (
        "openseadragon/LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/openseadragon/LICENSE.txt"),
    ),
];

const IMAGES: &[(&str, &str, &[u8])] = osd_images!(
    "zoomin_rest.png",
    "zoomin_grouphover.png",
    "zoomin_hover.png",
    "zoomin_pressed.png",
    "zoomout_rest.png",
    "zoomout_grouphover.png",
    "zoomout_hover.png",
    "zoomout_pressed.png",
    "home_rest.png",
    "home_grouphover.png",
    "home_hover.png",
    "home_pressed.png",
    "fullpage_rest.png",
    "fullpage_grouphover.png",
    "fullpage_hover.png",
    "fullpage_pressed.png",
);

/// Content type and bytes of the asset `name` (a path under `/assets/`), by exact name only.
pub fn get(name: &str) -> Option<(&'static str, &'static [u8])> {
    FILES
        .iter()
        .chain(IMAGES)
        .find(|(n, _, _)| *n == name)
        .map(|(_, ct, b)| (*ct, *b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_embedded_by_exact_name() {
        let (ct, js) = get("openseadragon/openseadragon.min.js").unwrap();
        assert!(ct.starts_with("text/javascript"));
        assert!(
            std::str::from_utf8(js)
                .unwrap()
                .contains("openseadragon 6.1.1")
        );
        let (_, lic) = get("openseadragon/LICENSE.txt").unwrap();
        assert!(
            std::str::from_utf8(lic)
                .unwrap()
                .contains("Redistribution and use")
        );
        assert!(
            get("openseadragon/images/zoomin_rest.png")
                .unwrap()
                .1
                .starts_with(b"\x89PNG")
        );
        for bad in [
            "",
            "../Cargo.toml",
            "/etc/passwd",
            "openseadragon",
            "viewer.js/",
        ] {
            assert!(get(bad).is_none(), "{bad}");
        }
        // The page loads only embedded scripts.
        assert!(INDEX_HTML.contains("/assets/openseadragon/openseadragon.min.js"));
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
    }
}
