// TypeScript declarations for herald.js, the browser client of herald.

export type State = "connecting" | "connected" | "disconnected" | "closed";
export type Transport = "websocket" | "sse";

export interface Options {
  /** Connection token (JWT signed by your backend with herald's token_secret). */
  token?: string | null;
  /** Called before each reconnect (and at first, without `token`) for a fresh token. */
  getToken?: (() => Promise<string> | string) | null;
  /** Transports to try, in order. Default `["websocket", "sse"]`. */
  transports?: Transport[];
  /** First reconnect delay in ms (default 500); doubles per attempt, with jitter. */
  minDelay?: number;
  /** Longest reconnect delay in ms (default 20000). */
  maxDelay?: number;
  /** How long a WebSocket may take to be welcomed, in ms (default 10000). */
  connectTimeout?: number;
  /** WebSocket attempts that never open before falling back to SSE (default 2). */
  wsFailuresBeforeFallback?: number;
  /** Connect in the constructor (default true). */
  autoConnect?: boolean;
}

export interface Publication<T = unknown> {
  channel: string;
  offset: number;
  data: T;
}

export interface StateEvent {
  state: State;
  transport: Transport;
  attempt?: number;
  delay?: number;
  code?: number;
  reason?: string;
  client?: string;
}

export interface SubscribedEvent {
  channel: string;
  epoch: string;
  offset: number;
  /** Present after a reconnect: whether everything missed was replayed. */
  recovered?: boolean;
  missed?: number;
}

export interface PresenceEvent {
  op: "join" | "leave";
  channel: string;
  client: string;
  user: string;
}

export interface Subscription {
  unsubscribe(): void;
}

export interface EventMap {
  state: StateEvent;
  message: Publication;
  subscribed: SubscribedEvent;
  unsubscribed: { channel: string };
  reconnecting: { delay: number; attempt: number };
  join: PresenceEvent;
  leave: PresenceEvent;
  error: { error: Error; channel?: string };
}

export class Herald {
  constructor(url: string, options?: Options);
  readonly state: State;
  readonly transport: Transport;
  /** This connection's client id (WebSocket), once connected. */
  readonly client: string | null;
  readonly user: string | null;
  on<K extends keyof EventMap>(event: K, listener: (detail: EventMap[K]) => void): () => void;
  connect(): void;
  close(): void;
  subscribe<T = unknown>(
    channel: string,
    callback: (data: T, publication: Publication<T>) => void,
  ): Subscription;
  /** WebSocket only. */
  publish(channel: string, data: unknown, options?: { skipSelf?: boolean }): Promise<{ epoch: string; offset: number }>;
  /** WebSocket only. */
  presence(channel: string): Promise<{ client: string; user: string }[]>;
  /** WebSocket only. */
  history(
    channel: string,
    options?: { since?: { epoch: string; offset: number } | null; limit?: number },
  ): Promise<{ epoch: string; offset: number; publications: { offset: number; data: unknown }[] }>;
}

export default Herald;
