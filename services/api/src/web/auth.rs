//! Sign up, log in, log out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use accounts::{NewUser, Role};
use askama::Template;
use askama_web::WebTemplate;
use axum::{
    Form,
    extract::{ConnectInfo, FromRequestParts, Query, State},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use axum_extra::extract::{
    SignedCookieJar,
    cookie::{Cookie, SameSite},
};
use governor::clock::{Clock, DefaultClock};
use serde::Deserialize;

use super::{
    Chrome, DRAFT, MaybeViewer, PageError, PageResult, SESSION_COOKIE, local_path, see_other,
};
use crate::AppState;

#[derive(Debug, Template, WebTemplate)]
#[template(path = "signup.html")]
pub struct SignupPage {
    pub chrome: Chrome,
    pub email: String,
    pub time_zone: String,
    pub errors: Vec<FieldMessage>,
}

/// A message about one form field.
#[derive(Debug, Clone)]
pub struct FieldMessage {
    pub field: String,
    pub message: String,
}

impl FieldMessage {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub chrome: Chrome,
    pub message: Option<String>,
    pub error: Option<String>,
    pub email: String,
    pub next: String,
    pub draft: String,
}

/// The client's address, for rate limits. Forwarded headers are not
/// trusted, because clients can write them; behind a proxy, terminate the
/// limit there or teach this extractor the proxy's header.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip()),
        ))
    }
}

/// Refuse when this address, or its IPv6 /64, has tried too often.
pub fn limit(state: &AppState, ip: IpAddr) -> Result<(), PageError> {
    state
        .auth_limiter
        .check_key(&limit_key(ip))
        .map_err(too_many)
}

/// Refuse a login when the account it names has been tried too often,
/// from any address.
pub fn limit_account(state: &AppState, email: &str) -> Result<(), PageError> {
    state
        .account_limiter
        .check_key(&email.trim().to_lowercase())
        .map_err(too_many)
}

fn too_many(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> PageError {
    metrics::counter!("http_rate_limited_total").increment(1);
    PageError::TooMany(not_until.wait_time_from(DefaultClock::default().now()))
}

/// What an address is counted under: IPv4 addresses one by one, IPv6 by
/// their /64, which one subscriber usually holds whole (counting each
/// address would give them 2^64 buckets), and IPv4-mapped IPv6 as IPv4.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

pub async fn signup_page(viewer: MaybeViewer) -> Response {
    if viewer.user.is_some() {
        return see_other("/feed");
    }
    SignupPage {
        chrome: viewer.chrome,
        email: String::new(),
        time_zone: "UTC".into(),
        errors: Vec::new(),
    }
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct SignupForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    time_zone: String,
}

pub async fn signup(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    viewer: MaybeViewer,
    jar: SignedCookieJar,
    Form(form): Form<SignupForm>,
) -> PageResult {
    limit(&state, ip)?;
    let time_zone = if form.time_zone.trim().is_empty() {
        "UTC"
    } else {
        form.time_zone.trim()
    };
    let rerender = |errors: Vec<FieldMessage>| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            SignupPage {
                chrome: viewer.chrome.clone(),
                email: form.email.clone(),
                time_zone: time_zone.to_owned(),
                errors,
            },
        )
            .into_response()
    };
    let new_user = match NewUser::parse(&form.email, &form.password, time_zone) {
        Ok(new_user) => new_user,
        Err(errors) => return Ok(rerender(errors.iter().map(field_message).collect())),
    };
    let user = match create_account(&state, &new_user, Role::User).await {
        Ok(user) => user,
        Err(crate::Error::Accounts(accounts::Error::EmailTaken)) => {
            return Ok(rerender(vec![FieldMessage::new(
                "email",
                "An account with this email exists. Log in instead.",
            )]));
        }
        Err(err) => return Err(err.into()),
    };
    metrics::counter!("signups_total").increment(1);
    start_session(&state, jar, user.id, "/subscriptions/new").await
}

/// Create an account with the default channels (inbox and email), in one
/// transaction. The password is hashed before it starts.
pub async fn create_account(
    state: &AppState,
    new_user: &NewUser,
    role: Role,
) -> crate::Result<accounts::User> {
    let hash = accounts::password::hash(new_user.password.expose()).await?;
    let mut tx = state.pool.begin().await?;
    let user = accounts::create_user(&mut tx, new_user, &hash, role).await?;
    delivery::channel::create_defaults(&mut tx, user.id, &user.email).await?;
    tx.commit().await?;
    Ok(user)
}

pub fn field_message(err: &accounts::Error) -> FieldMessage {
    match err {
        accounts::Error::Invalid { field, message } => FieldMessage::new(*field, message.clone()),
        other => FieldMessage::new("email", other.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

pub async fn login_page(viewer: MaybeViewer, Query(query): Query<LoginQuery>) -> Response {
    let next = query
        .next
        .as_deref()
        .and_then(local_path)
        .unwrap_or("/feed")
        .to_owned();
    if viewer.user.is_some() {
        return see_other(&next);
    }
    LoginPage {
        chrome: viewer.chrome,
        message: None,
        error: None,
        email: String::new(),
        next,
        draft: String::new(),
    }
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
    #[serde(default)]
    draft: String,
}

pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    viewer: MaybeViewer,
    jar: SignedCookieJar,
    Form(form): Form<LoginForm>,
) -> PageResult {
    limit(&state, ip)?;
    limit_account(&state, &form.email)?;
    let Some(user) = accounts::authenticate(&state.pool, &form.email, &form.password).await? else {
        metrics::counter!("logins_total", "outcome" => "refused").increment(1);
        return Ok((
            StatusCode::UNAUTHORIZED,
            LoginPage {
                chrome: viewer.chrome,
                message: None,
                error: Some("That email and password do not match an account.".into()),
                email: form.email,
                next: form.next,
                draft: form.draft,
            },
        )
            .into_response());
    };
    metrics::counter!("logins_total", "outcome" => "ok").increment(1);
    let mut next = local_path(&form.next).unwrap_or("/feed").to_owned();
    if state
        .signer
        .verify::<super::Draft>(DRAFT, &form.draft)
        .is_some()
    {
        let separator = if next.contains('?') { '&' } else { '?' };
        next = format!("{next}{separator}draft={}", super::encode(&form.draft));
    }
    start_session(&state, jar, user.id, &next).await
}

async fn start_session(
    state: &AppState,
    jar: SignedCookieJar,
    user_id: i64,
    next: &str,
) -> PageResult {
    let token = accounts::session::start(&state.pool, user_id, state.sessions).await?;
    let cookie = Cookie::build((SESSION_COOKIE, token))
        .path("/")
        .http_only(true)
        .secure(state.secure_cookies)
        .same_site(SameSite::Lax)
        .build();
    let jar = super::csrf::renew(state, jar.add(cookie));
    Ok((jar, see_other(next)).into_response())
}

pub async fn logout(State(state): State<AppState>, jar: SignedCookieJar) -> PageResult {
    if let Some(cookie) = jar.get(SESSION_COOKIE) {
        accounts::session::end(&state.pool, cookie.value()).await?;
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/"));
    let jar = super::csrf::renew(&state, jar);
    Ok((jar, see_other("/")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_ipv6_by_its_64_and_mapped_addresses_as_ipv4() {
        let key = |s: &str| limit_key(s.parse().expect("address"));
        assert_eq!(key("203.0.113.7"), key("203.0.113.7"));
        assert_ne!(key("203.0.113.7"), key("203.0.113.8"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:203.0.113.7"), key("203.0.113.7"));
    }
}
