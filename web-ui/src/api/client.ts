// The only code that knows the API's URLs. Same origin; the session cookie rides along.
import { ApiError, type BrokerConfig, type BrokerView, type Status } from './types';

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(path, {
    method,
    credentials: 'same-origin',
    headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    let field: string | undefined;
    try {
      const j = (await res.json()) as { error?: string; field?: string };
      message = j.error ?? message;
      field = j.field;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(res.status, message, field);
  }
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

export const login = (token: string) => call<{ ok: boolean }>('POST', '/api/login', { token });
export const logout = () => call<void>('POST', '/api/logout');
export const session = () => call<{ signedIn: boolean }>('GET', '/api/session');
export const getStatus = () => call<Status>('GET', '/api/status');
export const listBrokers = () => call<BrokerView[]>('GET', '/api/brokers');
export const createBroker = (b: BrokerConfig) => call<BrokerView>('POST', '/api/brokers', b);
export const updateBroker = (id: string, b: BrokerConfig) =>
  call<BrokerView>('PUT', `/api/brokers/${encodeURIComponent(id)}`, b);
export const deleteBroker = (id: string) =>
  call<void>('DELETE', `/api/brokers/${encodeURIComponent(id)}`);
export const toggleBroker = (id: string, enabled: boolean) =>
  call<BrokerView>('POST', `/api/brokers/${encodeURIComponent(id)}/toggle`, { enabled });

export async function ready(): Promise<boolean> {
  try {
    return (await fetch('/readyz')).ok;
  } catch {
    return false;
  }
}
