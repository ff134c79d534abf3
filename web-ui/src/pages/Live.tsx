import { Alert, Badge, Button, Card, Code, Grid, Group, ScrollArea, SegmentedControl, Select, Stack, Table, Text, TextInput, Title } from '@mantine/core';
import { useMemo, useState } from 'react';
import type { BrokerOutcome, MessageEvent } from '../api/types';
import { TopicTree } from '../components/TopicTree';
import { useLive } from '../hooks/live';
import { outcomeLabel } from '../lib/outcomes';
import { decodeBase64, preview } from '../lib/payload';
import { matches, validFilter } from '../lib/topic';

type Dir = 'all' | 'toBrokers' | 'toDevice';

const OUTCOME_COLOR: Record<BrokerOutcome['outcome'], string> = {
  queued: 'gray',
  written: 'blue',
  acked: 'green',
  dropped: 'red',
  delivered: 'green',
};

/** Each broker's outcome as text (not only a colour), updated as outcome events arrive. */
function Outcomes({ m }: { m: MessageEvent }) {
  if (m.brokers.length === 0) return <Text size="sm" c="dimmed">no broker</Text>;
  return (
    <Group gap={4} wrap="wrap">
      {m.brokers.map((b) => (
        <Badge key={b.broker} size="sm" variant="light" color={OUTCOME_COLOR[b.outcome]} tt="none">
          {outcomeLabel(b)}
        </Badge>
      ))}
    </Group>
  );
}

export function Live() {
  const live = useLive();
  const [filter, setFilter] = useState('');
  const [broker, setBroker] = useState<string | null>(null);
  const [dir, setDir] = useState<Dir>('all');
  const [selected, setSelected] = useState<MessageEvent | null>(null);
  const filterOk = filter === '' || validFilter(filter);
  const brokerNames = useMemo(() => (live.stats?.brokers ?? []).map((b) => b.name), [live.stats]);
  const shown = useMemo(() => {
    const all = live.messages.toArray().reverse();
    return all.filter(
      (m) =>
        (!filterOk || matches(filter, m.topic)) &&
        (dir === 'all' || m.direction === dir) &&
        (broker === null || m.brokers.some((b) => b.broker === broker)),
    );
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [live.messages, live.version, filter, filterOk, dir, broker]);
  const sel = selected ? preview(decodeBase64(selected.payload)) : null;

  return (
    <Stack>
      <Group justify="space-between">
        <Title order={2}>Live messages</Title>
        <Group gap="xs">
          <Badge color={live.connected ? 'green' : 'red'} variant="light">{live.connected ? 'stream connected' : 'stream disconnected'}</Badge>
          <Button size="xs" variant="light" onClick={() => live.setPaused(!live.paused)}>
            {live.paused ? 'Resume feed' : 'Pause feed'}
          </Button>
        </Group>
      </Group>
      {live.viewerDropped > 0 && (
        <Alert color="yellow">This view could not keep up and missed {live.viewerDropped} messages (forwarding was not affected).</Alert>
      )}
      {(live.stats?.notShown ?? 0) > 0 && (
        <Text size="sm" c="dimmed">
          Busy proxy: the feed describes at most 2,000 messages a second; {live.stats?.notShown} were counted but not shown.
        </Text>
      )}
      {live.paused && <Text size="sm" c="dimmed">Paused: {live.missed} new messages not shown.</Text>}
      <Group align="flex-end" wrap="wrap">
        <TextInput label="Topic filter" placeholder="sensors/+/temp or #" value={filter} onChange={(e) => setFilter(e.currentTarget.value)} error={filterOk ? undefined : 'not a valid MQTT filter'} w={260} />
        <Select label="Broker" placeholder="all" clearable data={brokerNames} value={broker} onChange={setBroker} w={200} />
        <SegmentedControl aria-label="Direction" value={dir} onChange={(v) => setDir(v as Dir)} data={[{ value: 'all', label: 'All' }, { value: 'toBrokers', label: 'Device → brokers' }, { value: 'toDevice', label: 'Broker → device' }]} />
      </Group>
      <Grid>
        <Grid.Col span={{ base: 12, md: 3 }}>
          <Card withBorder>
            <Text fw={600} mb="xs">Topics</Text>
            <ScrollArea.Autosize mah={420}>
              <TopicTree node={live.tree} onPick={setFilter} />
            </ScrollArea.Autosize>
          </Card>
        </Grid.Col>
        <Grid.Col span={{ base: 12, md: selected ? 5 : 9 }}>
          <Card withBorder p={0}>
            <ScrollArea.Autosize mah={480}>
              <Table.ScrollContainer minWidth={560} type="native">
              <Table highlightOnHover aria-label="Messages" stickyHeader>
                <Table.Thead>
                  <Table.Tr>
                    <Table.Th>Time</Table.Th>
                    <Table.Th>Topic</Table.Th>
                    <Table.Th>From → to</Table.Th>
                    <Table.Th>Size</Table.Th>
                  </Table.Tr>
                </Table.Thead>
                <Table.Tbody>
                  {shown.slice(0, 200).map((m) => (
                    <Table.Tr key={m.id} onClick={() => setSelected(m)} style={{ cursor: 'pointer' }}>
                      <Table.Td>{new Date(m.time).toLocaleTimeString()}</Table.Td>
                      <Table.Td ff="monospace">{m.topic}</Table.Td>
                      <Table.Td>
                        {m.direction === 'toBrokers' ? (
                          <Group gap={6} wrap="wrap">
                            <Text span size="sm" style={{ whiteSpace: "nowrap" }}>{m.client} →</Text>
                            <Outcomes m={m} />
                          </Group>
                        ) : (
                          `${m.brokers[0]?.broker ?? '?'} → ${m.client}`
                        )}
                      </Table.Td>
                      <Table.Td>{m.size} B · QoS {m.qos}{m.retain ? ' · retained' : ''}</Table.Td>
                    </Table.Tr>
                  ))}
                </Table.Tbody>
              </Table>
              </Table.ScrollContainer>
              {shown.length === 0 && <Text c="dimmed" p="md">No messages yet.</Text>}
            </ScrollArea.Autosize>
          </Card>
        </Grid.Col>
        {selected && sel && (
          <Grid.Col span={{ base: 12, md: 4 }}>
            <Card withBorder role="region" aria-label="Message details">
              <Group justify="space-between">
                <Text fw={600} ff="monospace">{selected.topic}</Text>
                <Button size="xs" variant="subtle" onClick={() => setSelected(null)}>Close</Button>
              </Group>
              <Text size="xs" c="dimmed">
                {sel.kind}{selected.truncated ? ` · first 256 of ${selected.size} bytes` : ''}
              </Text>
              <Code block aria-label="Payload">{sel.text}</Code>
              <Text size="sm" fw={600} mt="sm">Outcome per broker</Text>
              <Outcomes m={selected} />
            </Card>
          </Grid.Col>
        )}
      </Grid>
    </Stack>
  );
}
