#!/usr/bin/env node
// A hostbus client over AMQP 0-9-1 with amqplib, written from docs/protocol.md only:
// calls an agent (signed, replies verified), posts a provisioning request, reads events.
//   node amqp091.mjs call host.identify --host web01 --url amqp://alice:PW@broker/hostbus \
//       --key alice.key --agent-keys agent-keys/
//   node amqp091.mjs provision web --owner alice --count 2 --url amqp://shop:PW@broker/hostbus
//   node amqp091.mjs events 'host.*.alert' 'agent.#' --count 10 --agent-keys agent-keys/

import crypto from 'node:crypto';

import amqplib from 'amqplib';

import { Collector, fail, parse } from './lib/cli.mjs';
import {
  EVENT_EXCHANGE, EXIT, KIND, PROVISION_EXCHANGE, REPLY_EXCHANGE, REQUEST_EXCHANGE,
  Sequencer, encodeBody, envelopeValidators, print, readEvent, readReply, replyName,
  requestBody, requestKey, schemaErrors, signedContentType, unroutableText,
} from './lib/contract.mjs';

const opts = parse(process.argv.slice(2));
const validators = envelopeValidators();

let conn;
try {
  conn = await amqplib.connect(opts.url.href, { clientProperties: {
    connection_name: `hostbus node example (${opts.command})` } });
} catch (err) {
  fail(EXIT.broker, `cannot connect to the broker: ${err.message}`);
}
conn.on('error', (err) => fail(EXIT.broker, `the broker closed the connection: ${err.message}`));
// A refused publish or bind closes the channel with the broker's reason.
const ch = await conn.createConfirmChannel();
ch.on('error', (err) => fail(EXIT.broker, `the broker refused: ${err.message}`));

/** A private reply queue: broker-named, exclusive, auto-delete, bound to hostbus.reply
 * with our logical name, which reply_to carries. */
async function openReplyQueue(onMessage) {
  const name = replyName(opts.user);
  const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
  await ch.bindQueue(queue, REPLY_EXCHANGE, name);
  await ch.consume(queue, onMessage, { noAck: true });
  return name;
}

function fieldsOf(msg, kind) {
  const p = msg.properties;
  return {
    exchange: msg.fields.exchange, routingKey: msg.fields.routingKey, kind,
    messageId: p.messageId, userId: p.userId, replyTo: p.replyTo,
    correlationId: p.correlationId, body: msg.content,
  };
}

/** Publish one request: mandatory, so a request no queue takes comes back at once. */
function publishRequest(replyTo, routingKey, body, timeoutS) {
  const messageId = crypto.randomUUID();
  const content = encodeBody(body);
  const props = {
    messageId, replyTo, userId: opts.user, type: KIND.request,
    contentType: 'application/json', expiration: String(Math.round(timeoutS * 1000)),
    timestamp: Math.floor(Date.now() / 1000),
  };
  if (opts.key) {
    props.contentType = signedContentType(opts.key, {
      exchange: REQUEST_EXCHANGE, routingKey, kind: KIND.request, messageId,
      userId: opts.user, replyTo, body: content });
  }
  ch.publish(REQUEST_EXCHANGE, routingKey, content, { ...props, mandatory: true });
  return messageId;
}

async function call() {
  const body = requestBody(opts.agent, opts.method, opts.args,
    { host: opts.all ? undefined : opts.host, filter: opts.filter, timeoutS: opts.timeoutS });
  if (!validators.request(body)) fail(EXIT.usage, `bad request: ${schemaErrors(validators.request)}`);
  const routingKey = requestKey(opts.agent, body.target.host);
  let messageId;
  const collector = new Collector({
    broadcast: opts.all, expect: opts.expect, idleS: opts.idleS, timeoutS: opts.timeoutS,
    onDone: (replies) => {
      for (const { reply, signer } of replies) print({ ...reply, signed_by: signer });
      if (!replies.length) fail(EXIT.noReply, `no reply within ${opts.timeoutS} s`);
      conn.close().finally(() => process.exit(
        replies.every(({ reply }) => reply.status === 'ok') ? EXIT.ok : EXIT.failed));
    },
  });
  ch.on('return', (msg) => {
    if (msg.properties.messageId === messageId) {
      fail(EXIT.unroutable, unroutableText(msg.fields.routingKey));
    }
  });
  const replyTo = await openReplyQueue((msg) => {
    if (msg.properties.correlationId !== messageId) return;
    const read = readReply(validators, opts.agentKeys, {
      body: msg.content, fields: fieldsOf(msg, KIND.reply), contentType: msg.properties.contentType });
    if (read.dropped) process.stderr.write(`dropped a reply: ${read.dropped}\n`);
    else collector.add(read);
  });
  messageId = publishRequest(replyTo, routingKey, body, opts.timeoutS);
}

async function provision() {
  const body = { v: 1, template: opts.rest[0], owner: opts.owner };
  if (opts.count !== undefined) body.count = opts.count;
  if (!validators.provision(body)) fail(EXIT.usage, `bad request: ${schemaErrors(validators.provision)}`);
  const requestId = opts.requestId || crypto.randomUUID();
  const timer = setTimeout(() => fail(EXIT.noReply, `no reply within ${opts.timeoutS} s`),
    opts.timeoutS * 1000);
  const replyTo = await openReplyQueue((msg) => {
    if (msg.properties.correlationId !== requestId) return;
    const read = readReply(validators, opts.agentKeys, {
      body: msg.content, fields: fieldsOf(msg, KIND.reply), contentType: msg.properties.contentType });
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
    conn.close().finally(() => process.exit(read.reply.status === 'ok' ? EXIT.ok : EXIT.failed));
  });
  ch.on('return', () => fail(EXIT.unroutable, 'no queue is bound to hostbus.provision: run `hostbus broker setup`'));
  // Persistent, and confirmed: once the broker confirms, the request is on disk.
  await new Promise((resolve, reject) => ch.publish(PROVISION_EXCHANGE, 'provision', encodeBody(body), {
    messageId: requestId, replyTo, userId: opts.user, type: KIND.provision,
    contentType: 'application/json', persistent: true, mandatory: true,
  }, (err) => (err ? reject(err) : resolve())));
  process.stderr.write(`posted request ${requestId}\n`);
}

async function events() {
  const sequencer = new Sequencer();
  let seen = 0;
  const done = () => conn.close().finally(() => process.exit(EXIT.ok));
  const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
  for (const pattern of opts.rest) await ch.bindQueue(queue, EVENT_EXCHANGE, pattern);
  await ch.consume(queue, (msg) => {
    const read = readEvent(validators, opts.agentKeys, {
      body: msg.content, fields: fieldsOf(msg, KIND.event), contentType: msg.properties.contentType });
    if (read.dropped) {
      process.stderr.write(`dropped an event on ${msg.fields.routingKey}: ${read.dropped}\n`);
      return;
    }
    const note = sequencer.check(read.event);
    if (note === 'duplicate') return;
    const { host, agent, event, seq, epoch, data } = read.event;
    print({ key: msg.fields.routingKey, host, agent, event, seq, epoch, note, signed_by: read.signer, data });
    seen += 1;
    if (opts.count !== undefined && seen >= opts.count) done();
  }, { noAck: true });
  print({ subscribed: opts.rest });
  if (opts.durationS !== undefined) setTimeout(done, opts.durationS * 1000);
}

await { call, provision, events }[opts.command]();
