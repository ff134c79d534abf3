import { useCallback, useEffect, useMemo, useRef, useState, type ReactNode } from 'react';
import { openStream } from '../api/stream';
import type { StatsEvent } from '../api/types';
import { MessageLog } from '../lib/outcomes';
import { Ring } from '../lib/ring';
import { HISTORY_POINTS, toPoint, type Point } from '../lib/series';
import { addTopic, emptyTree } from '../lib/topic';
import { LiveContext, type Live } from './live';

/** Messages kept for the live view. */
export const MESSAGE_LIMIT = 500;

export function LiveProvider({ children }: { children: ReactNode }) {
  const [points] = useState(() => new Ring<Point>(HISTORY_POINTS));
  const [messages] = useState(() => new MessageLog(MESSAGE_LIMIT));
  const [tree] = useState(emptyTree);
  const [stats, setStats] = useState<StatsEvent | null>(null);
  const [connected, setConnected] = useState(false);
  const [viewerDropped, setViewerDropped] = useState(0);
  const [version, setVersion] = useState(0);
  const [paused, setPaused] = useState(false);
  const [missed, setMissed] = useState(0);
  const pausedRef = useRef(false);
  const pause = useCallback((p: boolean) => {
    pausedRef.current = p;
    setPaused(p);
    if (!p) setMissed(0);
  }, []);

  useEffect(() => {
    // Message bursts are batched into one render per animation frame.
    let pending = false;
    const bump = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        setVersion((v) => v + 1);
      });
    };
    const h = openStream(
      (e) => {
        if (e.type === 'stats') {
          points.push(toPoint(e));
          setStats(e);
          setViewerDropped(e.viewerDropped);
          bump();
        } else if (e.type === 'message') {
          if (pausedRef.current) {
            setMissed((m) => m + 1);
            return;
          }
          messages.push(e);
          addTopic(tree, e.topic);
          bump();
        } else if (e.type === 'outcome') {
          if (messages.outcome(e)) bump();
        } else if (e.type === 'dropped') {
          setViewerDropped(e.viewerDropped);
        }
      },
      setConnected,
    );
    return () => h.close();
  }, [points, messages, tree]);

  const value: Live = useMemo(
    () => ({ connected, stats, points, messages, tree, viewerDropped, version, paused, missed, setPaused: pause }),
    [connected, stats, points, messages, tree, viewerDropped, version, paused, missed, pause],
  );
  return <LiveContext.Provider value={value}>{children}</LiveContext.Provider>;
}
