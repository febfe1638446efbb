//! The demo gRPC service: `skiff.demo.v1.Greeter` from `proto/greeter.proto`.
//!
//! Every call kind gRPC has is here, because each one travels through a proxy
//! differently (a unary call is one request and one response; the streaming
//! kinds keep an HTTP/2 stream open in one or both directions). Two knobs make
//! the proxy's behaviour observable from a client:
//!
//! * a request named `status:N` (N = 1..=16) is answered with gRPC status N,
//!   message `requested status N` and trailer `x-error-detail: requested`
//!   (server streaming sends one reply first, so the error arrives mid-stream);
//! * request metadata `x-echo` comes back as response header metadata `x-echo`,
//!   which shows that custom metadata survives the trip.

use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::pb::greeter_server::{self, GreeterServer};
use crate::pb::{HelloReply, HelloRequest};

/// The metadata key copied from request to response.
const ECHO_KEY: &str = "x-echo";
/// The trailer key attached to requested errors, so clients can tell a
/// requested error from one the proxy made up.
const ERROR_DETAIL_KEY: &str = "x-error-detail";

/// The stream type of the two server-streaming calls: boxed, because the
/// replies come from different stream combinators.
type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send + 'static>>;

/// The Greeter service. Cloning is cheap; every clone answers as the same instance.
#[derive(Debug, Clone)]
pub struct Greeter {
    /// Put in every reply's `instance` field, so a client behind a load
    /// balancer can see which backend answered.
    instance: Arc<str>,
}

// === impl Greeter ===

impl Greeter {
    /// A greeter that reports itself as `instance` in each reply.
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            instance: Arc::from(instance.into()),
        }
    }

    /// The instance name given to [`Greeter::new`].
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn reply(&self, message: String) -> HelloReply {
        HelloReply {
            message,
            instance: self.instance.to_string(),
        }
    }
}

#[tonic::async_trait]
impl greeter_server::Greeter for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let echo = echo_metadata(request.metadata());
        let name = request.into_inner().name;
        if let Some(status) = requested_status(&name) {
            return Err(status);
        }
        Ok(with_metadata(
            Response::new(self.reply(format!("Hello, {name}!"))),
            echo,
        ))
    }

    type SayHelloStreamStream = ReplyStream;

    async fn say_hello_stream(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<Self::SayHelloStreamStream>, Status> {
        let echo = echo_metadata(request.metadata());
        let HelloRequest { name, count } = request.into_inner();
        let stream: ReplyStream = match requested_status(&name) {
            // One good reply, then the error, so a client sees a stream that
            // fails part way rather than one that never starts.
            Some(status) => {
                let first = self.reply(format!("Hello, {name}! #1"));
                Box::pin(tokio_stream::iter([Ok(first), Err(status)]))
            }
            // Lazily generated, so a large `count` costs no memory up front.
            None => {
                let greeter = self.clone();
                Box::pin(
                    tokio_stream::iter(1..=count)
                        .map(move |i| Ok(greeter.reply(format!("Hello, {name}! #{i}")))),
                )
            }
        };
        Ok(with_metadata(Response::new(stream), echo))
    }

    async fn collect_hellos(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<HelloReply>, Status> {
        let echo = echo_metadata(request.metadata());
        let mut inbound = request.into_inner();
        let mut names = Vec::new();
        while let Some(hello) = inbound.next().await {
            let name = hello?.name;
            // Fail as soon as an error is asked for, without waiting for the
            // client to finish sending.
            if let Some(status) = requested_status(&name) {
                return Err(status);
            }
            names.push(name);
        }
        let message = if names.is_empty() {
            "Hello, nobody!".to_owned()
        } else {
            format!("Hello, {}!", names.join(", "))
        };
        Ok(with_metadata(Response::new(self.reply(message)), echo))
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let echo = echo_metadata(request.metadata());
        let greeter = self.clone();
        // Mapping the inbound stream (rather than collecting it) is what makes
        // the call interactive: each reply is produced as soon as its request
        // is read, long before the client half-closes. tonic ends the response
        // stream after the first error, so `status:N` ends the chat.
        let replies = request.into_inner().map(move |hello| {
            let name = hello?.name;
            match requested_status(&name) {
                Some(status) => Err(status),
                None => Ok(greeter.reply(format!("Hello, {name}!"))),
            }
        });
        Ok(with_metadata(Response::new(Box::pin(replies)), echo))
    }
}

/// Serves the Greeter on an already-bound listener until the future is
/// dropped (or the listener fails).
///
/// Taking a bound listener instead of an address lets callers bind port 0 and
/// learn the port before serving, which keeps tests free of port races.
pub async fn serve(listener: TcpListener, greeter: Greeter) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, instance = greeter.instance(), "greeter serving gRPC");
    // Small interactive messages: don't let Nagle hold them back.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(GreeterServer::new(greeter))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// The status asked for by a name of the form `status:N`, if any.
///
/// Only real error codes (1..=16) count: `status:0` would be an "error" that
/// says OK, and anything else is just an unusual name to greet.
fn requested_status(name: &str) -> Option<Status> {
    let n: i32 = name.strip_prefix("status:")?.trim().parse().ok()?;
    if !(1..=16).contains(&n) {
        return None;
    }
    let mut trailers = MetadataMap::new();
    trailers.insert(ERROR_DETAIL_KEY, MetadataValue::from_static("requested"));
    Some(Status::with_metadata(
        Code::from_i32(n),
        format!("requested status {n}"),
        trailers,
    ))
}

/// The request's `x-echo` value, to be sent back.
fn echo_metadata(metadata: &MetadataMap) -> Option<MetadataValue<tonic::metadata::Ascii>> {
    metadata.get(ECHO_KEY).cloned()
}

/// Adds the echoed `x-echo` value (if the client sent one) to a response.
fn with_metadata<T>(
    mut response: Response<T>,
    echo: Option<MetadataValue<tonic::metadata::Ascii>>,
) -> Response<T> {
    if let Some(value) = echo {
        response.metadata_mut().insert(ECHO_KEY, value);
    }
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failed test
mod tests {
    use super::*;
    use crate::pb::greeter_client::GreeterClient;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::transport::Channel;

    /// Starts a greeter on port 0 and returns a connected client; the server
    /// task is aborted when the returned handle is dropped at test end.
    async fn start(instance: &str) -> (GreeterClient<Channel>, AbortOnDrop) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, Greeter::new(instance)));
        // The listener is already bound, so connecting cannot race the server.
        let client = GreeterClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        (client, AbortOnDrop(task))
    }

    struct AbortOnDrop(tokio::task::JoinHandle<anyhow::Result<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    fn hello(name: &str, count: u32) -> HelloRequest {
        HelloRequest {
            name: name.to_owned(),
            count,
        }
    }

    #[test]
    fn requested_status_parsing() {
        // (name, expected code)
        let cases = [
            ("status:5", Some(Code::NotFound)),
            ("status: 14", Some(Code::Unavailable)),
            ("status:16", Some(Code::Unauthenticated)),
            ("status:0", None),
            ("status:17", None),
            ("status:x", None),
            ("world", None),
        ];
        for (name, want) in cases {
            assert_eq!(requested_status(name).map(|s| s.code()), want, "{name}");
        }
    }

    #[tokio::test]
    async fn unary_greets_and_echoes_metadata() {
        let (mut client, _server) = start("g1").await;
        let mut request = Request::new(hello("world", 0));
        request
            .metadata_mut()
            .insert("x-echo", "ping".parse().unwrap());
        let response = client.say_hello(request).await.unwrap();
        assert_eq!(response.metadata().get("x-echo").unwrap(), "ping");
        let reply = response.into_inner();
        assert_eq!(reply.message, "Hello, world!");
        assert_eq!(reply.instance, "g1");

        // Without x-echo, nothing is echoed.
        let response = client.say_hello(hello("you", 0)).await.unwrap();
        assert!(response.metadata().get("x-echo").is_none());
    }

    #[tokio::test]
    async fn unary_requested_status() {
        let (mut client, _server) = start("g1").await;
        let status = client.say_hello(hello("status:5", 0)).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "requested status 5");
        assert_eq!(
            status.metadata().get("x-error-detail").unwrap(),
            "requested"
        );
    }

    #[tokio::test]
    async fn server_stream_sends_count_replies() {
        let (mut client, _server) = start("g1").await;
        let mut request = Request::new(hello("world", 3));
        request
            .metadata_mut()
            .insert("x-echo", "s".parse().unwrap());
        let response = client.say_hello_stream(request).await.unwrap();
        assert_eq!(response.metadata().get("x-echo").unwrap(), "s");
        let mut stream = response.into_inner();
        let mut messages = Vec::new();
        while let Some(reply) = stream.message().await.unwrap() {
            assert_eq!(reply.instance, "g1");
            messages.push(reply.message);
        }
        assert_eq!(
            messages,
            ["Hello, world! #1", "Hello, world! #2", "Hello, world! #3"]
        );
    }

    #[tokio::test]
    async fn server_stream_fails_mid_stream() {
        let (mut client, _server) = start("g1").await;
        let mut stream = client
            .say_hello_stream(hello("status:14", 5))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.message, "Hello, status:14! #1");
        let status = stream.message().await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "requested status 14");
        assert_eq!(
            status.metadata().get("x-error-detail").unwrap(),
            "requested"
        );
    }

    #[tokio::test]
    async fn client_stream_collects_names() {
        let (mut client, _server) = start("g1").await;
        let names = ["a", "b", "c"].map(|n| hello(n, 0));
        let mut request = Request::new(tokio_stream::iter(names));
        request
            .metadata_mut()
            .insert("x-echo", "c".parse().unwrap());
        let response = client.collect_hellos(request).await.unwrap();
        assert_eq!(response.metadata().get("x-echo").unwrap(), "c");
        assert_eq!(response.into_inner().message, "Hello, a, b, c!");

        let empty = client
            .collect_hellos(tokio_stream::iter(Vec::<HelloRequest>::new()))
            .await
            .unwrap();
        assert_eq!(empty.into_inner().message, "Hello, nobody!");

        let status = client
            .collect_hellos(tokio_stream::iter([hello("a", 0), hello("status:3", 0)]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn chat_replies_before_half_close() {
        let (mut client, _server) = start("g1").await;
        let (tx, rx) = mpsc::channel(1);
        // Queue the first message up front; each later one is sent only after
        // the reply to the previous one arrived, as an interactive client would.
        tx.send(hello("one", 0)).await.unwrap();
        let mut request = Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("x-echo", "chat".parse().unwrap());
        let response = client.chat(request).await.unwrap();
        assert_eq!(response.metadata().get("x-echo").unwrap(), "chat");
        let mut replies = response.into_inner();

        // Each reply arrives while the request stream is still open (tx alive).
        let reply = replies.message().await.unwrap().unwrap();
        assert_eq!(reply.message, "Hello, one!");
        tx.send(hello("two", 0)).await.unwrap();
        let reply = replies.message().await.unwrap().unwrap();
        assert_eq!(reply.message, "Hello, two!");
        assert_eq!(reply.instance, "g1");

        // Half-closing ends the reply stream cleanly.
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn chat_requested_status_ends_the_stream() {
        let (mut client, _server) = start("g1").await;
        let requests = tokio_stream::iter([hello("one", 0), hello("status:7", 0), hello("x", 0)]);
        let mut replies = client.chat(requests).await.unwrap().into_inner();
        assert_eq!(
            replies.message().await.unwrap().unwrap().message,
            "Hello, one!"
        );
        let status = replies.message().await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
    }
}
