import { describe, expect, it } from 'vitest';
import type { MessageEvent, OutcomeEvent } from '../api/types';
import { applyOutcome, MessageLog, outcomeLabel } from './outcomes';

function message(id: number, brokers: string[]): MessageEvent {
  return {
    type: 'message',
    id,
    time: 0,
    direction: 'toBrokers',
    client: 'dev',
    topic: `t/${id}`,
    size: 1,
    qos: 1,
    retain: false,
    payload: '',
    truncated: false,
    brokers: brokers.map((broker) => ({ broker, outcome: 'queued' })),
  };
}

function outcome(id: number, broker: string, o: OutcomeEvent['outcome'], reason?: string): OutcomeEvent {
  return { type: 'outcome', id, time: 1, broker, outcome: o, reason };
}

describe('per-broker outcomes', () => {
  it('moves each broker of a message along queued → written → acked', () => {
    const m = message(1, ['home', 'cloud']);
    expect(applyOutcome(m, outcome(1, 'home', 'written'))).toBe(true);
    expect(applyOutcome(m, outcome(1, 'home', 'acked'))).toBe(true);
    expect(applyOutcome(m, outcome(1, 'cloud', 'dropped', 'queue_full'))).toBe(true);
    expect(m.brokers.map(outcomeLabel)).toEqual(['home: acked', 'cloud: dropped (queue_full)']);
  });

  it('never moves a broker back or past a final outcome', () => {
    const m = message(1, ['home']);
    applyOutcome(m, outcome(1, 'home', 'acked'));
    expect(applyOutcome(m, outcome(1, 'home', 'written'))).toBe(false);
    expect(applyOutcome(m, outcome(1, 'home', 'dropped', 'shutdown'))).toBe(false);
    expect(m.brokers[0]).toMatchObject({ outcome: 'acked' });
  });

  it('updates the logged message by id and ignores outcomes of unknown ones', () => {
    const log = new MessageLog(10);
    log.push(message(7, ['home']));
    expect(log.outcome(outcome(8, 'home', 'written'))).toBe(false);
    expect(log.outcome(outcome(7, 'home', 'written'))).toBe(true);
    expect(log.toArray()[0].brokers[0].outcome).toBe('written');
  });

  it('forgets the index entry of a message the ring evicted (stays bounded)', () => {
    const log = new MessageLog(3);
    for (let id = 1; id <= 5; id++) log.push(message(id, ['home']));
    expect(log.toArray().map((m) => m.id)).toEqual([3, 4, 5]);
    expect(log.indexed).toBe(3);
    expect(log.outcome(outcome(1, 'home', 'acked'))).toBe(false);
    expect(log.outcome(outcome(5, 'home', 'acked'))).toBe(true);
  });
});
