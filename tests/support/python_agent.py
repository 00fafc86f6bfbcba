#!/usr/bin/env python3
"""A stand-in for the field's Python agent (web-manager/tunnel_agent.py of RTSP-recorder),
written from its behaviour for the tests: the same handshake line (json.dumps of token and
name), the reply read a byte at a time up to the newline and judged by its "status" alone,
then N/D/C frames; a frame of another type is logged and skipped; a read timeout (120 s) is
no error. It sends nothing but the handshake and its streams' frames, as the original does.

Usage: python_agent.py HOST PORT DEVICE_KEY TOKEN
"""

import json
import socket
import struct
import sys
import threading

HOST, PORT, KEY, TOKEN = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
lock = threading.Lock()
streams = {}


def say(text):
    print(text, file=sys.stderr, flush=True)


def send_frame(sock, kind, stream, payload=b""):
    with lock:
        sock.sendall(bytes([kind]) + struct.pack(">I", stream) + struct.pack(">I", len(payload)) + payload)


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def local_reader(sock, stream, local):
    while True:
        try:
            data = local.recv(4096)
        except OSError:
            data = b""
        if not data:
            break
        send_frame(sock, ord("D"), stream, data)
    if streams.pop(stream, None) is not None:
        send_frame(sock, ord("C"), stream)


def main():
    sock = socket.create_connection((HOST, PORT))
    sock.settimeout(120)
    sock.sendall((json.dumps({"token": TOKEN, "name": KEY}) + "\n").encode())
    reply = b""
    while len(reply) < 4096:
        c = sock.recv(1)
        if not c:
            say("Connection closed during handshake")
            return
        if c == b"\n":
            break
        reply += c
    status = json.loads(reply.decode()).get("status")
    say(f"Handshake response: {status}")
    if status != "authenticated":
        return
    say("Starting frame read loop...")
    while True:
        try:
            header = recv_exact(sock, 9)
        except socket.timeout:
            continue
        if header is None:
            say("Connection closed by proxy")
            return
        kind, stream, length = header[0], struct.unpack(">I", header[1:5])[0], struct.unpack(">I", header[5:9])[0]
        payload = recv_exact(sock, length) if length else b""
        if kind == ord("N"):
            port = struct.unpack(">H", payload[:2])[0]
            local = socket.create_connection(("127.0.0.1", port))
            streams[stream] = local
            threading.Thread(target=local_reader, args=(sock, stream, local), daemon=True).start()
            say(f"Stream {stream} connected to local port {port}")
        elif kind == ord("D"):
            if stream in streams:
                streams[stream].sendall(payload)
        elif kind == ord("C"):
            local = streams.pop(stream, None)
            if local is not None:
                local.close()
        else:
            say(f"Unknown frame type: {kind}")


main()
