// The Durable Streams reference server for `python -m benchmarks.http`:
// node reference.mjs PORT [DATA_DIR]  (no DATA_DIR: in memory). Prints "ready" when serving.
import { DurableStreamTestServer } from "@durable-streams/server"
const [port, dataDir] = [Number(process.argv[2]), process.argv[3]]
const server = new DurableStreamTestServer({ port, host: "127.0.0.1", dataDir, compression: false })
await server.start()
console.log("ready")
process.on("SIGTERM", async () => { await server.stop(); process.exit(0) })
