import { describe, expect, it } from 'vitest';
import type { StatsEvent } from '../api/types';
import { Ring } from './ring';
import { latencyColumns, rateColumns, toPoint, type Point } from './series';

function stats(time: number, brokers: [string, number, number | null][]): StatsEvent {
  return {
    type: 'stats',
    time,
    viewerDropped: 0,
    totals: { received: 0, toDevice: 0, rateIn10s: 1, rateOut10s: 0 },
    brokers: brokers.map(([name, rate10s, p50]) => ({ name, rate10s, latencyP50: p50, latencyP99: p50 })),
  } as unknown as StatsEvent;
}

describe('ring buffer', () => {
  it('keeps only the newest items, oldest first', () => {
    const r = new Ring<number>(3);
    for (let i = 1; i <= 5; i++) r.push(i);
    expect(r.toArray()).toEqual([3, 4, 5]);
    expect(r.length).toBe(3);
  });
});

describe('chart shaping', () => {
  it('gives one column per broker, null before a broker existed', () => {
    const r = new Ring<Point>(10);
    r.push(toPoint(stats(1000, [['a', 5, 0.001]])));
    r.push(toPoint(stats(2000, [['a', 6, 0.002], ['b', 1, null]])));
    const c = rateColumns(r);
    expect(c.series).toEqual(['a', 'b']);
    expect(c.data).toEqual([[1, 2], [5, 6], [null, 1]]);
  });
  it('shows latency in milliseconds, p50 and p99 per broker', () => {
    const r = new Ring<Point>(10);
    r.push(toPoint(stats(1000, [['a', 5, 0.004]])));
    const c = latencyColumns(r);
    expect(c.series).toEqual(['a p50', 'a p99']);
    expect(c.data[1][0]).toBeCloseTo(4);
  });
  it('stays bounded', () => {
    const r = new Ring<Point>(900);
    for (let i = 0; i < 2000; i++) r.push(toPoint(stats(i * 1000, [['a', i, null]])));
    expect(rateColumns(r).data[0].length).toBe(900);
  });
});
