import { Stack, Table, Text, Title } from '@mantine/core';
import { useLive } from '../hooks/live';

export function Devices() {
  const devices = useLive().stats?.connectedDevices ?? [];
  return (
    <Stack>
      <Title order={2}>Devices</Title>
      {devices.length === 0 ? (
        <Text c="dimmed">No device is connected.</Text>
      ) : (
        <Table.ScrollContainer minWidth={640}>
          <Table striped aria-label="Devices">
            <Table.Thead>
              <Table.Tr>
                <Table.Th>Client ID</Table.Th>
                <Table.Th>Remote address</Table.Th>
                <Table.Th>MQTT</Table.Th>
                <Table.Th>Since</Table.Th>
                <Table.Th>Subscriptions</Table.Th>
                <Table.Th>In</Table.Th>
                <Table.Th>Out</Table.Th>
              </Table.Tr>
            </Table.Thead>
            <Table.Tbody>
              {devices.map((d) => (
                <Table.Tr key={d.clientId}>
                  <Table.Td>{d.clientId}</Table.Td>
                  <Table.Td>{d.remoteAddress ?? '–'}</Table.Td>
                  <Table.Td>{d.protocolVersion || 'spool'}</Table.Td>
                  <Table.Td>{new Date(d.sinceMs).toLocaleString()}</Table.Td>
                  <Table.Td>{d.subscriptions.join(', ') || '–'}</Table.Td>
                  <Table.Td>{d.messagesIn}</Table.Td>
                  <Table.Td>{d.messagesOut}</Table.Td>
                </Table.Tr>
              ))}
            </Table.Tbody>
          </Table>
        </Table.ScrollContainer>
      )}
    </Stack>
  );
}
