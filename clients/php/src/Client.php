<?php

declare(strict_types=1);

namespace Herald;

use CurlHandle;
use InvalidArgumentException;
use JsonException;

/**
 * herald's server API: publish, broadcast, disconnect, unsubscribe, presence,
 * history, channels, info.
 *
 *     $herald = new Herald\Client('http://127.0.0.1:8080', getenv('HERALD_API_KEY'));
 *     $herald->publish('notifications#42', ['type' => 'invoice.paid', 'id' => 981]);
 *
 * Requests go over one curl handle, so consecutive calls reuse one
 * keep-alive connection. Every failure is a {@see HeraldException}.
 */
final class Client
{
    private const JSON_FLAGS = JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE
        | JSON_PRESERVE_ZERO_FRACTION;

    private readonly string $url;
    private readonly string $apiKey;
    private ?CurlHandle $curl = null;

    /**
     * @param string            $url     herald's address, e.g. http://127.0.0.1:8080
     * @param string|false|null $apiKey  herald's api_key; `getenv('HERALD_API_KEY')` may be passed as is
     * @param float             $timeout seconds one call may take in all
     *
     * @throws InvalidArgumentException when the key is missing or empty, or the URL is not http(s)
     */
    public function __construct(
        string $url,
        string|false|null $apiKey,
        private readonly float $timeout = 5.0,
    ) {
        if ($apiKey === null || $apiKey === false || trim($apiKey) === '') {
            throw new InvalidArgumentException(
                'herald: no API key: set HERALD_API_KEY to herald\'s api_key (herald serve --dev prints one)',
            );
        }
        if (!preg_match('#^https?://[^/]#i', $url)) {
            throw new InvalidArgumentException(
                "herald: the URL must start with http:// or https://, got \"$url\" (set HERALD_URL)",
            );
        }
        $this->url = rtrim($url, '/');
        $this->apiKey = $apiKey;
    }

    /**
     * Publishes `$data` to a channel.
     *
     * @param string      $channel       e.g. `news`, `chat:lobby`, `notifications#42`
     * @param mixed       $data          any JSON-encodable value (an empty object is `new \stdClass()`)
     * @param string|null $excludeClient a connection id that should not get it
     *
     * @return array{epoch: string, offset: int}
     *
     * @throws HeraldException
     */
    public function publish(string $channel, mixed $data, ?string $excludeClient = null): array
    {
        $body = ['channel' => $channel, 'data' => $data];
        if ($excludeClient !== null) {
            $body['exclude_client'] = $excludeClient;
        }
        return $this->post('publish', $body);
    }

    /**
     * Publishes the same data to several channels: to all of them, or to
     * none when one is refused.
     *
     * @param list<string> $channels
     *
     * @return list<array{channel: string, epoch: string, offset: int}>
     *
     * @throws HeraldException
     */
    public function broadcast(array $channels, mixed $data, ?string $excludeClient = null): array
    {
        $body = ['channels' => array_values($channels), 'data' => $data];
        if ($excludeClient !== null) {
            $body['exclude_client'] = $excludeClient;
        }
        return $this->post('broadcast', $body)['results'];
    }

    /**
     * Closes every connection of a user (close code 4000), on every shard
     * and node.
     *
     * @return int how many connections were closed
     *
     * @throws HeraldException
     */
    public function disconnect(string $user): int
    {
        return $this->post('disconnect', ['user' => $user])['disconnected'];
    }

    /**
     * Removes a user's connections from a channel; each gets an
     * `unsubscribed` push.
     *
     * @return int how many connections were subscribed
     *
     * @throws HeraldException
     */
    public function unsubscribe(string $user, string $channel): int
    {
        return $this->post('unsubscribe', ['user' => $user, 'channel' => $channel])['unsubscribed'];
    }

    /**
     * The connections subscribed to a channel (its namespace needs `presence`).
     *
     * @return list<array{client: string, user: string}>
     *
     * @throws HeraldException
     */
    public function presence(string $channel): array
    {
        return $this->get('presence', ['channel' => $channel])['clients'];
    }

    /**
     * A channel's history: all of it, or what follows a position (`$sinceOffset`
     * in `$epoch`), at most `$limit` publications.
     *
     * @return array{channel: string, epoch: string, offset: int, publications: list<array{offset: int, data: mixed}>}
     *
     * @throws HeraldException
     */
    public function history(string $channel, ?int $sinceOffset = null, ?string $epoch = null, ?int $limit = null): array
    {
        $query = ['channel' => $channel];
        if ($sinceOffset !== null) {
            $query['since_offset'] = $sinceOffset;
            $query['epoch'] = $epoch;
        }
        if ($limit !== null) {
            $query['limit'] = $limit;
        }
        return $this->get('history', $query);
    }

    /**
     * The channels that have subscribers, optionally only those whose name
     * starts with `$prefix`.
     *
     * @return list<array{channel: string, subscribers: int}>
     *
     * @throws HeraldException
     */
    public function channels(string $prefix = ''): array
    {
        return $this->get('channels', $prefix === '' ? [] : ['prefix' => $prefix])['channels'];
    }

    /**
     * The node: `node`, `version`, `uptime_secs`, `connections`, `shards`,
     * `channels`, `engine`, `nodes`.
     *
     * @return array<string, mixed>
     *
     * @throws HeraldException
     */
    public function info(): array
    {
        return $this->get('info', []);
    }

    /**
     * @param array<string, mixed> $body
     *
     * @return array<string, mixed>
     */
    private function post(string $endpoint, array $body): array
    {
        try {
            $json = json_encode($body, self::JSON_FLAGS);
        } catch (JsonException $error) {
            throw new HeraldException(
                "herald: the data cannot be encoded as JSON: {$error->getMessage()} (nothing was sent)",
                0,
                'bad_request',
                $error,
            );
        }
        return $this->call('POST', "/api/$endpoint", $json);
    }

    /**
     * @param array<string, scalar|null> $query
     *
     * @return array<string, mixed>
     */
    private function get(string $endpoint, array $query): array
    {
        $path = "/api/$endpoint";
        if ($query !== []) {
            $path .= '?' . http_build_query($query, '', '&', PHP_QUERY_RFC3986);
        }
        return $this->call('GET', $path, null);
    }

    /**
     * @return array<string, mixed>
     */
    private function call(string $method, string $path, ?string $body): array
    {
        $this->curl ??= curl_init();
        $headers = ['Authorization: apikey ' . $this->apiKey, 'Expect:'];
        if ($body !== null) {
            $headers[] = 'Content-Type: application/json';
        }
        curl_reset($this->curl);
        curl_setopt_array($this->curl, [
            CURLOPT_URL => $this->url . $path,
            CURLOPT_CUSTOMREQUEST => $method,
            CURLOPT_HTTPHEADER => $headers,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_TIMEOUT_MS => (int) ($this->timeout * 1000),
            CURLOPT_CONNECTTIMEOUT_MS => (int) (min($this->timeout, 2.0) * 1000),
        ]);
        if ($body !== null) {
            curl_setopt($this->curl, CURLOPT_POSTFIELDS, $body);
        }
        $raw = curl_exec($this->curl);
        if (!is_string($raw)) {
            throw new HeraldException("herald not reached at {$this->url}: " . curl_error($this->curl));
        }
        $status = (int) curl_getinfo($this->curl, CURLINFO_RESPONSE_CODE);
        $answer = json_decode($raw, true);
        if ($status !== 200) {
            $error = is_array($answer) && is_array($answer['error'] ?? null) ? $answer['error'] : [];
            throw new HeraldException(
                'herald refused ' . substr($path, 0, strcspn($path, '?')) . " ($status): "
                    . ($error['message'] ?? 'no error message'),
                $status,
                $error['code'] ?? 'unavailable',
            );
        }
        if (!is_array($answer)) {
            throw new HeraldException("herald answered $path with something that is not JSON", $status);
        }
        return $answer;
    }
}
