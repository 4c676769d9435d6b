//! End-to-end: the gRPC transport of the real binary under calls its callers cancel.
//!
//! A prediction service shares one HTTP/2 connection among all its calls and gives each a
//! deadline of a few tens of milliseconds. When the gateway is busy (a CPU spike, a noisy
//! neighbour), calls can reach their deadline before the gateway has even taken them off the
//! connection, and the client cancels each with RST_STREAM. The HTTP/2 server counts such streams
//! as a defence against the "Rapid Reset" attack (CVE-2023-44487) and by default (h2: 20) closes
//! the whole connection with GOAWAY ENHANCE_YOUR_CALM past that count, failing every other call on
//! it UNAVAILABLE. The gateway allows 1,024 (`services/gateway/src/server.rs`): a bound still,
//! so a flood of resets cannot queue unbounded work, but far above what a burst of cancelled
//! calls reaches.
//!
//! The test speaks HTTP/2 frames itself, so that the resets reach the gateway before it can take
//! the streams: the connection preface, SETTINGS, 200 GetFeatures streams each opened (HEADERS)
//! and cancelled (RST_STREAM CANCEL) at once, then a PING, all in one write. The gateway must
//! answer the PING and send no GOAWAY.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use end_to_end::GatewayProcess;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A header field as HPACK's "literal without indexing" (RFC 7541 6.2.2): an indexed name
/// (`name_index` in the static table) or, with 0, a literal name; lengths under 127, no Huffman.
fn literal(out: &mut Vec<u8>, name_index: u8, name: &str, value: &str) {
    if name_index == 0 {
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    } else if name_index < 15 {
        out.push(name_index);
    } else {
        out.push(0x0f);
        out.push(name_index - 15);
    }
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// The header block of a GetFeatures call (static table, RFC 7541 appendix A: 3 is `:method
/// POST`, 6 `:scheme http`, 4 `:path`, 1 `:authority`, 31 `content-type`).
fn get_features_headers(authority: &str) -> Vec<u8> {
    let mut block = vec![0x80 | 3, 0x80 | 6];
    literal(
        &mut block,
        4,
        ":path",
        "/featuregateway.v1.FeatureService/GetFeatures",
    );
    literal(&mut block, 1, ":authority", authority);
    literal(&mut block, 31, "content-type", "application/grpc");
    literal(&mut block, 0, "te", "trailers");
    literal(&mut block, 0, "grpc-timeout", "50m");
    block
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_cancelled_before_the_gateway_took_them_keeps_the_connection() {
    let gw = GatewayProcess::demo();
    let mut tcp = TcpStream::connect(&gw.grpc).await.unwrap();
    tcp.set_nodelay(true).unwrap();

    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    let headers = get_features_headers(&gw.grpc);
    let streams = 200u32;
    for i in 0..streams {
        let id = 2 * i + 1;
        frame(&mut out, HEADERS, END_HEADERS, id, &headers);
        frame(&mut out, RST_STREAM, 0, id, &CANCEL.to_be_bytes());
    }
    frame(&mut out, PING, 0, 0, b"fg-ping!");
    tcp.write_all(&out).await.unwrap();

    // Frames until the PING's ACK: a GOAWAY or the connection's end before it fails the test.
    let read = async {
        let mut seen = Vec::new();
        loop {
            let mut head = [0u8; 9];
            if tcp.read_exact(&mut head).await.is_err() {
                return Err(format!("the connection ended; frames seen: {seen:?}"));
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let mut payload = vec![0u8; len];
            tcp.read_exact(&mut payload).await.unwrap();
            seen.push(kind);
            if kind == GOAWAY {
                let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                let debug = String::from_utf8_lossy(&payload[8..]).into_owned();
                return Err(format!("GOAWAY code {code:#x} ({debug})"));
            }
            if kind == PING && flags & ACK != 0 {
                assert_eq!(payload, b"fg-ping!");
                return Ok(());
            }
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("no answer to the PING within 30 s");
    assert_eq!(
        outcome,
        Ok(()),
        "{streams} cancelled calls closed the connection"
    );
}
