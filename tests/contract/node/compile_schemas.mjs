// Every schema under schemas/, compiled by Ajv in strict mode (strict: true: unknown
// keywords, ambiguous types, tuples and required properties are errors), and every
// example in them validated. Usage: node compile_schemas.mjs [SCHEMAS_DIR]
// Prints one JSON object: {"compiled": N, "examples": N, "errors": [...]}; exit 1 on errors.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import Ajv from 'ajv';
import addFormats from 'ajv-formats';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(process.argv[2] || path.join(here, '..', '..', '..', 'schemas'));
const errors = [];
let compiled = 0;
let examples = 0;

function ajv() {
  const instance = new Ajv({ strict: true, allErrors: true });
  addFormats(instance);
  return instance;
}

function compile(where, schema) {
  try {
    const validate = ajv().compile(schema);
    compiled += 1;
    return validate;
  } catch (err) {
    errors.push(`${where}: ${err.message}`);
    return null;
  }
}

function check(where, validate, data) {
  if (!validate) return;
  examples += 1;
  if (!validate(data)) {
    errors.push(`${where}: ${validate.errors.map((e) => `${e.instancePath} ${e.message}`).join('; ')}`);
  }
}

function files(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return files(full);
    return entry.name.endsWith('.json') ? [full] : [];
  }).sort();
}

const DRAFT7 = 'http://json-schema.org/draft-07/schema#';
const meta = JSON.parse(fs.readFileSync(path.join(root, 'agent.schema.json'), 'utf8'));
const metaValidate = compile('agent.schema.json', meta);

for (const file of files(root)) {
  const name = path.relative(root, file);
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  if (doc.$schema === DRAFT7) {
    // A JSON Schema of its own (the envelopes, the agent file format).
    if (name === 'agent.schema.json') continue;
    const validate = compile(name, doc);
    (doc.examples || []).forEach((ex, i) => check(`${name} examples[${i}]`, validate, ex));
    continue;
  }
  if (doc.$schema !== '../agent.schema.json') {
    errors.push(`${name}: neither a draft-07 schema nor an agent file ($schema ${doc.$schema})`);
    continue;
  }
  // An agent file: itself an instance of agent.schema.json, holding one schema per
  // method's args and result, per event's data and per object class.
  check(`${name} (against agent.schema.json)`, metaValidate, doc);
  for (const [method, spec] of Object.entries(doc.methods || {})) {
    const args = compile(`${name} methods.${method}.args`, spec.args);
    const result = compile(`${name} methods.${method}.result`, spec.result);
    (spec.examples || []).forEach((ex, i) => {
      check(`${name} methods.${method}.examples[${i}].args`, args, ex.args);
      check(`${name} methods.${method}.examples[${i}].result`, result, ex.result);
    });
  }
  for (const [event, spec] of Object.entries(doc.events || {})) {
    const data = compile(`${name} events.${event}.data`, spec.data);
    (spec.examples || []).forEach((ex, i) => check(`${name} events.${event}.examples[${i}]`, data, ex));
  }
  for (const [cls, spec] of Object.entries(doc.classes || {})) {
    compile(`${name} classes.${cls}`, {
      type: 'object', required: [spec.key],
      properties: { ...spec.properties, ...(spec.statistics || {}) },
    });
  }
}

process.stdout.write(`${JSON.stringify({ compiled, examples, errors })}\n`);
process.exit(errors.length ? 1 : 0);
