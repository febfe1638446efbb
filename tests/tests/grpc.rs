//! gRPC through the proxy: a tonic client, the demo greeter behind it, all
//! four call kinds, metadata both ways, and statuses passed through intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration_tests::client::{greeter_client, hello};
use integration_tests::{Greeter, Proxy, guard};
use skiff_examples::pb::HelloReply;
use skiff_examples::pb::greeter_client::GreeterClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// (listener protocol, cluster protocol): every combination a gRPC client can take.
const PROTOCOLS: [(&str, &str); 3] = [("auto", "auto"), ("http2", "auto"), ("auto", "http2")];

/// A greeter behind a proxy, and a tonic client talking to the proxy.
struct Setup {
    client: GreeterClient<Channel>,
    _proxy: Proxy,
    _greeter: Greeter,
}

async fn setup(listener: &str, cluster: &str) -> Setup {
    let greeter = Greeter::spawn("g1").await;
    let proxy = Proxy::simple(listener, cluster, greeter.addr()).await;
    let client = greeter_client(proxy.main()).await;
    Setup {
        client,
        _proxy: proxy,
        _greeter: greeter,
    }
}

/// `message` with `x-echo: value`, which the greeter sends back as metadata.
fn with_echo<T>(message: T, value: &'static str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-echo", value.parse().unwrap());
    request
}

/// The greeter sent `x-echo: value` back: request metadata reached the
/// server, and response metadata came back.
fn assert_echoed<T>(response: &tonic::Response<T>, value: &str, case: &str) {
    assert_eq!(
        response.metadata().get("x-echo").unwrap(),
        value,
        "{case}: request metadata reached the server and came back"
    );
}

/// `status` is the greeter's own answer to a requested `code`: code,
/// message and trailer intact, and not marked as the proxy's.
fn assert_greeter_status(status: &tonic::Status, code: Code, case: &str) {
    assert_eq!(status.code(), code, "{case}: {status:?}");
    assert_eq!(
        status.message(),
        format!("requested status {}", code as i32),
        "{case}"
    );
    assert_eq!(
        status
            .metadata()
            .get("x-error-detail")
            .and_then(|v| v.to_str().ok()),
        Some("requested"),
        "{case}: the server's trailer survives: {status:?}"
    );
    assert!(
        status.metadata().get("skiff-error").is_none(),
        "{case}: the server's error is not the proxy's: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_call_with_metadata_both_ways() {
    for (listener, cluster) in PROTOCOLS {
        let mut s = setup(listener, cluster).await;
        let request = with_echo(hello("world", 0), "ping");
        let response = guard("SayHello", s.client.say_hello(request))
            .await
            .unwrap();
        assert_echoed(&response, "ping", &format!("{listener}/{cluster}"));
        assert_eq!(
            response.into_inner(),
            HelloReply {
                message: "Hello, world!".into(),
                instance: "g1".into()
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_call() {
    for (listener, cluster) in PROTOCOLS {
        let mut s = setup(listener, cluster).await;
        let request = with_echo(hello("stream", 5), "s");
        let response = guard("SayHelloStream", s.client.say_hello_stream(request))
            .await
            .unwrap();
        assert_echoed(&response, "s", &format!("{listener}/{cluster}"));
        let mut stream = response.into_inner();
        let mut messages = Vec::new();
        while let Some(reply) = guard("next reply", stream.message()).await.unwrap() {
            messages.push(reply.message);
        }
        let want: Vec<String> = (1..=5).map(|i| format!("Hello, stream! #{i}")).collect();
        assert_eq!(messages, want, "{listener}/{cluster}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_streaming_call() {
    for (listener, cluster) in PROTOCOLS {
        let mut s = setup(listener, cluster).await;
        let messages = tokio_stream::iter(["a", "b", "c"].map(|n| hello(n, 0)));
        let request = with_echo(messages, "c");
        let response = guard("CollectHellos", s.client.collect_hellos(request))
            .await
            .unwrap();
        assert_echoed(&response, "c", &format!("{listener}/{cluster}"));
        assert_eq!(
            response.into_inner().message,
            "Hello, a, b, c!",
            "{listener}/{cluster}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_streaming_is_interactive() {
    for (listener, cluster) in PROTOCOLS {
        let mut s = setup(listener, cluster).await;
        let (tx, rx) = mpsc::channel(1);
        tx.send(hello("one", 0)).await.unwrap();
        let request = with_echo(ReceiverStream::new(rx), "chat");
        let response = guard("Chat", s.client.chat(request)).await.unwrap();
        assert_echoed(&response, "chat", &format!("{listener}/{cluster}"));
        let mut replies = response.into_inner();
        // Each reply comes back while the request stream is still open: the
        // proxy must not wait for the client's half-close.
        for name in ["one", "two", "three"] {
            if name != "one" {
                tx.send(hello(name, 0)).await.unwrap();
            }
            let reply = guard("a chat reply", replies.message())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                reply.message,
                format!("Hello, {name}!"),
                "{listener}/{cluster}"
            );
        }
        drop(tx);
        assert!(
            guard("end of chat", replies.message())
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ok_statuses_pass_through_intact() {
    // code asked of the greeter, per call kind
    let codes = [
        Code::NotFound,
        Code::InvalidArgument,
        Code::Unavailable,
        Code::PermissionDenied,
    ];
    let mut s = setup("auto", "auto").await;
    for code in codes {
        let name = format!("status:{}", code as i32);
        let status = guard("SayHello", s.client.say_hello(hello(&name, 0)))
            .await
            .unwrap_err();
        assert_greeter_status(&status, code, "unary");
        let status = guard(
            "CollectHellos",
            s.client
                .collect_hellos(tokio_stream::iter([hello("a", 0), hello(&name, 0)])),
        )
        .await
        .unwrap_err();
        assert_greeter_status(&status, code, "client streaming");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_error_after_a_first_message() {
    for (listener, cluster) in PROTOCOLS {
        let mut s = setup(listener, cluster).await;
        let mut stream = guard(
            "SayHelloStream",
            s.client.say_hello_stream(hello("status:14", 5)),
        )
        .await
        .unwrap()
        .into_inner();
        let first = guard("first reply", stream.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            first.message, "Hello, status:14! #1",
            "{listener}/{cluster}"
        );
        let status = guard("the error", stream.message()).await.unwrap_err();
        assert_greeter_status(&status, Code::Unavailable, &format!("{listener}/{cluster}"));

        // Bidi: one good reply, then the requested error ends the chat.
        let requests = tokio_stream::iter([hello("one", 0), hello("status:7", 0), hello("x", 0)]);
        let mut replies = guard("Chat", s.client.chat(requests))
            .await
            .unwrap()
            .into_inner();
        let reply = guard("chat reply", replies.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.message, "Hello, one!");
        let status = guard("chat error", replies.message()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{listener}/{cluster}: {status:?}"
        );
    }
}
