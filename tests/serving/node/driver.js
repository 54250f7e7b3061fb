// A gRPC client we did not write: @grpc/grpc-js + @grpc/proto-loader, loading the service
// from proto/embstack/v1/inference.proto at run time (no generated code), calling the
// standard health check, GetModelInfo and Score (row form and columnar form).
//
//   NODE_PATH=<dir>/node_modules node driver.js TARGET PROTO_ROOT HEALTH_DESCRIPTOR_SET ROWS_JSON
//
// HEALTH_DESCRIPTOR_SET: a binary FileDescriptorSet of grpc/health/v1/health.proto.
// ROWS_JSON: {"rows": [{field: value}], "columns": {"num_rows": n, "columns": [...]}} in the
// proto's JSON shape. Prints one JSON object on stdout; exits 1 on any error.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [target, protoRoot, healthSet, rowsFile] = process.argv.slice(2);
const options = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10000);
    client[method](request, { deadline }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

async function main() {
  const inference = grpc.loadPackageDefinition(
    protoLoader.loadSync(path.join('embstack', 'v1', 'inference.proto'), { ...options, includeDirs: [protoRoot] })
  );
  const health = grpc.loadPackageDefinition(
    protoLoader.loadFileDescriptorSetFromBuffer(fs.readFileSync(healthSet), options)
  );
  const credentials = grpc.credentials.createInsecure();
  const scorer = new inference.embstack.v1.Inference(target, credentials);
  const checker = new health.grpc.health.v1.Health(target, credentials);
  const input = JSON.parse(fs.readFileSync(rowsFile, 'utf8'));

  const out = { health: {} };
  for (const service of ['', 'embstack.v1.Inference']) {
    out.health[service] = (await call(checker, 'Check', { service })).status;
  }
  const info = await call(scorer, 'GetModelInfo', {});
  out.info = { bundle_version: info.bundle_version, fields: info.fields.map((f) => [f.name, f.kind]) };
  const rows = await call(scorer, 'Score', { rows: input.rows });
  out.rows = { probabilities: rows.probabilities, clusters: rows.clusters, bundle_version: rows.bundle_version };
  const columns = await call(scorer, 'Score', { columns: input.columns });
  out.columns = { probabilities: columns.probabilities, clusters: columns.clusters, bundle_version: columns.bundle_version };
  try {
    await call(scorer, 'Score', { rows: [{ fields: { colour: { token: 'red' } } }] });
    out.bad = 'accepted';
  } catch (err) {
    out.bad = { code: err.code, details: err.details };
  }
  scorer.close();
  checker.close();
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  process.stderr.write(`driver: ${err.stack || err}\n`);
  process.exit(1);
});
