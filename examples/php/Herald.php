<?php
// herald's server API from PHP: publish, broadcast, disconnect, unsubscribe,
// presence, history, channels, info, and connection tokens. One file, no
// Composer dependencies; needs the curl extension (php-curl) and json.
//
//     require 'Herald.php';
//     $herald = new Herald('http://127.0.0.1:8080', getenv('HERALD_API_KEY'));
//     $herald->publish('news', ['title' => 'Hello']);
//     $token = Herald::token(getenv('HERALD_TOKEN_SECRET'), '42', 3600);

declare(strict_types=1);

/** An API call that failed: `status` is the HTTP status (0 when herald was not reached), `errorCode` herald's error code. */
final class HeraldException extends RuntimeException
{
    public function __construct(
        string $message,
        public readonly int $status = 0,
        public readonly string $errorCode = 'unavailable',
    ) {
        parent::__construct($message, $status);
    }
}

final class Herald
{
    /** @var CurlHandle|null one handle, so that requests reuse one keep-alive connection */
    private $curl = null;
    private readonly string $apiKey;

    /**
     * @param string            $url      herald's address, e.g. http://127.0.0.1:8080
     * @param string|false|null $apiKey   herald's api_key (getenv('HERALD_API_KEY') may be passed as is)
     * @param float             $timeout  seconds a call may take in all
     */
    public function __construct(
        private readonly string $url,
        string|false|null $apiKey,
        private readonly float $timeout = 5.0,
    ) {
        if ($apiKey === null || $apiKey === false || trim($apiKey) === '') {
            throw new InvalidArgumentException(
                'herald: no API key: set HERALD_API_KEY to herald\'s api_key (herald serve --dev prints one)',
            );
        }
        $this->apiKey = $apiKey;
    }

    public function __destruct()
    {
        if ($this->curl !== null) {
            curl_close($this->curl);
        }
    }

    /** Publishes `$data` (any JSON-encodable value) to a channel. Returns ['epoch' => .., 'offset' => ..]. */
    public function publish(string $channel, mixed $data, ?string $excludeClient = null): array
    {
        $body = ['channel' => $channel, 'data' => $data];
        if ($excludeClient !== null) {
            $body['exclude_client'] = $excludeClient;
        }
        return $this->post('publish', $body);
    }

    /** Publishes the same data to several channels: all of them, or none when one is refused. */
    public function broadcast(array $channels, mixed $data, ?string $excludeClient = null): array
    {
        $body = ['channels' => array_values($channels), 'data' => $data];
        if ($excludeClient !== null) {
            $body['exclude_client'] = $excludeClient;
        }
        return $this->post('broadcast', $body)['results'];
    }

    /** Closes every connection of a user (close code 4000). Returns how many were closed. */
    public function disconnect(string $user): int
    {
        return $this->post('disconnect', ['user' => $user])['disconnected'];
    }

    /** Removes a user's connections from a channel. Returns how many were subscribed. */
    public function unsubscribe(string $user, string $channel): int
    {
        return $this->post('unsubscribe', ['user' => $user, 'channel' => $channel])['unsubscribed'];
    }

    /** The clients subscribed to a channel: [['client' => .., 'user' => ..], ..]. */
    public function presence(string $channel): array
    {
        return $this->get('presence', ['channel' => $channel])['clients'];
    }

    /** A channel's history after a position (both null: all of it). */
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

    /** Channels with subscribers: [['channel' => .., 'subscribers' => ..], ..]. */
    public function channels(string $prefix = ''): array
    {
        return $this->get('channels', $prefix === '' ? [] : ['prefix' => $prefix])['channels'];
    }

    /** The node: version, uptime, connections, ... */
    public function info(): array
    {
        return $this->get('info', []);
    }

    /**
     * A connection token (JWT, HS256) for a browser or app: pass it as ?token= or
     * Authorization: Bearer. `$channels` lists the private channels it may use
     * (an entry ending in * is a prefix).
     */
    public static function token(string $secret, string $user, int $ttlSeconds = 3600, array $channels = []): string
    {
        $now = time();
        $claims = ['sub' => $user, 'iat' => $now, 'exp' => $now + $ttlSeconds];
        if ($channels !== []) {
            $claims['channels'] = array_values($channels);
        }
        $encode = static fn (string $bytes): string => rtrim(strtr(base64_encode($bytes), '+/', '-_'), '=');
        $head = $encode(json_encode(['alg' => 'HS256', 'typ' => 'JWT'], JSON_THROW_ON_ERROR));
        $body = $encode(json_encode($claims, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES));
        $signature = $encode(hash_hmac('sha256', "$head.$body", $secret, true));
        return "$head.$body.$signature";
    }

    private function post(string $endpoint, array $body): array
    {
        try {
            $json = json_encode($body, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
        } catch (JsonException $error) {
            throw new HeraldException(
                "herald: the data cannot be encoded as JSON: {$error->getMessage()} (nothing was sent)",
                0,
                'bad_request',
            );
        }
        return $this->call('POST', "/api/$endpoint", $json);
    }

    private function get(string $endpoint, array $query): array
    {
        $path = "/api/$endpoint";
        if ($query !== []) {
            $path .= '?' . http_build_query($query, '', '&', PHP_QUERY_RFC3986);
        }
        return $this->call('GET', $path, null);
    }

    private function call(string $method, string $path, ?string $body): array
    {
        if ($this->curl === null) {
            $this->curl = curl_init();
        }
        $headers = ['Authorization: apikey ' . $this->apiKey, 'Expect:'];
        if ($body !== null) {
            $headers[] = 'Content-Type: application/json';
        }
        curl_reset($this->curl);
        curl_setopt_array($this->curl, [
            CURLOPT_URL => rtrim($this->url, '/') . $path,
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
        if ($raw === false) {
            throw new HeraldException('herald not reached: ' . curl_error($this->curl));
        }
        $status = curl_getinfo($this->curl, CURLINFO_RESPONSE_CODE);
        $answer = json_decode($raw, true);
        if ($status !== 200) {
            $error = is_array($answer) ? ($answer['error'] ?? []) : [];
            throw new HeraldException(
                $error['message'] ?? "herald answered $status",
                $status,
                $error['code'] ?? 'unavailable',
            );
        }
        if (!is_array($answer)) {
            throw new HeraldException('herald answered something that is not JSON', $status);
        }
        return $answer;
    }
}
