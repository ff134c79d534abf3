import { Badge } from '@mantine/core';
import type { BrokerState } from '../api/types';

const COLOR: Record<BrokerState, string> = {
  connected: 'green',
  connecting: 'yellow',
  backoff: 'red',
  idle: 'gray',
  paused: 'orange',
  disabled: 'gray',
};

/** The state as text (never colour alone). */
export function StateBadge({ state }: { state: BrokerState }) {
  return (
    <Badge color={COLOR[state]} variant="light" data-testid="broker-state">
      {state}
    </Badge>
  );
}
