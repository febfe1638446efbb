//! A small client for the demo greeter, so that trying gRPC through Skiff
//! needs nothing but this repository (no grpcurl).
//!
//! `cargo run -p skiff-examples --bin demo-grpc-client -- 127.0.0.1:8080 --name you`
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use skiff_examples::pb::HelloRequest;
use skiff_examples::pb::greeter_client::GreeterClient;

/// Calls skiff.demo.v1.Greeter (examples/proto/greeter.proto) and prints the replies.
#[derive(Debug, Parser)]
#[command(name = "demo-grpc-client", version)]
struct Args {
    /// host:port of a Skiff listener or of the greeter itself (gRPC over h2c).
    address: String,
    /// The name to greet; `status:N` makes the greeter fail with gRPC status N.
    #[arg(long, default_value = "you")]
    name: String,
    /// Call SayHelloStream for this many replies instead of SayHello.
    #[arg(long)]
    stream: Option<u32>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match call(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-grpc-client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn call(args: &Args) -> Result<(), String> {
    let mut client = GreeterClient::connect(format!("http://{}", args.address))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.address))?;
    let request = HelloRequest {
        name: args.name.clone(),
        count: args.stream.unwrap_or(0),
    };
    let failed = |s: tonic::Status| {
        let why = s
            .metadata()
            .get("skiff-error")
            .and_then(|v| v.to_str().ok())
            .map(|e| format!(" (skiff-error: {e})"))
            .unwrap_or_default();
        format!("{:?}: {}{why}", s.code(), s.message())
    };
    match args.stream {
        None => {
            let reply = client
                .say_hello(request)
                .await
                .map_err(failed)?
                .into_inner();
            println!("{} (from {})", reply.message, reply.instance);
        }
        Some(_) => {
            let mut replies = client
                .say_hello_stream(request)
                .await
                .map_err(failed)?
                .into_inner();
            while let Some(reply) = replies.message().await.map_err(failed)? {
                println!("{} (from {})", reply.message, reply.instance);
            }
        }
    }
    Ok(())
}
