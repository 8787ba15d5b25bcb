//! The web pages and the JavaScript SDK, embedded in the binary: the meeting page at
//! `/meet/{room}` (its script and style under `/web/`), and the SDK's ES modules under `/sdk/`.
//!
//! Files are revalidated on every use (`Cache-Control: no-cache` with a content `ETag`, so an
//! unchanged file costs a `304`), which keeps browsers in step with the server's version without
//! versioned file names. The page itself is never stored: its URL carries the access token.

use crate::chat::rules::check_room_id;
use crate::http::ApiError;
use crate::protocol::ErrorCode;
use crate::spaces::ServiceError;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// The file name in its URL folder.
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
    /// A hash of `body`, for the `ETag`.
    pub hash: u64,
}

impl Asset {
    const fn new(name: &'static str, content_type: &'static str, body: &'static str) -> Asset {
        Asset {
            name,
            content_type,
            body,
            hash: fnv1a(body.as_bytes()),
        }
    }

    fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// The SDK's modules, at `/sdk/{name}`.
pub const SDK: &[Asset] = &[
    Asset::new("chorus.js", JS, include_str!("../sdk/js/chorus.js")),
    Asset::new("meeting.js", JS, include_str!("../sdk/js/meeting.js")),
];

/// The pages' scripts and styles, at `/web/{name}`.
pub const WEB: &[Asset] = &[
    Asset::new("meet.js", JS, include_str!("../web/meet.js")),
    Asset::new("meet.css", CSS, include_str!("../web/meet.css")),
];

/// The meeting page, the same for every room: its script reads the room from the URL.
pub const MEET_PAGE: Asset = Asset::new("meet.html", HTML, include_str!("../web/meet.html"));

/// What the page may load and where it may connect: only this server (`'self'` covers its
/// `ws:`/`wss:` URL too); no inline script or style, no framing.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; media-src 'self' blob:; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The routes of this module; they need no server state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/meet/{room}", get(meet_page))
        .route(
            "/sdk/{file}",
            get(|Path(file): Path<String>, h: HeaderMap| async move { serve(SDK, &file, &h) }),
        )
        .route(
            "/web/{file}",
            get(|Path(file): Path<String>, h: HeaderMap| async move { serve(WEB, &file, &h) }),
        )
}

async fn meet_page(Path(room): Path<String>, headers: HeaderMap) -> Response {
    if let Err(e) = check_room_id(&room) {
        return ApiError(ServiceError::new(ErrorCode::InvalidRequest, e.0)).into_response();
    }
    let mut response = respond(&MEET_PAGE, &headers);
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(self), microphone=(self), display-capture=(self)"),
    );
    response
}

fn serve(assets: &'static [Asset], name: &str, headers: &HeaderMap) -> Response {
    match find(assets, name) {
        Some(asset) => respond(asset, headers),
        None => ApiError(ServiceError::new(
            ErrorCode::NotFound,
            format!("no file `{name}` here"),
        ))
        .into_response(),
    }
}

/// The asset named `name`, if embedded.
pub fn find(assets: &'static [Asset], name: &str) -> Option<&'static Asset> {
    assets.iter().find(|a| a.name == name)
}

/// The asset with its headers, or `304 Not Modified` when the client holds this version.
fn respond(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = asset.etag();
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().trim_start_matches("W/"))
        .any(|v| v == etag || v == "*");
    let etag = HeaderValue::from_str(&etag).expect("an ETag is hex digits in quotes");
    let common = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.body,
    )
        .into_response()
}

/// FNV-1a, 64 bits: a stable content hash computable at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn if_none_match(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn every_asset_has_a_distinct_etag() {
        let all: Vec<&Asset> = SDK.iter().chain(WEB).chain([&MEET_PAGE]).collect();
        for (i, a) in all.iter().enumerate() {
            assert!(!a.body.is_empty(), "{} is empty", a.name);
            for b in &all[i + 1..] {
                assert_ne!(a.hash, b.hash, "{} and {}", a.name, b.name);
            }
        }
    }

    #[test]
    fn a_matching_etag_gets_not_modified() {
        let asset = find(SDK, "chorus.js").unwrap();
        let full = respond(asset, &HeaderMap::new());
        assert_eq!(full.status(), StatusCode::OK);
        assert_eq!(full.headers()[header::CONTENT_TYPE], JS);
        let etag = full.headers()[header::ETAG].to_str().unwrap().to_string();

        let list = format!("\"0000000000000000\", W/{etag}");
        let again = respond(asset, &if_none_match(&list));
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag.as_str());

        let stale = respond(asset, &if_none_match("\"0000000000000000\""));
        assert_eq!(stale.status(), StatusCode::OK);
    }

    #[test]
    fn the_page_loads_only_embedded_files() {
        // Every local script and stylesheet the page names is served.
        for url in ["/web/meet.js", "/web/meet.css"] {
            assert!(MEET_PAGE.body.contains(url), "the page does not load {url}");
        }
        for import in ["/sdk/chorus.js", "/sdk/meeting.js"] {
            assert!(find(WEB, "meet.js").unwrap().body.contains(import));
        }
        assert!(find(SDK, "nothing.js").is_none());
    }

    #[test]
    fn fnv1a_matches_known_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
