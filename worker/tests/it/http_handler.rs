//! The `http` handler against tiny HTTP/1.1 servers on loopback, which the handler may reach
//! only when allowed to.

use std::net::SocketAddr;
use std::time::Duration;

use leasehold_worker::handlers::{Http, HttpPolicy, MAX_REDIRECTS};
use leasehold_worker::{Context, Handler};

use crate::handler_errors::{assert_retryable, assert_terminal, context};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn ctx(input: Value) -> Context {
    context("call", 1, input)
}

/// A handler allowed `allow` (addresses, networks, names) beyond the public internet.
fn http_allowing(allow: &[&str]) -> Http {
    Http::with_policy(HttpPolicy {
        allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
    })
}

/// A handler allowed to reach the test servers on 127.0.0.1.
fn http() -> Http {
    http_allowing(&["127.0.0.1"])
}

/// A request as the server saw it.
struct Received {
    head: String,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A server answering every request with `response`; its requests come out of the receiver.
async fn serve(response: Vec<u8>) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    serve_on("127.0.0.1", response).await
}

/// [`serve`] on loopback address `ip`.
async fn serve_on(ip: &str, response: Vec<u8>) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let received = read_request(&mut conn).await;
            let _ = tx.send(received);
            let _ = conn.write_all(&response).await;
            let _ = conn.shutdown().await;
        }
    });
    (addr, rx)
}

async fn read_request(conn: &mut TcpStream) -> Received {
    let mut buf = Vec::new();
    let mut chunk = [0; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut received = Received {
        head,
        body: buf[head_end..].to_vec(),
    };
    let length: usize = received
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    while received.body.len() < length {
        let n = conn.read(&mut chunk).await.unwrap();
        received.body.extend_from_slice(&chunk[..n]);
    }
    received
}

fn response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A server that accepts connections and never answers.
async fn serve_silence() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            held.push(conn);
        }
    });
    addr
}

#[tokio::test]
async fn get_parses_json_and_sends_the_idempotency_key() {
    let (addr, mut requests) = serve(response(
        "200 OK",
        "application/json",
        br#"{"ok":true,"n":[1,2]}"#,
    ))
    .await;
    let ctx = ctx(json!({ "url": format!("http://{addr}/thing?x=1") }));
    let key = ctx.idempotency_key.clone();

    let output = http().run(ctx).await.unwrap();

    assert_eq!(
        output,
        json!({ "status": 200, "body": { "ok": true, "n": [1, 2] } })
    );
    let received = requests.recv().await.unwrap();
    assert!(
        received.head.starts_with("GET /thing?x=1 HTTP/1.1"),
        "{}",
        received.head
    );
    assert_eq!(received.header("idempotency-key"), Some(key.as_str()));
}

#[tokio::test]
async fn text_body_comes_back_as_a_string() {
    let (addr, _requests) = serve(response("201 Created", "text/plain", b"made it")).await;

    let output = http()
        .run(ctx(json!({ "url": format!("http://{addr}/") })))
        .await
        .unwrap();

    assert_eq!(output, json!({ "status": 201, "body": "made it" }));
}

#[tokio::test]
async fn post_sends_the_body_as_json_with_headers() {
    let (addr, mut requests) = serve(response("204 No Content", "text/plain", b"")).await;
    let input = json!({
        "method": "POST",
        "url": format!("http://{addr}/charges"),
        "headers": { "x-tenant": "acme", "idempotency-key": "overridden" },
        "body": { "amount": 100, "currency": "EUR" },
    });
    let ctx = ctx(input);
    let key = ctx.idempotency_key.clone();

    let output = http().run(ctx).await.unwrap();

    assert_eq!(output, json!({ "status": 204, "body": null }));
    let received = requests.recv().await.unwrap();
    assert!(
        received.head.starts_with("POST /charges "),
        "{}",
        received.head
    );
    assert_eq!(received.header("content-type"), Some("application/json"));
    assert_eq!(received.header("x-tenant"), Some("acme"));
    assert_eq!(received.header("idempotency-key"), Some(key.as_str()));
    let body: Value = serde_json::from_slice(&received.body).unwrap();
    assert_eq!(body, json!({ "amount": 100, "currency": "EUR" }));
}

#[tokio::test]
async fn server_error_is_retryable_with_an_excerpt() {
    let (addr, _requests) = serve(response(
        "503 Service Unavailable",
        "text/plain",
        b"try later",
    ))
    .await;

    let result = http()
        .run(ctx(json!({ "url": format!("http://{addr}/") })))
        .await;

    assert_retryable(&result, "503");
    assert_retryable(&result, "try later");
}

#[tokio::test]
async fn too_many_requests_is_retryable() {
    let (addr, _requests) = serve(response("429 Too Many Requests", "text/plain", b"")).await;

    let result = http()
        .run(ctx(json!({ "url": format!("http://{addr}/") })))
        .await;

    assert_retryable(&result, "429");
}

#[tokio::test]
async fn too_many_requests_with_retry_after_asks_for_that_delay() {
    let (addr, _requests) = serve(
        b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 4\r\n\
          connection: close\r\n\r\nslow"
            .to_vec(),
    )
    .await;

    let result = http()
        .run(ctx(json!({ "url": format!("http://{addr}/") })))
        .await;

    let error = result.expect_err("a 429");
    assert!(error.is_retryable(), "{error:?}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    let message = error.to_string();
    assert!(
        message.contains("429") && message.contains("slow") && message.contains("7000 ms"),
        "{message}"
    );
}

#[tokio::test]
async fn not_found_is_terminal() {
    let (addr, _requests) = serve(response("404 Not Found", "text/plain", b"no such")).await;

    let result = http()
        .run(ctx(json!({ "url": format!("http://{addr}/missing") })))
        .await;

    assert_terminal(&result, "404");
}

#[tokio::test]
async fn response_over_the_cap_is_terminal() {
    let body = vec![b'a'; 5000];
    let (addr, _requests) = serve(response("200 OK", "text/plain", &body)).await;

    let result = http()
        .run(ctx(
            json!({ "url": format!("http://{addr}/"), "max_response_bytes": 4999 }),
        ))
        .await;

    assert_terminal(&result, "response larger than 4999 bytes");
}

#[tokio::test]
async fn endless_response_is_cut_off_at_the_cap() {
    // No content-length: the body runs until the server closes, which this one never does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        read_request(&mut conn).await;
        conn.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        while conn.write_all(&chunk).await.is_ok() {}
    });

    let result = tokio::time::timeout(
        Duration::from_secs(20),
        http().run(ctx(json!({ "url": format!("http://{addr}/") }))),
    )
    .await
    .expect("the handler stops reading at the cap");

    assert_terminal(&result, "response larger than 1048576 bytes");
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);

    let result = http()
        .run(ctx(json!({ "url": format!("http://{addr}/") })))
        .await;

    assert_retryable(&result, "Connection refused");
}

#[tokio::test]
async fn silent_server_times_out_retryably() {
    let addr = serve_silence().await;

    let result = http()
        .run(ctx(
            json!({ "url": format!("http://{addr}/"), "timeout_ms": 200 }),
        ))
        .await;

    assert_retryable(&result, "timed out after 200 ms");
}

#[tokio::test]
async fn cancel_stops_the_request_retryably() {
    let addr = serve_silence().await;
    let ctx = ctx(json!({ "url": format!("http://{addr}/") }));
    let cancel = ctx.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });

    let result = http().run(ctx).await;

    assert_retryable(&result, "cancelled");
}

#[tokio::test]
async fn missing_url_is_terminal_naming_the_field() {
    let result = http().run(ctx(json!({ "method": "GET" }))).await;

    assert_terminal(&result, "input.url");
}

fn redirect(location: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn loopback_is_refused_by_default_naming_the_class() {
    let (addr, mut requests) = serve(response("200 OK", "text/plain", b"secret")).await;

    let result = Http::new()
        .run(ctx(json!({ "url": format!("http://{addr}/") })))
        .await;

    assert_terminal(
        &result,
        "127.0.0.1 is a loopback address; refused (allow it with --http-allow)",
    );
    assert!(requests.try_recv().is_err(), "the server was reached");
}

#[tokio::test]
async fn cloud_metadata_and_private_addresses_are_refused_before_connecting() {
    for (url, class) in [
        (
            "http://169.254.169.254/latest/meta-data/",
            "a link-local address",
        ),
        ("http://[fd00::1]/", "a private address"),
        ("http://[::ffff:10.0.0.1]/", "a private address"),
        ("http://100.64.0.1/", "a shared (CGNAT) address"),
        ("http://0.0.0.0/", "an unspecified address"),
        ("http://2130706433/", "127.0.0.1 is a loopback address"),
    ] {
        let result = Http::new().run(ctx(json!({ "url": url }))).await;
        assert_terminal(&result, class);
    }
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_at_resolution() {
    let (addr, mut requests) = serve(response("200 OK", "text/plain", b"secret")).await;

    let result = Http::new()
        .run(ctx(
            json!({ "url": format!("http://localhost:{}/", addr.port()) }),
        ))
        .await;

    assert_terminal(&result, "localhost resolves to ");
    assert_terminal(&result, "a loopback address; refused");
    assert!(requests.try_recv().is_err(), "the server was reached");
}

#[tokio::test]
async fn an_allowed_name_opens_what_it_resolves_to() {
    let (addr, _requests) = serve(response("200 OK", "text/plain", b"hi")).await;

    let output = http_allowing(&["localhost"])
        .run(ctx(
            json!({ "url": format!("http://localhost:{}/", addr.port()) }),
        ))
        .await;

    assert_eq!(output, Ok(json!({ "status": 200, "body": "hi" })));
}

#[tokio::test]
async fn a_redirect_from_an_allowed_host_to_a_refused_address_is_refused() {
    let (addr, _requests) = serve(redirect("http://169.254.169.254/latest/meta-data/")).await;

    let result = http()
        .run(ctx(json!({ "url": format!("http://{addr}/") })))
        .await;

    assert_terminal(&result, "169.254.169.254 is a link-local address; refused");
}

#[tokio::test]
async fn a_redirect_to_a_refused_name_is_refused_at_resolution() {
    // Only 127.0.0.2 is allowed; the redirect names localhost, which resolves elsewhere on
    // loopback, where a server would answer.
    let (target, mut reached) = serve(response("200 OK", "text/plain", b"secret")).await;
    let (addr, _requests) = serve_on(
        "127.0.0.2",
        redirect(&format!("http://localhost:{}/", target.port())),
    )
    .await;

    let result = http_allowing(&["127.0.0.2"])
        .run(ctx(json!({ "url": format!("http://{addr}/") })))
        .await;

    assert_terminal(&result, "localhost resolves to ");
    assert_terminal(&result, "a loopback address; refused");
    assert!(
        reached.try_recv().is_err(),
        "the redirect's target was reached"
    );
}

/// A server where `/n` redirects to `/n-1`, and `/0` answers 200.
async fn serve_countdown() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let received = read_request(&mut conn).await;
                let path = received.head.split_whitespace().nth(1).unwrap().to_owned();
                let n: usize = path.trim_start_matches('/').parse().unwrap();
                let answer = if n == 0 {
                    response("200 OK", "text/plain", b"arrived")
                } else {
                    redirect(&format!("/{}", n - 1))
                };
                let _ = conn.write_all(&answer).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn redirects_are_followed_up_to_the_limit() {
    let addr = serve_countdown().await;
    let url = |n: usize| json!({ "url": format!("http://{addr}/{n}") });

    let within = http().run(ctx(url(MAX_REDIRECTS))).await;
    let beyond = http().run(ctx(url(MAX_REDIRECTS + 1))).await;

    assert_eq!(within, Ok(json!({ "status": 200, "body": "arrived" })));
    assert_terminal(&beyond, &format!("more than {MAX_REDIRECTS} redirects"));
}
