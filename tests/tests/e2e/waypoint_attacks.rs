//! Attacks on the waypoint from a pod in the mesh, each counted by its
//! effect: an HTTP/2 rapid-reset flood, a flood of streams over the
//! stream limit, and slow clients that never finish their headers. The
//! documented bounds (docs/waypoint.md, "Bounds") hold, and a well-behaved
//! client beside the attacker is served throughout.

use std::time::Duration;

use ambit_tests::raw_h2::{CANCEL, ENHANCE_YOUR_CALM, REFUSED_STREAM, RawH2};
use ambit_tests::require_root;
use ambit_tests::waypoint::L7Bed;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::WAIT;

/// Requests the reviews pods have received.
fn served(bed: &L7Bed) -> u64 {
    bed.apps.values().map(|app| app.requests()).sum()
}

/// Waits until `done` holds for what the attacker's connection received.
async fn until(attack: &RawH2, what: &str, done: impl Fn(&ambit_tests::raw_h2::Received) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(&attack.received()) {
        assert!(tokio::time::Instant::now() < deadline, "{what}: {:?}", attack.received());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CVE-2023-44487: streams opened and reset at once, up to 100,000. The
/// waypoint ends the connection with GOAWAY ENHANCE_YOUR_CALM after 100
/// resets it had not answered yet, long before the attack is written; few
/// of the requests reach a pod; the next client is served.
#[tokio::test]
async fn http2_rapid_reset_ends_the_connection() {
    require_root();
    let bed = L7Bed::start("service").await.unwrap();
    let stream = bed.cluster.pod("stranger").netns.connect(L7Bed::reviews_addr()).await.unwrap();
    let mut attack = RawH2::start(stream).await.unwrap();
    let (mut sent, mut stalled) = (0, false);
    for _ in 0..500 {
        let mut batch = Vec::new();
        for _ in 0..200 {
            let id = attack.get(&mut batch, "reviews:9080", "/reviews", &[]);
            RawH2::reset(&mut batch, id, CANCEL);
        }
        // A write the mesh no longer reads stalls: that too stops the
        // flood, and the write must not wait for ever.
        match tokio::time::timeout(WAIT, attack.send(&batch)).await {
            Ok(Ok(())) => sent += 200,
            Ok(Err(_)) => break,
            Err(_) => {
                stalled = true;
                break;
            }
        }
    }
    if !stalled {
        until(&attack, "the connection is ended", |r| r.closed).await;
    }
    let received = attack.received();
    // The GOAWAY is sent, but the source ztunnel may reset the attacker's
    // socket (it is still writing) before the frame is read: then the cut,
    // long before the 100,000 streams are written, is the evidence.
    let cut = received.goaway == Some(ENHANCE_YOUR_CALM) || (received.goaway.is_none() && sent < 100_000);
    assert!(cut, "sent {sent}: {received:?}");
    let reached = served(&bed);
    assert!(reached < 1_000, "{reached} of the {sent} reset requests reached a pod");
    eprintln!("rapid reset: {sent} streams written (stalled: {stalled}), {reached} reached a pod, {received:?}");
    let mut good = bed.client("client").await.unwrap();
    assert_eq!(good.get("/reviews", &[]).await.unwrap().status, 200, "others are unharmed");
}

/// 1,100 slow requests opened at once on one connection, over its limit
/// of 1,000 concurrent streams: the 100 beyond it are refused
/// (RST_STREAM REFUSED_STREAM, safe to retry), the 1,000 are answered, no
/// pod sees more than the limit allows, and a client beside it is served
/// while the flood is in flight.
#[tokio::test]
async fn streams_over_the_limit_are_refused() {
    require_root();
    let bed = L7Bed::start("service").await.unwrap();
    let stream = bed.cluster.pod("stranger").netns.connect(L7Bed::reviews_addr()).await.unwrap();
    let mut attack = RawH2::start(stream).await.unwrap();
    let mut batch = Vec::new();
    for _ in 0..1_100 {
        attack.get(&mut batch, "reviews:9080", "/reviews", &[("x-delay-ms", "2000")]);
    }
    attack.send(&batch).await.unwrap();
    until(&attack, "the streams over the limit are refused", |r| r.resets.get(&REFUSED_STREAM) >= Some(&100)).await;
    let mut good = bed.client("client").await.unwrap();
    assert_eq!(good.get("/reviews", &[]).await.unwrap().status, 200, "served while the flood is in flight");
    until(&attack, "the others are answered", |r| r.response_headers >= 1_000).await;
    let received = attack.received();
    assert_eq!((received.response_headers, received.resets.get(&REFUSED_STREAM)), (1_000, Some(&100)), "{received:?}");
    assert_eq!(served(&bed), 1_001, "the flood's 1,000 and the good client's one");
}

/// Slowloris: 50 connections that send half a header block and then
/// nothing. Each is closed when its 10 s for headers run out; meanwhile a
/// client beside them is served.
#[tokio::test]
async fn slow_clients_are_cut_off() {
    require_root();
    let bed = L7Bed::start("service").await.unwrap();
    let stranger = &bed.cluster.pod("stranger").netns;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = stranger.connect(L7Bed::reviews_addr()).await.unwrap();
        stream.write_all(b"GET /reviews HTTP/1.1\r\nHost: reviews\r\nx-slow: ").await.unwrap();
        slow.push(stream);
    }
    let mut good = bed.client("client").await.unwrap();
    for _ in 0..10 {
        assert_eq!(good.get("/reviews", &[]).await.unwrap().status, 200);
    }
    for mut stream in slow {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "a slow client was never cut off");
        let answer = String::from_utf8_lossy(&rest);
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert_eq!(served(&bed), 10, "no slow request reached a pod");
}
