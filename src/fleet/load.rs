//! A bounded load generator: a few workers send HTTP requests through the load balancer for as
//! long as they are told, and count every failure by kind (connection refused or reset,
//! timeout, 5xx, …) with a few examples, so that "zero failed requests" is measured, not
//! assumed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What the load saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    /// Failures by kind.
    pub failures: BTreeMap<String, u64>,
    /// The first few failures, with the time since the start.
    pub examples: Vec<String>,
    /// Successful responses by the line of their body that names a version (the first line
    /// when none does).
    pub bodies: BTreeMap<String, u64>,
    pub seconds: f64,
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOpts {
    pub url: String,
    pub workers: usize,
    /// Pause between one worker's requests.
    pub interval: Duration,
    /// A request that takes longer fails as a timeout.
    pub timeout: Duration,
}

/// A running load; [`Load::stop`] ends it and gives the report.
pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
}

const EXAMPLES: usize = 20;

impl Load {
    pub fn start(o: &LoadOpts) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let started = Instant::now();
        let workers = (0..o.workers.max(1))
            .map(|_| {
                let (stop, report, o) = (Arc::clone(&stop), Arc::clone(&report), o.clone());
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(o.timeout)
                        .max_idle_connections(0)
                        .build();
                    while !stop.load(Ordering::SeqCst) {
                        let outcome = one(&agent, &o.url);
                        if let Ok(mut r) = report.lock() {
                            r.requests += 1;
                            match outcome {
                                Ok(body) => {
                                    r.ok += 1;
                                    *r.bodies.entry(body).or_default() += 1;
                                }
                                Err((kind, detail)) => {
                                    r.failed += 1;
                                    *r.failures.entry(kind.clone()).or_default() += 1;
                                    if r.examples.len() < EXAMPLES {
                                        let t = started.elapsed().as_secs_f64();
                                        r.examples.push(format!("{t:.1} s: {kind}: {detail}"));
                                    }
                                }
                            }
                        }
                        std::thread::sleep(o.interval);
                    }
                })
            })
            .collect();
        Load {
            stop,
            report,
            workers,
            started,
        }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> LoadReport {
        let mut r = self.report.lock().map(|r| r.clone()).unwrap_or_default();
        r.seconds = self.started.elapsed().as_secs_f64();
        r
    }

    /// Stop every worker and return the report.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            let _ = w.join();
        }
        let mut r = self.report.lock().map(|r| r.clone()).unwrap_or_default();
        r.seconds = self.started.elapsed().as_secs_f64();
        r
    }
}

/// One request: the first line of a 2xx/3xx body, or the failure's kind and detail.
fn one(agent: &ureq::Agent, url: &str) -> Result<String, (String, String)> {
    match agent.get(url).call() {
        Ok(resp) => {
            let body = resp
                .into_string()
                .map_err(|e| ("read".to_string(), e.to_string()))?;
            // The line that names a version (the app's page shows it), else the first.
            let line = body
                .lines()
                .find(|l| l.contains("version"))
                .or_else(|| body.lines().next())
                .unwrap_or("");
            Ok(line.trim().chars().take(80).collect())
        }
        Err(ureq::Error::Status(code, _)) => Err((format!("http {code}"), url.to_string())),
        Err(ureq::Error::Transport(t)) => {
            let detail = t.to_string();
            let lower = detail.to_ascii_lowercase();
            let kind = if lower.contains("refused") {
                "connection refused"
            } else if lower.contains("reset") {
                "connection reset"
            } else if lower.contains("timed out") || lower.contains("timeout") {
                "timeout"
            } else {
                "transport"
            };
            Err((kind.to_string(), detail))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_successes_and_failures() {
        // A server that answers 200 to every other request and 503 to the rest.
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let server = Arc::new(server);
        let s = Arc::clone(&server);
        let t = std::thread::spawn(move || {
            for (i, req) in s.incoming_requests().enumerate() {
                let code = if i % 2 == 0 { 200 } else { 503 };
                let _ =
                    req.respond(tiny_http::Response::from_string("v1.2\n").with_status_code(code));
            }
        });
        let load = Load::start(&LoadOpts {
            url: format!("http://127.0.0.1:{port}/"),
            workers: 1,
            interval: Duration::from_millis(5),
            timeout: Duration::from_secs(2),
        });
        std::thread::sleep(Duration::from_millis(400));
        let r = load.stop();
        server.unblock();
        let _ = t.join();
        assert!(r.requests >= 4, "{r:?}");
        assert_eq!(r.ok + r.failed, r.requests);
        assert!(
            r.failures.get("http 503").copied().unwrap_or(0) >= 1,
            "{r:?}"
        );
        assert_eq!(r.bodies.get("v1.2").copied(), Some(r.ok));
        // Nothing listening: refused, counted.
        let load = Load::start(&LoadOpts {
            url: format!("http://127.0.0.1:{port}/"),
            workers: 1,
            interval: Duration::from_millis(5),
            timeout: Duration::from_secs(2),
        });
        std::thread::sleep(Duration::from_millis(100));
        let r = load.stop();
        assert!(r.failed >= 1 && r.ok == 0, "{r:?}");
    }
}
