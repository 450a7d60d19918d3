#!/usr/bin/env node
// A hostbus client over AMQP 1.0 with rhea, written from docs/protocol.md only: the same
// commands as amqp091.mjs. Addresses are RabbitMQ's v1 scheme (/exchange/X/KEY), which
// RabbitMQ 3.x speaks and 4.0 to 4.2 still accept (deprecated there; see protocol.md).
//   node amqp10.mjs call host.identify --host web01 --url amqp://alice:PW@broker/hostbus \
//       --key alice.key --agent-keys agent-keys/

import crypto from 'node:crypto';

import rhea from 'rhea';

import { Collector, fail, parse } from './lib/cli.mjs';
import {
  EVENT_EXCHANGE, EXIT, KIND, PROVISION_EXCHANGE, REPLY_EXCHANGE, REQUEST_EXCHANGE,
  Sequencer, encodeBody, envelopeValidators, print, readEvent, readReply, replyName,
  requestBody, requestKey, schemaErrors, signedContentType, unroutableText,
} from './lib/contract.mjs';

const opts = parse(process.argv.slice(2));
const validators = envelopeValidators();

const enc = (name) => encodeURIComponent(name).replace(/%23/g, '#').replace(/%2A/g, '*');
const exchangeAddress = (exchange, key) => `/exchange/${enc(exchange)}${key ? `/${enc(key)}` : ''}`;

const container = rhea.create_container({ id: `hostbus-node-${crypto.randomUUID()}` });
const conn = container.connect({
  host: opts.url.hostname, port: Number(opts.url.port || 5672),
  username: opts.user, password: opts.password,
  hostname: `vhost:${opts.vhost}`, // how RabbitMQ picks the vhost over AMQP 1.0
  reconnect: false, container_id: container.id,
});
conn.on('connection_error', (ctx) => fail(EXIT.broker, `the broker refused: ${ctx.connection.error?.description}`));
conn.on('disconnected', (ctx) => {
  if (!ctx.connection.is_closed()) fail(EXIT.broker, `cannot reach the broker: ${ctx.error?.message ?? 'disconnected'}`);
});
// RabbitMQ refuses a publish or an attach by ending the session, with its reason.
conn.on('session_error', (ctx) => fail(EXIT.broker, `the broker refused: ${ctx.session.error?.description}`));
conn.on('sender_error', (ctx) => fail(EXIT.broker, `the broker refused: ${ctx.sender.error?.description}`));
conn.on('receiver_error', (ctx) => fail(EXIT.broker, `the broker refused: ${ctx.receiver.error?.description}`));

const opened = new Promise((resolve) => conn.once('connection_open', resolve));
const brokerVersion = () => String(conn.remote.open?.properties?.version ?? '');

function text(value) {
  if (value === undefined || value === null) return undefined;
  return Buffer.isBuffer(value) ? value.toString('utf8') : String(value);
}

/** What a received message says about itself, for reading and verifying it. */
function received(msg, kind) {
  // The route. RabbitMQ 4.x says it in the message annotations x-exchange and
  // x-routing-key, for messages from either protocol. RabbitMQ 3.x: a 1.0 sender's `to`
  // names the exchange and key; for a 0-9-1 publish it gives only the routing key, as
  // the subject (the exchange is then the one the kind travels through).
  const annotations = msg.message_annotations ?? {};
  let exchange = '';
  let routingKey = text(msg.subject) ?? '';
  const to = text(msg.to);
  const route = to?.match(/^\/exchanges?\/([^/]*)(?:\/(.*))?$/);
  if (route) {
    exchange = decodeURIComponent(route[1]);
    if (route[2] !== undefined) routingKey = decodeURIComponent(route[2]);
  }
  if (annotations['x-exchange'] !== undefined) exchange = text(annotations['x-exchange']);
  if (annotations['x-routing-key'] !== undefined) {
    routingKey = text(annotations['x-routing-key']);
  }
  const replyTo = text(msg.reply_to)?.replace(/^\/queue\//, '');
  const body = msg.body?.typecode === 0x75 ? Buffer.from(msg.body.content) : Buffer.alloc(0);
  return {
    body, contentType: text(msg.content_type),
    fields: { exchange, routingKey, kind, messageId: text(msg.message_id),
      userId: text(msg.user_id), replyTo, correlationId: text(msg.correlation_id), body },
  };
}

/** A receiver on /exchange/X/PATTERN: the broker makes a private queue bound with it. */
function bound(exchange, pattern, onMessage) {
  return new Promise((resolve) => {
    const receiver = conn.open_receiver({ source: { address: exchangeAddress(exchange, pattern) },
      autoaccept: true, credit_window: 100 });
    receiver.on('message', (ctx) => onMessage(ctx.message));
    receiver.once('receiver_open', () => resolve(receiver));
  });
}

const senders = new Map();
function senderFor(exchange) {
  if (!senders.has(exchange)) {
    senders.set(exchange, new Promise((resolve) => {
      const sender = conn.open_sender({ target: { address: exchangeAddress(exchange) } });
      sender.once('sendable', () => resolve(sender));
    }));
  }
  return senders.get(exchange);
}

/**
 * Send one message to `exchange` with `routingKey` (the subject; `to` names both, so
 * a 1.0 receiver learns the route). Resolves with the broker's outcome: accepted,
 * released (4.x: no queue took it), rejected or modified.
 */
async function send(exchange, routingKey, message) {
  const sender = await senderFor(exchange);
  return new Promise((resolve) => {
    const delivery = sender.send({ ...message, subject: routingKey,
      to: exchangeAddress(exchange, routingKey) });
    for (const outcome of ['accepted', 'released', 'rejected', 'modified']) {
      sender.on(outcome, (ctx) => {
        if (ctx.delivery === delivery) resolve({ outcome, state: ctx.delivery.remote_state });
      });
    }
  });
}

function unroutable(outcome, what) {
  if (outcome.outcome === 'released') fail(EXIT.unroutable, what);
  if (outcome.outcome !== 'accepted') {
    fail(EXIT.broker, `the broker did not take the message: ${outcome.outcome} ${
      JSON.stringify(outcome.state?.error ?? '')}`);
  }
}

async function call() {
  const body = requestBody(opts.agent, opts.method, opts.args,
    { host: opts.all ? undefined : opts.host, filter: opts.filter, timeoutS: opts.timeoutS });
  if (!validators.request(body)) fail(EXIT.usage, `bad request: ${schemaErrors(validators.request)}`);
  const routingKey = requestKey(opts.agent, body.target.host);
  const messageId = crypto.randomUUID();
  const replyTo = replyName(opts.user);
  const collector = new Collector({
    broadcast: opts.all, expect: opts.expect, idleS: opts.idleS, timeoutS: opts.timeoutS,
    onDone: (replies) => {
      for (const { reply, signer } of replies) print({ ...reply, signed_by: signer });
      if (!replies.length) {
        fail(EXIT.noReply, `no reply within ${opts.timeoutS} s (RabbitMQ ${brokerVersion()} ${
          brokerVersion().startsWith('3.') ? 'does not report unroutable AMQP 1.0 messages; '
          + 'a broadcast agent.ping tells which hosts exist' : ''})`);
      }
      conn.close();
      process.exit(replies.every(({ reply }) => reply.status === 'ok') ? EXIT.ok : EXIT.failed);
    },
  });
  await bound(REPLY_EXCHANGE, replyTo, (msg) => {
    const { body: raw, fields, contentType } = received(msg, KIND.reply);
    if (fields.correlationId !== messageId) return;
    const read = readReply(validators, opts.agentKeys, { body: raw, fields, contentType });
    if (read.dropped) process.stderr.write(`dropped a reply: ${read.dropped}\n`);
    else collector.add(read);
  });
  const content = encodeBody(body);
  let contentType = 'application/json';
  if (opts.key) {
    contentType = signedContentType(opts.key, { exchange: REQUEST_EXCHANGE, routingKey,
      kind: KIND.request, messageId, userId: opts.user, replyTo, body: content });
  }
  const outcome = await send(REQUEST_EXCHANGE, routingKey, {
    message_id: messageId, reply_to: replyTo, user_id: Buffer.from(opts.user),
    content_type: contentType, ttl: Math.round(opts.timeoutS * 1000),
    creation_time: new Date(),
    application_properties: { type: KIND.request }, // AMQP 1.0 has no `type` field
    body: rhea.message.data_section(content), // one Data section: the JSON bytes
  });
  unroutable(outcome, unroutableText(routingKey));
}

async function provision() {
  const body = { v: 1, template: opts.rest[0], owner: opts.owner };
  if (opts.count !== undefined) body.count = opts.count;
  if (!validators.provision(body)) fail(EXIT.usage, `bad request: ${schemaErrors(validators.provision)}`);
  const requestId = opts.requestId || crypto.randomUUID();
  const replyTo = replyName(opts.user);
  const timer = setTimeout(() => fail(EXIT.noReply, `no reply within ${opts.timeoutS} s`),
    opts.timeoutS * 1000);
  await bound(REPLY_EXCHANGE, replyTo, (msg) => {
    const { body: raw, fields, contentType } = received(msg, KIND.reply);
    if (fields.correlationId !== requestId) return;
    const read = readReply(validators, opts.agentKeys, { body: raw, fields, contentType });
    if (read.dropped) {
      process.stderr.write(`dropped a reply: ${read.dropped}\n`);
      return;
    }
    if (read.reply.status === 'pending') return;
    if (read.reply.status === 'ok' && !validators['provision-result'](read.reply.result)) {
      fail(EXIT.failed, `the result does not follow provision-result.v1.json: ${
        schemaErrors(validators['provision-result'])}`);
    }
    clearTimeout(timer);
    print({ ...read.reply, signed_by: read.signer });
    conn.close();
    process.exit(read.reply.status === 'ok' ? EXIT.ok : EXIT.failed);
  });
  // Durable, and accepted only once the broker has it on disk.
  const outcome = await send(PROVISION_EXCHANGE, 'provision', {
    message_id: requestId, reply_to: replyTo, user_id: Buffer.from(opts.user),
    content_type: 'application/json', durable: true,
    application_properties: { type: KIND.provision },
    body: rhea.message.data_section(encodeBody(body)),
  });
  unroutable(outcome, 'no queue is bound to hostbus.provision: run `hostbus broker setup`');
  process.stderr.write(`posted request ${requestId}\n`);
}

async function events() {
  const sequencer = new Sequencer();
  let seen = 0;
  const done = () => {
    conn.close();
    process.exit(EXIT.ok);
  };
  for (const pattern of opts.rest) {
    await bound(EVENT_EXCHANGE, pattern, (msg) => {
      const { body, fields, contentType } = received(msg, KIND.event);
      const read = readEvent(validators, opts.agentKeys, { body, fields, contentType });
      if (read.dropped) {
        process.stderr.write(`dropped an event on ${fields.routingKey}: ${read.dropped}\n`);
        return;
      }
      const note = sequencer.check(read.event);
      if (note === 'duplicate') return;
      const { host, agent, event, seq, epoch, data } = read.event;
      print({ key: fields.routingKey, host, agent, event, seq, epoch, note, signed_by: read.signer, data });
      seen += 1;
      if (opts.count !== undefined && seen >= opts.count) done();
    });
  }
  print({ subscribed: opts.rest });
  if (opts.durationS !== undefined) setTimeout(done, opts.durationS * 1000);
}

await opened;
await { call, provision, events }[opts.command]();
