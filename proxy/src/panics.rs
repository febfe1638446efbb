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
use std::borrow::Borrow;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use skiff_filters::telemetry::Metrics;
use tracing::error;

/// Where a contained task belongs, for its log line and its count.
#[derive(Clone, Debug)]
pub struct Context {
    pub listener: Arc<str>,
    pub metrics: Arc<Metrics>,
}

/// Runs `task` (its output is dropped); a panic in it is logged with `cx`
/// and `peer`, counted, and ends the task as if it had returned. `keep` (a connection's place in the
/// counts) is dropped the moment the task ends, panicked or not.
pub fn contained<F, C, K>(cx: C, peer: Option<SocketAddr>, keep: K, task: F) -> Contained<F, C, K>
where
    F: Future,
    C: Borrow<Context>,
{
    Contained {
        fut: task,
        cx,
        peer,
        keep: Some(keep),
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
        tokio::spawn(contained(self.0.clone(), None, (), fut));
    }
}

pin_project_lite::pin_project! {
    /// A task with its panics caught at each poll. A struct, not an `async`
    /// block around the task: each `async` layer keeps its own copy of the
    /// task's future, which doubled the instructions of an HTTP/2 request
    /// (callgrind, 67,987 against 141,847) and tripled the memory of an
    /// idle connection's task (3,424 bytes against 1,088;
    /// docs/benchmarks.md).
    pub struct Contained<F, C, K> {
        #[pin]
        fut: F,
        cx: C,
        peer: Option<SocketAddr>,
        keep: Option<K>,
    }
}

impl<F, C, K> Future for Contained<F, C, K>
where
    F: Future,
    C: Borrow<Context>,
{
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.project();
        let fut = this.fut;
        let polled = match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(task))) {
            Ok(polled) => polled.map(|_| ()),
            Err(payload) => {
                caught((*this.cx).borrow(), *this.peer, payload.as_ref());
                std::task::Poll::Ready(())
            }
        };
        if polled.is_ready() {
            this.keep.take();
        }
        polled
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
