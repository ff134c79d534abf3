import { Alert, Button, Card, Center, PasswordInput, Stack, Text, Title } from '@mantine/core';
import { useState, type FormEvent } from 'react';
import { login } from '../api/client';
import { ApiError } from '../api/types';

export function Login({ onSignedIn }: { onSignedIn(): void }) {
  const [token, setToken] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await login(token);
      onSignedIn();
    } catch (err) {
      setError(err instanceof ApiError ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <Center mih="100vh" p="md">
      <Card withBorder shadow="sm" w={420} maw="100%" p="lg">
        <form onSubmit={submit}>
          <Stack>
            <Title order={2}>mqtt-proxy</Title>
            <Text size="sm" c="dimmed">
              Sign in with the admin token (MQTT_PROXY_ADMIN_TOKEN, or the file admin-token in the data directory).
            </Text>
            {error && <Alert color="red">{error}</Alert>}
            <PasswordInput label="Admin token" value={token} onChange={(e) => setToken(e.currentTarget.value)} autoFocus />
            <Button type="submit" loading={busy}>Sign in</Button>
          </Stack>
        </form>
      </Card>
    </Center>
  );
}
