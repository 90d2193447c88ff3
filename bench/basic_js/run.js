// Runs loop.js (the translated dialog) in a fresh Node sandbox (node:vm, a new context a run,
// as the old platform ran each dialog in a sandbox) and prints one JSON line: the fastest
// run's seconds (the loop only: compiling the script is outside the clock) and the total.
//
//   node bench/basic_js/run.js ITERATIONS REPEAT
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const vm = require("node:vm");

async function main() {
  const n = Number(process.argv[2]);
  const repeat = Number(process.argv[3] || 1);
  if (!Number.isSafeInteger(n) || n < 1 || !Number.isSafeInteger(repeat) || repeat < 1) {
    console.error("usage: node run.js ITERATIONS REPEAT");
    process.exit(2);
  }
  const script = new vm.Script(fs.readFileSync(path.join(__dirname, "loop.js"), "utf8"), { filename: "loop.js" });
  let best = Infinity;
  let total = null;
  for (let r = 0; r < repeat; r++) {
    const context = vm.createContext({ n });
    const start = process.hrtime.bigint();
    total = await script.runInContext(context);
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    best = Math.min(best, seconds);
  }
  process.stdout.write(JSON.stringify({ seconds: best, total, node: process.version }) + "\n");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
