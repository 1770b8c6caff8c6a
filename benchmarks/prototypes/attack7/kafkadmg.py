import sqlstream, tempfile, os, apsw
from sqlstream.kafka.store import KafkaStore
for name, sql in [("headers_bad", "UPDATE chunks SET headers = '{bad' WHERE offset = 2"),
                  ("headers_array", "UPDATE chunks SET headers = '[1]' WHERE offset = 2"),
                  ("headers_nonstr", "UPDATE chunks SET headers = '{\"a\":1}' WHERE offset = 2"),
                  ("headers_notutf8", "UPDATE chunks SET headers = CAST(X'7B22FF223A2261227D' AS TEXT) WHERE offset = 2"),
                  ("key_notutf8", "UPDATE chunks SET key = CAST(X'FF' AS TEXT) WHERE offset = 2"),
                  ("data_int", "UPDATE chunks SET data = 12345 WHERE offset = 2"),
                  ("ts_text", "UPDATE chunks SET timestamp = 'abc' WHERE offset = 2")]:
    d = tempfile.mkdtemp(); path = os.path.join(d, "k.db")
    with sqlstream.open(path) as db:
        s = db.create_stream("t")
        for i in range(5): s.append(b"v%d" % i, key="k", headers={"h": "x"})
    c = apsw.Connection(path); c.execute(sql); c.close()
    with sqlstream.open(path) as db:
        st = KafkaStore(db)
        for off in (0, 2):
            try:
                r = st.read("t", off, 1 << 20)
                print(name, off, "OK", [(x[0], x[2], x[4]) for x in r.records] if hasattr(r, "records") else r)
            except Exception as e:
                print(name, off, type(e).__name__, str(e)[:120])
