// Validates the custom resources written by check_core.py against the CRD
// schemas packaged by kubernetes-models (versions pinned in package-lock.json),
// and fails on any key of the Rollout's blueGreen block that the Argo Rollouts
// schema does not define (the schema validators accept unknown keys).
//
//   node check_crds.mjs CRDS.json
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import * as rollouts from "@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1";
import * as networking from "@kubernetes-models/istio/networking.istio.io/v1";
import * as security from "@kubernetes-models/istio/security.istio.io/v1";

const models = {
  "argoproj.io/v1alpha1": rollouts,
  "networking.istio.io/v1": networking,
  "security.istio.io/v1": security,
};

// The blueGreen keys the Argo Rollouts model declares.
function blueGreenKeys() {
  const require = createRequire(import.meta.url);
  const pkg = dirname(require.resolve("@kubernetes-models/argo-rollouts/package.json"));
  const dts = readFileSync(join(pkg, "argoproj.io/v1alpha1/BlueGreenStrategy.d.ts"), "utf8");
  const body = dts.slice(dts.indexOf("interface IBlueGreenStrategy"));
  const keys = new Set([...body.matchAll(/^\s*"([A-Za-z]+)"\??:/gm)].map((m) => m[1]));
  if (keys.size < 5) throw new Error("cannot read the BlueGreenStrategy keys from the model");
  return keys;
}

const docs = JSON.parse(readFileSync(process.argv[2], "utf8"));
const allowed = blueGreenKeys();
const problems = [];
for (const doc of docs) {
  const where = `${doc.kind}/${doc.metadata?.name}`;
  const Model = models[doc.apiVersion]?.[doc.kind];
  if (!Model) {
    problems.push(`${where}: no schema for ${doc.apiVersion} ${doc.kind}`);
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (e) {
    problems.push(`${where}: ${e.message}`);
  }
  const blueGreen = doc.kind === "Rollout" ? doc.spec?.strategy?.blueGreen : undefined;
  if (doc.kind === "Rollout" && !blueGreen) problems.push(`${where}: no blueGreen strategy`);
  for (const key of Object.keys(blueGreen ?? {})) {
    if (!allowed.has(key)) problems.push(`${where}: unknown key spec.strategy.blueGreen.${key}`);
  }
  if (blueGreen && blueGreen.autoPromotionEnabled !== false) {
    problems.push(`${where}: blueGreen.autoPromotionEnabled must be false (promotion is a human decision)`);
  }
}
for (const p of problems) console.log(`  FAIL ${p}`);
if (problems.length) process.exit(1);
console.log(`  ${docs.length} custom resources valid against their CRD schemas; blueGreen keys known`);
