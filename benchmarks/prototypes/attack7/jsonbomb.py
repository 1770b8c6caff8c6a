import httpx, sqlstream, tempfile, os
from sqlstream.http import HttpConfig
from sqlstream.http.server import HttpServer
d = tempfile.mkdtemp(); path = os.path.join(d, "x.db")
with sqlstream.open(path): pass
srv = HttpServer(path, "127.0.0.1", 0, HttpConfig()); srv.start()
c = httpx.Client(base_url=srv.url + "/v1/stream", timeout=30)
print(c.put("/j", headers={"content-type": "application/json"}).status_code)
cases = {
 "deep100k": b"[" * 100000 + b"]" * 100000,
 "deep_in_array": b"[" + b"[" * 5000 + b"]" * 5000 + b"]",
 "deep_obj": b'{"a":' * 3000 + b"1" + b"}" * 3000,
 "bigint": b"[" + b"9" * 5000 + b"]",
 "nan": b"[NaN]",
 "dupkeys": b'[{"a":1,"a":2}]',
 "lone_surrogate": b'["\\ud800"]',
 "bom": b"\xef\xbb\xbf[1]",
 "utf16": '[1]'.encode("utf-16"),
 "empty": b"",
 "ws": b"   ",
 "null": b"null",
 "arr_null": b"[null]",
 "float_exp": b"[1e400]",
 "many_small": b"[" + b",".join([b"1"] * 10001) + b"]",
}
for k, body in cases.items():
    r = c.post("/j", content=body, headers={"content-type": "application/json"})
    print(k, r.status_code, r.text[:120].replace("\n", " "))
r = c.get("/j", params={"offset": "-1"}); print("read", r.status_code, r.text[:300])
srv.stop(5)
