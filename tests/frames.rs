//! Malformed and unusual frames from the proxy: logged, never a panic; fatal ones drop the
//! connection and the agent reconnects.

mod support;

use std::io::Write;
use std::net::TcpStream;

use support::*;
use tunnel_agent::protocol::frame::{
    close_frame, encode_header, open_frame, write_frame, Frame, FrameReader, TYPE_DATA,
};

const AUTH: &[u8] =
    b"{\"status\":\"authenticated\",\"device_key\":\"3316A52EB08837267BF6BD3E2B2E8DC7\"}\n";

fn session(fake: &FakeProxy) -> TcpStream {
    let (mut s, _) = fake.next();
    s.write_all(AUTH).unwrap();
    s.set_read_timeout(Some(SOON)).unwrap();
    s
}

/// Opens `stream` to the echo port, sends `msg`, expects it back.
fn assert_echo(s: &mut TcpStream, stream: u32, port: u16, msg: &[u8]) {
    s.write_all(&open_frame(stream, port)).unwrap();
    write_frame(s, TYPE_DATA, stream, msg).unwrap();
    let mut r = FrameReader::new(s.try_clone().unwrap(), 1 << 20);
    let mut got = Vec::new();
    while got.len() < msg.len() {
        match r.next_frame().unwrap().expect("agent closed") {
            Frame::Data {
                stream: id,
                payload,
            } if id == stream => got.extend_from_slice(payload),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(got, msg);
}

#[test]
fn unknown_frame_type_is_skipped_and_the_session_goes_on() {
    let echo = echo_server();
    let fake = FakeProxy::start();
    let allow = echo.to_string();
    let agent = agent(fake.addr, &["--allow-port", &allow]);
    let mut s = session(&fake);
    write_frame(&mut s, b'Z', 1, b"what?").unwrap();
    write_frame(&mut s, TYPE_DATA, 99, b"for nobody").unwrap();
    s.write_all(&close_frame(98)).unwrap();
    // A ping from a proxy that announced no keepalive gets no answer (assert_echo fails on
    // any frame but the echo's).
    write_frame(&mut s, b'P', 0, b"").unwrap();
    assert_echo(&mut s, 5, echo, b"still here");
    agent.wait_for("unknown type 'Z' (stream 1, 5 bytes skipped)", SOON);
    agent.wait_for(
        "ignoring a keepalive frame from a proxy that did not announce keepalive",
        SOON,
    );
    assert_eq!(agent.count("connection lost"), 0);
}

#[test]
fn open_with_a_bad_payload_is_answered_with_close() {
    let fake = FakeProxy::start();
    let agent = agent(fake.addr, &[]);
    let mut s = session(&fake);
    write_frame(&mut s, b'N', 4, b"\x00\x16\x00").unwrap();
    let mut r = FrameReader::new(s.try_clone().unwrap(), 1 << 20);
    assert_eq!(r.next_frame().unwrap(), Some(Frame::Close { stream: 4 }));
    agent.wait_for("3-byte payload", SOON);
}

#[test]
fn oversize_length_drops_the_connection_and_reconnects() {
    let fake = FakeProxy::start();
    let agent = agent(fake.addr, &[]);
    let mut s = session(&fake);
    s.write_all(&encode_header(TYPE_DATA, 1, 0xFFFF_FFF0))
        .unwrap();
    agent.wait_for("announced a 4294967280-byte payload", SOON);
    let _again = fake.next();
    agent.wait_for_nth("connecting to proxy", 2, SOON);
}

#[test]
fn truncated_frame_drops_the_connection_and_reconnects() {
    let fake = FakeProxy::start();
    let agent = agent(fake.addr, &[]);
    let mut s = session(&fake);
    let mut partial = encode_header(TYPE_DATA, 1, 100).to_vec();
    partial.extend_from_slice(b"only this");
    s.write_all(&partial).unwrap();
    drop(s);
    agent.wait_for("in the middle of a frame (18 of 109 bytes)", SOON);
    let mut s = session(&fake);
    s.write_all(&[b'D', 0, 0]).unwrap();
    drop(s);
    agent.wait_for("in the middle of a frame header (3 of 9 bytes)", SOON);
    let _third = fake.next();
}
