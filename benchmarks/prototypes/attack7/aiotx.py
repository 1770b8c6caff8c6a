import asyncio, random, sys, tempfile, os
import sqlstream, sqlstream.aio
seed = int(sys.argv[1]); rounds = int(sys.argv[2])
async def main():
    rng = random.Random(seed)
    d = tempfile.mkdtemp()
    adb = await sqlstream.aio.open(os.path.join(d, "t.db"))
    a = await adb.create_stream("a"); b = await adb.create_stream("b")
    sub = await adb.create_subscription("sub", "a", ack_timeout=3600)
    out = await adb.create_stream("out")
    committed = cancelled = other = 0
    async def work(i):
        async with adb.transaction():
            await a.append({"i": i})
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)
            await b.append({"i": i})
            batch = await sub.fetch("c", 5, 0)
            if batch:
                await out.extend([{"o": o} for o in batch.offsets])
                await sub.ack(*batch.offsets)
    tasks = []
    for i in range(rounds):
        t = asyncio.ensure_future(work(i))
        for _ in range(rng.randint(0, 8)):
            await asyncio.sleep(0)
        if rng.random() < 0.5:
            t.cancel()
        tasks.append(t)
        if rng.random() < 0.3:
            await asyncio.sleep(0.001)
    for t in tasks:
        try:
            await t; committed += 1
        except asyncio.CancelledError:
            cancelled += 1
        except Exception as e:
            other += 1; print("EXC", type(e).__name__, e)
    ra = [r.value["i"] for r in await a.read(0, 100000)]
    rb = [r.value["i"] for r in await b.read(0, 100000)]
    ro = [r.value["o"] for r in await out.read(0, 100000)]
    info = await sub.info()
    await adb.close()
    print(f"seed={seed} committed={committed} cancelled={cancelled} other={other} a={len(ra)} b={len(rb)} out={len(ro)} pending={info.pending} acked={info.acked}")
    assert ra == rb, (ra[:10], rb[:10])
    assert ro == list(range(len(ro))) and info.pending == 0 and info.acked == len(ro)
asyncio.run(main())
