//! `/livez` as Kubernetes reads it, served by the worker's own listener: up while the lease
//! keeper ticks, down once it stops, though the process and its listener live on.

use std::net::SocketAddr;
use std::time::Duration;

use leasehold_testkit::wait_for;
use leasehold_worker::{Worker, observe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::bundle::{DEADLINE, config, setup};

/// Short, so that the test sees a stall quickly; the keeper ticks every 50 ms.
const STALL_AFTER: Duration = Duration::from_millis(500);

/// `GET path` over a fresh connection: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

async fn wait_probe(addr: SocketAddr, status: u16, says: &str) -> String {
    wait_for(
        DEADLINE,
        &format!("/livez {status} saying {says:?}"),
        || async {
            get(addr, "/livez")
                .await
                .filter(|(s, body)| *s == status && body.contains(says))
                .map(|(_, body)| body)
        },
    )
    .await
}

#[tokio::test]
async fn livez_fails_once_the_lease_keeper_stops_ticking() {
    let b = setup().await;
    let worker = Worker::new(b.store.clone(), b.registry(), config("probed"))
        .with_keeper_stall_after(STALL_AFTER);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = observe::install_recorder().expect("recorder");
    let listening = CancellationToken::new();
    tokio::spawn(observe::serve(
        listener,
        handle,
        Some(worker.health()),
        vec![b.store.clone()],
        listening.clone(),
    ));

    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    wait_probe(addr, 200, "ticked").await;

    // The worker's loops end (its keeper with them); the listener lives on, as it would in a
    // process whose runtime wedged everything but the listener's task.
    shutdown.cancel();
    running.await.expect("worker task").expect("worker stopped");
    let body = wait_probe(addr, 503, "not alive").await;
    assert!(body.contains("last ticked"), "{body}");
    listening.cancel();
}
