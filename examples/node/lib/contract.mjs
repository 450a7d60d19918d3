// The hostbus contract, as docs/protocol.md states it: names, message bodies, signatures
// and the schemas of schemas/. Nothing here depends on a protocol library; amqp091.mjs
// (amqplib) and amqp10.mjs (rhea) put it on the wire.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import Ajv from 'ajv';
import addFormats from 'ajv-formats';

export const REQUEST_EXCHANGE = 'hostbus.request';
export const REPLY_EXCHANGE = 'hostbus.reply';
export const EVENT_EXCHANGE = 'hostbus.event';
export const PROVISION_EXCHANGE = 'hostbus.provision';
export const KIND = {
  request: 'hostbus.request/1',
  reply: 'hostbus.reply/1',
  event: 'hostbus.event/1',
  provision: 'hostbus.provision/1',
};
// The exchange each signed kind travels through: what a receiver puts in the signing
// input when it is not told the exchange (protocol.md, "Signatures").
const EXCHANGE_OF = {
  [KIND.request]: REQUEST_EXCHANGE,
  [KIND.reply]: REPLY_EXCHANGE,
  [KIND.event]: EVENT_EXCHANGE,
};

const here = path.dirname(fileURLToPath(import.meta.url));
export const SCHEMAS = path.resolve(here, '..', '..', '..', 'schemas');

// ------------------------------------------------------------------ schemas
/** Ajv in strict mode over the envelope schemas: what a sender builds and a receiver reads. */
export function envelopeValidators(root = SCHEMAS) {
  const ajv = new Ajv({ strict: true, allErrors: false });
  addFormats(ajv);
  const out = {};
  for (const kind of ['request', 'reply', 'event', 'provision', 'provision-result']) {
    const file = path.join(root, 'envelope', `${kind}.v1.json`);
    out[kind] = ajv.compile(JSON.parse(fs.readFileSync(file, 'utf8')));
  }
  return out;
}

export function schemaErrors(validate) {
  return ajv_text(validate.errors);
}

function ajv_text(errors) {
  return (errors || []).map((e) => `${e.instancePath || '(body)'} ${e.message}`).join('; ');
}

// ------------------------------------------------------------------ names
/** A reply queue's logical name: what reply_to carries and the binding key. */
export function replyName(user) {
  return `hostbus.reply.${user}.${crypto.randomBytes(16).toString('hex')}`;
}

export function requestKey(agent, host) {
  return `${agent}.${host ?? '_all'}`;
}

/** The body of a request, with a deadline `timeoutS` seconds from now. */
export function requestBody(agent, method, args, { host, filter, timeoutS }) {
  const target = host ? { host } : { all: true, ...(filter ? { filter } : {}) };
  const deadline = new Date(Date.now() + timeoutS * 1000).toISOString();
  return { v: 1, agent, method, args, target, deadline };
}

export function encodeBody(obj) {
  return Buffer.from(JSON.stringify(obj), 'utf8');
}

/** The media type of a content_type, without its parameters. */
export function mediaType(contentType) {
  return (contentType || '').split(';')[0].trim().toLowerCase();
}

// ------------------------------------------------------------------ keys
/** NAME.key as `hostbus keys generate` writes it: PKCS#8 PEM. */
export function loadPrivateKey(file) {
  return crypto.createPrivateKey(fs.readFileSync(file));
}

/** NAME.pub: one line, `hostbus-ed25519 <base64 of the 32-byte key> NAME`. */
export function parsePublicKey(text) {
  const [prefix, data, name] = text.trim().split(/\s+/);
  const raw = Buffer.from(data || '', 'base64');
  if (prefix !== 'hostbus-ed25519' || raw.length !== 32 || !name) {
    throw new Error('not a hostbus public key (hostbus-ed25519 <base64> NAME)');
  }
  const key = crypto.createPublicKey({
    key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk',
  });
  return { name, key };
}

/** A folder of NAME.pub files: the identities whose signatures are trusted. */
export function loadTrusted(folder) {
  const trusted = new Map();
  for (const file of fs.readdirSync(folder).filter((f) => f.endsWith('.pub')).sort()) {
    const { name, key } = parsePublicKey(fs.readFileSync(path.join(folder, file), 'utf8'));
    trusted.set(name, key);
  }
  return trusted;
}

/** An Ed25519 private key from a 32-byte seed (how the test vectors give keys). */
export function privateKeyFromSeed(seedHex) {
  const pkcs8 = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'),
    Buffer.from(seedHex, 'hex')]);
  return crypto.createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' });
}

// ------------------------------------------------------------------ signatures
/**
 * The exact bytes an Ed25519 signature covers (protocol.md, "Signatures"):
 * "hostbus-sig-v1\n" + exchange, routing key, message_id, kind, user_id, reply_to and
 * correlation_id joined by "\n" (absent = empty) + "\n" + the body's length as 8 bytes
 * big-endian + the body.
 */
export function signingInput({ exchange, routingKey, kind, messageId, userId, replyTo,
  correlationId, body }) {
  const header = [exchange || EXCHANGE_OF[kind] || '', routingKey, messageId || '', kind,
    userId || '', replyTo || '', correlationId || ''].join('\n');
  const length = Buffer.alloc(8);
  length.writeBigUInt64BE(BigInt(body.length));
  return Buffer.concat([Buffer.from(`hostbus-sig-v1\n${header}\n`, 'utf8'), length, body]);
}

export function requestDigest(fields) {
  return `sha256:${crypto.createHash('sha256').update(signingInput(fields)).digest('hex')}`;
}

/** The content_type that carries the signature of `fields` made with `privateKey`. */
export function signedContentType(privateKey, fields) {
  const signature = crypto.sign(null, signingInput(fields), privateKey).toString('base64url');
  return `application/json; hostbus-sig=${signature}`;
}

export function signatureOf(contentType) {
  for (const param of (contentType || '').split(';').slice(1)) {
    const [name, ...rest] = param.trim().split('=');
    if (name.toLowerCase() === 'hostbus-sig') return rest.join('=').replace(/^"|"$/g, '');
  }
  return null;
}

/**
 * The name of the identity that signed a received message, or an Error saying why
 * not. The key is the one trusted for the message's broker-checked user_id.
 */
export function verify(trusted, fields, contentType) {
  if (!fields.userId) return new Error('no user_id: no key can vouch for it');
  const key = trusted.get(fields.userId);
  if (!key) return new Error(`no trusted key for ${JSON.stringify(fields.userId)}`);
  const signature = signatureOf(contentType);
  if (!signature) return new Error('not signed');
  if (!/^[A-Za-z0-9_-]{1,200}$/.test(signature)) return new Error('malformed signature');
  const ok = crypto.verify(null, signingInput(fields), key, Buffer.from(signature, 'base64url'));
  return ok ? fields.userId : new Error(`signature does not match ${fields.userId}'s key`);
}

// ------------------------------------------------------------------ receiving
/**
 * Reads a reply: its body must follow reply.v1.json, and with `agentKeys` it must be
 * signed by the host it names (a host may only speak for itself). Returns
 * {reply, signer} or {dropped: reason}.
 */
export function readReply(validators, agentKeys, { body, fields, contentType }) {
  let reply;
  try {
    reply = JSON.parse(body.toString('utf8'));
  } catch {
    return { dropped: 'not JSON' };
  }
  if (!validators.reply(reply)) return { dropped: schemaErrors(validators.reply) };
  if (!agentKeys) return { reply, signer: null };
  const signer = verify(agentKeys, { ...fields, kind: KIND.reply }, contentType);
  if (signer instanceof Error) return { dropped: signer.message };
  if (signer !== reply.host) return { dropped: `signed by ${signer} but names host ${reply.host}` };
  return { reply, signer };
}

/**
 * Reads an event: body per event.v1.json, the body's agent, host and event must be the
 * routing key's words, and with `agentKeys` it must be signed by that host.
 */
export function readEvent(validators, agentKeys, { body, fields, contentType }) {
  let event;
  try {
    event = JSON.parse(body.toString('utf8'));
  } catch {
    return { dropped: 'not JSON' };
  }
  if (!validators.event(event)) return { dropped: schemaErrors(validators.event) };
  const key = `${event.agent}.${event.host}.${event.event}`;
  if (fields.routingKey && fields.routingKey !== key) {
    return { dropped: `routing key ${fields.routingKey} does not match the body (${key})` };
  }
  if (!agentKeys) return { event, signer: null };
  const signer = verify(agentKeys, { ...fields, routingKey: fields.routingKey || key,
    kind: KIND.event }, contentType);
  if (signer instanceof Error) return { dropped: signer.message };
  if (signer !== event.host) return { dropped: `signed by ${signer} but names host ${event.host}` };
  return { event, signer };
}

/**
 * Event order per (host, agent): `seq` counts all of one agent's events since `epoch`.
 * Returns a note for a gap or a restart, 'duplicate' for a repeat, or null.
 */
export class Sequencer {
  constructor() { this.last = new Map(); }

  check(event) {
    const id = `${event.host}/${event.agent}`;
    const seen = this.last.get(id);
    this.last.set(id, { epoch: event.epoch, seq: Math.max(event.seq, seen?.seq ?? 0) });
    if (!seen) return null;
    if (seen.epoch !== event.epoch) {
      this.last.set(id, { epoch: event.epoch, seq: event.seq });
      return `${id} restarted (epoch ${event.epoch})`;
    }
    if (event.seq <= seen.seq) return 'duplicate';
    if (event.seq > seen.seq + 1) return `${id}: ${event.seq - seen.seq - 1} events lost`;
    return null;
  }
}

// ------------------------------------------------------------------ the command line
export const EXIT = { ok: 0, failed: 1, usage: 2, unroutable: 3, noReply: 4, broker: 5 };

/** `no host 'x' has the agent 'y' enrolled`: what an unroutable request means. */
export function unroutableText(routingKey) {
  const [agent, host] = routingKey.split('.');
  return host === '_all'
    ? `no host has the agent '${agent}' enrolled`
    : `no host '${host}' has the agent '${agent}' enrolled`;
}

export function print(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}
