//! A running api against real Postgres and the Redis Cluster, and a small
//! cookie-keeping HTTP client that behaves like a browser's forms.

#![allow(dead_code)]

use std::{collections::BTreeMap, net::SocketAddr};

use api::{AppState, Config};
use reqwest::{StatusCode, header};
use test_support::TestDatabase;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "a test secret that is long enough to sign everything";

pub struct App {
    pub db: TestDatabase,
    pub addr: SocketAddr,
    pub state: AppState,
    pub config: Config,
    shutdown: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start() -> App {
    start_with(|_| {}).await
}

pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> App {
    test_support::init_tracing();
    let db = TestDatabase::create().await.expect("database");
    let mut config = Config {
        database_url: db.url.clone(),
        redis_urls: test_support::shared_redis_urls(),
        topic_prefix: format!("{}.", test_support::unique_name("api")),
        secret: Some(SECRET.into()),
        listen: ([127, 0, 0, 1], 0).into(),
        allow_private_targets: true,
        auth_attempts_per_minute: 1_000,
        ..Config::default()
    };
    adjust(&mut config);
    let state = AppState::connect(&config).await.expect("connect");
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn({
        let state = state.clone();
        let shutdown = shutdown.clone();
        let listen = config.listen;
        async move {
            api::serve(state, listen, shutdown, |addr| {
                let _ = tx.send(addr);
            })
            .await
            .expect("serve");
        }
    });
    let addr = rx.await.expect("bound");
    config.public_url = format!("http://{addr}");
    App {
        db,
        addr,
        state,
        config,
        shutdown,
    }
}

impl App {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn browser(&self) -> Browser {
        Browser {
            base: format!("http://{}", self.addr),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookies: BTreeMap::new(),
        }
    }

    /// Make an account an administrator.
    pub async fn promote(&self, email: &str) {
        sqlx::query("UPDATE users SET role = 'admin' WHERE email = $1")
            .bind(email)
            .execute(&self.db.pool)
            .await
            .expect("promote");
    }

    pub async fn user_id(&self, email: &str) -> i64 {
        sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(&self.db.pool)
            .await
            .expect("user id")
    }
}

/// Keeps cookies and reads CSRF tokens out of pages, like a browser.
pub struct Browser {
    base: String,
    http: reqwest::Client,
    pub cookies: BTreeMap<String, String>,
}

pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub headers: header::HeaderMap,
    pub body: String,
}

impl Page {
    /// The CSRF token in the page's first form.
    pub fn csrf(&self) -> String {
        field_value(&self.body, "csrf").expect("a CSRF field in the page")
    }

    pub fn field(&self, name: &str) -> Option<String> {
        field_value(&self.body, name)
    }
}

/// The value of the first `<input name="{name}" value="...">`.
pub fn field_value(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}

impl Browser {
    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn finish(&mut self, response: reqwest::Response) -> Page {
        for value in response.headers().get_all(header::SET_COOKIE) {
            let text = value.to_str().unwrap_or_default();
            let pair = text.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() || text.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        Page {
            status: response.status(),
            location: response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            headers: response.headers().clone(),
            body: response.text().await.unwrap_or_default(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .send()
            .await
            .expect("GET");
        self.finish(response).await
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.post_raw(path, body).await
    }

    pub async fn post_raw(&mut self, path: &str, body: String) -> Page {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("POST");
        self.finish(response).await
    }

    /// Sign up through the form; leaves the browser logged in.
    pub async fn sign_up(&mut self, email: &str, password: &str) -> Page {
        let csrf = self.get("/signup").await.csrf();
        let page = self
            .post(
                "/signup",
                &[
                    ("csrf", &csrf),
                    ("email", email),
                    ("password", password),
                    ("time_zone", "Europe/Berlin"),
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        page
    }

    /// This browser's CSRF token, from a page with a form (the sign-up
    /// form when logged out, the log-out button when logged in).
    pub async fn csrf(&mut self) -> String {
        if self.cookies.contains_key("ps_session") {
            self.get("/settings").await.csrf()
        } else {
            self.get("/signup").await.csrf()
        }
    }
}
