// Live state from the stream: the latest stats snapshot, bounded chart history, and a
// bounded list of recent messages with their topic tree.
import { createContext, useContext } from 'react';
import type { StatsEvent } from '../api/types';
import type { MessageLog } from '../lib/outcomes';
import type { Ring } from '../lib/ring';
import type { Point } from '../lib/series';
import type { TreeNode } from '../lib/topic';

export interface Live {
  connected: boolean;
  stats: StatsEvent | null;
  points: Ring<Point>;
  /** recent messages, each with its brokers' outcomes updated as they arrive */
  messages: MessageLog;
  tree: TreeNode;
  viewerDropped: number;
  /** bumps on every change, for memoised views */
  version: number;
  /** Live view paused: messages are not added meanwhile (counted in `missed`). */
  paused: boolean;
  missed: number;
  setPaused(p: boolean): void;
}

export const LiveContext = createContext<Live | null>(null);

export function useLive(): Live {
  const l = useContext(LiveContext);
  if (!l) throw new Error('useLive outside LiveProvider');
  return l;
}
