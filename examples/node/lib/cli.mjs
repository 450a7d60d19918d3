// The command line both clients share: the same commands and options over either protocol.

import { parseArgs } from 'node:util';

import { EXIT, loadPrivateKey, loadTrusted } from './contract.mjs';

export const USAGE = `usage: node CLIENT.mjs COMMAND [options]

commands:
  call AGENT.METHOD [ARGS_JSON]   --host H (one host) or --all [--filter JSON]
                                  broadcast: ends --idle s after the last reply, or at
                                  --timeout, or when every --expect host answered
  provision TEMPLATE              --owner O [--count N] [--request-id UUID]
  events PATTERN...               --count N and/or --duration S

options:
  --url URL          the broker (amqp://USER:PASSWORD@HOST:PORT/VHOST); the user is
                     your identity (user_id)
  --key FILE         sign requests with this Ed25519 key (NAME.key, PKCS#8 PEM)
  --agent-keys DIR   accept replies and events only when signed by the host they name
                     (a folder of HOST.pub files)
  --timeout S        how long to wait (default 10; provision: 120)

exit codes: 0 ok, 1 an error reply, 2 usage, 3 no queue took the request
            (unroutable), 4 no reply in time, 5 the broker refused or is unreachable`;

export function parse(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      url: { type: 'string', default: 'amqp://guest:guest@127.0.0.1:5672/hostbus' },
      key: { type: 'string' },
      'agent-keys': { type: 'string' },
      timeout: { type: 'string' },
      host: { type: 'string' },
      all: { type: 'boolean', default: false },
      filter: { type: 'string' },
      expect: { type: 'string', multiple: true, default: [] },
      idle: { type: 'string', default: '0.3' },
      owner: { type: 'string' },
      count: { type: 'string' },
      'request-id': { type: 'string' },
      duration: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const [command, ...rest] = positionals;
  if (values.help || !['call', 'provision', 'events'].includes(command)) usage(values.help);
  const url = new URL(values.url);
  const opts = {
    command, rest, url,
    user: decodeURIComponent(url.username || 'guest'),
    password: decodeURIComponent(url.password || 'guest'),
    vhost: decodeURIComponent(url.pathname.replace(/^\//, '')) || '/',
    key: values.key ? loadPrivateKey(values.key) : null,
    agentKeys: values['agent-keys'] ? loadTrusted(values['agent-keys']) : null,
    timeoutS: Number(values.timeout ?? (command === 'provision' ? 120 : 10)),
    idleS: Number(values.idle),
    expect: values.expect,
    host: values.host,
    all: values.all,
    filter: values.filter ? JSON.parse(values.filter) : undefined,
    owner: values.owner,
    count: values.count === undefined ? undefined : Number(values.count),
    requestId: values['request-id'],
    durationS: values.duration === undefined ? undefined : Number(values.duration),
  };
  if (command === 'call') {
    const [target, args = '{}'] = rest;
    const [agent, ...method] = (target || '').split('.');
    if (!agent || !method.length || (!opts.host && !opts.all)) usage(false);
    Object.assign(opts, { agent, method: method.join('.'), args: JSON.parse(args) });
  }
  if (command === 'provision' && (!rest[0] || !opts.owner)) usage(false);
  if (command === 'events' && (!rest.length || (opts.count === undefined
    && opts.durationS === undefined))) usage(false);
  return opts;
}

function usage(asked) {
  (asked ? process.stdout : process.stderr).write(`${USAGE}\n`);
  process.exit(asked ? EXIT.ok : EXIT.usage);
}

export function fail(code, message) {
  process.stderr.write(`${message}\n`);
  process.exit(code);
}

/**
 * Collects the replies of one call. A call to one host ends with its first final reply;
 * a broadcast when every expected host answered, `idleS` after the last reply, or at
 * the deadline. `pending` is never final.
 */
export class Collector {
  constructor({ broadcast, expect, idleS, timeoutS, onDone }) {
    Object.assign(this, { broadcast, idleS, onDone });
    this.waitingFor = new Set(expect);
    this.expectGiven = expect.length > 0;
    this.replies = [];
    this.deadline = setTimeout(() => this.finish(), timeoutS * 1000);
    this.idle = null;
  }

  add(entry) {
    if (entry.reply.status === 'pending') return;
    this.replies.push(entry);
    if (!this.broadcast) {
      this.finish();
      return;
    }
    this.waitingFor.delete(entry.reply.host);
    if (this.expectGiven && this.waitingFor.size === 0) {
      this.finish();
      return;
    }
    clearTimeout(this.idle);
    this.idle = setTimeout(() => this.finish(), this.idleS * 1000);
  }

  finish() {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.deadline);
    clearTimeout(this.idle);
    this.onDone(this.replies);
  }
}
