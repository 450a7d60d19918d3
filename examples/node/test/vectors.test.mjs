// lib/contract.mjs against docs/signing-vectors.json: this client, written from the
// specification, signs and verifies exactly as the vectors say.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';

import {
  parsePublicKey, privateKeyFromSeed, requestDigest, signedContentType, signingInput, verify,
} from '../lib/contract.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const vectors = JSON.parse(fs.readFileSync(
  path.join(here, '..', '..', '..', 'docs', 'signing-vectors.json'), 'utf8'));
const trusted = new Map(Object.values(vectors.keys).map((k) => {
  const { name, key } = parsePublicKey(k.pub_file);
  return [name, key];
}));

function fieldsOf(c) {
  const p = c.properties;
  return {
    exchange: c.exchange, routingKey: c.routing_key, kind: c.kind, messageId: p.message_id,
    userId: p.user_id, replyTo: p.reply_to, correlationId: p.correlation_id,
    body: Buffer.from(c.body, 'utf8'),
  };
}

for (const c of vectors.cases) {
  test(`vector "${c.name}": input, signature, digest, verification`, () => {
    const fields = fieldsOf(c);
    assert.equal(fields.body.toString('hex'), c.body_hex);
    assert.equal(signingInput(fields).toString('hex'), c.signing_input_hex);
    const key = privateKeyFromSeed(vectors.keys[c.signer].seed_hex);
    assert.equal(signedContentType(key, fields), c.content_type);
    assert.equal(requestDigest(fields), c.request_digest);
    assert.equal(verify(trusted, fields, c.content_type), c.signer);
  });
}

for (const bad of vectors.must_not_verify) {
  test(`changed vector "${bad.of}" (${bad.name}) is refused`, () => {
    const c = structuredClone(vectors.cases.find((x) => x.name === bad.of));
    Object.assign(c.properties, bad.change.properties || {});
    for (const [k, v] of Object.entries(bad.change)) if (k !== 'properties') c[k] = v;
    assert.ok(verify(trusted, fieldsOf(c), c.content_type) instanceof Error);
  });
}
