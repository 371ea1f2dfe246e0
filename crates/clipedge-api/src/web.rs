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

/// `Cache-Control` of media objects: they are named by their content hash and never change.
pub const MEDIA_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// The object under the index root that `/media/{path}` serves, or a 404 for a path that could
/// leave the `media/` prefix or names no plain object.
pub fn media_object(path: &str) -> Result<String, crate::ApiError> {
    let safe = !path.is_empty()
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
    if !safe {
        return Err(media_not_found(path));
    }
    Ok(format!("media/{path}"))
}

/// The 404 for a media path that names nothing.
pub fn media_not_found(path: &str) -> crate::ApiError {
    crate::ApiError::new(
        crate::ErrorCode::NotFound,
        format!("no media object {path:?}"),
    )
}

/// The content type of a media object, from its extension.
pub fn media_content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "webp" => "image/webp",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        _ => "application/octet-stream",
    }
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

    #[test]
    fn media_paths_stay_under_the_media_prefix() {
        assert_eq!(media_object("ab12.webp").unwrap(), "media/ab12.webp");
        assert_eq!(media_object("x/y.png").unwrap(), "media/x/y.png");
        for bad in ["", "../CURRENT", "a//b", "a/./b", "a b", "%2e%2e/x"] {
            assert!(media_object(bad).is_err(), "{bad:?}");
        }
        assert_eq!(media_content_type("a.webp"), "image/webp");
        assert_eq!(media_content_type("a.bin"), "application/octet-stream");
    }
}
