import { Button, Card, Group, SimpleGrid, Stack, Text } from '@mantine/core';
import type { BrokerStatusEntry, BrokerView } from '../api/types';
import { bytes, ms, rate } from '../lib/format';
import { StateBadge } from './StateBadge';

interface Props {
  broker: BrokerView;
  live?: BrokerStatusEntry;
  readOnly: boolean;
  onEdit(): void;
  onToggle(): void;
  onDelete(): void;
}

function Figure({ label, value }: { label: string; value: string }) {
  return (
    <div>
      <Text size="xs" c="dimmed">{label}</Text>
      <Text fw={600}>{value}</Text>
    </div>
  );
}

export function BrokerCard({ broker, live, readOnly, onEdit, onToggle, onDelete }: Props) {
  const state = live?.state ?? (broker.enabled ? 'connecting' : 'paused');
  const drops = live ? Object.values(live.drops).reduce((a, b) => a + b, 0) : 0;
  const reasons = live
    ? Object.entries(live.drops)
        .filter(([, n]) => n > 0)
        .map(([why, n]) => `${why} ${n}`)
        .join(' · ')
    : '';
  return (
    <Card withBorder shadow="xs" role="article" aria-label={`Broker ${broker.name || broker.id}`}>
      <Stack gap="xs">
        <Group justify="space-between" wrap="nowrap">
          <div style={{ minWidth: 0 }}>
            <Text fw={700} truncate>{broker.name || broker.id}</Text>
            <Text size="sm" c="dimmed" truncate>
              {broker.address}:{broker.port}
              {broker.useTls ? ' · TLS' : ''}
              {broker.bidirectional ? ' · bidirectional' : ''}
            </Text>
          </div>
          <StateBadge state={state} />
        </Group>
        <SimpleGrid cols={{ base: 3, sm: 5 }} spacing="xs">
          <Figure label="msg/s (10 s)" value={rate(live?.rate10s)} />
          <Figure label="p50" value={ms(live?.latencyP50)} />
          <Figure label="p99" value={ms(live?.latencyP99)} />
          <Figure label="queue" value={live ? `${live.queueMessages} · ${bytes(live.queueBytes)}` : '–'} />
          <Figure label="drops" value={live ? `${drops}` : '–'} />
        </SimpleGrid>
        {reasons && (
          <Text size="xs" c="dimmed">
            dropped: {reasons}
          </Text>
        )}
        {live?.lastError && (
          <Text size="sm" c="red" aria-label="Last error">
            {live.lastErrorReason ? `${live.lastErrorReason}: ` : ''}
            {live.lastError}
          </Text>
        )}
        {!readOnly && (
          <Group gap="xs">
            <Button size="xs" variant="light" onClick={onToggle}>
              {broker.enabled ? 'Pause' : 'Resume'}
            </Button>
            <Button size="xs" variant="default" onClick={onEdit}>Edit</Button>
            <Button size="xs" variant="subtle" color="red" onClick={onDelete}>Delete</Button>
          </Group>
        )}
      </Stack>
    </Card>
  );
}
