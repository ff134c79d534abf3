// Client-side broker validation, mirroring BrokerConfig::validate in proxy/src/broker.rs so
// the form names the same field the server would. The server stays the authority.
import type { BrokerConfig } from '../api/types';
import { validFilter } from './topic';

export type Errors = Partial<Record<string, string>>;

export function validateBroker(b: BrokerConfig): Errors {
  const e: Errors = {};
  const id = b.id ?? '';
  if (id.length > 128 || id.includes('/') || [...id].some((c) => c.charCodeAt(0) < 0x20)) {
    e.id = 'at most 128 printable characters without "/"';
  }
  if (!b.name.trim()) e.name = 'must not be empty';
  if (!b.address.trim()) e.address = 'must not be empty';
  else if (b.address.includes('://') || /\s/.test(b.address)) {
    e.address = 'a host name or IP address, without scheme or spaces';
  }
  if (!Number.isInteger(b.port) || b.port < 1 || b.port > 65535) e.port = 'must be 1-65535';
  if (new TextEncoder().encode(b.clientIdPrefix).length > 64) e.clientIdPrefix = 'at most 64 bytes';
  if (b.maxQos !== undefined && ![0, 1, 2].includes(b.maxQos)) e.maxQos = 'must be 0, 1 or 2';
  const badTopic = b.topics.find((t) => !validFilter(t));
  if (badTopic !== undefined) e.topics = `"${badTopic}" is not a valid topic filter`;
  const badSub = b.subscriptionTopics.find((t) => !validFilter(t));
  if (badSub !== undefined) e.subscriptionTopics = `"${badSub}" is not a valid topic filter`;
  if (b.mirror && (!b.bidirectional || b.subscriptionTopics.length === 0)) {
    e.mirror = 'mirror needs bidirectional and subscription topics (what to mirror)';
  }
  if (b.topicPrefix && /[+#]/.test(b.topicPrefix.replaceAll(String.fromCharCode(0), '#'))) e.topicPrefix = 'no wildcards or NUL';
  if (!!b.clientCertPath !== !!b.clientKeyPath) {
    e.clientCertPath = 'client certificate and key go together';
  }
  if (b.queue?.maxMessages !== undefined && b.queue.maxMessages < 1) {
    e['queue.maxMessages'] = 'must be at least 1';
  }
  if (b.queue?.maxBytes !== undefined && b.queue.maxBytes < 1) e['queue.maxBytes'] = 'must be at least 1';
  return e;
}

/** Map a server field path (e.g. `queue.maxBytes`, `port`) onto the form's field key. */
export function serverField(field: string | undefined): string {
  if (!field || field === 'body') return 'form';
  return field.replace(/^\./, '').replace(/\[\d+\]$/, '');
}

export function emptyBroker(): BrokerConfig {
  return {
    name: '',
    address: '',
    port: 1883,
    clientIdPrefix: '',
    enabled: true,
    useTls: false,
    insecureSkipVerify: false,
    bidirectional: false,
    mirror: false,
    topics: [],
    subscriptionTopics: [],
    mqttVersion: '3.1.1',
    spool: false,
  };
}
