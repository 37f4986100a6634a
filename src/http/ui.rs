//! The web UI's static files, embedded in the binary at build time
//! (`include_str!`): `/` and `/index.html` serve the page, `/ui/...` its
//! scripts, styles and the vendored chart library. No build step, no CDN:
//! the files in `src/http/ui/` are what the browser gets.
//!
//! The UI is a client of `/api` like any other tool (it logs in with HTTP
//! Basic against `/api/whoami`); serving it needs no credentials and this
//! module never answers for a path under `/api`.

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::reply::ApiError;

/// Path under `/ui/` → (content type, contents).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/dom.js"),
    ),
    (
        "queue.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/queue.js"),
    ),
    (
        "pages.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/pages.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/admin.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("ui/style.css"),
    ),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("ui/vendor/uPlot.min.css"),
    ),
    (
        "vendor/uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_str!("ui/vendor/uPlot.LICENSE"),
    ),
];

const INDEX: &str = include_str!("ui/index.html");

/// Answer a request for a path outside `/api` (`seg` are its decoded
/// segments): the page, an asset, or a 404 in the API's JSON form.
pub fn serve(method: &Method, seg: &[&str]) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::method_not_allowed().into_response();
    }
    let found = match seg {
        [] | ["index.html"] => Some(("text/html; charset=utf-8", INDEX)),
        ["ui", rest @ ..] if !rest.is_empty() => {
            let path = rest.join("/");
            ASSETS
                .iter()
                .find(|(p, _, _)| *p == path)
                .map(|(_, t, body)| (*t, *body))
        }
        _ => None,
    };
    let Some((content_type, body)) = found else {
        return ApiError::not_found().into_response();
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change with the binary: revalidate rather than run stale scripts.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_page_and_assets_never_api() {
        assert_eq!(serve(&Method::GET, &[]).status(), StatusCode::OK);
        assert_eq!(
            serve(&Method::GET, &["index.html"]).status(),
            StatusCode::OK
        );
        for (path, _, _) in ASSETS {
            let seg: Vec<&str> = std::iter::once("ui").chain(path.split('/')).collect();
            assert_eq!(serve(&Method::GET, &seg).status(), StatusCode::OK, "{path}");
        }
        assert_eq!(
            serve(&Method::GET, &["ui", "nope.js"]).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(serve(&Method::GET, &["ui"]).status(), StatusCode::NOT_FOUND);
        assert_eq!(
            serve(&Method::POST, &[]).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn every_script_the_page_loads_is_embedded() {
        // index.html names its files under /ui/, the modules each other as
        // "./x.js"; a missing one would only show up as a broken page.
        for src in [INDEX].into_iter().chain(ASSETS.iter().map(|(_, _, b)| *b)) {
            let named = src.split("/ui/").skip(1).chain(src.split("\"./").skip(1));
            for part in named {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-'))
                    .collect();
                if name.ends_with(".js") || name.ends_with(".css") {
                    assert!(
                        ASSETS.iter().any(|(p, _, _)| *p == name),
                        "{name} is referenced but not embedded"
                    );
                }
            }
        }
    }
}
