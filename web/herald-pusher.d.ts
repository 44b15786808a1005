// TypeScript declarations for herald-pusher.js, recovery for pusher-js and Laravel Echo on herald.
// The script defines the global `HeraldPusher` (and `module.exports` where there is one).
//
//   const recovery = HeraldPusher.attach(window.Echo);
//   recovery.on("subscribed", ({ channel, recovered }) => { ... });

export = HeraldPusher;
export as namespace HeraldPusher;

declare namespace HeraldPusher {
  /** Where a channel is: its history's epoch and the offset of the last event delivered. */
  interface Position {
    epoch: string;
    offset: number;
  }

  /** Told after each subscribe herald confirmed, and when herald reports a channel's history lost. */
  interface SubscribedEvent {
    channel: string;
    /** The channel's epoch (8 hex digits); a new one means its history started over. */
    epoch: string;
    /** The channel's newest offset when the subscription began. */
    offset: number;
    /** Present when the subscribe asked to resume: whether every missed event follows. */
    recovered?: boolean;
    /** How many missed events follow, right after this. */
    missed?: number;
  }

  /** The part of a pusher-js 8 instance the module uses. */
  interface PusherLike {
    connection: {
      bind(event: string, callback: (...args: any[]) => void): unknown;
      unbind(event: string, callback: (...args: any[]) => void): unknown;
    };
    send_event(name: string, data: unknown, channel?: string): boolean;
    unsubscribe(channelName: string): void;
  }

  /** A Laravel Echo 2 using the `pusher` or `reverb` broadcaster. */
  interface EchoLike {
    connector: { pusher: PusherLike };
  }

  /** What `attach` returns. */
  interface Recovery {
    readonly version: string;
    /** Each subscribed channel's last position. */
    positions(): Record<string, Position>;
    /** Listens to "subscribed"; returns a function that stops listening. */
    on(event: "subscribed", listener: (event: SubscribedEvent) => void): () => void;
    /** Restores the client as it was; positions are forgotten. */
    detach(): void;
  }

  const version: string;
  /** Attaches recovery (attaching twice returns the same handle). Throws a TypeError for anything else. */
  function attach(target: PusherLike | EchoLike): Recovery;
}
