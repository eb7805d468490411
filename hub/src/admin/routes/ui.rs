//! The dashboard: one static page, its script and its style, compiled into the hub binary.
//!
//! No build step and no front-end dependency: the page is plain HTML and JavaScript that reads
//! the JSON API with `fetch` from the same origin (so it uses the same admin certificate and
//! the same role rules as tetherctl), and nothing on it loads from another host. The
//! Content-Security-Policy says so to the browser as well: `default-src 'self'` forbids inline
//! script and style and any other origin, so data an agent reported (labels, facts, messages),
//! which the page only ever sets as text, could not run as script even if it were markup.

use crate::admin::server::bytes_body::{full, Body};
use crate::admin::server::no_route;
use hyper::{Method, Response};

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");

/// Sent with every dashboard asset.
pub(crate) const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

// The error is the HTTP answer itself, as in the other route modules.
#[allow(clippy::result_large_err)]
pub(super) fn route(method: &Method, seg: &[&str]) -> Result<Response<Body>, Response<Body>> {
    match (method, seg) {
        (&Method::GET, ["ui"]) => Ok(asset("text/html; charset=utf-8", INDEX_HTML)),
        (&Method::GET, ["ui", "app.js"]) => Ok(asset("text/javascript; charset=utf-8", APP_JS)),
        (&Method::GET, ["ui", "app.css"]) => Ok(asset("text/css; charset=utf-8", APP_CSS)),
        _ => Err(no_route(method, seg)),
    }
}

fn asset(content_type: &str, body: &'static str) -> Response<Body> {
    Response::builder()
        .header("content-type", content_type)
        .header("content-security-policy", CONTENT_SECURITY_POLICY)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        // A hub upgrade changes the page; a stale script against a newer API helps nobody.
        .header("cache-control", "no-store")
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_carry_the_policy_and_nothing_loads_from_elsewhere() {
        for path in ["/ui", "/ui/app.js", "/ui/app.css"] {
            let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
            let r = route(&Method::GET, &seg).expect(path);
            assert_eq!(
                r.headers()["content-security-policy"],
                CONTENT_SECURITY_POLICY
            );
        }
        // The policy would block them anyway; this keeps the page honest about it.
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            for needle in [
                "http://",
                "https://",
                "//cdn",
                "<script>",
                "style=",
                "innerHTML",
            ] {
                assert!(!text.contains(needle), "{name} contains {needle:?}");
            }
        }
        assert!(route(&Method::GET, &["ui", "other.js"]).is_err());
    }
}
