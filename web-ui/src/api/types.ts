// Types mirroring the Rust API (proxy/src/web/api, proxy/src/broker.rs). camelCase as on the wire.

export type MqttVersion = '3.1.1' | '5';
export type OverflowPolicy = 'dropOldest' | 'dropNewest';

export interface QueueLimits {
  maxMessages?: number;
  maxBytes?: number;
  overflow?: OverflowPolicy;
}

/** A broker definition as the API accepts it. */
export interface BrokerConfig {
  id?: string;
  name: string;
  address: string;
  port: number;
  clientIdPrefix: string;
  username?: string;
  /** Write-only: never returned. Omit (or send "********") to keep the stored one. */
  password?: string;
  enabled: boolean;
  useTls: boolean;
  insecureSkipVerify: boolean;
  caCertPath?: string;
  clientCertPath?: string;
  clientKeyPath?: string;
  bidirectional: boolean;
  mirror: boolean;
  topics: string[];
  subscriptionTopics: string[];
  topicPrefix?: string;
  maxQos?: number;
  mqttVersion: MqttVersion;
  queue?: QueueLimits;
  spool: boolean;
  passwordFile?: string;
}

export type BrokerState = 'connected' | 'connecting' | 'backoff' | 'idle' | 'paused' | 'disabled';

export interface BrokerView extends BrokerConfig {
  id: string;
  hasPassword: boolean;
}

export interface BrokerStatusEntry {
  id: string;
  name: string;
  state: BrokerState;
  enabled: boolean;
  address: string;
  port: number;
  connected: boolean;
  sessions: number;
  sessionsConnected: number;
  lastError: string | null;
  /** the last error as a fixed word: unreachable, bad_credentials, not_authorized, … */
  lastErrorReason?: string | null;
  /** messages set aside after the broker closed the connection on them repeatedly */
  poisoned?: number;
  connects: number;
  reconnects: number;
  queueMessages: number;
  queueBytes: number;
  forwarded: number;
  dropped: number;
  lastPublishMs: number | null;
  rate10s: number;
  rate60s: number;
  latencyP50: number | null;
  latencyP99: number | null;
  dropRate10s: number;
  /** drops by reason (queueFull, rejected, shutdown, expired, tooLarge, topicTooLong, poison) */
  drops: Record<string, number>;
}

export interface Device {
  clientId: string;
  remoteAddress: string | null;
  protocolVersion: string;
  sinceMs: number;
  subscriptions: string[];
  messagesIn: number;
  messagesOut: number;
}

export interface Status {
  version: string;
  devices: number;
  managedBy: 'store' | 'file';
  brokers: BrokerStatusEntry[];
  connectedDevices: Device[];
  totals: { received: number; toDevice: number; rateIn10s: number; rateOut10s: number };
  uptimeSeconds: number;
  ready: boolean;
}

/** What happened to a message at one broker (`delivered`: a broker's message to a device). */
export type Outcome = 'queued' | 'written' | 'acked' | 'dropped' | 'delivered';

export interface BrokerOutcome {
  broker: string;
  outcome: Outcome;
  /** Only with `dropped`: the `mqtt_proxy_messages_dropped_total` reason (`queue_full`, …). */
  reason?: string;
}

export interface MessageEvent {
  type: 'message';
  /** Unique per proxy process; outcome events refer to it. */
  id: number;
  time: number;
  direction: 'toBrokers' | 'toDevice';
  client: string;
  topic: string;
  size: number;
  qos: number;
  retain: boolean;
  /** base64 of at most the first 256 payload bytes */
  payload: string;
  truncated: boolean;
  brokers: BrokerOutcome[];
}

/** A later step of message `id` at `broker`. */
export interface OutcomeEvent {
  type: 'outcome';
  id: number;
  time: number;
  broker: string;
  outcome: 'written' | 'acked' | 'dropped';
  reason?: string;
}

/** `notShown`: messages beyond the feed's budget (2,000 described per second). */
export type StatsEvent = Status & { type: 'stats'; time: number; viewerDropped: number; notShown?: number };

export type StreamEvent =
  | { type: 'hello' }
  | MessageEvent
  | OutcomeEvent
  | StatsEvent
  | { type: 'dropped'; viewerDropped: number };

/** A 4xx answer: `field` names the broker field at fault, when there is one. */
export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
    public field?: string,
  ) {
    super(message);
  }
}
