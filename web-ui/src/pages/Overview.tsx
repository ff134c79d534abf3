import { Badge, Card, Group, SimpleGrid, Stack, Text, Title } from '@mantine/core';
import { useEffect, useMemo, useState } from 'react';
import { ready } from '../api/client';
import { Chart } from '../components/Chart';
import { useLive } from '../hooks/live';
import { duration, rate } from '../lib/format';
import { latencyColumns, rateColumns } from '../lib/series';

function Stat({ label, value }: { label: string; value: string }) {
  return (
    <Card withBorder p="sm">
      <Text size="xs" c="dimmed" tt="uppercase">{label}</Text>
      <Text size="xl" fw={700} aria-label={label}>{value}</Text>
    </Card>
  );
}

export function Overview() {
  const live = useLive();
  const [isReady, setReady] = useState<boolean | null>(null);
  useEffect(() => {
    const check = () => void ready().then(setReady);
    check();
    const t = setInterval(check, 5000);
    return () => clearInterval(t);
  }, []);
  const s = live.stats;
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const rates = useMemo(() => rateColumns(live.points), [live.points, live.version]);
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const latency = useMemo(() => latencyColumns(live.points), [live.points, live.version]);
  const up = s?.brokers.filter((b) => b.state === 'connected').length ?? 0;
  return (
    <Stack>
      <Group justify="space-between">
        <Title order={2}>Overview</Title>
        <Badge size="lg" color={isReady ? 'green' : isReady === false ? 'red' : 'gray'}>
          {isReady ? 'ready' : isReady === false ? 'not ready' : 'checking'}
        </Badge>
      </Group>
      <SimpleGrid cols={{ base: 2, sm: 3, lg: 6 }}>
        <Stat label="Devices connected" value={String(s?.devices ?? '–')} />
        <Stat label="Messages/s in" value={rate(s?.totals.rateIn10s)} />
        <Stat label="Messages/s to devices" value={rate(s?.totals.rateOut10s)} />
        <Stat label="Brokers connected" value={s ? `${up} / ${s.brokers.length}` : '–'} />
        <Stat label="Messages received" value={String(s?.totals.received ?? '–')} />
        <Stat label="Uptime" value={s ? duration(s.uptimeSeconds) : '–'} />
      </SimpleGrid>
      <SimpleGrid cols={{ base: 1, lg: 2 }}>
        <Card withBorder><Chart title="Messages/s per broker" unit="msg/s" columns={rates} /></Card>
        <Card withBorder><Chart title="Forwarding latency p50 / p99" unit="ms" columns={latency} /></Card>
      </SimpleGrid>
    </Stack>
  );
}
