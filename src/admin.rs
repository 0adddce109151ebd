//! The admin API (axum, JSON): health, the topology with each service's
//! effective faults, the scenario catalogue, activating and lifting faults,
//! and Prometheus metrics. Handlers only touch the engine's own lock and
//! the lock-free rule snapshot, never the data plane. `auth.rs` guards the
//! routes with bearer tokens; `listen.rs` serves them, with TLS if asked.

mod auth;
mod listen;

pub use auth::Caller;
pub use listen::{serve, HEADER_TIMEOUT};

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::Plan;
use crate::control::{Control, ReloadError};
use crate::engine::{Activated, Activation, Engine, UnknownScenario};
use crate::fault::{Action, Fault};
use crate::topology::Service;

/// What the admin handlers share: the engine for activations, the
/// control handle for what runs and for changing it.
#[derive(Clone)]
pub struct AdminState {
    pub engine: Engine,
    pub metrics: PrometheusHandle,
    pub control: Control,
}

/// An admin API failure, answered as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    UnknownScenario(#[from] UnknownScenario),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body too large; expected {{\"duration\": \"10m\"}} or no body")]
    TooLarge,
    #[error("no endpoint {0}; see GET /scenarios, GET /faults, POST /faults/NAME, DELETE /faults[/NAME], GET /events, GET /topology, POST /reload, GET /metrics")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("the bearer token is not one of [admin] tokens")]
    Forbidden,
    #[error("{method} is not allowed on {path}; see GET /scenarios, GET /faults, POST /faults/NAME, DELETE /faults[/NAME], GET /events, GET /topology, POST /reload, GET /metrics")]
    MethodNotAllowed { method: String, path: String },
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
            ApiError::UnknownScenario(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
        };
        let mut body = json!({ "error": self.to_string() });
        if let ApiError::UnknownScenario(unknown) = &self {
            body["known"] = json!(unknown.known);
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
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/metrics", get(metrics))
        .route("/topology", get(topology))
        .route("/scenarios", get(scenarios))
        .route("/faults", get(list).delete(lift_all))
        .route("/events", get(events))
        .route("/reload", axum::routing::post(reload))
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    /// How long this activation lasts from its start, capped at the
    /// scenario's max_duration; on an active scenario, its new length.
    duration: Option<String>,
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
    let mut body = activation_json(&activation);
    body["status"] = json!(status);
    if let Some(previous) = previous {
        body["previous_expires_at"] = json!(timestamp(previous));
    }
    body["already_active"] = json!(code == StatusCode::OK);
    body["capped"] = json!(duration.is_some_and(|d| d > activation.scenario.max_duration));
    body["requested_duration"] = json!(duration.map(human));
    Ok((code, Json(body)).into_response())
}

/// Parses `{"duration": "10m"}`; an empty body means the scenario's maximum.
fn parse_activate_body(body: &[u8]) -> Result<Option<Duration>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let body: ActivateBody = serde_json::from_slice(body).map_err(|e| {
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
) -> Result<Json<Value>, ApiError> {
    let Path(scenario) = scenario?;
    let lifted = state.engine.lift(&scenario, &caller.to_string())?;
    Ok(Json(
        json!({ "scenario": scenario, "lifted": lifted.is_some() }),
    ))
}

async fn lift_all(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
) -> Json<Value> {
    let lifted = state.engine.lift_all(&caller.to_string());
    let names: Vec<&str> = lifted.iter().map(|a| &*a.scenario.name).collect();
    Json(json!({ "lifted": names }))
}

/// Re-reads the plan file. An invalid plan changes nothing and answers 400
/// with every error, located; a taken port or a plan-less start answers 409.
async fn reload(State(state): State<AdminState>, Extension(caller): Extension<Caller>) -> Response {
    let by = caller.to_string();
    match state.control.reload(&by).await {
        Ok(reloaded) => (StatusCode::OK, Json(json!({ "reloaded": reloaded }))).into_response(),
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
            let mut body = json!({ "error": error.to_string() });
            if let ReloadError::Plan(crate::config::Error::Invalid(diagnostics)) = &error {
                body["errors"] = diagnostics
                    .iter()
                    .map(|d| {
                        json!({
                            "file": d.file,
                            "line": d.line,
                            "column": d.column,
                            "message": d.message,
                        })
                    })
                    .collect();
            }
            (status, Json(body)).into_response()
        }
    }
}

async fn list(State(state): State<AdminState>) -> Json<Value> {
    let active: Vec<Value> = state.engine.active().iter().map(activation_json).collect();
    Json(json!({ "active": active }))
}

/// The recent activations, newest first: who started each and when, and
/// how it ended (lifted, expired, halted). `time` and `time_end` are Unix
/// milliseconds, as annotation sources want them.
async fn events(State(state): State<AdminState>) -> Json<Value> {
    let millis = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let events: Vec<Value> = state
        .engine
        .events()
        .iter()
        .map(|event| {
            let (ended_at, ending, ended_by) = match &event.ended {
                Some((at, how, by)) => (Some(*at), Some(how.name()), by.as_deref()),
                None => (None, None, None),
            };
            json!({
                "scenario": &*event.scenario,
                "activated_by": event.activated_by,
                "started_at": timestamp(event.started_at),
                "expires_at": timestamp(event.expires_at),
                "ended_at": ended_at.map(timestamp),
                "ended": ending,
                "ended_by": ended_by,
                "time": millis(event.started_at),
                "time_end": ended_at.map(millis),
            })
        })
        .collect();
    Json(json!({ "events": events }))
}

async fn scenarios(State(state): State<AdminState>) -> Json<Value> {
    let active = state.engine.active();
    let plan = state.engine.plan();
    let scenarios: Vec<Value> = plan
        .scenarios
        .iter()
        .map(|scenario| {
            json!({
                "name": &*scenario.name,
                "description": scenario.description,
                "max_duration": human(scenario.max_duration),
                "active": active.iter().any(|a| a.scenario.name == scenario.name),
                "faults": scenario.faults.iter().map(|f| fault_json(f, &plan)).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "scenarios": scenarios }))
}

/// The data centers and the services running in each now, where each
/// listens and the faults in force on it.
async fn topology(State(state): State<AdminState>) -> Json<Value> {
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
        if !datacenters
            .iter()
            .any(|(name, _)| **name == *running.service.datacenter)
        {
            datacenters.push((&running.service.datacenter, ""));
        }
    }
    let datacenters: Vec<Value> = datacenters
        .into_iter()
        .map(|(name, description)| {
            let services: Vec<Value> = model
                .services()
                .iter()
                .filter(|running| &*running.service.datacenter == name)
                .map(|running| {
                    let service = &running.service;
                    let faults: Vec<Value> = rules
                        .slot(running.slot)
                        .iter()
                        .map(|f| {
                            let mut fault = action_json(f);
                            fault["scenario"] = json!(&*f.scenario);
                            fault["index"] = json!(f.index);
                            fault
                        })
                        .collect();
                    json!({
                        "name": &*service.name,
                        "description": service.description,
                        "protocol": service.protocol.name(),
                        "listen": running.bound.to_string(),
                        "upstream": service.upstream.to_string(),
                        "upstream_skip_verify": service.upstream_tls.as_ref().is_some_and(|t| t.skip_verify),
                        "faults": faults,
                    })
                })
                .collect();
            json!({ "name": name, "description": description, "services": services })
        })
        .collect();
    Json(json!({ "datacenters": datacenters }))
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The action and its parameters, as the plan would write them.
fn action_json(fault: &Fault) -> Value {
    let mut value = json!({ "action": fault.action.name(), "probability": fault.probability });
    match &fault.action {
        Action::Delay(delay) => {
            value["latency"] = json!(human(delay.latency));
            value["jitter"] = json!(human(delay.jitter));
            value["direction"] = json!(delay.direction.name());
        }
        Action::Error(error) => value["status"] = json!(error.status.as_u16()),
        Action::Blackhole | Action::Drop => {}
    }
    value
}

/// Adds the names of the data centers and services `fault` hits, in plan
/// order, so a drill need not cross-read `/scenarios` and `/topology`.
fn add_targets(value: &mut Value, fault: &Fault, plan: &Plan) {
    let topology = &plan.topology;
    let services: Vec<&Service> = fault
        .targets
        .iter()
        .filter_map(|id| topology.services.get(id.index()))
        .collect();
    let datacenters: Vec<&str> = topology
        .datacenters
        .iter()
        .filter(|dc| services.iter().any(|s| s.datacenter == dc.name))
        .map(|dc| &*dc.name)
        .collect();
    value["datacenters"] = json!(datacenters);
    value["services"] = json!(services.iter().map(|s| &*s.name).collect::<Vec<_>>());
}

fn fault_json(fault: &Fault, plan: &Plan) -> Value {
    let mut value = action_json(fault);
    value["index"] = json!(fault.index);
    value["datacenter"] = json!(fault.selector.datacenter.as_deref());
    value["service"] = json!(fault.selector.service.as_deref());
    value["method"] = json!(fault.selector.method.as_ref().map(|m| m.as_str()));
    value["path_prefix"] = json!(fault.selector.path_prefix);
    value["after"] = json!(human(fault.after));
    value["duration"] = json!(fault.duration.map(human));
    add_targets(&mut value, fault, plan);
    value
}

/// An activation with each fault's window and state.
fn activation_json(activation: &Activation) -> Value {
    let now = Instant::now();
    let faults: Vec<Value> = activation
        .scenario
        .faults
        .iter()
        .map(|fault| {
            let mut value = action_json(fault);
            value["index"] = json!(fault.index);
            add_targets(&mut value, fault, &activation.plan);
            match activation.window(fault) {
                Some((from, until)) => {
                    let (start, end) = (activation.started + from, activation.started + until);
                    let state = if now < start {
                        "pending"
                    } else if now < end {
                        "active"
                    } else {
                        "ended"
                    };
                    value["starts_at"] = json!(timestamp(activation.started_at + from));
                    value["ends_at"] = json!(timestamp(activation.started_at + until));
                    value["state"] = json!(state);
                }
                None => value["state"] = json!("never"),
            }
            value
        })
        .collect();
    json!({
        "scenario": &*activation.scenario.name,
        "description": activation.scenario.description,
        "started_at": timestamp(activation.started_at),
        "expires_at": timestamp(activation.expires_at()),
        "remaining": human(Duration::from_secs(activation.expires.saturating_duration_since(now).as_secs())),
        "activated_by": activation.by,
        "faults": faults,
    })
}
