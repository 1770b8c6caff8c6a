import asyncio, random, sys, tempfile, os
import sqlstream, sqlstream.aio
seed = int(sys.argv[1]); rounds = int(sys.argv[2])
async def main():
    rng = random.Random(seed)
    d = tempfile.mkdtemp()
    adb = await sqlstream.aio.open(os.path.join(d, "c.db"))
    s = await adb.create_stream("s")
    sub = await adb.create_subscription("sub", "s", ack_timeout=3600, max_unacked=100000)
    n = 0
    got = []
    cancelled = done = 0
    for r in range(rounds):
        if rng.random() < 0.5:
            k = rng.randint(1, 20)
            await s.extend([b"v" * rng.choice([1, 800, 3000])] * k); n += k
        t = asyncio.ensure_future(sub.fetch("c", rng.randint(1, 30), timeout=rng.choice([0, 0.05, 1]),
                                            max_bytes=rng.choice([1, 1000, 10000, None])))
        for _ in range(rng.randint(0, 6)):
            await asyncio.sleep(0)
        if rng.random() < 0.6:
            t.cancel()
        try:
            b = await t
            got += b.offsets; done += 1
            await sub.ack(*b.offsets)
        except asyncio.CancelledError:
            cancelled += 1
    # drain
    while True:
        b = await sub.fetch("c", 1000, timeout=0, max_bytes=None)
        if not b: break
        got += b.offsets; await sub.ack(*b.offsets)
    info = await sub.info()
    await adb.close()
    missing = set(range(n)) - set(got)
    print(f"seed={seed} rounds={rounds} records={n} cancelled={cancelled} completed={done} delivered={len(got)} distinct={len(set(got))} missing={len(missing)} pending={info.pending} lag={info.lag}")
    assert not missing and info.pending == 0 and info.lag == 0
asyncio.run(main())
