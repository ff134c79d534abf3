import { useCallback, useEffect, useState } from 'react';
import { listBrokers } from '../api/client';
import type { BrokerView } from '../api/types';

/** The broker definitions, reloaded after every change made through the UI. */
export function useBrokers() {
  const [brokers, setBrokers] = useState<BrokerView[]>([]);
  const [error, setError] = useState<string | null>(null);
  const reload = useCallback(async () => {
    try {
      setBrokers(await listBrokers());
      setError(null);
    } catch (e) {
      setError(String(e));
    }
  }, []);
  useEffect(() => {
    // Initial load from the server: setState runs after the await, not synchronously.
    // eslint-disable-next-line react-hooks/set-state-in-effect
    void reload();
  }, [reload]);
  return { brokers, error, reload };
}
