// The WebSocket client of /api/stream: authenticated by the session cookie (same origin),
// reconnecting with capped backoff.
import type { StreamEvent } from './types';

export interface StreamHandle {
  close(): void;
}

export function openStream(
  onEvent: (e: StreamEvent) => void,
  onState: (connected: boolean) => void,
): StreamHandle {
  let ws: WebSocket | null = null;
  let closed = false;
  let delay = 500;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const connect = () => {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    ws = new WebSocket(`${proto}//${location.host}/api/stream`);
    ws.onopen = () => {
      delay = 500;
      onState(true);
    };
    ws.onmessage = (m) => {
      try {
        onEvent(JSON.parse(String(m.data)) as StreamEvent);
      } catch {
        // ignore a malformed frame
      }
    };
    ws.onclose = () => {
      onState(false);
      if (!closed) {
        timer = setTimeout(connect, delay);
        delay = Math.min(delay * 2, 10_000);
      }
    };
  };
  connect();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      ws?.close();
    },
  };
}
