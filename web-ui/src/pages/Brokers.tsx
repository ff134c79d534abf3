import { Alert, Button, Group, Modal, SimpleGrid, Stack, Text, Title } from '@mantine/core';
import { useEffect, useState } from 'react';
import { createBroker, deleteBroker, toggleBroker, updateBroker } from '../api/client';
import type { BrokerConfig, BrokerView } from '../api/types';
import { BrokerCard } from '../components/BrokerCard';
import { BrokerForm } from '../components/BrokerForm';
import { useLive } from '../hooks/live';
import { useBrokers } from '../hooks/useBrokers';

export function Brokers() {
  const { brokers, error, reload } = useBrokers();
  const live = useLive();
  const [editing, setEditing] = useState<BrokerView | 'new' | null>(null);
  const [actionError, setActionError] = useState<string | null>(null);
  const readOnly = live.stats?.managedBy === 'file';
  const byId = new Map((live.stats?.brokers ?? []).map((b) => [b.id, b]));
  const liveIds = (live.stats?.brokers ?? []).map((b) => b.id).join(',');
  // In file mode the set changes by reload of the file: follow it.
  useEffect(() => {
     
    void reload();
  }, [liveIds, reload]);

  const save = async (b: BrokerConfig) => {
    if (editing === 'new') await createBroker(b);
    else if (editing) await updateBroker(editing.id, { ...b, id: editing.id });
    setEditing(null);
    await reload();
  };
  const act = async (f: () => Promise<unknown>) => {
    try {
      setActionError(null);
      await f();
    } catch (e) {
      setActionError(String(e instanceof Error ? e.message : e));
    }
    await reload();
  };

  return (
    <Stack>
      <Group justify="space-between">
        <Title order={2}>Brokers</Title>
        {!readOnly && <Button onClick={() => setEditing('new')}>Add broker</Button>}
      </Group>
      {readOnly && (
        <Alert color="blue" title="Read-only">
          Brokers come from the file given with --brokers-file (in Kubernetes: the MqttBroker resources, rendered
          into the proxy's Secret by the operator). Change them there; the proxy reloads the file on its own.
        </Alert>
      )}
      {(error || actionError) && <Alert color="red">{actionError ?? error}</Alert>}
      {brokers.length === 0 && <Text c="dimmed">No broker yet.</Text>}
      <SimpleGrid cols={{ base: 1, md: 2, xl: 3 }}>
        {brokers.map((b) => (
          <BrokerCard
            key={b.id}
            broker={b}
            live={byId.get(b.id)}
            readOnly={readOnly}
            onEdit={() => setEditing(b)}
            onToggle={() => void act(() => toggleBroker(b.id, !b.enabled))}
            onDelete={() => {
              if (window.confirm(`Delete broker ${b.name || b.id}?`)) void act(() => deleteBroker(b.id));
            }}
          />
        ))}
      </SimpleGrid>
      <Modal
        opened={editing !== null}
        onClose={() => setEditing(null)}
        title={editing === 'new' ? 'Add broker' : `Edit ${editing?.name ?? ''}`}
        size="xl"
      >
        {editing !== null && (
          <BrokerForm initial={editing === 'new' ? undefined : editing} onSave={save} onCancel={() => setEditing(null)} />
        )}
      </Modal>
    </Stack>
  );
}
