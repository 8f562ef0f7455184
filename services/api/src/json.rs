//! The JSON API under `/api/v1`: what the web UI does, for programs.
//!
//! Authentication is a bearer token (`Authorization: Bearer ps_...`),
//! from sign-up, `POST /tokens` or the settings page; cookies are never
//! accepted here, so CSRF cannot reach it. Every POST takes an
//! `Idempotency-Key`: a repeat with the same key and body gets the first
//! answer (with `Idempotent-Replayed: true`) and has no second effect; the
//! same key with a different body is refused. Errors are
//! `{"error": {"code", "message", "fields"?}}`. The OpenAPI document is at
//! `/api/v1/openapi.json`.

use accounts::{NewUser, Role, User, idempotency};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use delivery::{
    channel::{self, ChannelSpec},
    ledger::{self, FeedCursor},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use sqlx::PgConnection;
use subscriptions::{spec::Spec, store};
use utoipa::{OpenApi, ToSchema};

use crate::{AppState, web};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/users", post(sign_up))
        .route("/tokens", post(create_token))
        .route("/me", get(me))
        .route(
            "/subscriptions",
            get(list_subscriptions).post(create_subscription),
        )
        .route("/subscriptions/preview", post(preview))
        .route(
            "/subscriptions/{id}",
            get(get_subscription)
                .put(update_subscription)
                .delete(delete_subscription),
        )
        .route("/subscriptions/{id}/{action}", post(pause_or_resume))
        .route("/feed", get(feed))
        .route("/inbox", get(inbox))
        .route("/inbox/read", post(mark_read))
        .route("/papers/{arxiv_id}/feedback", post(feedback))
        .route("/channels", get(list_channels).post(create_channel))
        .route("/channels/{id}", axum::routing::delete(delete_channel))
        .route("/search", get(search))
        .route("/admin/settings", get(settings_overview))
        .route("/admin/settings/versions", post(change_settings))
        .route("/admin/settings/rollback", post(rollback_settings))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
}

// ---- errors ----

#[derive(Debug, Serialize, ToSchema)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    fields: Vec<FieldProblem>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    fn invalid(fields: Vec<FieldProblem>) -> Self {
        Self {
            fields,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "some fields are invalid",
            )
        }
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"code": self.code, "message": self.message});
        if !self.fields.is_empty() {
            body["fields"] = json!(self.fields);
        }
        let mut response = (self.status, Json(json!({ "error": body }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<web::PageError> for ApiError {
    fn from(err: web::PageError) -> Self {
        match err {
            web::PageError::NotFound => Self::not_found(),
            web::PageError::Forbidden(why) => Self::new(StatusCode::FORBIDDEN, "forbidden", why),
            web::PageError::TooMany(wait) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("try again in {} s", wait.as_secs().max(1)),
            ),
            web::PageError::TooLarge => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "body too large")
            }
            web::PageError::BadRequest(why) => {
                Self::new(StatusCode::BAD_REQUEST, "bad_request", why)
            }
            web::PageError::Internal(err) => {
                tracing::error!(error = %err, "API request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the request could not be completed; try again",
                )
            }
        }
    }
}

macro_rules! internal_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(err: $t) -> Self {
                web::PageError::Internal(err.to_string()).into()
            }
        }
    )*};
}
internal_from!(
    sqlx::Error,
    catalog::Error,
    accounts::Error,
    store::Error,
    delivery::Error,
    crate::Error
);

type ApiResult<T = Response> = Result<T, ApiError>;

// ---- extractors ----

/// The person a bearer token belongs to.
#[derive(Debug)]
pub struct ApiUser(pub User);

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <token>",
            )
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(unauthorized)?;
        accounts::api_token::user(&state.pool, token.trim())
            .await?
            .map(Self)
            .ok_or_else(unauthorized)
    }
}

/// A POSTed JSON body, with its idempotency key and fingerprint.
#[derive(Debug)]
pub struct Posted<T> {
    pub body: T,
    key: Option<String>,
    fingerprint: Vec<u8>,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Posted<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> ApiResult<Self> {
        let key = match request.headers().get("idempotency-key") {
            Some(value) => {
                let key = value.to_str().map_err(|_| {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_idempotency_key", "not ASCII")
                })?;
                idempotency::validate_key(key).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_idempotency_key",
                        e.to_string(),
                    )
                })?;
                Some(key.to_owned())
            }
            None => None,
        };
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            let status = e.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, "too_large", "body too large")
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
            }
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let body = serde_json::from_slice(text).map_err(|e| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_json", e.to_string())
        })?;
        Ok(Self {
            body,
            key,
            fingerprint: idempotency::request_hash(&method, &path, &bytes),
        })
    }
}

impl<T> Posted<T> {
    /// Claim the key in the effect's transaction: `Some` is the answer to
    /// replay.
    async fn claim(&self, conn: &mut PgConnection, scope: &str) -> ApiResult<Option<Response>> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        match idempotency::claim(conn, scope, key, &self.fingerprint).await? {
            idempotency::Claim::Fresh => Ok(None),
            idempotency::Claim::Replay { status, body } => {
                metrics::counter!("idempotent_replays_total").increment(1);
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                let mut response = (status, Json(body)).into_response();
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                Ok(Some(response))
            }
            idempotency::Claim::Mismatch => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request",
            )),
        }
    }

    /// Record the answer with the key, in the same transaction.
    async fn answer(
        &self,
        conn: &mut PgConnection,
        scope: &str,
        status: StatusCode,
        body: Value,
    ) -> ApiResult {
        self.answer_showing_once(conn, scope, status, body, &[])
            .await
    }

    /// [`Self::answer`] for an answer that carries secrets (a new API
    /// token, a webhook signing secret), which are kept only as hashes or
    /// for the sender: the recorded copy, the one a repeat gets, has the
    /// `secrets` fields set to null and lists them in `withheld`, so that no
    /// secret lies in the database in clear for the key's lifetime.
    async fn answer_showing_once(
        &self,
        conn: &mut PgConnection,
        scope: &str,
        status: StatusCode,
        body: Value,
        secrets: &[&str],
    ) -> ApiResult {
        if let Some(key) = &self.key {
            let mut recorded = body.clone();
            if let Some(fields) = recorded.as_object_mut().filter(|_| !secrets.is_empty()) {
                for secret in secrets {
                    fields.insert((*secret).to_owned(), Value::Null);
                }
                fields.insert("withheld".to_owned(), json!(secrets));
            }
            idempotency::finish(conn, scope, key, status.as_u16(), &recorded).await?;
        }
        Ok((status, Json(body)).into_response())
    }
}

fn user_scope(user: &User) -> String {
    format!("user:{}", user.id)
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

// ---- accounts ----

#[derive(Debug, Deserialize, ToSchema)]
pub struct SignUp {
    email: String,
    password: String,
    /// IANA name; `UTC` when absent.
    time_zone: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/users", tag = "accounts", request_body = SignUp,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    responses((status = 201, description = "the account and an API token, shown once: a repeat with the same Idempotency-Key gets `token: null` and `withheld: [\"token\"]`"),
              (status = 409, description = "the email has an account"),
              (status = 422, description = "invalid fields"), (status = 429, description = "too many attempts")))]
pub async fn sign_up(
    State(state): State<AppState>,
    web::auth::ClientIp(ip): web::auth::ClientIp,
    posted: Posted<SignUp>,
) -> ApiResult {
    web::auth::limit(&state, ip)?;
    let form = &posted.body;
    let new_user = NewUser::parse(
        &form.email,
        &form.password,
        form.time_zone.as_deref().unwrap_or("UTC"),
    )
    .map_err(|errors| ApiError::invalid(errors.iter().map(account_problem).collect()))?;
    let scope = idempotency::anonymous_scope(&posted.fingerprint);
    let hash = accounts::password::hash(new_user.password.expose()).await?;
    let mut tx = state.pool.begin().await?;
    if let Some(replay) = posted.claim(&mut tx, &scope).await? {
        return Ok(replay);
    }
    let user = match accounts::create_user(&mut tx, &new_user, &hash, Role::User).await {
        Ok(user) => user,
        Err(accounts::Error::EmailTaken) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "email_taken",
                "an account with this email exists",
            ));
        }
        Err(err) => return Err(err.into()),
    };
    channel::create_defaults(&mut tx, user.id, &user.email).await?;
    let (_, token) = accounts::api_token::create(&mut tx, user.id, "sign-up").await?;
    let response = posted
        .answer_showing_once(
            &mut tx,
            &scope,
            StatusCode::CREATED,
            json!({"user": user, "token": token}),
            &["token"],
        )
        .await?;
    tx.commit().await?;
    metrics::counter!("signups_total").increment(1);
    Ok(response)
}

fn account_problem(err: &accounts::Error) -> FieldProblem {
    let message = web::auth::field_message(err);
    FieldProblem {
        field: message.field,
        message: message.message,
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewToken {
    email: String,
    password: String,
    name: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "accounts", request_body = NewToken,
    responses((status = 201, description = "a new API token, shown once (a repeat with the same Idempotency-Key gets `token: null`)"), (status = 401, description = "wrong email or password")))]
pub async fn create_token(
    State(state): State<AppState>,
    web::auth::ClientIp(ip): web::auth::ClientIp,
    posted: Posted<NewToken>,
) -> ApiResult {
    web::auth::limit(&state, ip)?;
    web::auth::limit_account(&state, &posted.body.email)?;
    let form = &posted.body;
    let user = accounts::authenticate(&state.pool, &form.email, &form.password)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "that email and password do not match an account",
            )
        })?;
    let scope = user_scope(&user);
    let mut tx = state.pool.begin().await?;
    if let Some(replay) = posted.claim(&mut tx, &scope).await? {
        return Ok(replay);
    }
    let name = form.name.as_deref().unwrap_or("api");
    let (id, token) = accounts::api_token::create(&mut tx, user.id, name)
        .await
        .map_err(|e| ApiError::invalid(vec![account_problem(&e)]))?;
    let response = posted
        .answer_showing_once(
            &mut tx,
            &scope,
            StatusCode::CREATED,
            json!({"id": id, "token": token}),
            &["token"],
        )
        .await?;
    tx.commit().await?;
    Ok(response)
}

#[utoipa::path(get, path = "/api/v1/me", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, description = "the token's owner")))]
pub async fn me(ApiUser(user): ApiUser) -> Json<User> {
    Json(user)
}

// ---- subscriptions ----

#[derive(Debug, Deserialize, ToSchema)]
pub struct SubscriptionBody {
    #[serde(default)]
    name: String,
    /// arXiv category codes such as `cs.LG` or `math`.
    #[serde(default)]
    categories: Vec<String>,
    /// AND, OR, NOT, parentheses and "quoted phrases".
    #[serde(default)]
    query: String,
    #[serde(default)]
    authors: Vec<String>,
}

impl SubscriptionBody {
    fn spec(&self) -> ApiResult<Spec> {
        let categories: Vec<&str> = self.categories.iter().map(String::as_str).collect();
        let authors: Vec<&str> = self.authors.iter().map(String::as_str).collect();
        Spec::from_parts(&self.name, &categories, &self.query, &authors).map_err(|errors| {
            ApiError::invalid(
                errors
                    .into_iter()
                    .map(|e| FieldProblem {
                        field: e.field.to_owned(),
                        message: e.message,
                    })
                    .collect(),
            )
        })
    }
}

#[utoipa::path(get, path = "/api/v1/subscriptions", tag = "subscriptions", security(("bearer" = [])),
    responses((status = 200, description = "the caller's subscriptions")))]
pub async fn list_subscriptions(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
) -> ApiResult {
    Ok(Json(json!({ "subscriptions": store::list(&state.pool, user.id).await? })).into_response())
}

#[utoipa::path(post, path = "/api/v1/subscriptions", tag = "subscriptions", security(("bearer" = [])),
    request_body = SubscriptionBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    responses((status = 201, description = "created"), (status = 422, description = "invalid fields, each explained")))]
pub async fn create_subscription(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    posted: Posted<SubscriptionBody>,
) -> ApiResult {
    let spec = posted.body.spec()?;
    let scope = user_scope(&user);
    let mut tx = state.pool.begin().await?;
    if let Some(replay) = posted.claim(&mut tx, &scope).await? {
        return Ok(replay);
    }
    let stored = match store::create(&mut tx, user.id, &spec).await {
        Ok(stored) => stored,
        Err(store::Error::TooMany) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too_many",
                store::Error::TooMany.to_string(),
            ));
        }
        Err(err) => return Err(err.into()),
    };
    let response = posted
        .answer(&mut tx, &scope, StatusCode::CREATED, to_value(&stored))
        .await?;
    tx.commit().await?;
    Ok(response)
}

#[utoipa::path(get, path = "/api/v1/subscriptions/{id}", tag = "subscriptions", security(("bearer" = [])),
    responses((status = 200, description = "the subscription"), (status = 404, description = "no such subscription")))]
pub async fn get_subscription(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<i64>,
) -> ApiResult {
    let stored = store::get(&state.pool, user.id, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(stored).into_response())
}

#[utoipa::path(put, path = "/api/v1/subscriptions/{id}", tag = "subscriptions", security(("bearer" = [])),
    request_body = SubscriptionBody,
    responses((status = 200, description = "updated"), (status = 404, description = "no such subscription"), (status = 422, description = "invalid fields")))]
pub async fn update_subscription(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<i64>,
    Json(body): Json<SubscriptionBody>,
) -> ApiResult {
    let spec = body.spec()?;
    let mut conn = state.pool.acquire().await?;
    let stored = store::update(&mut conn, user.id, id, &spec)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(stored).into_response())
}

#[utoipa::path(delete, path = "/api/v1/subscriptions/{id}", tag = "subscriptions", security(("bearer" = [])),
    responses((status = 204, description = "deleted"), (status = 404, description = "no such subscription")))]
pub async fn delete_subscription(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<i64>,
) -> ApiResult {
    let mut conn = state.pool.acquire().await?;
    if !store::delete(&mut conn, user.id, id).await? {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/api/v1/subscriptions/{id}/{action}", tag = "subscriptions", security(("bearer" = [])),
    params(("action" = String, Path, description = "pause or resume")),
    responses((status = 200, description = "the subscription"), (status = 404, description = "no such subscription")))]
pub async fn pause_or_resume(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path((id, action)): Path<(i64, String)>,
) -> ApiResult {
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return Err(ApiError::not_found()),
    };
    let mut conn = state.pool.acquire().await?;
    let stored = store::set_paused(&mut conn, user.id, id, paused)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(stored).into_response())
}

#[utoipa::path(post, path = "/api/v1/subscriptions/preview", tag = "subscriptions", security(("bearer" = [])),
    request_body = SubscriptionBody,
    responses((status = 200, description = "recent papers it would match: total, scanned, papers"), (status = 422, description = "invalid fields")))]
pub async fn preview(
    State(state): State<AppState>,
    ApiUser(_user): ApiUser,
    posted: Posted<SubscriptionBody>,
) -> ApiResult {
    let spec = posted.body.spec()?;
    let recent = state.recent_papers().await?;
    let (total, papers) = web::subscription_pages::preview_matches(&spec, &recent);
    Ok(Json(json!({"total": total, "scanned": recent.len(), "papers": papers})).into_response())
}

// ---- reading ----

#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    subscription: Option<i64>,
    /// From `next` of the previous page.
    after: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/feed", tag = "reading", security(("bearer" = [])),
    params(("subscription" = Option<i64>, Query, description = "only this subscription's papers"),
           ("after" = Option<String>, Query, description = "cursor from the previous page's `next`"),
           ("limit" = Option<i64>, Query, description = "1 to 100, default 25")),
    responses((status = 200, description = "matched papers, newest first, with `next`")))]
pub async fn feed(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Query(query): Query<FeedQuery>,
) -> ApiResult {
    let cursor: Option<FeedCursor> = match query.after.as_deref() {
        Some(token) => Some(state.signer.verify("feed-cursor", token).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_cursor",
                "use `next` from a previous page",
            )
        })?),
        None => None,
    };
    let limit = query.limit.unwrap_or(25).clamp(1, 100);
    let items = ledger::feed(
        &state.pool,
        user.id,
        query.subscription,
        cursor.as_ref(),
        limit,
    )
    .await?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last())
        .flatten()
        .map(|last| {
            state.signer.sign(
                "feed-cursor",
                &FeedCursor {
                    matched_at: last.matched_at,
                    arxiv_id: last.card.arxiv_id.clone(),
                },
                None,
            )
        });
    Ok(Json(json!({"items": items, "next": next})).into_response())
}

#[utoipa::path(get, path = "/api/v1/inbox", tag = "reading", security(("bearer" = [])),
    responses((status = 200, description = "the in-app inbox: unread count and items")))]
pub async fn inbox(State(state): State<AppState>, ApiUser(user): ApiUser) -> ApiResult {
    let (items, unread) = ledger::inbox(&state.pool, user.id, 100).await?;
    Ok(Json(json!({"unread": unread, "items": items})).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct MarkRead {
    /// One paper; all when absent.
    arxiv_id: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/inbox/read", tag = "reading", security(("bearer" = [])),
    request_body = MarkRead, responses((status = 200, description = "how many were marked")))]
pub async fn mark_read(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    posted: Posted<MarkRead>,
) -> ApiResult {
    let mut conn = state.pool.acquire().await?;
    let marked = ledger::mark_read(&mut conn, user.id, posted.body.arxiv_id.as_deref()).await?;
    Ok(Json(json!({ "marked": marked })).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Vote {
    /// 1, -1, or null to take the vote back.
    vote: Option<i16>,
}

#[utoipa::path(post, path = "/api/v1/papers/{arxiv_id}/feedback", tag = "reading", security(("bearer" = [])),
    request_body = Vote, responses((status = 204, description = "recorded"), (status = 422, description = "not 1, -1 or null")))]
pub async fn feedback(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(arxiv_id): Path<String>,
    posted: Posted<Vote>,
) -> ApiResult {
    if posted.body.vote.is_some_and(|v| !matches!(v, -1 | 1)) || arxiv_id.len() > 40 {
        return Err(ApiError::invalid(vec![FieldProblem {
            field: "vote".into(),
            message: "1, -1 or null".into(),
        }]));
    }
    let mut conn = state.pool.acquire().await?;
    ledger::set_feedback(&mut conn, user.id, &arxiv_id, posted.body.vote).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/search", tag = "reading",
    params(("q" = String, Query, description = "words, \"phrases\", -excluded"),
           ("limit" = Option<i64>, Query, description = "1 to 100"), ("offset" = Option<i64>, Query, description = "for paging")),
    responses((status = 200, description = "papers by relevance")))]
pub async fn search(State(state): State<AppState>, Query(query): Query<SearchQuery>) -> ApiResult {
    let q = query.q.trim();
    if q.is_empty() || q.len() > 500 {
        return Err(ApiError::invalid(vec![FieldProblem {
            field: "q".into(),
            message: "1 to 500 characters".into(),
        }]));
    }
    let papers = catalog::reading::search(
        &state.pool,
        q,
        query.limit.unwrap_or(25).clamp(1, 100),
        query.offset.unwrap_or(0).clamp(0, 10_000),
    )
    .await?;
    Ok(Json(json!({ "papers": papers })).into_response())
}

// ---- channels ----

#[utoipa::path(get, path = "/api/v1/channels", tag = "channels", security(("bearer" = [])),
    responses((status = 200, description = "the caller's channels")))]
pub async fn list_channels(State(state): State<AppState>, ApiUser(user): ApiUser) -> ApiResult {
    Ok(Json(json!({ "channels": channel::list(&state.pool, user.id).await? })).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewChannel {
    /// email, webhook or slack.
    kind: String,
    target: String,
    /// instant (default) or daily.
    frequency: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/channels", tag = "channels", security(("bearer" = [])),
    request_body = NewChannel,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    responses((status = 201, description = "created; a webhook's signing secret is in `secret`, shown once (a repeat with the same Idempotency-Key gets `secret: null`)"), (status = 422, description = "invalid fields")))]
pub async fn create_channel(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    posted: Posted<NewChannel>,
) -> ApiResult {
    let body = &posted.body;
    let spec = ChannelSpec::parse(
        &body.kind,
        &body.target,
        body.frequency.as_deref().unwrap_or("instant"),
        state.channel_policy,
    )
    .map_err(|e| match e {
        delivery::Error::Invalid { field, message } => ApiError::invalid(vec![FieldProblem {
            field: field.into(),
            message,
        }]),
        other => other.into(),
    })?;
    let scope = user_scope(&user);
    let mut tx = state.pool.begin().await?;
    if let Some(replay) = posted.claim(&mut tx, &scope).await? {
        return Ok(replay);
    }
    let created = channel::create(&mut tx, user.id, &spec).await?;
    let mut body = to_value(&created);
    body["secret"] = json!(created.secret);
    let response = posted
        .answer_showing_once(&mut tx, &scope, StatusCode::CREATED, body, &["secret"])
        .await?;
    tx.commit().await?;
    Ok(response)
}

#[utoipa::path(delete, path = "/api/v1/channels/{id}", tag = "channels", security(("bearer" = [])),
    responses((status = 204, description = "deleted"), (status = 404, description = "no such channel")))]
pub async fn delete_channel(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<i64>,
) -> ApiResult {
    let mut conn = state.pool.acquire().await?;
    if !channel::delete(&mut conn, user.id, id).await? {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- the document ----

// ---- runtime settings (admins) ----

fn require_admin(user: &User) -> ApiResult<()> {
    if user.is_admin() {
        Ok(())
    } else {
        metrics::counter!("http_forbidden_total", "why" => "admin").increment(1);
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only administrators may see or change the runtime settings",
        ))
    }
}

fn settings_error(err: settings::Error) -> ApiError {
    match err {
        settings::Error::Invalid(problems) => ApiError::invalid(
            problems
                .into_iter()
                .map(|p| FieldProblem {
                    field: p.field,
                    message: p.reason,
                })
                .collect(),
        ),
        err @ settings::Error::Conflict { .. } => {
            ApiError::new(StatusCode::CONFLICT, "conflict", err.to_string())
        }
        err @ settings::Error::NoSuchVersion(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", err.to_string())
        }
        other => web::PageError::Internal(other.to_string()).into(),
    }
}

#[utoipa::path(get, path = "/api/v1/admin/settings", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "latest version, settings in force, instances and history"),
              (status = 403, description = "not an administrator")))]
pub async fn settings_overview(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
) -> ApiResult<Json<crate::runtime_settings::Overview>> {
    require_admin(&user)?;
    Ok(Json(crate::runtime_settings::overview(&state).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SettingsChange {
    /// The whole settings document, as `GET /admin/settings` returns it.
    #[schema(value_type = Object)]
    settings: settings::Settings,
    #[serde(default)]
    reason: String,
    /// Refuse the change (409) unless this is still the latest version.
    expected_version: Option<i64>,
}

#[utoipa::path(post, path = "/api/v1/admin/settings/versions", tag = "admin", security(("bearer" = [])),
    request_body = SettingsChange,
    responses((status = 201, description = "stored and announced; `{\"version\"}`"),
              (status = 422, description = "invalid settings, with every reason"),
              (status = 409, description = "someone changed the settings meanwhile")))]
pub async fn change_settings(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    posted: Posted<SettingsChange>,
) -> ApiResult {
    require_admin(&user)?;
    let change = settings::store::Change {
        settings: &posted.body.settings,
        author: &user.email,
        reason: posted.body.reason.trim(),
        expected_version: posted.body.expected_version,
    };
    new_settings_version(&state, &user, &posted, async |tx| {
        state.settings.change_in(tx, change).await
    })
    .await
}

/// Store a settings version (made by `make` in the request's transaction,
/// with its idempotency record), then announce it.
async fn new_settings_version<T>(
    state: &AppState,
    user: &User,
    posted: &Posted<T>,
    make: impl AsyncFnOnce(&mut PgConnection) -> settings::Result<i64>,
) -> ApiResult {
    let scope = user_scope(user);
    let mut tx = state.pool.begin().await?;
    if let Some(replay) = posted.claim(&mut tx, &scope).await? {
        return Ok(replay);
    }
    let version = make(&mut tx).await.map_err(settings_error)?;
    let response = posted
        .answer(
            &mut tx,
            &scope,
            StatusCode::CREATED,
            json!({ "version": version }),
        )
        .await?;
    tx.commit().await?;
    crate::runtime_settings::announce(&state.redis, version).await;
    Ok(response)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SettingsRollback {
    /// The version whose settings become current again.
    version: i64,
    #[serde(default)]
    reason: String,
}

#[utoipa::path(post, path = "/api/v1/admin/settings/rollback", tag = "admin", security(("bearer" = [])),
    request_body = SettingsRollback,
    responses((status = 201, description = "the new version that restores the old one; `{\"version\"}`"),
              (status = 404, description = "no such version")))]
pub async fn rollback_settings(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    posted: Posted<SettingsRollback>,
) -> ApiResult {
    require_admin(&user)?;
    let (version, reason) = (posted.body.version, &posted.body.reason);
    new_settings_version(&state, &user, &posted, async |tx| {
        state
            .settings
            .rollback_in(tx, version, &user.email, reason)
            .await
    })
    .await
}

#[derive(OpenApi)]
#[openapi(
    info(title = "paperstream API", version = "1", description = "New arXiv papers, matched and summarized. Authenticate with `Authorization: Bearer <token>`."),
    paths(sign_up, create_token, me, list_subscriptions, create_subscription, get_subscription,
          update_subscription, delete_subscription, pause_or_resume, preview, feed, inbox, mark_read,
          feedback, search, list_channels, create_channel, delete_channel, settings_overview,
          change_settings, rollback_settings),
    components(schemas(SignUp, NewToken, SubscriptionBody, MarkRead, Vote, NewChannel, FieldProblem,
                       SettingsChange, SettingsRollback)),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
