//! The admin API (axum, JSON): health, the topology with each service's
//! effective faults, the scenario catalogue, activating and lifting faults,
//! and Prometheus metrics. Handlers only touch the engine's own lock and
//! the lock-free rule snapshot, never the data plane. `auth.rs` guards the
//! routes with bearer tokens; `listen.rs` serves them, with TLS if asked;
//! `api.rs` types every request and answer body; `view.rs` builds the
//! answers' views of activations, scenarios and faults.

pub mod api;
mod auth;
mod listen;
mod page;
mod reports;
mod status;
mod stream;
mod view;

pub use auth::Caller;
pub use listen::{serve, HEADER_TIMEOUT};

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};

use crate::control::{Control, ReloadError};
use crate::engine::{ActivateError, Activated, Engine, Refused, UnknownScenario};
use crate::guard::Guards;
use crate::model::RunningService;
use view::{action, activation_view, human, scenario_fault, timestamp};

/// What the admin handlers share: the engine for activations, the
/// control handle for what runs and for changing it.
#[derive(Clone)]
pub struct AdminState {
    pub engine: Engine,
    pub metrics: crate::metrics::Exporter,
    pub control: Control,
    /// The impact reports of ended activations.
    pub reports: crate::report::Reports,
    /// The last reading of each active scenario's guards.
    pub guards: Guards,
}

/// An admin API failure, answered as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    UnknownScenario(#[from] UnknownScenario),
    /// The plan's `[safety]` table does not allow the activation.
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body too large; expected {{\"duration\": \"10m\"}} or no body")]
    TooLarge,
    #[error("no endpoint {0}; see GET /scenarios, GET /faults, POST /faults/NAME, DELETE /faults[/NAME], GET /events, GET /reports[/ID], GET /topology, GET /status, GET /stream, POST /reload, GET /metrics, GET / (the status page)")]
    NotFound(String),
    #[error("no report `{0}`; GET /reports lists the ones kept (the last 50)")]
    UnknownReport(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("the token presented is not one of [admin] tokens")]
    Forbidden,
    #[error("{method} is not allowed on {path}; see GET /scenarios, GET /faults, POST /faults/NAME, DELETE /faults[/NAME], GET /events, GET /reports[/ID], GET /topology, GET /status, GET /stream, POST /reload, GET /metrics, GET / (the status page)")]
    MethodNotAllowed { method: String, path: String },
}

impl From<ActivateError> for ApiError {
    fn from(error: ActivateError) -> ApiError {
        match error {
            ActivateError::Unknown(unknown) => ApiError::UnknownScenario(unknown),
            ActivateError::Refused(refused) => ApiError::Refused(refused),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::BadRequest(format!(
            "invalid scenario name in the path: {}",
            rejection.body_text()
        ))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::TooLarge;
        }
        ApiError::BadRequest(format!(
            "cannot read the request body: {}",
            rejection.body_text()
        ))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::UnknownScenario(_) | ApiError::NotFound(_) | ApiError::UnknownReport(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::Refused(Refused::TooMany { .. }) => StatusCode::CONFLICT,
            ApiError::Refused(Refused::Outside { .. }) => StatusCode::FORBIDDEN,
        };
        let mut body = api::ErrorBody::new(self.to_string());
        if let ApiError::UnknownScenario(unknown) = &self {
            body.known = Some(unknown.known.clone());
        }
        let mut response = (status, Json(body)).into_response();
        if let ApiError::Unauthorized(_) = &self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"firedrill\""),
            );
        }
        response
    }
}

/// The admin API's routes, behind the token check of `auth.rs`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async {
                Json(api::Health {
                    status: "ok".to_owned(),
                })
            }),
        )
        .route("/metrics", get(metrics))
        .route("/topology", get(topology))
        .route("/scenarios", get(scenarios))
        .route("/faults", get(list).delete(lift_all))
        .route("/events", get(events))
        .route("/", get(page::page))
        .route("/status", get(status::status))
        .route("/stream", get(stream::stream))
        .route("/reload", axum::routing::post(reload))
        .route("/reports", get(reports::list))
        .route("/reports/{id}", get(reports::show))
        .route(
            "/faults/{scenario}",
            axum::routing::post(activate).delete(lift),
        )
        .fallback(|uri: axum::http::Uri| async move { ApiError::NotFound(uri.path().to_owned()) })
        // Without this a wrong method gets axum's empty 405, not `{"error": ...}`.
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                ApiError::MethodNotAllowed {
                    method: method.to_string(),
                    path: uri.path().to_owned(),
                }
            },
        )
        .with_state(state.clone())
        .layer(axum::middleware::from_fn_with_state(state, auth::authorize))
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&state.metrics),
    )
}

/// Activates a scenario (201), or answers the running activation (200):
/// unchanged without a duration, else moved to end `duration` after its
/// start. `status` says which; `capped` whether `max_duration` cut the
/// duration asked for.
async fn activate(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    scenario: Result<Path<String>, PathRejection>,
    // Without the `Result` an oversized body gets axum's plain-text 413.
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(scenario) = scenario?;
    let body = body?;
    let duration = parse_activate_body(&body)?;
    let activated = state
        .engine
        .activate(&scenario, duration, &caller.to_string())?;
    let (code, activation, status, previous) = match activated {
        Activated::New(activation) => (StatusCode::CREATED, activation, "activated", None),
        Activated::Existing(activation) => (StatusCode::OK, activation, "already_active", None),
        Activated::Changed {
            activation,
            previous,
            ended,
        } => {
            let status = if ended {
                "lifted"
            } else if activation.expires > previous {
                "extended"
            } else if activation.expires < previous {
                "shortened"
            } else {
                "unchanged"
            };
            let previous = activation.started_at + (previous - activation.started);
            (StatusCode::OK, activation, status, Some(previous))
        }
    };
    let body = api::ActivateAnswer {
        capped: duration.is_some_and(|d| d > activation.scenario.max_duration),
        activation: activation_view(&activation, &state.guards),
        status: status.to_owned(),
        previous_expires_at: previous.map(timestamp),
        already_active: code == StatusCode::OK,
        requested_duration: duration.map(human),
    };
    Ok((code, Json(body)).into_response())
}

/// Parses `{"duration": "10m"}`; an empty body means the scenario's maximum.
fn parse_activate_body(body: &[u8]) -> Result<Option<Duration>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let body: api::ActivateRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid JSON body: {e}; expected {{\"duration\": \"10m\"}} or no body"
        ))
    })?;
    let Some(duration) = body.duration else {
        return Ok(None);
    };
    let parsed = humantime::parse_duration(&duration).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid duration `{duration}` ({e}); write it like \"90s\" or \"10m\""
        ))
    })?;
    if parsed.is_zero() {
        return Err(ApiError::BadRequest("duration must be positive".to_owned()));
    }
    Ok(Some(parsed))
}

async fn lift(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    scenario: Result<Path<String>, PathRejection>,
) -> Result<Json<api::LiftAnswer>, ApiError> {
    let Path(scenario) = scenario?;
    let lifted = state.engine.lift(&scenario, &caller.to_string())?;
    Ok(Json(api::LiftAnswer {
        scenario,
        lifted: lifted.is_some(),
    }))
}

async fn lift_all(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
) -> Json<api::HaltAnswer> {
    let lifted = state.engine.lift_all(&caller.to_string());
    let lifted = lifted.iter().map(|a| a.scenario.name.to_string()).collect();
    Json(api::HaltAnswer { lifted })
}

/// Re-reads the plan file. An invalid plan changes nothing and answers 400
/// with every error, located; a taken port or a plan-less start answers 409.
async fn reload(State(state): State<AdminState>, Extension(caller): Extension<Caller>) -> Response {
    let by = caller.to_string();
    match state.control.reload(&by).await {
        Ok(reloaded) => (StatusCode::OK, Json(api::ReloadAnswer { reloaded })).into_response(),
        Err(error) => {
            tracing::warn!(by, "reload refused: {error}");
            let status = match &error {
                ReloadError::Plan(_) => StatusCode::BAD_REQUEST,
                ReloadError::NoSource
                | ReloadError::Bind(_)
                | ReloadError::Conflict(_)
                | ReloadError::AdminListen { .. }
                | ReloadError::ShuttingDown => StatusCode::CONFLICT,
            };
            let mut body = api::ErrorBody::new(error.to_string());
            if let ReloadError::Plan(crate::config::Error::Invalid(diagnostics)) = &error {
                let errors = diagnostics.iter().map(|d| api::PlanError {
                    file: d.file.clone(),
                    line: d.line,
                    column: d.column,
                    message: d.message.clone(),
                });
                body.errors = Some(errors.collect());
            }
            (status, Json(body)).into_response()
        }
    }
}

async fn list(State(state): State<AdminState>) -> Json<api::FaultList> {
    let active = (state.engine.active().iter())
        .map(|a| activation_view(a, &state.guards))
        .collect();
    Json(api::FaultList { active })
}

/// The recent activations, newest first: who started each and when, and
/// how it ended (lifted, expired, halted, stopped).
async fn events(State(state): State<AdminState>) -> Json<api::EventList> {
    let history = state.engine.history().into_iter();
    Json(api::EventList {
        events: history.map(view::event).collect(),
    })
}

async fn scenarios(State(state): State<AdminState>) -> Json<api::ScenarioList> {
    let active = state.engine.active();
    let plan = state.engine.plan();
    let scenarios = plan
        .scenarios
        .iter()
        .map(|scenario| api::Scenario {
            name: scenario.name.to_string(),
            description: scenario.description.clone(),
            max_duration: human(scenario.max_duration),
            active: active.iter().any(|a| a.scenario.name == scenario.name),
            faults: (scenario.faults.iter())
                .map(|f| scenario_fault(f, &plan))
                .collect(),
        })
        .collect();
    Json(api::ScenarioList { scenarios })
}

/// The data centers and the services running in each now, where each
/// listens and the faults in force on it.
async fn topology(State(state): State<AdminState>) -> Json<api::Topology> {
    let rules = state.engine.live().load();
    let model = state.control.model();
    let declared = &model.plan().topology.datacenters;
    // The plan's data centers in its order, then any only a service
    // added at runtime names.
    let mut datacenters: Vec<(&str, &str)> = declared
        .iter()
        .map(|dc| (&*dc.name, dc.description.as_str()))
        .collect();
    for running in model.services() {
        let name = &*running.service.datacenter;
        if !datacenters.iter().any(|(known, _)| *known == name) {
            datacenters.push((name, ""));
        }
    }
    let service = |running: &RunningService| {
        let service = &running.service;
        api::Service {
            name: service.name.to_string(),
            description: service.description.clone(),
            protocol: service.protocol.name().to_owned(),
            listen: running.bound.to_string(),
            upstream: service.upstream.to_string(),
            upstream_skip_verify: service.upstream_tls.as_ref().is_some_and(|t| t.skip_verify),
            faults: (rules.slot(running.slot).iter())
                .map(|f| api::ServiceFault {
                    action: action(f),
                    scenario: f.scenario.to_string(),
                    index: f.index,
                })
                .collect(),
        }
    };
    let datacenters = datacenters
        .into_iter()
        .map(|(name, description)| api::DataCenter {
            name: name.to_owned(),
            description: description.to_owned(),
            services: (model.services().iter())
                .filter(|running| &*running.service.datacenter == name)
                .map(service)
                .collect(),
        })
        .collect();
    Json(api::Topology { datacenters })
}
