//! The flooder's HTTP control: the original client's `GET /qps?qps=N`, and
//! a JSON status; the last complete seconds (`/seconds`) and Prometheus
//! text (`/metrics`) for the monitor.
//!
//! Owns: the route table and the state it shares with the coordinator: the
//! rate override the workers read once a second, and the status document
//! the coordinator rewrites once a second. Must not: touch a worker's data;
//! the only thing the request path sees of this is one relaxed atomic load
//! per thread per second. With `--control-token-file`, `/qps` ([`MUTATING`])
//! needs the token; the read-only routes stay open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};

use super::options::QPS_MAX;
use super::schedule::Plan;
use crate::clock::NANOS_PER_SEC;
use crate::clock::unix_nanos;
use crate::http::{Request, Response};

/// The rate override word holds the plan step id above this bit and the rate
/// below it (`worker::rate_for` reads it so): a rate fits in 32 bits, as
/// `QPS_MAX` is far below 2^32.
pub(crate) const OVERRIDE_STEP_SHIFT: u32 = 32;
/// The rate's bits of the override word: those below the step id.
pub(crate) const OVERRIDE_QPS_MASK: u64 = (1 << OVERRIDE_STEP_SHIFT) - 1;
/// The routes that change the run: guarded by `--control-token-file`.
pub const MUTATING: &[&str] = &["/qps"];
/// The value of the rate override when none is set.
pub(crate) const NO_OVERRIDE: u64 = u64::MAX;

/// What the HTTP thread and the coordinator share.
#[derive(Debug)]
pub struct Live {
    pub plan: Plan,
    /// `(step id << 32) | qps` set by `/qps`, or [`NO_OVERRIDE`].
    pub rate_override: Arc<AtomicU64>,
    /// Unix second of run second 0; 0 until shaking is scheduled.
    pub start_unix: AtomicU64,
    /// The status document, rewritten once a second.
    pub status: Mutex<Value>,
    /// The last complete seconds and the metrics, for `/seconds` and
    /// `/metrics` (the monitor and Prometheus).
    pub seconds: super::published::FloodSeconds,
}

impl Live {
    /// Shared state for a run of `plan`, with no override and a status
    /// that says the run is connecting.
    pub fn new(plan: Plan) -> Live {
        Live {
            plan,
            rate_override: Arc::new(AtomicU64::new(NO_OVERRIDE)),
            start_unix: AtomicU64::new(0),
            status: Mutex::new(json!({ "state": "connecting" })),
            seconds: super::published::FloodSeconds::default(),
        }
    }

    /// Replaces the status document.
    pub fn set_status(&self, status: Value) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    /// Sets the rate from the next second to the end of the step it falls
    /// in; returns that run second and the step id.
    fn override_qps(&self, qps: u64) -> (u64, u32) {
        let start = self.start_unix.load(Ordering::Relaxed);
        let next = if start == 0 {
            0
        } else {
            (unix_nanos() / NANOS_PER_SEC + 1).saturating_sub(start)
        };
        // Past the end, the last step: harmless, nothing is sent any more.
        let step = self
            .plan
            .at(next)
            .map_or(self.plan.phases().len() as u32, |(step, _)| step);
        self.rate_override.store(
            (u64::from(step) << OVERRIDE_STEP_SHIFT) | qps,
            Ordering::Relaxed,
        );
        (next, step)
    }
}

/// Answers one control request.
pub fn route(live: &Arc<Live>, req: &Request) -> Response {
    if let Some(answer) = live.seconds.route(req) {
        return answer;
    }
    match req.path() {
        "/qps" => {
            let Some(text) = req.param("qps") else {
                return Response::error(400, "missing qps: GET /qps?qps=N");
            };
            let qps = match text.trim().parse::<u64>() {
                Ok(q) if q <= QPS_MAX => q,
                _ => {
                    return Response::error(
                        400,
                        format!("qps {text:?} is not a whole number in 0..={QPS_MAX}"),
                    );
                }
            };
            let (from_second, step) = live.override_qps(qps);
            Response::ok(json!({
                "ok": true,
                "qps": qps,
                "from_second": from_second,
                "until_step_ends": step,
            }))
        }
        "/status" => Response::ok(
            live.status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        ),
        path => Response::not_found(path, &["/qps", "/status", "/seconds", "/metrics"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flood::schedule::Phase;
    use crate::flood::worker::rate_for;

    fn live() -> Arc<Live> {
        Arc::new(Live::new(Plan::new(
            0,
            vec![Phase {
                qps: 100,
                secs: 3600,
            }],
        )))
    }

    #[test]
    fn qps_overrides_the_plan_from_the_next_second() {
        let live = live();
        live.start_unix
            .store(unix_nanos() / NANOS_PER_SEC, Ordering::Relaxed);
        let r = route(&live, &Request::new("/qps?qps=250"));
        assert_eq!(r.status, 200, "{}", r.body);
        let from = r.body["from_second"].as_u64().unwrap();
        assert!(from >= 1, "{}", r.body);
        assert_eq!(rate_for(&live.plan, &live.rate_override, from), 250);
    }

    #[test]
    fn bad_qps_is_refused_with_a_reason() {
        let live = live();
        for bad in [
            "/qps",
            "/qps?qps=",
            "/qps?qps=-1",
            "/qps?qps=1e9",
            "/qps?qps=99999999999",
        ] {
            let r = route(&live, &Request::new(bad));
            assert_eq!(r.status, 400, "{bad}: {}", r.body);
            assert!(r.body["error"].is_string());
        }
        assert_eq!(
            live.rate_override.load(Ordering::Relaxed),
            NO_OVERRIDE,
            "nothing changed"
        );
        assert_eq!(route(&live, &Request::new("/nope")).status, 404);
    }

    #[test]
    fn status_returns_the_latest_document() {
        let live = live();
        assert_eq!(
            route(&live, &Request::new("/status")).body["state"],
            "connecting"
        );
        live.set_status(json!({"state": "shaking", "second": 3}));
        assert_eq!(route(&live, &Request::new("/status")).body["second"], 3);
    }
}
