//! HTTP/2 settings, in line with Istio's ztunnel so that peers behave alike:
//! large windows so one stream can fill a fast link, 1 MiB frames to keep
//! per-frame costs low, and PING keepalive so dead peers are noticed.

use std::time::Duration;

/// Per-stream flow-control window (SETTINGS_INITIAL_WINDOW_SIZE).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Connection flow-control window.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// SETTINGS_MAX_FRAME_SIZE.
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// SETTINGS_MAX_HEADER_LIST_SIZE the client advertises.
pub const CLIENT_MAX_HEADER_LIST: u32 = 16 * 1024;
/// SETTINGS_MAX_HEADER_LIST_SIZE the server advertises.
pub const SERVER_MAX_HEADER_LIST: u32 = 64 * 1024;
/// SETTINGS_MAX_CONCURRENT_STREAMS the server advertises.
pub const SERVER_MAX_STREAMS: u32 = 200;
/// How often each side PINGs an otherwise quiet connection...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and how long it waits for the answer before dropping the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams the pool puts on one connection before opening another; the
/// peer's MAX_CONCURRENT_STREAMS caps it further.
pub const DEFAULT_STREAMS_PER_CONNECTION: usize = 100;

pub fn client_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(CLIENT_MAX_HEADER_LIST)
        .enable_push(false);
    builder
}

pub fn server_builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(SERVER_MAX_HEADER_LIST)
        .max_concurrent_streams(SERVER_MAX_STREAMS);
    builder
}

/// PINGs every [`KEEPALIVE_INTERVAL`]; returns when a PING goes unanswered
/// for [`KEEPALIVE_TIMEOUT`] or the connection is gone. The caller then
/// drops the connection.
pub async fn keepalive(mut ping_pong: h2::PingPong) {
    let mut tick = tokio::time::interval(KEEPALIVE_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}
