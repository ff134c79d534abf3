// Live state from the stream: the latest stats snapshot, bounded chart history, and a
// bounded list of recent messages with their topic tree.
import { createContext, useContext } from 'react';
import type { MessageEvent, StatsEvent } from '../api/types';
import type { Ring } from '../lib/ring';
import type { Point } from '../lib/series';
import type { TreeNode } from '../lib/topic';

export interface Live {
  connected: boolean;
  stats: StatsEvent | null;
  points: Ring<Point>;
  messages: Ring<MessageEvent>;
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
