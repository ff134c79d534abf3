// Chart shaping: per-second stats snapshots → uPlot's column arrays, from bounded rings.
import type { StatsEvent } from '../api/types';
import { Ring } from './ring';

/** 15 minutes at one snapshot a second. */
export const HISTORY_POINTS = 900;

export interface Point {
  t: number; // unix seconds
  rates: Record<string, number>;
  p50: Record<string, number | null>;
  p99: Record<string, number | null>;
  rateIn: number;
  rateOut: number;
}

export function toPoint(s: StatsEvent): Point {
  const p: Point = { t: s.time / 1000, rates: {}, p50: {}, p99: {}, rateIn: s.totals.rateIn10s, rateOut: s.totals.rateOut10s };
  for (const b of s.brokers) {
    p.rates[b.name] = b.rate10s;
    p.p50[b.name] = b.latencyP50;
    p.p99[b.name] = b.latencyP99;
  }
  return p;
}

export interface Columns {
  series: string[];
  data: (number | null)[][];
}

/** Every series name seen in the window, sorted, so a broker added later gets a column. */
function names(points: Point[], key: 'rates' | 'p50'): string[] {
  const set = new Set<string>();
  for (const p of points) for (const k of Object.keys(p[key])) set.add(k);
  return [...set].sort();
}

/** messages/s per broker: x = time, one column per broker (null where it did not exist). */
export function rateColumns(ring: Ring<Point>): Columns {
  const points = ring.toArray();
  const series = names(points, 'rates');
  const data: (number | null)[][] = [points.map((p) => p.t)];
  for (const s of series) data.push(points.map((p) => p.rates[s] ?? null));
  return { series, data };
}

/** Latency in milliseconds: p50 and p99 per broker. */
export function latencyColumns(ring: Ring<Point>): Columns {
  const points = ring.toArray();
  const brokers = names(points, 'p50');
  const series: string[] = [];
  const data: (number | null)[][] = [points.map((p) => p.t)];
  const ms = (v: number | null | undefined) => (v == null ? null : v * 1000);
  for (const b of brokers) {
    series.push(`${b} p50`, `${b} p99`);
    data.push(points.map((p) => ms(p.p50[b])));
    data.push(points.map((p) => ms(p.p99[b])));
  }
  return { series, data };
}
