//! Subscriptions: list, create, edit, pause, resume, delete, and the live
//! preview of what a subscription would match.

use askama::Template;
use askama_web::WebTemplate;
use axum::{
    Form,
    extract::{Path, Query, State},
    http::StatusCode,
    response::IntoResponse,
};
use catalog::reading::Card;
use serde::Deserialize;
use subscriptions::{
    index::{Index, Paper, Scratch},
    spec::{FieldError, Spec},
    store::{self, Stored},
};

use super::{Chrome, DRAFT, Draft, PageError, PageResult, Viewer, auth::FieldMessage, see_other};
use crate::AppState;

#[derive(Template, WebTemplate)]
#[template(path = "subscriptions.html")]
struct ListPage {
    chrome: Chrome,
    subscriptions: Vec<Stored>,
}

pub async fn list(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    Ok(ListPage {
        chrome: viewer.chrome,
        subscriptions: store::list(&state.pool, viewer.user.id).await?,
    }
    .into_response())
}

/// The form's fields as typed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SubscriptionForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub categories: String,
    #[serde(default)]
    pub query: String,
    #[serde(default)]
    pub authors: String,
}

impl SubscriptionForm {
    fn from_stored(s: &Stored) -> Self {
        Self {
            name: s.name.clone(),
            categories: s.categories.join(" "),
            query: s.query.clone().unwrap_or_default(),
            authors: s.authors.join(", "),
        }
    }

    fn from_draft(draft: &Draft) -> Self {
        Self {
            name: draft.get("name"),
            categories: draft.get("categories"),
            query: draft.get("query"),
            authors: draft.get("authors"),
        }
    }

    fn parse(&self) -> Result<Spec, Vec<FieldError>> {
        Spec::parse(&self.name, &self.categories, &self.query, &self.authors)
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "subscription_form.html")]
struct FormPage {
    chrome: Chrome,
    id: Option<i64>,
    form: SubscriptionForm,
    errors: Vec<FieldMessage>,
}

#[derive(Debug, Deserialize)]
pub struct DraftQuery {
    draft: Option<String>,
}

impl DraftQuery {
    fn draft(&self, state: &AppState) -> Option<Draft> {
        self.draft
            .as_deref()
            .and_then(|token| state.signer.verify(DRAFT, token))
    }
}

pub async fn new_form(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<DraftQuery>,
) -> PageResult {
    let draft = query.draft(&state);
    let chrome = match &draft {
        Some(_) => viewer
            .chrome
            .with_notice("Here is what you entered before logging in. Save it when ready."),
        None => viewer.chrome,
    };
    Ok(FormPage {
        chrome,
        id: None,
        form: draft
            .as_ref()
            .map(SubscriptionForm::from_draft)
            .unwrap_or_default(),
        errors: Vec::new(),
    }
    .into_response())
}

pub async fn edit_form(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Query(query): Query<DraftQuery>,
) -> PageResult {
    let stored = store::get(&state.pool, viewer.user.id, id)
        .await?
        .ok_or(PageError::NotFound)?;
    let form = query.draft(&state).map_or_else(
        || SubscriptionForm::from_stored(&stored),
        |d| SubscriptionForm::from_draft(&d),
    );
    Ok(FormPage {
        chrome: viewer.chrome,
        id: Some(id),
        form,
        errors: Vec::new(),
    }
    .into_response())
}

fn invalid(
    chrome: Chrome,
    id: Option<i64>,
    form: SubscriptionForm,
    errors: &[FieldError],
) -> PageResult {
    Ok((
        StatusCode::UNPROCESSABLE_ENTITY,
        FormPage {
            chrome,
            id,
            form,
            errors: errors
                .iter()
                .map(|e| FieldMessage::new(e.field, e.message.clone()))
                .collect(),
        },
    )
        .into_response())
}

pub async fn create(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<SubscriptionForm>,
) -> PageResult {
    let spec = match form.parse() {
        Ok(spec) => spec,
        Err(errors) => return invalid(viewer.chrome, None, form, &errors),
    };
    let mut conn = state.pool.acquire().await?;
    match store::create(&mut conn, viewer.user.id, &spec).await {
        Ok(_) => Ok(see_other("/subscriptions")),
        Err(store::Error::TooMany) => invalid(
            viewer.chrome,
            None,
            form,
            &[FieldError::new(
                "subscription",
                store::Error::TooMany.to_string(),
            )],
        ),
        Err(err) => Err(err.into()),
    }
}

pub async fn update(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<SubscriptionForm>,
) -> PageResult {
    let spec = match form.parse() {
        Ok(spec) => spec,
        Err(errors) => return invalid(viewer.chrome, Some(id), form, &errors),
    };
    let mut conn = state.pool.acquire().await?;
    store::update(&mut conn, viewer.user.id, id, &spec)
        .await?
        .ok_or(PageError::NotFound)?;
    Ok(see_other("/subscriptions"))
}

pub async fn act(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((id, action)): Path<(i64, String)>,
) -> PageResult {
    let mut conn = state.pool.acquire().await?;
    let user = viewer.user.id;
    let found = match action.as_str() {
        "pause" => store::set_paused(&mut conn, user, id, true)
            .await?
            .is_some(),
        "resume" => store::set_paused(&mut conn, user, id, false)
            .await?
            .is_some(),
        "delete" => store::delete(&mut conn, user, id).await?,
        _ => return Err(PageError::NotFound),
    };
    if !found {
        return Err(PageError::NotFound);
    }
    Ok(see_other("/subscriptions"))
}

#[derive(Template, WebTemplate)]
#[template(path = "preview.html")]
struct PreviewFragment {
    problem: Option<String>,
    total: usize,
    scanned: usize,
    cards: Vec<Card>,
}

/// Most matching papers the preview lists.
const PREVIEW_SHOWN: usize = 10;

/// The recent papers `spec` matches, newest first, and how many in all,
/// found by the same index the matcher uses.
pub fn preview_matches(spec: &Spec, recent: &[Card]) -> (usize, Vec<Card>) {
    let index = Index::build([subscriptions::index::Subscription {
        id: 0,
        user_id: 0,
        categories: spec.categories.clone(),
        query: spec.query.as_ref().map(|(_, q)| q.clone()),
        authors: spec.authors.clone(),
    }]);
    let mut scratch = Scratch::default();
    let mut total = 0;
    let mut shown = Vec::new();
    for card in recent {
        let paper = Paper {
            title: &card.title,
            abstract_text: &card.abstract_text,
            categories: &card.categories,
            authors: &card.authors,
        };
        if !index.matches(&paper, &mut scratch).is_empty() {
            total += 1;
            if shown.len() < PREVIEW_SHOWN {
                shown.push(card.clone());
            }
        }
    }
    (total, shown)
}

pub async fn preview(
    State(state): State<AppState>,
    _viewer: Viewer,
    Query(form): Query<SubscriptionForm>,
) -> PageResult {
    let recent = state.recent_papers().await?;
    let fragment = match form.parse() {
        Ok(spec) => {
            let (total, cards) = preview_matches(&spec, &recent);
            PreviewFragment {
                problem: None,
                total,
                scanned: recent.len(),
                cards,
            }
        }
        Err(errors) => PreviewFragment {
            problem: Some(
                errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            total: 0,
            scanned: recent.len(),
            cards: Vec::new(),
        },
    };
    Ok(fragment.into_response())
}
