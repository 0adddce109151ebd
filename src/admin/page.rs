//! `GET /`: the live status page, one self-contained HTML document built
//! into the binary: tiles per data center, small charts of rate and error
//! ratio, the active scenarios with a countdown and their guards, the
//! buttons and the event timeline. No build step and no CDN: uPlot (MIT,
//! `page/uPlot.LICENSE`) is embedded as shipped on npm, and `page.js`
//! reads `GET /stream`.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;

/// The page with its style and scripts inlined, assembled once.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    include_str!("page/index.html")
        .replacen("/*UPLOT_CSS*/", include_str!("page/uPlot.min.css"), 1)
        .replacen("/*PAGE_CSS*/", include_str!("page/page.css"), 1)
        .replacen("/*UPLOT_JS*/", include_str!("page/uPlot.iife.min.js"), 1)
        .replacen("/*PAGE_JS*/", include_str!("page/page.js"), 1)
});

/// Everything the page needs is inline; it talks only to its own origin
/// and may not be framed (its buttons change what runs).
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(super) async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_inlines_every_asset_once() {
        assert!(!PAGE.contains("/*UPLOT_"), "every placeholder filled");
        assert!(!PAGE.contains("/*PAGE_"), "every placeholder filled");
        assert_eq!(
            PAGE.matches("github.com/leeoniya/uPlot (v1.6.32)").count(),
            1
        );
        assert!(PAGE.contains("new EventSource(url(\"stream\"))"));
        // An inline script must not close its own tag early.
        let scripts =
            include_str!("page/uPlot.iife.min.js").to_owned() + include_str!("page/page.js");
        assert!(!scripts.to_ascii_lowercase().contains("</script"));
    }
}
