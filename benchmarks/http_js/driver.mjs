// Load driver for `python -m benchmarks.http` (Node's built-in fetch/undici: a client that
// is not the bottleneck). Usage: node driver.mjs MODE BASE_URL ARGS...; prints one JSON line.
//   append  URL CLIENTS SECONDS  : one POST per 100-byte message, CLIENTS concurrent loops
//   fill    URL COUNT            : COUNT 100-byte JSON messages, 1,000 per POST
//   catchup URL                  : read from -1 until up to date; bytes and seconds
//   tail    URL COUNT            : SSE at now; COUNT times POST a message, time until its event
//   idle    URL COUNT SECONDS    : hold COUNT SSE connections open for SECONDS (prints "open" first)
//   churn   URL COUNT            : open and drop COUNT SSE connections, 50 at a time
import { Agent, request, setGlobalDispatcher } from "undici"
setGlobalDispatcher(new Agent({ connections: 64, pipelining: 1, keepAliveTimeout: 60_000 }))

const [mode, url, ...args] = process.argv.slice(2)
const msg = "x".repeat(100)
const now = () => Number(process.hrtime.bigint()) / 1e6

async function put(contentType) {
  const r = await fetch(url, { method: "PUT", headers: { "content-type": contentType } })
  if (r.status !== 201 && r.status !== 200) throw new Error(`PUT ${r.status}`)
  await r.arrayBuffer()
}

if (mode === "append") {
  const [clients, seconds] = [Number(args[0]), Number(args[1])]
  await put("text/plain")
  let count = 0
  const end = now() + seconds * 1000
  const start = now()
  await Promise.all(Array.from({ length: clients }, async () => {
    while (now() < end) {
      const r = await fetch(url, { method: "POST", headers: { "content-type": "text/plain" }, body: msg })
      if (r.status !== 204 && r.status !== 200) throw new Error(`POST ${r.status}`)
      await r.arrayBuffer()
      count++
    }
  }))
  console.log(JSON.stringify({ messages: count, seconds: (now() - start) / 1000 }))
} else if (mode === "fill") {
  const total = Number(args[0])
  await put("application/json")
  const batch = JSON.stringify(Array.from({ length: 1000 }, () => ({ m: msg.slice(0, 92) })))
  for (let sent = 0; sent < total; sent += 1000) {
    const r = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: batch })
    if (r.status !== 204 && r.status !== 200) throw new Error(`POST ${r.status}`)
    await r.arrayBuffer()
  }
  console.log(JSON.stringify({ messages: total }))
} else if (mode === "catchup") {
  // undici's request(), its body counted as it arrives, not fetch() and arrayBuffer(): the
  // client's own work (a copy of every body into one buffer) is not what is measured.
  let offset = "-1", bytes = 0, requests = 0
  const start = now()
  for (;;) {
    const r = await request(`${url}?offset=${encodeURIComponent(offset)}`)
    if (r.statusCode !== 200) throw new Error(`GET ${r.statusCode}`)
    for await (const chunk of r.body) bytes += chunk.length
    requests++
    offset = r.headers["stream-next-offset"]
    if (r.headers["stream-up-to-date"] === "true") break
  }
  console.log(JSON.stringify({ bytes, requests, seconds: (now() - start) / 1000 }))
} else if (mode === "tail") {
  const total = Number(args[0])
  await put("text/plain")
  const controller = new AbortController()
  const res = await fetch(`${url}?offset=now&live=sse`, { signal: controller.signal })
  const reader = res.body.getReader()
  const decoder = new TextDecoder()
  let text = ""
  let waiting = null
  const pump = (async () => {
    for (;;) {
      const { value, done } = await reader.read()
      if (done) return
      text += decoder.decode(value, { stream: true })
      if (waiting && text.includes(waiting.marker)) { const w = waiting; waiting = null; w.resolve(now()) }
    }
  })().catch(() => {})
  await new Promise((r) => setTimeout(r, 200))
  const latencies = []
  for (let i = 0; i < total; i++) {
    const marker = `m${i}-${"y".repeat(90)}`.slice(0, 100)
    const seen = new Promise((resolve) => { waiting = { marker, resolve } })
    const r = await fetch(url, { method: "POST", headers: { "content-type": "text/plain" }, body: marker })
    await r.arrayBuffer()
    const returned = now()
    const at = await seen
    latencies.push(Math.max(0, at - returned))
    text = ""
  }
  controller.abort()
  latencies.sort((a, b) => a - b)
  const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]
  console.log(JSON.stringify({ p50: q(0.5), p99: q(0.99), n: latencies.length }))
}
if (mode === "idle") {
  const [total, seconds] = [Number(args[0]), Number(args[1])]
  await put("text/plain")
  const agent = new Agent({ connections: total + 10, keepAliveTimeout: 60_000 })
  const controller = new AbortController()
  const opened = await Promise.all(Array.from({ length: total }, () =>
    fetch(`${url}?offset=now&live=sse`, { signal: controller.signal, dispatcher: agent })))
  if (opened.some((r) => r.status !== 200)) throw new Error("an SSE connection was refused")
  console.log(JSON.stringify("open"))
  await new Promise((r) => setTimeout(r, seconds * 1000))
  controller.abort()
  console.log(JSON.stringify({ held: total }))
} else if (mode === "churn") {
  const total = Number(args[0])
  await put("text/plain")
  for (let done = 0; done < total; done += 50) {
    await Promise.all(Array.from({ length: Math.min(50, total - done) }, async () => {
      const controller = new AbortController()
      const r = await fetch(`${url}?offset=now&live=sse`, { signal: controller.signal })
      const reader = r.body.getReader()
      await reader.read()  // the first control event: the server is tailing
      controller.abort()
    }))
  }
  console.log(JSON.stringify({ churned: total }))
}
process.exit(0)
