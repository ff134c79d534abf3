import { AppShell, Burger, Button, Center, Group, Loader, NavLink, Text, Title } from '@mantine/core';
import { useDisclosure } from '@mantine/hooks';
import { useCallback, useEffect, useState } from 'react';
import { BrowserRouter, Link, Navigate, Route, Routes, useLocation } from 'react-router-dom';
import { logout, session } from './api/client';
import { useLive } from './hooks/live';
import { LiveProvider } from './hooks/LiveProvider';
import { Brokers } from './pages/Brokers';
import { Devices } from './pages/Devices';
import { Live } from './pages/Live';
import { Login } from './pages/Login';
import { Overview } from './pages/Overview';

const PAGES = [
  { path: '/', label: 'Overview' },
  { path: '/brokers', label: 'Brokers' },
  { path: '/live', label: 'Live messages' },
  { path: '/devices', label: 'Devices' },
];

function Shell({ onSignOut }: { onSignOut(): void }) {
  const [opened, { toggle, close }] = useDisclosure();
  const loc = useLocation();
  const live = useLive();
  return (
    <AppShell header={{ height: 56 }} navbar={{ width: 210, breakpoint: 'sm', collapsed: { mobile: !opened } }} padding="md">
      <AppShell.Header>
        <Group h="100%" px="md" justify="space-between">
          <Group>
            <Burger opened={opened} onClick={toggle} hiddenFrom="sm" size="sm" aria-label="Menu" />
            <Title order={3}>mqtt-proxy</Title>
            <Text size="xs" c="dimmed" visibleFrom="xs">{live.stats ? `v${live.stats.version}` : ''}</Text>
          </Group>
          <Button variant="subtle" size="xs" onClick={onSignOut}>Sign out</Button>
        </Group>
      </AppShell.Header>
      <AppShell.Navbar p="xs" aria-label="Pages">
        {PAGES.map((p) => (
          <NavLink key={p.path} component={Link} to={p.path} label={p.label} active={loc.pathname === p.path} onClick={close} />
        ))}
      </AppShell.Navbar>
      <AppShell.Main>
        <Routes>
          <Route path="/" element={<Overview />} />
          <Route path="/brokers" element={<Brokers />} />
          <Route path="/live" element={<Live />} />
          <Route path="/devices" element={<Devices />} />
          <Route path="*" element={<Navigate to="/" replace />} />
        </Routes>
      </AppShell.Main>
    </AppShell>
  );
}

export function App() {
  const [auth, setAuth] = useState<'checking' | 'in' | 'out'>('checking');
  const check = useCallback(async () => {
    try {
      setAuth((await session()).signedIn ? 'in' : 'out');
    } catch {
      setAuth('out');
    }
  }, []);
  useEffect(() => {
    // One request on mount; setState runs after the await.
    // eslint-disable-next-line react-hooks/set-state-in-effect
    void check();
  }, [check]);
  if (auth === 'checking') {
    return (
      <Center mih="100vh">
        <Loader />
      </Center>
    );
  }
  if (auth === 'out') return <Login onSignedIn={() => setAuth('in')} />;
  return (
    <BrowserRouter>
      <LiveProvider>
        <Shell
          onSignOut={() => {
            void logout().finally(() => setAuth('out'));
          }}
        />
      </LiveProvider>
    </BrowserRouter>
  );
}
