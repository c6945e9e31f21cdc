//! The service's endpoints: FleetLock's `pre-reboot` and `steady-state`, cairn's `report`,
//! `status` and operator actions, and `/metrics`. Each checks the protocol header (FleetLock's
//! endpoints), the body, and the caller's credential before it asks the store anything, and
//! answers errors as FleetLock's `{"kind","value"}`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use super::App;
use crate::lock::api::{
    valid_group, ClientParams, ErrorBody, ErrorKind, Grant, Halt, HaltChange, LockRequest,
    OperatorClear, OperatorHalt, OperatorRelease, Released, ReportRequest, Status, PROTOCOL_HEADER,
    VERSION,
};
use crate::lock::audit::Action;
use crate::lock::auth::{bearer, Principal};
use crate::lock::config::LockConfig;
use crate::lock::metrics::Metrics;
use crate::lock::policy::Holder;
use crate::lock::store::{now_ms, AcquireArgs, Acquired};

/// An error answer.
#[derive(Debug)]
pub struct ApiError(pub ErrorKind, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ErrorBody {
                kind: self.0,
                value: self.1,
            }),
        )
            .into_response()
    }
}

pub(super) type Answer<T> = Result<Json<T>, ApiError>;

pub(super) fn store_error(e: anyhow::Error) -> ApiError {
    ApiError(ErrorKind::StoreUnavailable, format!("{e:#}"))
}

/// The router of `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/pre-reboot", post(pre_reboot))
        .route("/v1/steady-state", post(steady_state))
        .route("/v1/report", post(report))
        .route("/v1/node-report", post(super::nodes::node_report))
        .route("/v1/status", get(status))
        .route("/v1/operator/release", post(operator_release))
        .route("/v1/operator/halt", post(operator_halt))
        .route("/v1/operator/clear", post(operator_clear))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .with_state(app)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError(
        ErrorKind::NotFound,
        format!(
            "no endpoint {}: FleetLock's are /v1/pre-reboot and /v1/steady-state",
            uri.path()
        ),
    )
}

async fn not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError(
        ErrorKind::BadRequest,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Count the request's outcome, then answer it.
pub(super) fn counted<T>(app: &App, endpoint: &str, r: Answer<T>) -> Answer<T> {
    let outcome = match &r {
        Ok(_) => "ok",
        Err(e) => e.0.as_str(),
    };
    app.metrics.request(endpoint, outcome);
    r
}

pub(super) fn protocol_header(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()) {
        Some(v) if v.trim().eq_ignore_ascii_case("true") => Ok(()),
        _ => Err(ApiError(
            ErrorKind::MissingProtocolHeader,
            format!("FleetLock requests carry the header `{PROTOCOL_HEADER}: true`"),
        )),
    }
}

pub(super) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError(ErrorKind::BadRequest, format!("the request body: {e}")))
}

fn principal(app: &App, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = v.to_str().ok().and_then(bearer).ok_or_else(|| {
        ApiError(
            ErrorKind::Unauthenticated,
            "the Authorization header is not `Bearer TOKEN`".into(),
        )
    })?;
    app.secret().verify(token).map(Some).ok_or_else(|| {
        ApiError(
            ErrorKind::Unauthenticated,
            "the token does not verify against this service's secret".into(),
        )
    })
}

/// May this request act for `params.id`? The actor's name for the audit log.
pub(super) fn node_auth(
    app: &App,
    headers: &HeaderMap,
    cfg: &LockConfig,
    p: &ClientParams,
) -> Result<String, ApiError> {
    match principal(app, headers)? {
        Some(Principal::Node(n)) if n == p.id => Ok(format!("node:{n}")),
        Some(Principal::Node(n)) => Err(ApiError(
            ErrorKind::Forbidden,
            format!("node {n:?}'s token cannot act for id {:?}", p.id),
        )),
        Some(Principal::Operator(o)) => Err(ApiError(
            ErrorKind::Forbidden,
            format!("operator {o:?} acts through /v1/operator/…, not as a node"),
        )),
        None if cfg.group(&p.group).allow_anonymous => Ok("anonymous".into()),
        None => Err(ApiError(
            ErrorKind::Unauthenticated,
            format!(
                "group {:?} admits only nodes with a token: send `Authorization: Bearer TOKEN` (`cairn lock token node {}`)",
                p.group, p.id
            ),
        )),
    }
}

fn operator_auth(app: &App, headers: &HeaderMap) -> Result<String, ApiError> {
    match principal(app, headers)? {
        Some(Principal::Operator(o)) => Ok(format!("operator:{o}")),
        Some(Principal::Node(n)) => Err(ApiError(
            ErrorKind::Forbidden,
            format!("node {n:?} is not an operator"),
        )),
        None => Err(ApiError(
            ErrorKind::Unauthenticated,
            "this needs an operator's token (`cairn lock token operator NAME`)".into(),
        )),
    }
}

fn check_group(group: &str) -> Result<(), ApiError> {
    if valid_group(group) {
        Ok(())
    } else {
        Err(ApiError(
            ErrorKind::BadRequest,
            format!("group {group:?} must match ^[a-zA-Z0-9.-]+$"),
        ))
    }
}

fn grant(cfg: &LockConfig, group: &str, h: &Holder, renewed: bool) -> Grant {
    Grant {
        version: VERSION,
        group: group.to_string(),
        holder: h.status(),
        renewed,
        renew_interval_ms: cfg.renew_interval.as_millis() as u64,
    }
}

async fn pre_reboot(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Answer<Grant> {
    let r = take_slot(&app, &headers, &body).await;
    counted(&app, "pre-reboot", r)
}

async fn take_slot(app: &App, headers: &HeaderMap, body: &Bytes) -> Answer<Grant> {
    let started = Instant::now();
    protocol_header(headers)?;
    let req: LockRequest = parse(body)?;
    let p = &req.client_params;
    p.check().map_err(|e| ApiError(ErrorKind::BadRequest, e))?;
    let cfg = app.config();
    let actor = node_auth(app, headers, &cfg, p)?;
    let args = AcquireArgs {
        group: &p.group,
        id: &p.id,
        presented: req.fencing_token,
        default_slots: cfg.group(&p.group).slots,
        ttl: cfg.lease_ttl,
    };
    match app.backend.acquire(&args).await.map_err(store_error)? {
        Acquired::Granted(h) => {
            if let Err(e) = super::nodes::drain(app, &p.group, &p.id, h.token).await {
                // No grant without the drain: give the slot back at once.
                let _ = app.backend.release(&p.group, &p.id, Some(h.token)).await;
                return Err(e);
            }
            app.audit(
                Action::Grant,
                &p.group,
                Some(&p.id),
                Some(h.token),
                &actor,
                String::new(),
            )
            .await;
            app.metrics
                .grants
                .get_or_create(&Metrics::group(&p.group))
                .inc();
            app.metrics
                .grant_seconds
                .observe(started.elapsed().as_secs_f64());
            Ok(Json(grant(&cfg, &p.group, &h, false)))
        }
        Acquired::Renewed(h) => Ok(Json(grant(&cfg, &p.group, &h, true))),
        Acquired::Full { slots, holders } => {
            let mut names = holders
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if holders.len() > 10 {
                names.push_str(", …");
            }
            Err(ApiError(
                ErrorKind::FailedLockSemaphoreFull,
                format!(
                    "all {slots} slots of group {:?} are held ({} holders: {names})",
                    p.group,
                    holders.len()
                ),
            ))
        }
        Acquired::Halted(h) => Err(ApiError(
            ErrorKind::GroupHalted,
            format!(
                "group {:?} is halted: {} (by {}); an operator lifts it with `cairn lock clear {}`",
                p.group, h.reason, h.by, p.group
            ),
        )),
        Acquired::Lost => Err(ApiError(
            ErrorKind::LeaseLost,
            match req.fencing_token {
                Some(t) => format!(
                    "{:?} no longer holds grant {t} in group {:?}: do not reboot on it; ask again",
                    p.id, p.group
                ),
                None => format!(
                    "{:?}'s slot in group {:?} ran out before it was renewed: ask again",
                    p.id, p.group
                ),
            },
        )),
    }
}

async fn steady_state(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<Released> {
    let r = async {
        protocol_header(&headers)?;
        let req: LockRequest = parse(&body)?;
        let p = &req.client_params;
        p.check().map_err(|e| ApiError(ErrorKind::BadRequest, e))?;
        let cfg = app.config();
        let actor = node_auth(&app, &headers, &cfg, p)?;
        // Steady: back behind the load balancer first, then the slot (a failure keeps both,
        // and the node asks again).
        super::nodes::undrain(&app, &p.group, &p.id).await?;
        release(
            &app,
            &p.group,
            &p.id,
            req.fencing_token,
            &actor,
            Action::Release,
        )
        .await
    }
    .await;
    counted(&app, "steady-state", r)
}

async fn release(
    app: &App,
    group: &str,
    id: &str,
    presented: Option<u64>,
    actor: &str,
    action: Action,
) -> Answer<Released> {
    let freed = app
        .backend
        .release(group, id, presented)
        .await
        .map_err(store_error)?;
    if let Some(h) = &freed {
        app.audit(action, group, Some(id), Some(h.token), actor, String::new())
            .await;
        app.metrics
            .releases
            .get_or_create(&Metrics::group(group))
            .inc();
    }
    Ok(Json(Released {
        version: VERSION,
        group: group.to_string(),
        id: id.to_string(),
        fencing_token: freed.map(|h| h.token),
    }))
}

async fn report(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<HaltChange> {
    let r = async {
        protocol_header(&headers)?;
        let req: ReportRequest = parse(&body)?;
        let p = &req.client_params;
        p.check().map_err(|e| ApiError(ErrorKind::BadRequest, e))?;
        let cfg = app.config();
        let actor = node_auth(&app, &headers, &cfg, p)?;
        let detail = format!("{}: {}", req.verdict.as_str(), req.reason);
        app.audit(Action::Report, &p.group, Some(&p.id), None, &actor, detail)
            .await;
        if !req.verdict.is_bad() {
            let groups = app.backend.groups().await.map_err(store_error)?;
            let now = groups.get(&p.group).and_then(|g| g.halt.clone());
            return Ok(Json(HaltChange {
                version: VERSION,
                group: p.group.clone(),
                halted: now.clone(),
                was: now,
            }));
        }
        let halt = Halt {
            reason: format!(
                "node {} reported {}: {}",
                p.id,
                req.verdict.as_str(),
                req.reason
            ),
            by: p.id.clone(),
            at_ms: now_ms(),
            verdict: Some(req.verdict),
        };
        let was = app
            .halt(&p.group, halt.clone(), &actor)
            .await
            .map_err(store_error)?;
        Ok(Json(HaltChange {
            version: VERSION,
            group: p.group.clone(),
            halted: Some(was.clone().unwrap_or(halt)),
            was,
        }))
    }
    .await;
    counted(&app, "report", r)
}

async fn status(State(app): State<Arc<App>>, headers: HeaderMap) -> Answer<Status> {
    let r = async {
        operator_auth(&app, &headers)?;
        let cfg = app.config();
        let groups = app.groups().await.map_err(store_error)?;
        let mut nodes = app.backend.nodes().await.map_err(store_error)?;
        Ok(Json(Status {
            version: VERSION,
            server: cfg.server_name.clone(),
            store: app.backend.kind().into(),
            lease_ttl_ms: cfg.lease_ttl.as_millis() as u64,
            groups: groups
                .into_iter()
                .map(|(name, (slots, view))| crate::lock::api::GroupStatus {
                    nodes: nodes.remove(&name).unwrap_or_default(),
                    name,
                    slots,
                    holders: view.holders.iter().map(Holder::status).collect(),
                    halted: view.halt,
                })
                .collect(),
        }))
    }
    .await;
    counted(&app, "status", r)
}

async fn operator_release(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<Released> {
    let r = async {
        let actor = operator_auth(&app, &headers)?;
        let req: OperatorRelease = parse(&body)?;
        check_group(&req.group)?;
        release(
            &app,
            &req.group,
            &req.id,
            None,
            &actor,
            Action::OperatorRelease,
        )
        .await
    }
    .await;
    counted(&app, "operator-release", r)
}

async fn operator_halt(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<HaltChange> {
    let r = async {
        let actor = operator_auth(&app, &headers)?;
        let req: OperatorHalt = parse(&body)?;
        check_group(&req.group)?;
        if req.reason.trim().is_empty() {
            return Err(ApiError(
                ErrorKind::BadRequest,
                "a halt needs a reason".into(),
            ));
        }
        let halt = Halt {
            reason: req.reason.clone(),
            by: actor.clone(),
            at_ms: now_ms(),
            verdict: None,
        };
        let was = app
            .halt(&req.group, halt.clone(), &actor)
            .await
            .map_err(store_error)?;
        Ok(Json(HaltChange {
            version: VERSION,
            group: req.group,
            halted: Some(was.clone().unwrap_or(halt)),
            was,
        }))
    }
    .await;
    counted(&app, "operator-halt", r)
}

async fn operator_clear(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<HaltChange> {
    let r = async {
        let actor = operator_auth(&app, &headers)?;
        let req: OperatorClear = parse(&body)?;
        check_group(&req.group)?;
        let was = app.backend.clear(&req.group).await.map_err(store_error)?;
        if let Some(h) = &was {
            app.audit(
                Action::Clear,
                &req.group,
                None,
                None,
                &actor,
                format!("was: {}", h.reason),
            )
            .await;
        }
        Ok(Json(HaltChange {
            version: VERSION,
            group: req.group,
            halted: None,
            was,
        }))
    }
    .await;
    counted(&app, "operator-clear", r)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    match app.groups().await {
        Ok(groups) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            app.metrics.encode(&groups),
        )
            .into_response(),
        Err(e) => store_error(e).into_response(),
    }
}
