// lint.mjs — validates docs/openapi.yaml against the OpenAPI 3.0 schema with swagger-parser
// (pinned in tests/openapi/package-lock.json): YAML that parses, every $ref resolving,
// every object in the shape the specification gives it. Run by ctest (openapi_lint) through
// lint.sh, which skips, saying why, where npm or the package is absent.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const SwaggerParser = require('@apidevtools/swagger-parser');

const file = process.argv[2];
try {
  const api = await SwaggerParser.validate(file);
  const paths = Object.keys(api.paths || {}).length;
  console.log(`${file}: valid OpenAPI ${api.openapi} (${paths} paths)`);
} catch (error) {
  console.error(`${file}: ${error.message.split('\n')[0]}`);
  // the schema's oneOf alternatives repeat each fault many times over: one line each,
  // by the place in the file and what is wrong there
  const seen = new Set();
  for (const detail of error.details || []) {
    if (detail.keyword === 'oneOf' || detail.params?.missingProperty === '$ref') continue;
    const what = detail.params?.additionalProperty
      ? `unexpected key ${JSON.stringify(detail.params.additionalProperty)}`
      : detail.message;
    const line = `${detail.instancePath}: ${what}`;
    if (!seen.has(line)) seen.add(line);
  }
  // the same fault reached through every $ref to it: keep the referenced place
  const lines = [...seen].filter((l) => l.startsWith('/components') || ![...seen].some(
    (o) => o.startsWith('/components') && l.endsWith(o.slice(o.indexOf('/properties')))));
  for (const line of lines.slice(0, 40)) console.error(`  ${line}`);
  if (lines.length > 40) console.error(`  ... and ${lines.length - 40} more`);
  process.exit(1);
}
