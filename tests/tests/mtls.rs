//! mTLS between two in-process Skiffs: an outbound one originating mTLS
//! (`clusters.X.tls.server_identity`) and an inbound one terminating it
//! (`listeners[].tls.mode`), with certificates from `skiff::certs` in a
//! tempdir; plus refusals (plaintext, foreign CA, expired, wrong identity),
//! permissive mode, authorization, rotation, and `openssl s_client` as a
//! peer whose TLS stack is not ours.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use integration_tests::client::say_hello;
use integration_tests::{Backend, Client, Greeter, Listening, guard};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use skiff::certs::{Ca, Pair, Validity, write_workload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const TRUST_DOMAIN: &str = "spiffe://test.local/ns/default/sa";

fn id(name: &str) -> String {
    format!("{TRUST_DOMAIN}/{name}")
}

fn day() -> Validity {
    Validity::from_now(Duration::from_secs(24 * 3600))
}

/// A mesh CA in a tempdir, issuing workload directories on demand.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate(day()).unwrap();
        ca.write(&dir.path().join("ca")).unwrap();
        Self { dir, ca }
    }

    /// `DIR/NAME/{cert,key,ca}.pem` for `spiffe://test.local/ns/default/sa/NAME`.
    fn workload(&self, name: &str) -> PathBuf {
        self.workload_with(name, day())
    }

    fn workload_with(&self, name: &str, validity: Validity) -> PathBuf {
        let out = self.dir.path().join(name);
        let pair = self.ca.issue(&id(name), validity).unwrap();
        write_workload(&out, &pair, &self.ca).unwrap();
        out
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca/ca.pem")
    }
}

fn identity_yaml(dir: &Path) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    format!(
        "identity: {{ cert: \"{}\", key: \"{}\", trust_bundle: \"{}\" }}\n",
        p("cert.pem"),
        p("key.pem"),
        p("ca.pem")
    )
}

async fn start(yaml: &str) -> skiff::Bound {
    integration_tests::init_tracing();
    let config = skiff_control::load_str(yaml, "mtls.yaml")
        .unwrap_or_else(|e| panic!("config rejected:\n{e}\n---\n{yaml}"));
    guard("skiff::build", skiff::build(config))
        .await
        .unwrap_or_else(|e| panic!("build failed: {e}\n---\n{yaml}"))
}

/// The inbound Skiff: listener `in` (inbound, `mode`) in front of `backend`,
/// and `/skiff.demo.v1.Greeter/*` in front of `greeter` when given.
async fn inbound(
    workload: &Path,
    mode: &str,
    backend: SocketAddr,
    greeter: Option<SocketAddr>,
    extra: &str,
) -> skiff::Bound {
    let greeter_route = greeter.map_or(String::new(), |_| {
        "    - match: { path: { prefix: /skiff.demo.v1.Greeter/ } }\n      cluster: greeter\n"
            .to_owned()
    });
    let greeter_cluster = greeter.map_or(String::new(), |g| {
        format!("  greeter: {{ endpoints: [\"{g}\"] }}\n")
    });
    start(&format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
{identity}listeners:
  - name: in
    address: 127.0.0.1:0
    direction: inbound
    tls: {{ mode: {mode} }}
    routes: local
routes:
  local:
{greeter_route}    - cluster: local
clusters:
  local: {{ endpoints: ["{backend}"] }}
{greeter_cluster}{extra}"#,
        identity = identity_yaml(workload),
    ))
    .await
}

/// The outbound Skiff: plaintext listener `out` sending everything over
/// mTLS to `target`, which must prove `server_identity`.
async fn outbound(workload: &Path, target: SocketAddr, server_identity: &str) -> skiff::Bound {
    start(&format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
{identity}listeners:
  - name: out
    address: 127.0.0.1:0
    routes: mesh
routes:
  mesh:
    - cluster: mesh
clusters:
  mesh:
    endpoints: ["{target}"]
    tls: {{ server_identity: "{server_identity}" }}
"#,
        identity = identity_yaml(workload),
    ))
    .await
}

fn addr(bound: &skiff::Bound, name: &str) -> SocketAddr {
    bound.listener_addr(name).unwrap()
}

async fn metrics(bound: &skiff::Bound) -> String {
    Client::http1(bound.admin_addr())
        .await
        .get("/metrics")
        .await
        .text()
}

fn handshakes(metrics: &str, result: &str) -> u64 {
    let prefix = format!("skiff_tls_handshakes_total{{listener=\"in\",result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Two Skiffs and a backend: client → out (plaintext) → mTLS → in (strict) → backend.
struct Mesh {
    pki: Pki,
    a: skiff::Bound,
    b: skiff::Bound,
    _backend: Listening,
    _greeter: Greeter,
}

async fn mesh(b_extra: &str) -> Mesh {
    let pki = Pki::new();
    let backend = Backend::auto().spawn().await;
    let greeter = Greeter::spawn("g1").await;
    let b = inbound(
        &pki.workload("b"),
        "strict",
        backend.addr(),
        Some(greeter.addr()),
        b_extra,
    )
    .await;
    let a = outbound(&pki.workload("a"), addr(&b, "in"), &id("b")).await;
    Mesh {
        pki,
        a,
        b,
        _backend: backend,
        _greeter: greeter,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_http2_and_grpc_cross_two_skiffs_over_mtls() {
    let m = mesh("").await;
    let out = addr(&m.a, "out");

    let rsp = Client::http1(out).await.get("/hello").await;
    let seen = rsp.seen();
    assert_eq!(seen.path, "/hello");
    assert_eq!(seen.version, "HTTP/1.1");

    let rsp = Client::h2c(out).await.get("/h2").await;
    assert_eq!(
        rsp.seen().version,
        "HTTP/2.0",
        "HTTP/2 end to end, h2 over mTLS between the Skiffs"
    );

    let reply = say_hello(out, "mesh").await.unwrap();
    assert_eq!(reply.message, "Hello, mesh!");

    let text = metrics(&m.b).await;
    assert!(handshakes(&text, "ok") >= 2, "{text}");
    // The inbound side labels its request metrics with the caller's identity.
    let caller = format!("peer_identity=\"{}\"", id("a"));
    let labelled = text
        .lines()
        .filter(|l| l.starts_with("skiff_requests_total{") && l.contains("direction=\"inbound\""))
        .filter(|l| l.contains(&caller))
        .count();
    assert!(labelled >= 1, "{caller} on inbound requests:\n{text}");
    assert!(!m.a.reload_identity().unwrap(), "nothing changed on disk");
}

/// Connects with rustls as a test peer, presenting `client` (a workload dir)
/// if given, sends one HTTP/1.1 request and reads the answer to the end.
/// `Err` when the handshake, the write or the read fails.
async fn tls_get(addr: SocketAddr, client: Option<&Path>, alpn: &[u8]) -> Result<String, String> {
    let (config, _) = client_config(client, alpn);
    let mut tls = tls_connect(addr, config)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"GET /x HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    guard("reading the TLS response", tls.read_to_end(&mut out))
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    if text.is_empty() {
        return Err("closed without an answer".into());
    }
    Ok(text)
}

/// A TLS handshake as the test peer `config` describes, over a new
/// connection to `addr`.
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(config)
        .connect(ServerName::try_from("skiff.test").unwrap(), tcp)
        .await
}

/// What the server presented, for the rotation test.
type Presented = Arc<Mutex<Vec<CertificateDer<'static>>>>;

/// A client config for a test peer: trusts any server certificate (this
/// peer tests the server's client verification, not the server) and
/// records the one presented.
fn client_config(client: Option<&Path>, alpn: &[u8]) -> (Arc<ClientConfig>, Presented) {
    let presented = Presented::default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Record(presented.clone())));
    let mut config = match client {
        Some(dir) => {
            let chain = CertificateDer::pem_file_iter(dir.join("cert.pem"))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    (Arc::new(config), presented)
}

#[derive(Debug)]
struct Record(Presented);

impl ServerCertVerifier for Record {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.lock().unwrap().push(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Sends raw bytes and reads until the peer closes; a reset reads as empty.
async fn raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let _ = guard("reading to EOF", stream.read_to_end(&mut out)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_plaintext_foreign_ca_expired_and_certless_clients() {
    let pki = Pki::new();
    let backend = Backend::auto().spawn().await;
    let b = inbound(&pki.workload("b"), "strict", backend.addr(), None, "").await;
    let inb = addr(&b, "in");

    // Our own CA's workload gets through.
    let ok = tls_get(inb, Some(&pki.workload("a")), b"http/1.1")
        .await
        .unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    let plain = raw(
        inb,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        plain.is_empty(),
        "plaintext got an answer: {}",
        String::from_utf8_lossy(&plain)
    );

    let foreign = Pki::new();
    let err = tls_get(inb, Some(&foreign.workload("a")), b"http/1.1").await;
    assert!(
        err.is_err(),
        "a certificate from another CA was accepted: {err:?}"
    );

    let past = Validity {
        not_before: SystemTime::now() - Duration::from_secs(7200),
        not_after: SystemTime::now() - Duration::from_secs(3600),
    };
    let err = tls_get(inb, Some(&pki.workload_with("old", past)), b"http/1.1").await;
    assert!(err.is_err(), "an expired certificate was accepted: {err:?}");

    let err = tls_get(inb, None, b"http/1.1").await;
    assert!(
        err.is_err(),
        "a client without a certificate was accepted: {err:?}"
    );

    let text = metrics(&b).await;
    assert_eq!(handshakes(&text, "ok"), 1, "{text}");
    assert_eq!(handshakes(&text, "plaintext"), 1, "{text}");
    assert_eq!(
        handshakes(&text, "bad_cert"),
        2,
        "foreign CA and expired: {text}"
    );
    assert_eq!(handshakes(&text, "no_client_cert"), 1, "{text}");
    assert_eq!(
        backend.requests(),
        1,
        "only the good client reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_identity_fails_with_connect_failed() {
    let pki = Pki::new();
    let backend = Backend::auto().spawn().await;
    let b = inbound(&pki.workload("b"), "strict", backend.addr(), None, "").await;
    let a = outbound(&pki.workload("a"), addr(&b, "in"), &id("reviews")).await;

    let rsp = Client::http1(addr(&a, "out")).await.get("/x").await;
    assert_eq!(rsp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rsp.header("skiff-error"), Some("connect-failed"));
    // Who the upstream is and where it listens is for the log, not the caller.
    let body = rsp.text();
    assert!(!body.contains(&id("b")), "{body}");
    assert!(!body.contains(&addr(&b, "in").to_string()), "{body}");
    assert_eq!(backend.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_accepts_mtls_and_plaintext_on_one_port() {
    let pki = Pki::new();
    let backend = Backend::auto().spawn().await;
    let b = inbound(&pki.workload("b"), "permissive", backend.addr(), None, "").await;
    let a = outbound(&pki.workload("a"), addr(&b, "in"), &id("b")).await;

    let via_mtls = Client::http1(addr(&a, "out")).await.get("/m").await;
    assert_eq!(via_mtls.seen().path, "/m");
    let plain = Client::http1(addr(&b, "in")).await.get("/p").await;
    assert_eq!(plain.seen().path, "/p");
    let h2c = Client::h2c(addr(&b, "in")).await.get("/p2").await;
    assert_eq!(h2c.seen().version, "HTTP/2.0");

    let text = metrics(&b).await;
    assert_eq!(handshakes(&text, "ok"), 1, "{text}");
    assert_eq!(backend.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_admits_one_identity_and_refuses_another() {
    let rules = format!(
        "authorization:\n  - allow: {{ identities: [\"{}\"], paths: [/api/*], methods: [GET] }}\n",
        id("a")
    );
    let m = mesh(&rules).await;
    let a_out = addr(&m.a, "out");
    let c = outbound(&m.pki.workload("c"), addr(&m.b, "in"), &id("b")).await;
    let c_out = addr(&c, "out");

    let admitted = Client::http1(a_out).await.get("/api/items").await;
    assert_eq!(admitted.seen().path, "/api/items");

    for (who, out, path) in [("a", a_out, "/admin"), ("c", c_out, "/api/items")] {
        let refused = Client::http1(out).await.get(path).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{who} {path}");
        assert_eq!(refused.header("skiff-error"), Some("forbidden"));
        assert!(refused.text().contains(&id(who)), "{}", refused.text());
    }

    // gRPC callers get PERMISSION_DENIED.
    let status = say_hello(c_out, "x").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_callers_have_no_identity() {
    let pki = Pki::new();
    let backend = Backend::auto().spawn().await;
    let rules =
        "authorization:\n  - allow: { identities: [\"*\"] }\n  - allow: { paths: [/public] }\n";
    let b = inbound(
        &pki.workload("b"),
        "permissive",
        backend.addr(),
        None,
        rules,
    )
    .await;
    let a = outbound(&pki.workload("a"), addr(&b, "in"), &id("b")).await;
    let inb = addr(&b, "in");

    assert_eq!(
        Client::http1(addr(&a, "out")).await.get("/x").await.status,
        StatusCode::OK
    );
    assert_eq!(
        Client::http1(inb).await.get("/public").await.status,
        StatusCode::OK
    );
    let refused = Client::http1(inb).await.get("/x").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.text().contains("without identity"),
        "{}",
        refused.text()
    );
}

/// An HTTP/1.1 client over our own rustls test peer, keeping its connection.
async fn tls_client(
    addr: SocketAddr,
    client: &Path,
) -> (
    hyper::client::conn::http1::SendRequest<integration_tests::BoxBody>,
    Presented,
) {
    let (config, presented) = client_config(Some(client), b"http/1.1");
    let tls = tls_connect(addr, config).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (sender, presented)
}

async fn get_ok(sender: &mut hyper::client::conn::http1::SendRequest<integration_tests::BoxBody>) {
    let req = http::Request::get("/r")
        .header("host", "test")
        .body(integration_tests::body::empty())
        .unwrap();
    let rsp = guard("GET over the kept connection", sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    integration_tests::Collected::read(rsp).await;
}

fn cert_der(dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join("cert.pem")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_swaps_the_served_certificate_and_old_connections_keep_working() {
    let pki = Pki::new();
    let backend = Backend::auto().spawn().await;
    let b_dir = pki.workload("b");
    let first = cert_der(&b_dir);
    let b = inbound(&b_dir, "strict", backend.addr(), None, "").await;
    let inb = addr(&b, "in");
    let a_dir = pki.workload("a");

    let (mut old, presented) = tls_client(inb, &a_dir).await;
    get_ok(&mut old).await;
    assert_eq!(*presented.lock().unwrap(), vec![first.clone()]);

    // Rotate: a new certificate and key for the same identity.
    let second: Pair = pki.ca.issue(&id("b"), day()).unwrap();
    write_workload(&b_dir, &second, &pki.ca).unwrap();
    assert!(b.reload_identity().unwrap(), "the new files were taken");
    let second = cert_der(&b_dir);
    assert_ne!(first, second);

    let (mut new, presented) = tls_client(inb, &a_dir).await;
    get_ok(&mut new).await;
    assert_eq!(
        *presented.lock().unwrap(),
        vec![second.clone()],
        "new connections get the new certificate"
    );
    get_ok(&mut old).await; // established before the rotation, still fine

    // A half-written certificate is refused and the current one stays.
    std::fs::write(b_dir.join("cert.pem"), "-----BEGIN CERTIFICATE-----\nMIIB").unwrap();
    assert!(b.reload_identity().is_err());
    let (mut after, presented) = tls_client(inb, &a_dir).await;
    get_ok(&mut after).await;
    assert_eq!(*presented.lock().unwrap(), vec![second]);
}

/// `openssl s_client` with our certificates: a TLS stack that is not ours
/// agrees with Skiff's strict listener, both ways (it verifies Skiff's chain
/// with `-verify_return_error`; Skiff verifies its client certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_is_a_mesh_peer() {
    let pki = Pki::new();
    let backend = Backend::auto().spawn().await;
    let b = inbound(&pki.workload("b"), "strict", backend.addr(), None, "").await;
    let inb = addr(&b, "in");
    let a = pki.workload("a");

    let run = |with_cert: bool| {
        let mut cmd = tokio::process::Command::new("openssl");
        cmd.args([
            "s_client",
            "-connect",
            &inb.to_string(),
            "-quiet",
            "-verify_return_error",
        ])
        .args(["-CAfile", &pki.ca_pem().display().to_string()])
        .args(["-alpn", "http/1.1"]);
        if with_cert {
            cmd.args(["-cert", &a.join("cert.pem").display().to_string()])
                .args(["-key", &a.join("key.pem").display().to_string()]);
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        async move {
            let mut child = cmd.spawn().expect("openssl is installed");
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(b"GET /openssl HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            // -quiet implies -ign_eof: s_client runs until the server closes.
            drop(stdin);
            guard("openssl s_client", child.wait_with_output())
                .await
                .unwrap()
        }
    };
    let out = run(true).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("HTTP/1.1 200"),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"path\":\"/openssl\""), "{stdout}");

    let out = run(false).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("HTTP/1.1 200"),
        "no client certificate, yet: {stdout}"
    );
}
