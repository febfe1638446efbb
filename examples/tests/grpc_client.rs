//! `demo-grpc-client`, the client `skiff demo` prints, against a real
//! greeter: what it prints and how it exits.
#![allow(clippy::unwrap_used)]

use skiff_examples::greeter::{self, Greeter};

async fn client(args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_demo-grpc-client"))
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn calls_the_greeter_and_reports_failures() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(greeter::serve(listener, Greeter::new("g1")));

    let (code, out, _) = client(&[&addr, "--name", "you"]).await;
    assert_eq!((code, out.as_str()), (Some(0), "Hello, you! (from g1)\n"));

    let (code, out, _) = client(&[&addr, "--stream", "2"]).await;
    assert_eq!(
        (code, out.as_str()),
        (
            Some(0),
            "Hello, you! #1 (from g1)\nHello, you! #2 (from g1)\n"
        )
    );

    let (code, _, err) = client(&[&addr, "--name", "status:14"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(err, "demo-grpc-client: Unavailable: requested status 14\n");

    server.abort();
    // Nothing listens here: bound, then closed before the call.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (code, _, err) = client(&[&closed_addr]).await;
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("demo-grpc-client: cannot connect to "),
        "{err}"
    );
}
