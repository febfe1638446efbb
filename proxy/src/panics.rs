//! A panic in one connection's task closes that connection, and nothing
//! else.
//!
//! tokio already keeps a panicking task from taking its worker thread down;
//! what it does not do is say which connection it was, or count it. Every
//! task Skiff spawns for a downstream connection, and every HTTP/2 stream
//! task hyper spawns through [`Executor`], runs inside [`contained`]: the
//! panic is caught at the task's edge, logged with the listener and the
//! peer, counted in `skiff_panics_total{listener}`, and the connection (or
//! the stream) is dropped, which closes it. The accept loop, the other
//! connections and the process go on. The release profile keeps
//! `panic = "unwind"` for this.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use skiff_filters::telemetry::Metrics;
use tracing::error;

/// Where a contained task belongs, for its log line and its count.
#[derive(Clone, Debug)]
pub struct Context {
    pub listener: Arc<str>,
    pub metrics: Arc<Metrics>,
}

/// Runs `task`; a panic in it is logged with `cx` and `peer`, counted, and
/// ends the task as if it had returned.
pub async fn contained<F: Future<Output = ()>>(cx: &Context, peer: Option<SocketAddr>, task: F) {
    if let Err(payload) = AssertUnwindSafe(task).catch_unwind().await {
        caught(cx, peer, payload.as_ref());
    }
}

/// A panic's message: `panic!` makes a `&str` or a `String`.
fn message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

fn caught(cx: &Context, peer: Option<SocketAddr>, payload: &(dyn Any + Send)) {
    let message = message(payload);
    cx.metrics.panicked(&cx.listener);
    match peer {
        Some(peer) => error!(listener = %cx.listener, %peer, panic = message,
            "a connection's task panicked; that connection is closed"),
        None => error!(listener = %cx.listener, panic = message,
            "an HTTP/2 stream's task panicked; that stream is reset"),
    }
}

/// hyper's executor for a listener's HTTP/2 streams: tokio's, with each
/// stream's task [`Contained`].
#[derive(Clone, Debug)]
pub struct Executor(pub Arc<Context>);

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Contained {
            fut,
            cx: self.0.clone(),
        });
    }
}

pin_project_lite::pin_project! {
    /// A stream's task with its panics caught at each poll. A struct, not
    /// an `async` block around the task: a stream's future is large (the
    /// whole request's state), and each `async` layer moves it once more,
    /// which doubled the instructions of an HTTP/2 request (callgrind,
    /// 67,987 against 141,847; docs/benchmarks.md).
    struct Contained<F> {
        #[pin]
        fut: F,
        cx: Arc<Context>,
    }
}

impl<F: Future> Future for Contained<F> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.project();
        let fut = this.fut;
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(task))) {
            Ok(polled) => polled.map(|_| ()),
            Err(payload) => {
                caught(this.cx, None, payload.as_ref());
                std::task::Poll::Ready(())
            }
        }
    }
}

/// Panics arrive in the log, as one structured line with where they
/// happened, instead of on bare stderr; [`contained`] then adds which
/// connection it was.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = message(info.payload());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        error!(panic = message, at = %at, "panic");
    }));
}
