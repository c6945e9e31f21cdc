//! What the service does for pull-mode fleets beyond FleetLock: it keeps each node's last
//! report (`POST /v1/node-report`, shown by `cairn lock status` and `cairn rollout status
//! --ref`), and it drives the group's load balancer (`[lock.groups.load-balancer]`). A node
//! granted a slot is drained (no new sessions; the open ones finish, up to `drain-timeout`)
//! before the grant is answered, and only once every other server in service is up: the slot
//! is health-gated, so no node goes out while another is still coming back, and none reboots
//! under traffic. It is put back when it calls `steady-state` (its agent does so only after a
//! healthy boot), or when its slot expires outside a halted group (it died holding the slot:
//! HAProxy's own check then keeps it out while it is down, and the health gate waits for it).
//!
//! The service drains, not a hook on the node: the load balancer's admin socket is where the
//! service runs, no node can reach it (nor should: a node that could drain itself could drain
//! the others), and the slot and the drain then change in one place, in one order.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;

use super::routes::{counted, node_auth, parse, protocol_header, store_error, Answer, ApiError};
use super::App;
use crate::base::haproxy::{RuntimeApi, State as LbState};
use crate::lock::api::{ErrorKind, NodeReport};
use crate::lock::audit::Action;
use crate::lock::config::Drain;
use crate::lock::store::now_ms;

/// `POST /v1/node-report`: keep the report (its time set here), answer it as kept.
pub async fn node_report(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<NodeReport> {
    let r = async {
        protocol_header(&headers)?;
        let mut req: NodeReport = parse(&body)?;
        let p = &req.client_params;
        p.check().map_err(|e| ApiError(ErrorKind::BadRequest, e))?;
        if !(0.0..=1.0).contains(&req.wariness) {
            return Err(ApiError(
                ErrorKind::BadRequest,
                format!("wariness {} is not from 0.0 to 1.0", req.wariness),
            ));
        }
        let cfg = app.config();
        node_auth(&app, &headers, &cfg, p)?;
        req.at_ms = now_ms();
        app.backend.put_node(&req).await.map_err(store_error)?;
        Ok(Json(req))
    }
    .await;
    counted(&app, "node-report", r)
}

/// Run a load-balancer command off the async threads.
async fn blocking<T: Send + 'static>(
    d: &Drain,
    what: String,
    f: impl FnOnce(&crate::base::haproxy::Runtime) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let lb = d.haproxy.clone();
    let socket = lb.socket.display().to_string();
    let done = tokio::task::spawn_blocking(move || f(&lb))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|r| r);
    done.map_err(|e| {
        ApiError(
            ErrorKind::LoadBalancerUnavailable,
            format!("{what} (HAProxy at {socket}): {e:#}"),
        )
    })
}

/// A node id HAProxy's runtime API can take as a server name: nothing that could end the
/// command (`;`, spaces, newlines) reaches the admin socket.
fn server_name(id: &str) -> Result<(), ApiError> {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Ok(());
    }
    Err(ApiError(
        ErrorKind::BadRequest,
        format!(
            "node id {id:?} cannot name a load-balancer server (letters, digits, `.`, `_`, `-`)"
        ),
    ))
}

/// Drain `id` from its group's load balancer, if the group has one; audited.
pub async fn drain(app: &App, group: &str, id: &str, token: u64) -> Result<(), ApiError> {
    let cfg = app.config();
    let Some(d) = cfg.group(group).drain else {
        return Ok(());
    };
    server_name(id)?;
    let (node, limit, gate) = (id.to_string(), d.timeout, d.clone());
    let started = std::time::Instant::now();
    blocking(&d, format!("draining {id}"), move |lb| {
        // Health-gated: every other server in service (or `min-serving` of them) must be up
        // before this one goes out.
        let others = lb
            .servers()?
            .iter()
            .filter(|s| s.name != node && s.status != "MAINT")
            .count();
        lb.wait_others_up(&node, gate.gate(others), limit)?;
        let drained = lb.drain(&node, limit);
        if drained.is_err() {
            // No grant comes of it: the node goes back into service rather than staying cut off.
            let _ = lb.set_state(&node, LbState::Ready);
        }
        drained
    })
    .await?;
    let detail = format!(
        "drained from {}/{id} in {} ms",
        d.haproxy.backend,
        started.elapsed().as_millis()
    );
    app.audit(
        Action::Drain,
        group,
        Some(id),
        Some(token),
        "service",
        detail,
    )
    .await;
    Ok(())
}

/// Put `id` back behind its group's load balancer (its own health checks let traffic in once
/// it answers); audited.
pub async fn undrain(app: &App, group: &str, id: &str) -> Result<(), ApiError> {
    put_back(app, group, id, false).await
}

/// Put back a holder whose slot expired (it may be dead): marked down first, so that HAProxy
/// lets it in only once its checks pass (a server leaving maintenance counts as up at once,
/// and the next holder's health gate would take a dead node for a serving one); audited.
pub async fn undrain_expired(app: &App, group: &str, id: &str) -> Result<(), ApiError> {
    put_back(app, group, id, true).await
}

async fn put_back(app: &App, group: &str, id: &str, down_first: bool) -> Result<(), ApiError> {
    let cfg = app.config();
    let Some(d) = cfg.group(group).drain else {
        return Ok(());
    };
    server_name(id)?;
    let node = id.to_string();
    let changed = blocking(&d, format!("putting {id} back"), move |lb| {
        let out = matches!(lb.server(&node)?.status.as_str(), "MAINT" | "DRAIN");
        if out && down_first {
            lb.mark_down(&node)?;
        }
        if out {
            lb.set_state(&node, LbState::Ready)?;
        }
        Ok(out)
    })
    .await?;
    if !changed {
        return Ok(());
    }
    let detail = if down_first {
        format!(
            "ready in {}/{id}, down until its checks pass (its slot expired)",
            d.haproxy.backend
        )
    } else {
        format!("ready in {}/{id}", d.haproxy.backend)
    };
    app.audit(Action::Undrain, group, Some(id), None, "service", detail)
        .await;
    Ok(())
}
