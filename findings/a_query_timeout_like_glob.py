import sqlstream, time, tempfile, os
d = tempfile.mkdtemp()
db = sqlstream.open(os.path.join(d, "a.db"))
H = "printf('%.*c', 2000000, 'a')"
N = "(printf('%.*c', 10000, 'a') || 'b')"
tests = {
 "instr": f"SELECT instr({H}, {N})",
 "like": f"SELECT {H} LIKE '%' || {N} || '%'",
 "glob": f"SELECT {H} GLOB '*' || {N} || '*'",
 "replace": f"SELECT length(replace({H}, {N}, ''))",
 "trim": f"SELECT length(trim({H}, printf('%.*c', 10000, 'b')))",
}
for n, sql in tests.items():
    t = time.monotonic()
    try:
        r = db.query(sql, timeout=0.1); out = r.rows
    except Exception as e:
        out = type(e).__name__
    print(n, "haystack 2e6, needle 1e4, timeout 0.1 s:", round(time.monotonic() - t, 2), "s", out, flush=True)
