import apsw, sys, httpx, sqlstream, tempfile, os
from sqlstream.http import HttpConfig
from sqlstream.http.server import HttpServer
d = tempfile.mkdtemp(); path = os.path.join(d, "x.db")
with sqlstream.open(path) as db:
    s = db.create_stream("j"); 
    for i in range(5): s.append({"i": i}, headers={"h": "v"})
    b = db.create_stream("b")
    for i in range(5): b.append(b"x%d" % i, headers={"h": "v"})
    t = db.create_stream("t")
    for i in range(5): t.append("t%d" % i, headers={"h": "v"})
srv = HttpServer(path, "127.0.0.1", 0, HttpConfig(long_poll_timeout=1.0)); srv.start()
base = f"http://127.0.0.1:{srv.port}"
c = httpx.Client(base_url=base)
damage = {
 "headers": "UPDATE chunks SET headers = '{bad' WHERE offset = 2",
 "headers_array": "UPDATE chunks SET headers = '[1]' WHERE offset = 2",
 "headers_nonstr": "UPDATE chunks SET headers = '{\"a\":1}' WHERE offset = 2",
 "key": "UPDATE chunks SET key = CAST(X'FF' AS TEXT) WHERE offset = 2",
 "data": "UPDATE chunks SET data = CAST(X'FF' AS TEXT) WHERE offset = 2 AND content_type != 'bytes'",
 "json": "UPDATE chunks SET data = '{bad' WHERE offset = 2 AND content_type = 'json'",
 "ctype": "UPDATE chunks SET content_type = 'text' WHERE offset = 2 AND content_type = 'bytes'",
 "bigint_data": "UPDATE chunks SET data = 12345 WHERE offset = 2",
 "null_data": "UPDATE chunks SET data = NULL WHERE offset = 2",
 "ts_text": "UPDATE chunks SET timestamp = 'abc' WHERE offset = 2",
 "ts_real": "UPDATE chunks SET timestamp = 1.5 WHERE offset = 2",
 "pos_text": "UPDATE chunks SET position = 'abc' WHERE offset = 2",
}
which = sys.argv[1:] or list(damage)
for name in which:
    conn = apsw.Connection(path)
    # restore: recreate
    conn.close()
for name in which:
    with sqlstream.open(path) as db:
        for st in ("j", "b", "t"):
            db.delete_stream(st)
        s = db.create_stream("j"); b = db.create_stream("b"); t = db.create_stream("t")
        for i in range(5): s.append({"i": i}, headers={"h": "v"}, key="k"); b.append(b"x%d" % i, headers={"h": "v"}, key="k"); t.append("t%d" % i, headers={"h": "v"}, key="k")
    conn = apsw.Connection(path); 
    try:
        conn.execute(damage[name])
    except Exception as e:
        print(name, "sql refused", e); conn.close(); continue
    conn.close()
    for st in ("j", "b", "t"):
        out = []
        for q in ("offset=-1", "offset=-1&live=sse", "offset=-1&live=long-poll"):
            try:
                r = c.get(f"/v1/stream/{st}?{q}", timeout=5)
                out.append(f"{r.status_code}:{r.text[:80]!r}")
            except Exception as e:
                out.append(f"EXC {type(e).__name__}")
        # HEAD too
        r = c.head(f"/v1/stream/{st}")
        out.append(f"HEAD {r.status_code}")
        print(name, st, " | ".join(out))
srv.stop(5)
