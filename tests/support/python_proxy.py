#!/usr/bin/env python3
"""An independent Meeting proxy for the tests, written from docs/protocol.md alone (sections
2 and 3), as the production proxy behaves: it reads the agent's handshake line, answers
{"status":"authenticated","device_key":KEY} and nothing more (no keepalive, no window), then
carries one public port to the device's PORT with N, D and C frames. No flow control but
TCP's; a frame of another type from the agent is logged and skipped.

Usage: python_proxy.py DEVICE_PORT
Prints "agents on P" and "public on P" (stderr) once both listen.
"""

import json
import socket
import struct
import sys
import threading

DEVICE_PORT = int(sys.argv[1])
lock = threading.Lock()
agent = None
publics = {}
next_id = [1]


def say(text):
    print(text, file=sys.stderr, flush=True)


def send_frame(kind, stream, payload=b""):
    with lock:
        if agent is not None:
            agent.sendall(kind + struct.pack(">II", stream, len(payload)) + payload)


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            return None
        buf += part
    return buf


def serve_agent(conn):
    global agent
    line = b""
    while not line.endswith(b"\n"):
        b = conn.recv(1)
        if not b:
            return
        line += b
    hello = json.loads(line)
    conn.sendall(json.dumps({"status": "authenticated", "device_key": hello["name"]}).encode() + b"\n")
    with lock:
        agent = conn
    say("agent authenticated")
    while True:
        head = read_exact(conn, 9)
        if head is None:
            say("agent closed")
            return
        kind, (stream, length) = head[:1], struct.unpack(">II", head[1:])
        payload = read_exact(conn, length) if length else b""
        if payload is None:
            return
        if kind == b"D" and stream in publics:
            try:
                publics[stream].sendall(payload)
            except OSError:
                pass
        elif kind == b"C" and stream in publics:
            try:
                publics.pop(stream).shutdown(socket.SHUT_WR)
            except OSError:
                pass
        elif kind not in (b"D", b"C"):
            say("skipped a frame of type %r" % kind)


def serve_public(conn):
    with lock:
        stream = next_id[0]
        next_id[0] += 1
        publics[stream] = conn
    send_frame(b"N", stream, struct.pack(">H", DEVICE_PORT))
    while True:
        try:
            data = conn.recv(32768)
        except OSError:
            data = b""
        if not data:
            send_frame(b"C", stream)
            return
        send_frame(b"D", stream, data)


def listen(handler, what):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    say("%s on %d" % (what, s.getsockname()[1]))

    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=handler, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


listen(serve_agent, "agents")
listen(serve_public, "public")
threading.Event().wait()
