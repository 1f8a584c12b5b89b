//! `GET /openapi.json`: the API listener's OpenAPI 3.1 document,
//! generated from the code (utoipa) so that it cannot drift from what is
//! served: each handler carries a `#[utoipa::path(...)]` annotation (its
//! method, path, parameters, body and answers), the bodies are the serde
//! types themselves (`ToSchema`), and the router is built from the same
//! list that makes the document ([`super::api`]). What is shared by every
//! route is here: the document's head, the tags, the bearer scheme and the
//! error answers.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToResponse};

use super::error::ErrorBody;

/// The name of the security scheme (`security(("bearer" = []))`).
pub const BEARER: &str = "bearer";

/// What [`super::api`]'s routes add their paths and schemas to.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sluiced HTTP API",
        description = "The admin port of sluiced (`admin.listen`): metrics and health for \
            operators, and a JSON API for consumers in any language. daemon/HTTP.md says more, \
            with examples. Routes marked with the bearer scheme need `Authorization: Bearer \
            <token>` (`sluice token new`), unless the daemon has no principals and listens on \
            loopback only (then no header is needed)."
    ),
    modifiers(&Bearer),
    tags(
        (name = "operations", description = "Metrics and health: open, for scrapers and load balancers (keep the admin port off untrusted networks)"),
        (name = "publish", description = "Publishing over HTTP: one message or a batch, answered once durable; exactly once with Idempotency-Key or Sluice-Producer-Id + Sluice-Seq"),
        (name = "streams", description = "The streams, their records and the spool's checks"),
        (name = "consumers", description = "Consumer groups over HTTP: fetch (long poll), ack, nack, extend; the groups' figures; reset and delete"),
        (name = "push", description = "Consumer groups pushed to a client: a WebSocket (acks, nacks, extensions and credit on the socket) or server-sent events (acks over POST .../ack)"),
        (name = "dead letters", description = "The dead-letter stream of a stream: list, replay, purge"),
    ),
    components(
        schemas(ErrorBody),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            Unavailable,
            TooLarge,
            NotAMessage,
            KeyUsed
        )
    )
)]
pub struct ApiDoc;

/// Adds the bearer scheme the annotations name ([`BEARER`]).
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API token of a principal (`sluice token new`); not needed by a daemon \
                 that has no principals and listens on loopback only",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

// The error answers, one component each, as the handlers give them (see
// error.rs): `(status = 401, response = Unauthorized)` in an annotation.

/// The request is malformed (the message names the field).
#[derive(ToResponse)]
#[response(description = "The request is malformed; the message names the field")]
pub struct BadRequest(pub ErrorBody);

#[derive(ToResponse)]
#[response(description = "No token, or one the daemon does not know")]
pub struct Unauthorized(pub ErrorBody);

#[derive(ToResponse)]
#[response(description = "The principal may not do this to the stream")]
pub struct Forbidden(pub ErrorBody);

#[derive(ToResponse)]
#[response(description = "No such stream (or consumer group, where the path names one)")]
pub struct NotFound(pub ErrorBody);

#[derive(ToResponse)]
#[response(
    description = "The consumer group has members (stop them first), is configured, or \
                   the daemon runs as many groups as it may (`consumers.max_groups`); the \
                   stream exists already (create), or is in use: producers, groups with \
                   members or a backlog, forwards (delete and purge, unless forced)"
)]
pub struct Conflict(pub ErrorBody);

#[derive(ToResponse)]
#[response(
    description = "The daemon is stopping; or, with `Retry-After`, every page turn is taken \
                   (`admin.max_page_requests`): try again",
    headers(("Retry-After" = u32, description = "Seconds to wait (only when busy)"))
)]
pub struct Unavailable(pub ErrorBody);

// Publishing's own refusals.

#[derive(ToResponse)]
#[response(description = "A body over 16 MiB, or a message over the largest stored")]
pub struct TooLarge(pub ErrorBody);

#[derive(ToResponse)]
#[response(description = "A form (multipart/form-data, x-www-form-urlencoded) is not a message")]
pub struct NotAMessage(pub ErrorBody);

#[derive(ToResponse)]
#[response(description = "The Idempotency-Key was used with another body")]
pub struct KeyUsed(pub ErrorBody);

/// What any route on a stream may answer before it gets to work: a
/// malformed request, no principal, no right, no such stream (or group).
/// `StreamRefusals` in an annotation's `responses(...)`.
#[derive(IntoResponses)]
#[allow(dead_code)] // documentation only
pub enum StreamRefusals {
    #[response(status = 400)]
    Bad(#[ref_response] BadRequest),
    #[response(status = 401)]
    NoPrincipal(#[ref_response] Unauthorized),
    #[response(status = 403)]
    NoRight(#[ref_response] Forbidden),
    #[response(status = 404)]
    NoStream(#[ref_response] NotFound),
}

/// The document, built once: it depends on the code only.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        super::api()
            .into_openapi()
            .to_json()
            .expect("the OpenAPI document serializes")
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((
        status = 200,
        description = "The API listener's OpenAPI 3.1 document, generated from the code",
        content_type = "application/json",
        body = Object
    ))
)]
pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use axum::Router;
    use serde_json::Value;

    use super::super::{api, consume, AdminState};
    use super::document;

    /// A route: method (upper case) and path.
    type Route = (String, String);

    /// Every route `router` serves. axum has no API that lists them, but
    /// its `Debug` form shows them: the path router's routes with their
    /// methods (`RouteId(1): MethodRouter(MethodRouter { ..., allow_header:
    /// Bytes(b"GET,HEAD") })`), then its paths (`node: Node { paths:
    /// {RouteId(1): "/metrics", ...} }`). A route that is not a method
    /// router (`route_service`, `nest_service`) counts as method `ANY`, so
    /// that it fails the comparison too. If axum's format changes, the
    /// parse finds nothing and `served_routes_are_read` says so.
    fn served(router: Router<Arc<AdminState>>) -> BTreeSet<Route> {
        let text = format!("{router:?}");
        let (routes, rest) = text
            .split_once("node: Node { paths: {")
            .expect("axum's Router Debug form has `node: Node { paths: {`");
        // `RouteId(n): "path"` entries, separated by `, ` (paths hold
        // braces, so the map's end is where no `, ` follows an entry).
        let mut path_of = BTreeMap::new();
        let mut rest = rest;
        while let Some(entry) = rest.strip_prefix("RouteId(") {
            let (id, after) = entry.split_once("): \"").expect("RouteId(n): \"path\"");
            let (path, after) = after.split_once('"').expect("the path's closing quote");
            path_of.insert(id.to_owned(), path.to_owned());
            rest = after.strip_prefix(", ").unwrap_or("");
        }
        let mut served = BTreeSet::new();
        for entry in routes.split("RouteId(").skip(1) {
            let (id, endpoint) = entry.split_once(')').expect("RouteId(n)");
            let methods = endpoint
                .split_once("allow_header: Bytes(b\"")
                .map(|(_, m)| &m[..m.find('"').expect("the methods' closing quote")])
                .unwrap_or("ANY");
            let path = path_of.get(id).expect("every route has a path");
            for method in methods.split(',') {
                // axum answers HEAD with the GET handler.
                if method != "HEAD" {
                    served.insert((method.to_owned(), path.clone()));
                }
            }
        }
        served
    }

    /// Every operation the document lists.
    fn documented(doc: &Value) -> BTreeSet<Route> {
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, _) in item.as_object().expect("a path item") {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
        out
    }

    /// What `router` serves and `doc` does not list, and the other way
    /// round.
    fn differences(router: Router<Arc<AdminState>>, doc: &Value) -> (Vec<Route>, Vec<Route>) {
        let (served, documented) = (served(router), documented(doc));
        (
            served.difference(&documented).cloned().collect(),
            documented.difference(&served).cloned().collect(),
        )
    }

    fn doc() -> Value {
        serde_json::from_str(document()).expect("/openapi.json is JSON")
    }

    #[test]
    fn the_document_is_openapi_3_1_and_lists_every_route_the_router_serves() {
        let doc = doc();
        let version = doc["openapi"].as_str().expect("an openapi field");
        assert!(version.starts_with("3.1."), "{version}");
        let (undocumented, unserved) = differences(api().split_for_parts().0, &doc);
        assert!(
            undocumented.is_empty(),
            "served without documentation: {undocumented:?}; annotate the handler with \
             #[utoipa::path] and add it to api() with .routes(routes!(handler)), as the \
             comment there says"
        );
        assert!(unserved.is_empty(), "documented, not served: {unserved:?}");
    }

    /// The comparison above can fail: a route added beside the list (a
    /// plain `.route`) is found.
    #[test]
    fn served_routes_are_read() {
        let router = api().split_for_parts().0;
        let served = served(router.clone());
        assert!(
            served.contains(&("GET".into(), "/health".into()))
                && served.contains(&("DELETE".into(), "/streams/{stream}/groups/{group}".into())),
            "axum's Debug form changed? read: {served:?}"
        );
        let extra = router
            .route(
                "/streams/{stream}/undocumented",
                axum::routing::put(|| async {}),
            )
            .route_service("/raw", raw_service());
        let (undocumented, unserved) = differences(extra, &doc());
        assert_eq!(
            undocumented,
            [
                ("ANY".to_owned(), "/raw".to_owned()),
                ("PUT".into(), "/streams/{stream}/undocumented".into())
            ]
        );
        assert!(unserved.is_empty());
    }

    /// A service for `route_service`: axum keeps it as a plain service,
    /// without the methods of a method router.
    fn raw_service() -> axum::routing::MethodRouter {
        axum::routing::any(|| async {})
    }

    /// Every `$ref` points at a component; every operation has a declared
    /// tag and a success answer; every `{param}` of a path is a parameter
    /// of its operations; security requirements name the bearer scheme.
    #[test]
    fn the_document_holds_together() {
        let doc = doc();
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("$ref", Value::String(r)) => out.push(r),
                            _ => refs(v, out),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            assert!(doc.pointer(pointer).is_some(), "{r} points at nothing");
        }
        let tags: BTreeSet<&str> = doc["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer");
        for (path, item) in doc["paths"].as_object().unwrap() {
            let params: Vec<&str> = path
                .split('{')
                .skip(1)
                .map(|p| p.split_once('}').unwrap().0)
                .collect();
            for (method, op) in item.as_object().unwrap() {
                let at = format!("{method} {path}");
                let op_tags = op["tags"].as_array().expect("every operation has a tag");
                assert!(!op_tags.is_empty(), "{at}: no tag");
                for t in op_tags {
                    assert!(
                        tags.contains(t.as_str().unwrap()),
                        "{at}: tag {t} not declared"
                    );
                }
                for p in &params {
                    let declared = op["parameters"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|q| q["in"] == "path" && q["name"] == *p));
                    assert!(
                        declared,
                        "{at}: path parameter {p} not declared (params(...))"
                    );
                }
                for s in op["security"].as_array().into_iter().flatten() {
                    for scheme in s.as_object().unwrap().keys() {
                        assert_eq!(scheme, "bearer", "{at}");
                    }
                }
                let ok = op["responses"]
                    .as_object()
                    .is_some_and(|r| r.keys().any(|c| c.starts_with('2') || c == "101"));
                assert!(ok, "{at}: no success answer (2xx, or 101 for a WebSocket)");
            }
        }
    }

    /// The request bodies' schemas name the fields the handlers read (the
    /// handlers refuse any other).
    #[test]
    fn body_schemas_name_the_fields_the_handlers_read() {
        let doc = doc();
        for (schema, fields) in [
            ("FetchBody", consume::FETCH_FIELDS),
            ("AckBody", consume::ACK_FIELDS),
            ("NackBody", consume::NACK_FIELDS),
            ("ExtendBody", consume::EXTEND_FIELDS),
            ("ResetBody", consume::RESET_FIELDS),
            ("ReplayBody", consume::REPLAY_FIELDS),
            ("PurgeBody", consume::PURGE_FIELDS),
        ] {
            let s = &doc["components"]["schemas"][schema];
            let named: BTreeSet<&str> = s["properties"]
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            assert_eq!(named, fields.iter().copied().collect(), "{schema}");
            assert_eq!(
                s["additionalProperties"], false,
                "{schema}: unknown fields are refused"
            );
        }
    }
}
