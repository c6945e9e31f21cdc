//! cairn's client of the lock service: the calls of a node (take, renew and release a slot,
//! report a verdict) and of an operator (status, release, halt, clear), over the typed
//! contract of [`super::api`]. A refusal comes back as [`ClientError::Refused`] with the
//! service's kind, which a caller branches on (`failed_lock_semaphore_full`: wait and ask
//! again; `lease_lost`: do not reboot).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::api::{
    ClientParams, ErrorBody, ErrorKind, Grant, HaltChange, LockRequest, NodeReport, OperatorClear,
    OperatorHalt, OperatorRelease, Released, ReportRequest, Status, Verdict, PROTOCOL_HEADER,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service answered with an error.
    #[error("{url}: {value} ({kind}, HTTP {status})", kind = kind.as_str())]
    Refused {
        url: String,
        status: u16,
        kind: ErrorKind,
        value: String,
    },
    /// No answer, or one that is not the protocol's.
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
}

impl ClientError {
    /// The service's kind of refusal, if it refused.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Refused { kind, .. } => Some(*kind),
            ClientError::Transport { .. } => None,
        }
    }
}

/// A client of one service.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the service at `base` (`http://HOST:PORT`), sending `token` if given.
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent: ureq::AgentBuilder::new()
                // Long enough for a grant that waits for the load balancer to drain the node.
                .timeout(Duration::from_secs(90))
                .build(),
        }
    }

    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = match body {
            Some(_) => self.agent.post(&url).set(PROTOCOL_HEADER, "true"),
            None => self.agent.get(&url),
        };
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let res = match body {
            Some(b) => {
                let json = serde_json::to_string(b).map_err(|e| ClientError::Transport {
                    url: url.clone(),
                    message: e.to_string(),
                })?;
                req.set("Content-Type", "application/json")
                    .send_string(&json)
            }
            None => req.call(),
        };
        let transport = |message: String| ClientError::Transport {
            url: url.clone(),
            message,
        };
        match res {
            Ok(r) => {
                let text = r.into_string().map_err(|e| transport(e.to_string()))?;
                serde_json::from_str(&text)
                    .map_err(|e| transport(format!("the answer is not the protocol's: {e}")))
            }
            Err(ureq::Error::Status(status, r)) => {
                let text = r.into_string().unwrap_or_default();
                match serde_json::from_str::<ErrorBody>(&text) {
                    Ok(e) => Err(ClientError::Refused {
                        url: url.clone(),
                        status,
                        kind: e.kind,
                        value: e.value,
                    }),
                    Err(_) => Err(transport(format!("HTTP {status}: {}", text.trim()))),
                }
            }
            Err(e) => Err(transport(e.to_string())),
        }
    }

    /// `pre-reboot`: take a slot, or renew the grant `token` names.
    pub fn pre_reboot(&self, p: &ClientParams, token: Option<u64>) -> Result<Grant, ClientError> {
        let body = LockRequest {
            client_params: p.clone(),
            fencing_token: token,
        };
        self.call("/v1/pre-reboot", Some(&body))
    }

    /// `steady-state`: free the slot (only the grant `token` names, if given).
    pub fn steady_state(
        &self,
        p: &ClientParams,
        token: Option<u64>,
    ) -> Result<Released, ClientError> {
        let body = LockRequest {
            client_params: p.clone(),
            fencing_token: token,
        };
        self.call("/v1/steady-state", Some(&body))
    }

    /// Report the node's verdict on its boot (a bad one halts the group).
    pub fn report(
        &self,
        p: &ClientParams,
        verdict: Verdict,
        reason: &str,
    ) -> Result<HaltChange, ClientError> {
        let body = ReportRequest {
            client_params: p.clone(),
            verdict,
            reason: reason.to_string(),
        };
        self.call("/v1/report", Some(&body))
    }

    /// `node-report`: say where this node's update agent is.
    pub fn node_report(&self, r: &NodeReport) -> Result<NodeReport, ClientError> {
        self.call("/v1/node-report", Some(r))
    }

    pub fn status(&self) -> Result<Status, ClientError> {
        self.call::<(), _>("/v1/status", None)
    }

    pub fn release(&self, group: &str, id: &str) -> Result<Released, ClientError> {
        let body = OperatorRelease {
            group: group.into(),
            id: id.into(),
        };
        self.call("/v1/operator/release", Some(&body))
    }

    pub fn halt(&self, group: &str, reason: &str) -> Result<HaltChange, ClientError> {
        let body = OperatorHalt {
            group: group.into(),
            reason: reason.into(),
        };
        self.call("/v1/operator/halt", Some(&body))
    }

    pub fn clear(&self, group: &str) -> Result<HaltChange, ClientError> {
        let body = OperatorClear {
            group: group.into(),
        };
        self.call("/v1/operator/clear", Some(&body))
    }
}
