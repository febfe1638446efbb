//! The route `fault`: injected delays and aborts for chaos testing, as Envoy's
//! fault filter and Istio's `fault` offer.
//!
//! Each request rolls separately for the delay and the abort (percent 0–100,
//! fractions allowed). A delayed request sleeps, then carries on (and may then
//! be aborted too, as in Envoy); an aborted request is answered by Skiff with
//! `skiff-error: fault-injected` and the configured status, or for gRPC
//! callers `grpc_status` (else gRPC's mapping of the HTTP status), without
//! reaching the upstream. It sits outside the timeout so that a delay tests
//! the client's patience, not Skiff's own route timeout.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, ErrInto, TryFutureExt};
use skiff_control::model;
use tower::{Layer, Service};

use crate::error::{BoxError, ProxyError, Reason};

use crate::BoxFuture;

/// Draws a number uniformly from [0, 100); injectable so tests decide the roll.
pub type Roll = Arc<dyn Fn() -> f64 + Send + Sync>;

fn default_roll() -> Roll {
    Arc::new(|| fastrand::f64() * 100.0)
}

/// A route's faults, ready to apply.
#[derive(Clone)]
pub struct FaultLayer {
    delay: Option<(Duration, f64)>,
    abort: Option<(Reason, f64)>,
    roll: Roll,
}

impl fmt::Debug for FaultLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultLayer")
            .field("delay", &self.delay)
            .field("abort", &self.abort)
            .finish_non_exhaustive()
    }
}

impl FaultLayer {
    /// `None` (no `fault:`) injects nothing.
    pub fn new(c: Option<&model::Fault>) -> Self {
        let delay = c
            .and_then(|f| f.delay.as_ref())
            .map(|d| (d.duration.get(), d.percent));
        let abort = c.and_then(|f| f.abort.as_ref()).map(|a| {
            (
                Reason::FaultInjected {
                    status: a.status,
                    grpc_status: a.grpc_status,
                },
                a.percent,
            )
        });
        Self {
            delay,
            abort,
            roll: default_roll(),
        }
    }

    /// Replaces the dice (tests).
    pub fn with_roll(mut self, roll: Roll) -> Self {
        self.roll = roll;
        self
    }

    fn is_noop(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault {
            inner,
            faults: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Fault<S> {
    inner: S,
    faults: FaultLayer,
}

impl<S, Req> Service<Req> for Fault<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    /// Unboxed when no fault is injected (the common case); boxed only for
    /// the delays and aborts themselves.
    type Future = Either<ErrInto<S::Future, BoxError>, BoxFuture<S::Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if self.faults.is_noop() {
            return Either::Left(self.inner.call(req).err_into());
        }
        let delay = self
            .faults
            .delay
            .filter(|(_, pct)| (self.faults.roll)() < *pct)
            .map(|(d, _)| d);
        let abort = self
            .faults
            .abort
            .filter(|(_, pct)| (self.faults.roll)() < *pct)
            .map(|(r, _)| r);
        let Some(delay) = delay else {
            if let Some(reason) = abort {
                return Either::Right(Box::pin(std::future::ready(Err(aborted(reason)))));
            }
            return Either::Left(self.inner.call(req).err_into());
        };
        // The inner service was made ready for this call; after the sleep it
        // is used through a clone that is made ready again (tower's rule:
        // the ready one is the one called, so it is swapped in).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            tokio::time::sleep(delay).await;
            if let Some(reason) = abort {
                return Err(aborted(reason));
            }
            inner.call(req).await.map_err(Into::into)
        }))
    }
}

fn aborted(reason: Reason) -> BoxError {
    ProxyError::new(reason, "fault injection aborted the request").into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::reason_of;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;
    use tower_test::mock;

    fn fault(delay: Option<(u64, f64)>, abort: Option<(u16, f64, Option<u32>)>) -> model::Fault {
        model::Fault {
            delay: delay.map(|(ms, percent)| model::FaultDelay {
                duration: model::Duration::from_millis(ms),
                percent,
            }),
            abort: abort.map(|(status, percent, grpc_status)| model::FaultAbort {
                status,
                percent,
                grpc_status,
            }),
        }
    }

    /// Dice that return the given rolls in turn.
    fn rolls(values: &'static [f64]) -> Roll {
        let i = AtomicUsize::new(0);
        Arc::new(move || values[i.fetch_add(1, Ordering::Relaxed) % values.len()])
    }

    #[tokio::test(start_paused = true)]
    async fn delay_then_continue() {
        let cfg = fault(Some((100, 10.0)), None);
        let layer = FaultLayer::new(Some(&cfg)).with_roll(rolls(&[9.99]));
        let (svc, mut handle) = mock::pair::<&str, &str>();
        let svc = layer.layer(svc);
        let start = tokio::time::Instant::now();
        let call = tokio::spawn(svc.oneshot("req"));
        let (_, send) = handle.next_request().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        send.send_response("ok");
        assert_eq!(call.await.unwrap().unwrap(), "ok");
    }

    #[tokio::test(start_paused = true)]
    async fn roll_above_percent_passes_untouched() {
        let cfg = fault(Some((100, 10.0)), Some((503, 5.0, None)));
        let layer = FaultLayer::new(Some(&cfg)).with_roll(rolls(&[10.0, 5.0]));
        let (svc, mut handle) = mock::pair::<&str, &str>();
        let start = tokio::time::Instant::now();
        let call = tokio::spawn(layer.layer(svc).oneshot("req"));
        let (_, send) = handle.next_request().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        send.send_response("ok");
        assert_eq!(call.await.unwrap().unwrap(), "ok");
    }

    #[tokio::test(start_paused = true)]
    async fn abort_answers_with_the_configured_status() {
        let cfg = fault(None, Some((418, 50.0, Some(9))));
        let layer = FaultLayer::new(Some(&cfg)).with_roll(rolls(&[49.0]));
        let (svc, _handle) = mock::pair::<&str, &str>();
        let err = layer.layer(svc).oneshot("req").await.unwrap_err();
        let reason = reason_of(&*err);
        assert_eq!(
            reason,
            Reason::FaultInjected {
                status: 418,
                grpc_status: Some(9)
            }
        );
        let rsp = crate::error::respond(&*err, false);
        assert_eq!(rsp.status(), 418);
        assert_eq!(rsp.headers()["skiff-error"], "fault-injected");
        let rsp = crate::error::respond(&*err, true);
        assert_eq!(rsp.headers()["grpc-status"], "9");
    }

    #[tokio::test(start_paused = true)]
    async fn delay_then_abort() {
        let cfg = fault(Some((50, 100.0)), Some((503, 100.0, None)));
        let layer = FaultLayer::new(Some(&cfg));
        let (svc, _handle) = mock::pair::<&str, &str>();
        let start = tokio::time::Instant::now();
        let err = layer.layer(svc).oneshot("req").await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        let rsp = crate::error::respond(&*err, true);
        assert_eq!(
            rsp.headers()["grpc-status"],
            "14",
            "503 maps to UNAVAILABLE"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_percent_never_fires() {
        let cfg = fault(Some((50, 0.0)), Some((503, 0.0, None)));
        let layer = FaultLayer::new(Some(&cfg)).with_roll(rolls(&[0.0]));
        let (svc, mut handle) = mock::pair::<&str, &str>();
        let call = tokio::spawn(layer.layer(svc).oneshot("req"));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response("ok");
        assert_eq!(call.await.unwrap().unwrap(), "ok");
    }
}
