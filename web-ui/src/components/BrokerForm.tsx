import {
  Alert,
  Button,
  Group,
  NumberInput,
  PasswordInput,
  Select,
  SimpleGrid,
  Stack,
  Switch,
  TagsInput,
  TextInput,
} from '@mantine/core';
import { useState, type FormEvent } from 'react';
import { ApiError, type BrokerConfig, type BrokerView } from '../api/types';
import { emptyBroker, serverField, validateBroker, type Errors } from '../lib/validate';

interface Props {
  initial?: BrokerView;
  onSave(b: BrokerConfig): Promise<void>;
  onCancel(): void;
}

const num = (v: string | number) => (v === '' || v === undefined ? undefined : Number(v));

/** Every broker field, validated as the server does; server errors land on their field. */
export function BrokerForm({ initial, onSave, onCancel }: Props) {
  const [b, setB] = useState<BrokerConfig>(() => {
    if (!initial) return emptyBroker();
    // eslint-disable-next-line @typescript-eslint/no-unused-vars
    const { hasPassword, ...rest } = initial as BrokerView & { status?: unknown };
    delete (rest as { status?: unknown }).status;
    return { ...emptyBroker(), ...rest, password: undefined };
  });
  const [errors, setErrors] = useState<Errors>({});
  const [busy, setBusy] = useState(false);
  const set = <K extends keyof BrokerConfig>(k: K, v: BrokerConfig[K]) => setB((x) => ({ ...x, [k]: v }));
  const setQueue = (k: 'maxMessages' | 'maxBytes' | 'overflow', v: unknown) =>
    setB((x) => ({ ...x, queue: { ...(x.queue ?? {}), [k]: v } }));

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const out: BrokerConfig = { ...b };
    if (!out.password) delete out.password;
    const found = validateBroker(out);
    setErrors(found);
    if (Object.keys(found).length > 0) return;
    setBusy(true);
    try {
      await onSave(out);
    } catch (err) {
      if (err instanceof ApiError) setErrors({ [serverField(err.field)]: err.message });
      else setErrors({ form: String(err) });
    } finally {
      setBusy(false);
    }
  };

  const bool = (k: 'useTls' | 'insecureSkipVerify' | 'bidirectional' | 'mirror' | 'spool' | 'enabled', label: string) => (
    <Switch label={label} checked={b[k]} onChange={(e) => set(k, e.currentTarget.checked)} error={errors[k]} />
  );

  return (
    <form onSubmit={submit} noValidate aria-label="Broker">
      <Stack gap="sm">
        {errors.form && <Alert color="red">{errors.form}</Alert>}
        <SimpleGrid cols={{ base: 1, sm: 2 }}>
          <TextInput label="Name" value={b.name} onChange={(e) => set('name', e.currentTarget.value)} error={errors.name} />
          <TextInput label="ID" description={initial ? 'fixed once created' : 'optional: derived from the name'} disabled={!!initial} value={b.id ?? ''} onChange={(e) => set('id', e.currentTarget.value || undefined)} error={errors.id} />
          <TextInput label="Address" placeholder="broker.example.com" value={b.address} onChange={(e) => set('address', e.currentTarget.value.trim())} error={errors.address} />
          <NumberInput label="Port" min={1} max={65535} clampBehavior="none" allowDecimal={false} value={b.port} onChange={(v) => set('port', Number(v))} error={errors.port} />
          <TextInput label="Client ID prefix" value={b.clientIdPrefix} onChange={(e) => set('clientIdPrefix', e.currentTarget.value)} error={errors.clientIdPrefix} />
          <Select label="MQTT version" data={['3.1.1', '5']} value={b.mqttVersion} onChange={(v) => set('mqttVersion', (v ?? '3.1.1') as BrokerConfig['mqttVersion'])} allowDeselect={false} />
          <TextInput label="Username" value={b.username ?? ''} onChange={(e) => set('username', e.currentTarget.value || undefined)} error={errors.username} />
          <PasswordInput label="Password" description={initial?.hasPassword ? 'leave empty to keep the stored one' : undefined} value={b.password ?? ''} onChange={(e) => set('password', e.currentTarget.value)} error={errors.password ?? errors.passwordFile} />
        </SimpleGrid>
        <Group>
          {bool('useTls', 'Use TLS')}
          {bool('insecureSkipVerify', 'Skip TLS verification')}
        </Group>
        {b.useTls && (
          <SimpleGrid cols={{ base: 1, sm: 3 }}>
            <TextInput label="CA certificate path" value={b.caCertPath ?? ''} onChange={(e) => set('caCertPath', e.currentTarget.value || undefined)} error={errors.caCertPath} />
            <TextInput label="Client certificate path" value={b.clientCertPath ?? ''} onChange={(e) => set('clientCertPath', e.currentTarget.value || undefined)} error={errors.clientCertPath} />
            <TextInput label="Client key path" value={b.clientKeyPath ?? ''} onChange={(e) => set('clientKeyPath', e.currentTarget.value || undefined)} error={errors.clientKeyPath} />
          </SimpleGrid>
        )}
        <Group>
          {bool('bidirectional', 'Bidirectional')}
          {bool('mirror', 'Mirror')}
          {bool('spool', 'Spool')}
          {bool('enabled', 'Enabled')}
        </Group>
        <TagsInput label="Topics" description="filters of device publishes sent here; empty = all" value={b.topics} onChange={(v) => set('topics', v)} error={errors.topics} clearable />
        <TagsInput label="Subscription topics" description="filters subscribed on this broker (bidirectional)" value={b.subscriptionTopics} onChange={(v) => set('subscriptionTopics', v)} error={errors.subscriptionTopics} clearable />
        <SimpleGrid cols={{ base: 1, sm: 2 }}>
          <TextInput label="Topic prefix" value={b.topicPrefix ?? ''} onChange={(e) => set('topicPrefix', e.currentTarget.value || undefined)} error={errors.topicPrefix} />
          <Select label="Max QoS" data={['0', '1', '2']} clearable placeholder="as published" value={b.maxQos === undefined ? null : String(b.maxQos)} onChange={(v) => set('maxQos', v === null ? undefined : Number(v))} error={errors.maxQos} />
          <NumberInput label="Queue max messages" min={1} value={b.queue?.maxMessages ?? ''} onChange={(v) => setQueue('maxMessages', num(v))} error={errors['queue.maxMessages']} placeholder="proxy default" />
          <NumberInput label="Queue max bytes" min={1} value={b.queue?.maxBytes ?? ''} onChange={(v) => setQueue('maxBytes', num(v))} error={errors['queue.maxBytes']} placeholder="proxy default" />
          <Select label="Overflow policy" clearable placeholder="proxy default" data={[{ value: 'dropOldest', label: 'drop oldest' }, { value: 'dropNewest', label: 'drop newest' }]} value={b.queue?.overflow ?? null} onChange={(v) => setQueue('overflow', v ?? undefined)} error={errors['queue.overflow']} />
        </SimpleGrid>
        <Group justify="flex-end">
          <Button variant="default" onClick={onCancel}>Cancel</Button>
          <Button type="submit" loading={busy}>Save</Button>
        </Group>
      </Stack>
    </form>
  );
}
