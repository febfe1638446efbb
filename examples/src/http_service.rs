//! The demo HTTP service: a JSON "what did you send me" backend.
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` (never flaky, so health checks stay meaningful) |
//! | `POST /echo` | 200 with the request body streamed back unchanged |
//! | `* /status/NNN` | status NNN (200..=599) with a small JSON body |
//! | anything else | 200 `{"service":"demo","instance":..,"method":..,"path":..,"host":..,"version":..,"headers":{..}}` |
//!
//! With [`Options::fail_percent`] above zero, that share of requests (all but
//! `/healthz`) fails with 503 `{"error":"flaky instance","instance":..}`, which
//! is what makes retries and outlier detection visible in the demo.
//!
//! Every response carries `x-demo-instance: NAME`, so `curl -i` through the
//! proxy shows which backend answered.
//!
//! One hyper 1 server serves both HTTP/1.1 (with keep-alive) and h2c (HTTP/2
//! with prior knowledge) on the same port, detected per connection by
//! `hyper_util::server::conn::auto`, because the proxy may speak either
//! upstream depending on the cluster's `protocol`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Response body type: either a small buffered body or the streamed request body.
type Body = BoxBody<Bytes, hyper::Error>;

/// The header naming the instance that answered.
const INSTANCE_HEADER: &str = "x-demo-instance";

/// How the service behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Reported as `instance` in every JSON body and in `x-demo-instance`,
    /// so a client can tell load-balanced backends apart.
    pub instance: String,
    /// Percentage (0..=100) of requests answered with 503 instead of served;
    /// 0 means never, 100 or more means always. `/healthz` is exempt.
    pub fail_percent: u8,
}

/// Serves HTTP/1.1 and h2c on an already-bound listener until the future is
/// dropped.
///
/// Connections are tasks in a [`JoinSet`] owned by this future, so dropping
/// it (or aborting the task running it) also closes every open connection:
/// a stopped backend really is gone, which is what tests of failover need.
pub async fn serve(listener: TcpListener, opts: Options) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, instance = %opts.instance, fail_percent = opts.fail_percent, "demo HTTP service serving");
    let opts = Arc::new(opts);
    // The auto builder's defaults already keep HTTP/1.1 connections alive.
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Per-connection failures (a client that gave up) and
                        // resource exhaustion (EMFILE) are both worth
                        // surviving; the pause keeps the latter from spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Small request/response exchanges: don't let Nagle delay them.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, %peer, "could not set TCP_NODELAY");
                }
                let builder = builder.clone();
                let opts = Arc::clone(&opts);
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(req, Arc::clone(&opts)));
                    if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                        tracing::debug!(%error, %peer, "connection ended with an error");
                    }
                });
            }
            // Reap finished connection tasks so the set doesn't grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Answers one request. Never fails: every outcome is an HTTP response.
async fn handle(req: Request<Incoming>, opts: Arc<Options>) -> Result<Response<Body>, Infallible> {
    let mut response = route(req, &opts);
    if let Ok(value) = HeaderValue::from_str(&opts.instance) {
        response.headers_mut().insert(INSTANCE_HEADER, value);
    }
    Ok(response)
}

fn route(req: Request<Incoming>, opts: &Options) -> Response<Body> {
    let path = req.uri().path();
    if path == "/healthz" && (req.method() == Method::GET || req.method() == Method::HEAD) {
        return text(StatusCode::OK, "ok");
    }
    if is_unlucky(opts.fail_percent) {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": "flaky instance", "instance": opts.instance }),
        );
    }
    if path == "/echo" && req.method() == Method::POST {
        return echo(req);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return requested_status(code, opts);
    }
    describe(&req, opts)
}

/// Whether this request should fail, `fail_percent` times out of 100.
fn is_unlucky(fail_percent: u8) -> bool {
    fail_percent > 0 && fastrand::u8(0..100) < fail_percent
}

/// Streams the request body straight back. The body is never collected, so
/// arbitrarily large uploads use constant memory and the first bytes come
/// back before the last ones were sent — a test of the proxy's streaming.
fn echo(req: Request<Incoming>) -> Response<Body> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let mut response = Response::new(req.into_body().boxed());
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

/// `/status/NNN`: answers with status NNN, for trying how the proxy treats
/// (and, with retries, retries) each class of response.
fn requested_status(code: &str, opts: &Options) -> Response<Body> {
    // 1xx are not final responses, and hyper would not send them as one.
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok());
    let Some(status) = status else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": format!("not a status between 200 and 599: {code:?}"), "instance": opts.instance }),
        );
    };
    // These statuses must not carry a body.
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        let mut response = Response::new(empty());
        *response.status_mut() = status;
        return response;
    }
    json_response(
        status,
        &json!({ "service": "demo", "instance": opts.instance, "status": status.as_u16() }),
    )
}

/// The default answer: a JSON description of the request as it arrived,
/// which shows what the proxy added, removed or rewrote on the way.
fn describe(req: &Request<Incoming>, opts: &Options) -> Response<Body> {
    let mut headers = Map::new();
    for name in req.headers().keys() {
        // Repeated headers are joined as HTTP allows, so none is lost.
        let values: Vec<_> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    // HTTP/2 carries the host in the URI (`:authority`), HTTP/1.1 in `Host`;
    // reporting one field for both shows host rewriting either way.
    let host = req
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .map(|host| String::from_utf8_lossy(host.as_bytes()).into_owned())
        });
    json_response(
        StatusCode::OK,
        &json!({
            "service": "demo",
            "instance": opts.instance,
            "method": req.method().as_str(),
            "path": path,
            "host": host,
            "version": format!("{:?}", req.version()),
            "headers": headers,
        }),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> Body {
    full(Bytes::new())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failed test
mod tests {
    use super::*;
    use http::Version;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use std::net::SocketAddr;

    struct Server {
        addr: SocketAddr,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start(instance: &str, fail_percent: u8) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let opts = Options {
            instance: instance.to_owned(),
            fail_percent,
        };
        let task = tokio::spawn(serve(listener, opts));
        Server { addr, task }
    }

    fn http1() -> Client<HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new()).build_http()
    }

    fn h2c() -> Client<HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http()
    }

    fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
        Request::get(format!("http://{addr}{path}"))
            .body(Full::default())
            .unwrap()
    }

    async fn body_json(response: Response<Incoming>) -> Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn describes_requests_over_http1_and_h2c() {
        let server = start("a", 0).await;
        for (client, version) in [(http1(), "HTTP/1.1"), (h2c(), "HTTP/2.0")] {
            let mut request = get(server.addr, "/x?y");
            request
                .headers_mut()
                .insert("x-demo", HeaderValue::from_static("1"));
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
            assert_eq!(response.headers()[INSTANCE_HEADER], "a");
            let body = body_json(response).await;
            assert_eq!(body["service"], "demo");
            assert_eq!(body["instance"], "a");
            assert_eq!(body["method"], "GET");
            assert_eq!(body["path"], "/x?y");
            assert_eq!(body["version"], version);
            assert_eq!(body["host"], server.addr.to_string());
            assert_eq!(body["headers"]["x-demo"], "1");
        }
    }

    #[tokio::test]
    async fn http1_keeps_connections_alive() {
        let server = start("a", 0).await;
        // One connection, driven by hand: the second request can only succeed
        // if the server kept the connection open after the first.
        let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        for _ in 0..2 {
            sender.ready().await.unwrap();
            let response = sender.send_request(get(server.addr, "/")).await.unwrap();
            assert_eq!(response.version(), Version::HTTP_11);
            assert_eq!(body_json(response).await["instance"], "a");
        }
    }

    #[tokio::test]
    async fn healthz_answers_ok_even_when_flaky() {
        let server = start("b", 100).await;
        let response = http1().request(get(server.addr, "/healthz")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test]
    async fn flaky_instance_fails_with_503() {
        let server = start("b", 100).await;
        let response = http1().request(get(server.addr, "/x")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = body_json(response).await;
        assert_eq!(body, json!({ "error": "flaky instance", "instance": "b" }));
    }

    #[test]
    fn fail_percent_bounds() {
        fastrand::seed(7);
        assert!((0..1000).all(|_| !is_unlucky(0)));
        assert!((0..1000).all(|_| is_unlucky(100)));
        let failures = (0..10_000).filter(|_| is_unlucky(30)).count();
        assert!((2_500..3_500).contains(&failures), "{failures}");
    }

    #[tokio::test]
    async fn status_path_answers_that_status() {
        let server = start("a", 0).await;
        let client = http1();
        // (path, expected status)
        let cases = [
            ("/status/200", StatusCode::OK),
            ("/status/204", StatusCode::NO_CONTENT),
            ("/status/418", StatusCode::IM_A_TEAPOT),
            ("/status/503", StatusCode::SERVICE_UNAVAILABLE),
            ("/status/100", StatusCode::BAD_REQUEST),
            ("/status/600", StatusCode::BAD_REQUEST),
            ("/status/abc", StatusCode::BAD_REQUEST),
        ];
        for (path, want) in cases {
            let response = client.request(get(server.addr, path)).await.unwrap();
            assert_eq!(response.status(), want, "{path}");
            // Drain the body so the connection goes back to the pool.
            response.into_body().collect().await.unwrap();
        }
    }

    #[tokio::test]
    async fn echo_streams_a_large_body_back() {
        let server = start("a", 0).await;
        // 1 MiB of a non-repeating-looking pattern, so reordering would show.
        let payload: Bytes = (0..1024 * 1024u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        for client in [http1(), h2c()] {
            let request = Request::post(format!("http://{}/echo", server.addr))
                .header(CONTENT_TYPE, "application/x-test")
                .body(Full::new(payload.clone()))
                .unwrap();
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/x-test");
            let echoed = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(echoed.len(), payload.len());
            assert!(echoed == payload);
        }
    }

    #[tokio::test]
    async fn echo_replies_before_the_request_body_ends() {
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        use tokio::sync::mpsc;
        use tokio_stream::wrappers::ReceiverStream;

        let server = start("a", 0).await;
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        let client: Client<HttpConnector, StreamBody<ReceiverStream<_>>> =
            Client::builder(TokioExecutor::new()).build_http();
        let request = Request::post(format!("http://{}/echo", server.addr))
            .body(StreamBody::new(ReceiverStream::new(rx)))
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        let response = client.request(request).await.unwrap();
        let mut body = response.into_body();
        // The first chunk comes back while the request body is still open;
        // a buffering echo would hang here.
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "first");
        tx.send(Ok(Frame::data(Bytes::from_static(b"second"))))
            .await
            .unwrap();
        drop(tx);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "second");
    }

    #[tokio::test]
    async fn stopping_serve_closes_open_connections() {
        let server = start("a", 0).await;
        let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        let response = sender.send_request(get(server.addr, "/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();

        // The keep-alive connection is idle now; stopping the server must
        // close it, which ends the client's connection task.
        server.task.abort();
        let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
        assert!(closed.is_ok(), "connection stayed open after serve stopped");
    }
}
