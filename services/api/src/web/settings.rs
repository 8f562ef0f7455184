//! Settings: profile, channels and API tokens.

use accounts::{TimeZoneName, api_token::TokenInfo};
use askama::Template;
use askama_web::WebTemplate;
use axum::{
    Form,
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
};
use delivery::channel::{self, Channel, ChannelSpec, Frequency};
use serde::Deserialize;

use super::{Chrome, PageError, PageResult, Viewer, auth::FieldMessage, see_other};
use crate::AppState;

#[derive(Template, WebTemplate)]
#[template(path = "settings.html")]
struct SettingsPage {
    chrome: Chrome,
    user: accounts::User,
    channels: Vec<Channel>,
    tokens: Vec<TokenInfo>,
    new_token: Option<String>,
    new_secret: Option<String>,
    errors: Vec<FieldMessage>,
}

#[derive(Default)]
struct Shown {
    new_token: Option<String>,
    new_secret: Option<String>,
    errors: Vec<FieldMessage>,
}

async fn render(state: &AppState, viewer: Viewer, shown: Shown) -> PageResult {
    let status = if shown.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let page = SettingsPage {
        chrome: viewer.chrome,
        channels: channel::list(&state.pool, viewer.user.id).await?,
        tokens: accounts::api_token::list(&state.pool, viewer.user.id).await?,
        user: viewer.user,
        new_token: shown.new_token,
        new_secret: shown.new_secret,
        errors: shown.errors,
    };
    Ok((status, page).into_response())
}

pub async fn page(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    render(&state, viewer, Shown::default()).await
}

#[derive(Debug, Deserialize)]
pub struct ProfileForm {
    #[serde(default)]
    time_zone: String,
    #[serde(default)]
    digest_hour: String,
}

pub async fn profile(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<ProfileForm>,
) -> PageResult {
    let mut errors = Vec::new();
    let zone = TimeZoneName::parse(&form.time_zone)
        .map_err(|e| errors.push(super::auth::field_message(&e)))
        .ok();
    let hour = form
        .digest_hour
        .trim()
        .parse::<i16>()
        .ok()
        .filter(|h| (0..24).contains(h));
    if hour.is_none() {
        errors.push(FieldMessage::new(
            "digest_hour",
            "Choose an hour from 0 to 23.",
        ));
    }
    match (zone, hour) {
        (Some(zone), Some(hour)) if errors.is_empty() => {
            accounts::set_profile(&state.pool, viewer.user.id, &zone, hour).await?;
            Ok(see_other("/settings"))
        }
        _ => {
            render(
                &state,
                viewer,
                Shown {
                    errors,
                    ..Shown::default()
                },
            )
            .await
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ChannelForm {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    frequency: String,
}

pub async fn add_channel(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<ChannelForm>,
) -> PageResult {
    let spec = match ChannelSpec::parse(
        &form.kind,
        &form.target,
        &form.frequency,
        state.channel_policy,
    ) {
        Ok(spec) => spec,
        Err(delivery::Error::Invalid { field, message }) => {
            return render(
                &state,
                viewer,
                Shown {
                    errors: vec![FieldMessage::new(field, message)],
                    ..Shown::default()
                },
            )
            .await;
        }
        Err(err) => return Err(err.into()),
    };
    let mut conn = state.pool.acquire().await?;
    let created = channel::create(&mut conn, viewer.user.id, &spec).await?;
    drop(conn);
    if created.secret.is_some() {
        return render(
            &state,
            viewer,
            Shown {
                new_secret: created.secret,
                ..Shown::default()
            },
        )
        .await;
    }
    Ok(see_other("/settings"))
}

#[derive(Debug, Deserialize, Default)]
pub struct FrequencyForm {
    #[serde(default)]
    frequency: String,
}

pub async fn channel_action(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((id, action)): Path<(i64, String)>,
    Form(form): Form<FrequencyForm>,
) -> PageResult {
    let user = viewer.user.id;
    let mut conn = state.pool.acquire().await?;
    let found = match action.as_str() {
        "enable" => channel::set_enabled(&mut conn, user, id, true, None).await?,
        "disable" => {
            channel::set_enabled(&mut conn, user, id, false, Some("turned off by you")).await?
        }
        "delete" => channel::delete(&mut conn, user, id).await?,
        "frequency" => {
            let frequency = Frequency::parse(&form.frequency)
                .ok_or_else(|| PageError::BadRequest("Choose instant or daily.".into()))?;
            channel::set_frequency(&mut conn, user, id, frequency).await?
        }
        _ => return Err(PageError::NotFound),
    };
    if !found {
        return Err(PageError::NotFound);
    }
    Ok(see_other("/settings"))
}

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    name: String,
}

pub async fn create_token(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<TokenForm>,
) -> PageResult {
    let mut conn = state.pool.acquire().await?;
    let created = accounts::api_token::create(&mut conn, viewer.user.id, &form.name).await;
    drop(conn);
    let shown = match created {
        Ok((_, token)) => Shown {
            new_token: Some(token),
            ..Shown::default()
        },
        Err(err @ accounts::Error::Invalid { .. }) => Shown {
            errors: vec![super::auth::field_message(&err)],
            ..Shown::default()
        },
        Err(err) => return Err(err.into()),
    };
    render(&state, viewer, shown).await
}

pub async fn revoke_token(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
) -> PageResult {
    if !accounts::api_token::revoke(&state.pool, viewer.user.id, id).await? {
        return Err(PageError::NotFound);
    }
    Ok(see_other("/settings"))
}
