import { describe, expect, it } from 'vitest';
import { emptyBroker, serverField, validateBroker } from './validate';

const ok = { ...emptyBroker(), name: 'home', address: '10.0.0.2' };

describe('validateBroker mirrors the server', () => {
  it('accepts a minimal broker', () => {
    expect(validateBroker(ok)).toEqual({});
  });
  it('names the field at fault', () => {
    expect(validateBroker({ ...ok, address: 'mqtt://x' }).address).toMatch(/scheme/);
    expect(validateBroker({ ...ok, address: ' ' }).address).toMatch(/empty/);
    expect(validateBroker({ ...ok, port: 0 }).port).toBeDefined();
    expect(validateBroker({ ...ok, port: 70000 }).port).toBeDefined();
    expect(validateBroker({ ...ok, maxQos: 3 }).maxQos).toBeDefined();
    expect(validateBroker({ ...ok, topics: ['a/#/b'] }).topics).toMatch(/a\/#\/b/);
    expect(validateBroker({ ...ok, subscriptionTopics: ['a+'] }).subscriptionTopics).toBeDefined();
    expect(validateBroker({ ...ok, mirror: true }).mirror).toBeDefined();
    expect(validateBroker({ ...ok, topicPrefix: 'x/#' }).topicPrefix).toBeDefined();
    expect(validateBroker({ ...ok, clientCertPath: '/c.pem' }).clientCertPath).toBeDefined();
    expect(validateBroker({ ...ok, queue: { maxMessages: 0 } })['queue.maxMessages']).toBeDefined();
    expect(validateBroker({ ...ok, clientIdPrefix: 'x'.repeat(65) }).clientIdPrefix).toBeDefined();
  });
  it('accepts valid wildcards and mirror with its requirements', () => {
    const b = { ...ok, bidirectional: true, mirror: true, subscriptionTopics: ['cmd/+/x', 'a/#'] };
    expect(validateBroker(b)).toEqual({});
  });
  it('maps server fields onto form fields', () => {
    expect(serverField('port')).toBe('port');
    expect(serverField('queue.maxBytes')).toBe('queue.maxBytes');
    expect(serverField('topics[1]')).toBe('topics');
    expect(serverField('body')).toBe('form');
  });
});
