//! CSRF protection for every form: a signed double-submit token.
//!
//! Each browser gets a random token in a signed, `HttpOnly` cookie; pages
//! put the same token in every form (or scripts in `X-CSRF-Token`). An
//! unsafe request from the web is refused with 403 unless the two match.
//! Another site can make a browser send the cookie but cannot read it to
//! put in the form, and cannot plant a cookie of its own because it cannot
//! sign one. The check runs here, in front of every route, so that no form
//! can forget it.
//!
//! The token changes whenever a session starts or ends, so that a token
//! learned before a login (or planted, from a sibling subdomain or over
//! plain http) is worthless after it.
//!
//! Exempt: `/api/` (authenticated by bearer tokens, which browsers never
//! attach on their own) and `/unsubscribe/` (RFC 8058 one-click: mail
//! clients post without cookies; the signed token in the URL is the
//! authority).

use axum::{
    body::{Body, to_bytes},
    extract::{Request, State},
    http::{HeaderMap, Method, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use axum_extra::extract::{
    SignedCookieJar,
    cookie::{Cookie, SameSite},
};
use subtle::ConstantTimeEq;

use super::PageError;
use crate::AppState;

pub const COOKIE: &str = "ps_csrf";
pub const FIELD: &str = "csrf";
pub const HEADER: &str = "x-csrf-token";

/// This browser's token, for pages to put in their forms.
#[derive(Debug, Clone)]
pub struct CsrfToken(pub String);

/// The fields of a checked form post, kept for a login that must carry
/// them over.
#[derive(Debug, Clone, Default)]
pub struct FormFields(pub Vec<(String, String)>);

pub fn token(parts: &Parts) -> String {
    parts
        .extensions
        .get::<CsrfToken>()
        .map(|t| t.0.clone())
        .unwrap_or_default()
}

fn exempt(path: &str) -> bool {
    path.starts_with("/api/") || path.starts_with("/unsubscribe/")
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

pub async fn protect(
    State(state): State<AppState>,
    jar: SignedCookieJar,
    mut request: Request,
    next: Next,
) -> Response {
    let existing = jar
        .get(COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|v| v.len() >= 32);
    let token = existing
        .clone()
        .unwrap_or_else(|| accounts::random_token(""));
    request.extensions_mut().insert(CsrfToken(token.clone()));

    let unsafe_method = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if unsafe_method && !exempt(request.uri().path()) {
        request = match check(&state, existing.as_deref(), request).await {
            Ok(request) => request,
            Err(refusal) => return refusal,
        };
    }
    let response = next.run(request).await;
    if existing.is_some() {
        return response;
    }
    (jar.add(cookie(&state, token)), response).into_response()
}

/// A new token for this browser, set by the handlers that start or end a
/// session.
pub fn renew(state: &AppState, jar: SignedCookieJar) -> SignedCookieJar {
    jar.add(cookie(state, accounts::random_token("")))
}

fn cookie(state: &AppState, token: String) -> Cookie<'static> {
    Cookie::build((COOKIE, token))
        .path("/")
        .http_only(true)
        .secure(state.secure_cookies)
        .same_site(SameSite::Lax)
        .build()
}

async fn check(
    state: &AppState,
    expected: Option<&str>,
    request: Request,
) -> Result<Request, Response> {
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| PageError::TooLarge.into_response())?;
    let fields: Vec<(String, String)> = if is_form(&parts.headers) {
        url::form_urlencoded::parse(&bytes).into_owned().collect()
    } else {
        Vec::new()
    };
    let presented = parts
        .headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            fields
                .iter()
                .find(|(name, _)| name == FIELD)
                .map(|(_, v)| v.clone())
        });
    let valid = match (expected, presented.as_deref()) {
        (Some(expected), Some(presented)) => {
            bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
        }
        _ => false,
    };
    if !valid {
        metrics::counter!("http_forbidden_total", "why" => "csrf").increment(1);
        tracing::info!(path = %parts.uri.path(), "form refused: missing or wrong CSRF token");
        return Err(PageError::Forbidden(
            "This form has expired or did not come from this site. Go back, reload the page and try again.",
        )
        .into_response());
    }
    let mut request = Request::from_parts(parts, Body::from(bytes));
    request.extensions_mut().insert(FormFields(fields));
    Ok(request)
}
