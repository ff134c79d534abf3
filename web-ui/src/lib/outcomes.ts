// The live view's recent messages with their per-broker outcomes: a bounded ring of message
// events plus an index by id, so each outcome event updates its message in place. The index
// forgets a message when the ring does, so both stay bounded together.
import type { BrokerOutcome, MessageEvent, Outcome, OutcomeEvent } from '../api/types';
import { Ring } from './ring';

// How far along a message is at a broker; a step never moves it back (a final outcome stays).
const RANK: Record<Outcome, number> = { queued: 0, written: 1, acked: 2, dropped: 2, delivered: 2 };

/** Applies `o` to `m`'s entry for `o.broker`; returns whether anything changed. */
export function applyOutcome(m: MessageEvent, o: OutcomeEvent): boolean {
  const entry = m.brokers.find((b) => b.broker === o.broker);
  if (!entry) {
    m.brokers.push({ broker: o.broker, outcome: o.outcome, reason: o.reason });
    return true;
  }
  if (RANK[o.outcome] < RANK[entry.outcome] || RANK[entry.outcome] === 2) return false;
  entry.outcome = o.outcome;
  entry.reason = o.reason;
  return true;
}

/** The text a person reads for one broker's outcome, e.g. `cloud: dropped (queue_full)`. */
export function outcomeLabel(b: BrokerOutcome): string {
  return `${b.broker}: ${b.outcome}${b.reason ? ` (${b.reason})` : ''}`;
}

export class MessageLog {
  private ring: Ring<MessageEvent>;
  private byId = new Map<number, MessageEvent>();

  constructor(readonly capacity: number) {
    this.ring = new Ring(capacity);
  }

  push(m: MessageEvent): void {
    const evicted = this.ring.push(m);
    if (evicted) this.byId.delete(evicted.id);
    this.byId.set(m.id, m);
  }

  /** Applies an outcome event; `false` when its message is not (or no longer) shown. */
  outcome(o: OutcomeEvent): boolean {
    const m = this.byId.get(o.id);
    return m ? applyOutcome(m, o) : false;
  }

  get length(): number {
    return this.ring.length;
  }

  get indexed(): number {
    return this.byId.size;
  }

  /** Oldest first. */
  toArray(): MessageEvent[] {
    return this.ring.toArray();
  }
}
