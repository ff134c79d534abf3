// Validates ServiceMonitor objects (a JSON array on stdin) against prometheus-operator's
// schema as compiled into the npm package @kubernetes-models/prometheus-operator, installed by
// tests/setup.d/60-packaging.sh under <cache>/npm-packaging (argv[2]). Exit 1 with one line
// per invalid object. See vendor/README.md for why this package and not a vendored CRD.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const prefix = process.argv[2];
const module = join(
  prefix,
  "node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
);
const { ServiceMonitor } = await import(pathToFileURL(module).href);

const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const obj of objects) {
  try {
    new ServiceMonitor(obj).validate();
  } catch (e) {
    failed += 1;
    const first = String(e.message).split("\n").join("; ");
    console.log(`ServiceMonitor/${obj?.metadata?.name}: ${first}`);
  }
}
process.exit(failed ? 1 : 0);
