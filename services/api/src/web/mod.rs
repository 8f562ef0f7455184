//! The web UI: server-rendered askama pages, forms with CSRF tokens, and
//! a little JavaScript that only enhances.

pub mod admin;
pub mod admin_settings;
pub mod auth;
pub mod csrf;
pub mod reading;
pub mod settings;
pub mod subscription_pages;
pub mod unsubscribe;

use std::time::Duration;

use accounts::User;
use askama::Template;
use askama_web::WebTemplate;
use axum::{
    Router,
    extract::FromRequestParts,
    http::{Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use axum_extra::extract::SignedCookieJar;
use serde::{Deserialize, Serialize};

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(reading::home))
        .route("/signup", get(auth::signup_page).post(auth::signup))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/feed", get(reading::feed))
        .route("/feeds/{token}", get(reading::atom))
        .route("/search", get(reading::search))
        .route("/inbox", get(reading::inbox))
        .route("/inbox/read", post(reading::mark_all_read))
        .route("/papers/{arxiv_id}/feedback", post(reading::feedback))
        .route(
            "/subscriptions",
            get(subscription_pages::list).post(subscription_pages::create),
        )
        .route("/subscriptions/new", get(subscription_pages::new_form))
        .route("/subscriptions/preview", get(subscription_pages::preview))
        .route("/subscriptions/{id}", post(subscription_pages::update))
        .route(
            "/subscriptions/{id}/edit",
            get(subscription_pages::edit_form),
        )
        .route(
            "/subscriptions/{id}/{action}",
            post(subscription_pages::act),
        )
        .route("/settings", get(settings::page))
        .route("/settings/profile", post(settings::profile))
        .route("/settings/channels", post(settings::add_channel))
        .route(
            "/settings/channels/{id}/{action}",
            post(settings::channel_action),
        )
        .route("/settings/tokens", post(settings::create_token))
        .route("/settings/tokens/{id}/revoke", post(settings::revoke_token))
        .route(
            "/unsubscribe/{token}",
            get(unsubscribe::confirm).post(unsubscribe::unsubscribe),
        )
        .merge(admin::routes())
        .merge(admin_settings::routes())
}

pub async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../static/style.css"),
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../static/app.js"),
    )
}

pub async fn not_found() -> PageError {
    PageError::NotFound
}

/// What the frame of every page needs.
#[derive(Debug, Clone, Default)]
pub struct Chrome {
    pub user: Option<UserView>,
    pub csrf: String,
    pub unread: i64,
    pub notices: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct UserView {
    pub email: String,
    pub is_admin: bool,
}

impl Chrome {
    fn for_parts(parts: &Parts, user: Option<&User>) -> Self {
        Self {
            user: user.map(|u| UserView {
                email: u.email.clone(),
                is_admin: u.is_admin(),
            }),
            csrf: csrf::token(parts),
            unread: 0,
            notices: Vec::new(),
        }
    }

    pub fn with_notice(mut self, notice: impl Into<String>) -> Self {
        self.notices.push(notice.into());
        self
    }
}

/// Why a page could not be shown. Internal details go to the log, never
/// to the page.
#[derive(Debug)]
pub enum PageError {
    NotFound,
    Forbidden(&'static str),
    TooMany(Duration),
    TooLarge,
    BadRequest(String),
    Internal(String),
}

#[derive(Template, WebTemplate)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Chrome,
    title: String,
    detail: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, detail) = match self {
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing at this address.".to_owned(),
            ),
            Self::Forbidden(why) => (StatusCode::FORBIDDEN, "Forbidden", why.to_owned()),
            Self::TooMany(wait) => {
                let seconds = wait.as_secs().max(1);
                let page = ErrorPage {
                    chrome: Chrome::default(),
                    title: "Too many attempts".into(),
                    detail: format!("Please wait {seconds} seconds and try again."),
                };
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, seconds.to_string())],
                    page,
                )
                    .into_response();
            }
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Too large",
                "What you sent is larger than this site accepts.".to_owned(),
            ),
            Self::BadRequest(why) => (StatusCode::BAD_REQUEST, "Bad request", why),
            Self::Internal(err) => {
                tracing::error!(error = %err, "page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "We could not finish this. Please try again in a moment.".to_owned(),
                )
            }
        };
        let page = ErrorPage {
            chrome: Chrome::default(),
            title: title.into(),
            detail,
        };
        (status, page).into_response()
    }
}

macro_rules! internal_from {
    ($($t:ty),*) => {$(
        impl From<$t> for PageError {
            fn from(err: $t) -> Self {
                Self::Internal(err.to_string())
            }
        }
    )*};
}
internal_from!(
    sqlx::Error,
    catalog::Error,
    accounts::Error,
    subscriptions::store::Error,
    delivery::Error,
    streams::Error,
    ::settings::Error,
    crate::Error
);

pub type PageResult<T = Response> = Result<T, PageError>;

pub const SESSION_COOKIE: &str = "ps_session";

/// The logged-in person, or the way to the login page.
///
/// A form posted after the session ended is not lost: the login page
/// carries it, signed, and after logging in the person is sent back to the
/// form with it filled in.
#[derive(Debug)]
pub struct Viewer {
    pub user: User,
    pub chrome: Chrome,
}

/// What was typed into a form whose session had ended.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Draft {
    pub fields: Vec<(String, String)>,
}

impl Draft {
    pub fn get(&self, name: &str) -> String {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

pub const DRAFT: &str = "draft";

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match current_user(parts, state).await {
            Ok(Some(user)) => {
                let mut chrome = Chrome::for_parts(parts, Some(&user));
                chrome.unread = unread(state, user.id).await;
                Ok(Self { user, chrome })
            }
            Ok(None) => Err(login_instead(parts, state)),
            Err(err) => Err(err.into_response()),
        }
    }
}

/// Anyone, logged in or not.
#[derive(Debug)]
pub struct MaybeViewer {
    pub user: Option<User>,
    pub chrome: Chrome,
}

impl FromRequestParts<AppState> for MaybeViewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let user = current_user(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let chrome = Chrome::for_parts(parts, user.as_ref());
        Ok(Self { user, chrome })
    }
}

/// An administrator; everyone else gets 403.
#[derive(Debug)]
pub struct AdminViewer {
    pub user: User,
    pub chrome: Chrome,
}

impl FromRequestParts<AppState> for AdminViewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let viewer = Viewer::from_request_parts(parts, state).await?;
        if !viewer.user.is_admin() {
            metrics::counter!("http_forbidden_total", "why" => "admin").increment(1);
            return Err(PageError::Forbidden("These pages are for administrators.").into_response());
        }
        Ok(Self {
            user: viewer.user,
            chrome: viewer.chrome,
        })
    }
}

async fn current_user(parts: &Parts, state: &AppState) -> PageResult<Option<User>> {
    let jar = SignedCookieJar::from_headers(&parts.headers, state.cookie_key.clone());
    let Some(cookie) = jar.get(SESSION_COOKIE) else {
        return Ok(None);
    };
    Ok(accounts::session::user(&state.pool, cookie.value(), state.sessions).await?)
}

async fn unread(state: &AppState, user_id: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM deliveries d JOIN channels c ON c.id = d.channel_id \
         WHERE c.user_id = $1 AND c.kind = 'in_app' AND d.state = 'sent' AND d.read_at IS NULL",
    )
    .bind(user_id)
    .fetch_one(&state.pool)
    .await
    .unwrap_or(0)
}

fn login_instead(parts: &Parts, state: &AppState) -> Response {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let fields = parts
        .extensions
        .get::<csrf::FormFields>()
        .filter(|_| parts.method == Method::POST);
    let Some(csrf::FormFields(fields)) = fields else {
        return Redirect::to(&format!("/login?next={}", encode(&path))).into_response();
    };
    let draft = Draft {
        fields: fields
            .iter()
            .filter(|(name, _)| name != "csrf")
            .cloned()
            .collect(),
    };
    let token = state.signer.sign(
        DRAFT,
        &draft,
        Some(time::OffsetDateTime::now_utc() + time::Duration::hours(1)),
    );
    let page = auth::LoginPage {
        chrome: Chrome::for_parts(parts, None),
        message: Some("Your session has ended. Log in again; what you entered is kept.".into()),
        error: None,
        email: String::new(),
        next: form_page_for(parts.uri.path()),
        draft: token,
    };
    (StatusCode::UNAUTHORIZED, page).into_response()
}

/// The page whose form posts to `path`, to return to after logging in.
fn form_page_for(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["subscriptions"] => "/subscriptions/new".into(),
        ["subscriptions", id] if id.parse::<i64>().is_ok() => format!("/subscriptions/{id}/edit"),
        ["settings", ..] => "/settings".into(),
        ["subscriptions", ..] => "/subscriptions".into(),
        _ => "/feed".into(),
    }
}

/// Only paths on this site, so that `next` cannot send people elsewhere.
/// Browsers drop tabs and newlines inside URLs and read `\` as `/`, so
/// `/\t/evil.example` would become `//evil.example`: only visible ASCII
/// without backslashes is accepted (anything else arrives percent-encoded).
pub fn local_path(next: &str) -> Option<&str> {
    let visible = next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    (visible && next.starts_with('/') && !next.starts_with("//")).then_some(next)
}

pub fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Redirect after a successful POST (303, so a reload does not repeat it).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_return_to_their_form() {
        assert_eq!(form_page_for("/subscriptions"), "/subscriptions/new");
        assert_eq!(form_page_for("/subscriptions/42"), "/subscriptions/42/edit");
        assert_eq!(form_page_for("/settings/channels"), "/settings");
        assert_eq!(form_page_for("/papers/x/feedback"), "/feed");
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(local_path("/feed?x=1"), Some("/feed?x=1"));
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n/evil.example",
            "/ /evil.example",
            "/feed\u{a0}",
            "",
        ] {
            assert_eq!(local_path(bad), None, "{bad}");
        }
    }
}
