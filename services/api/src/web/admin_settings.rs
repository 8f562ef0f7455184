//! The runtime settings page (admin role only): the settings in force, a
//! form to change them, which instances have applied which version, and
//! the history with rollback.

use askama::Template;
use askama_web::WebTemplate;
use axum::{
    Form, Router,
    extract::State,
    response::IntoResponse,
    routing::{get, post},
};
use serde::Deserialize;
use settings::store::Change;

use super::{AdminViewer, Chrome, PageResult};
use crate::{
    AppState,
    runtime_settings::{self, Overview},
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/settings", get(page).post(change))
        .route("/admin/settings/rollback", post(rollback))
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/settings.html")]
struct SettingsPage {
    chrome: Chrome,
    overview: Overview,
    /// The form's text: the settings in force, or what was submitted.
    document: String,
    reason: String,
    message: Option<String>,
    problems: Vec<String>,
}

impl SettingsPage {
    fn time(&self, at: &time::OffsetDateTime) -> String {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }
}

async fn render(
    state: &AppState,
    chrome: Chrome,
    submitted: Option<(String, String)>,
    message: Option<String>,
    problems: Vec<String>,
) -> PageResult {
    let overview = runtime_settings::overview(state).await?;
    let (document, reason) = submitted.unwrap_or_else(|| {
        (
            serde_json::to_string_pretty(&overview.settings).unwrap_or_default(),
            String::new(),
        )
    });
    Ok(SettingsPage {
        chrome,
        overview,
        document,
        reason,
        message,
        problems,
    }
    .into_response())
}

pub async fn page(State(state): State<AppState>, admin: AdminViewer) -> PageResult {
    render(&state, admin.chrome, None, None, Vec::new()).await
}

#[derive(Debug, Deserialize)]
pub struct ChangeForm {
    document: String,
    #[serde(default)]
    reason: String,
    /// The version the form was made from.
    expected_version: i64,
}

pub async fn change(
    State(state): State<AppState>,
    admin: AdminViewer,
    Form(form): Form<ChangeForm>,
) -> PageResult {
    let submitted = Some((form.document.clone(), form.reason.clone()));
    let parsed: settings::Settings = match serde_json::from_str(&form.document) {
        Ok(parsed) => parsed,
        Err(err) => {
            let problem = format!("The settings are not valid JSON of the expected shape: {err}");
            return render(&state, admin.chrome, submitted, None, vec![problem]).await;
        }
    };
    let outcome = runtime_settings::change(
        &state,
        Change {
            settings: &parsed,
            author: &admin.user.email,
            reason: form.reason.trim(),
            expected_version: Some(form.expected_version),
        },
    )
    .await;
    match outcome {
        Ok(version) => {
            let message = format!("Version {version} saved; the running instances apply it now.");
            render(&state, admin.chrome, None, Some(message), Vec::new()).await
        }
        Err(settings::Error::Invalid(problems)) => {
            let problems = problems.iter().map(ToString::to_string).collect();
            render(&state, admin.chrome, submitted, None, problems).await
        }
        Err(err @ settings::Error::Conflict { .. }) => {
            render(&state, admin.chrome, submitted, None, vec![err.to_string()]).await
        }
        Err(err) => Err(err.into()),
    }
}

#[derive(Debug, Deserialize)]
pub struct RollbackForm {
    version: i64,
    #[serde(default)]
    reason: String,
}

pub async fn rollback(
    State(state): State<AppState>,
    admin: AdminViewer,
    Form(form): Form<RollbackForm>,
) -> PageResult {
    match runtime_settings::rollback(&state, form.version, &admin.user.email, &form.reason).await {
        Ok(version) => {
            let message = format!(
                "Version {version} restores version {}; the running instances apply it now.",
                form.version
            );
            render(&state, admin.chrome, None, Some(message), Vec::new()).await
        }
        Err(err @ settings::Error::NoSuchVersion(_)) => {
            render(&state, admin.chrome, None, None, vec![err.to_string()]).await
        }
        Err(err) => Err(err.into()),
    }
}
