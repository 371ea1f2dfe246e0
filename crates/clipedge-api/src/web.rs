//! The demo page's static files, compiled in so every front (embedded server, edge Worker)
//! serves the same bytes with no file system.

/// One static file of the page.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../../../web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../web/app.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../../web/style.css"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../../../web/favicon.svg"),
    },
];

/// The asset served at `path` (`/index.html` is `/`).
pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|asset| asset.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_only_local_assets() {
        let page = std::str::from_utf8(asset("/").unwrap().bytes).unwrap();
        for linked in ["/app.js", "/style.css", "/favicon.svg"] {
            assert!(page.contains(linked), "{linked}");
            assert!(asset(linked).is_some(), "{linked}");
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(asset("/index.html").is_some());
        assert!(asset("/missing.js").is_none());
    }
}
