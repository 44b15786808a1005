<?php

declare(strict_types=1);

namespace Herald;

/**
 * Webhooks from herald: checks that a request was signed with your secret
 * and reads its events. herald signs the exact bytes of the body, HMAC-SHA256
 * in lowercase hex: `X-Herald-Signature: sha256=HEX` (namespaces, with
 * `webhook_secret`) or `X-Pusher-Signature: HEX` (Pusher apps, with the
 * app's secret). Each request carries one event; a repeat (herald delivers
 * at least once) has the same `X-Herald-Webhook-Id`.
 */
final class Webhook
{
    /** How far the body's `time_ms` may be from now before it is refused as stale, in ms. */
    public const MAX_AGE_MS = 300_000;

    /**
     * The events of a signed request, or an exception saying why it is not
     * one: a missing or wrong signature, a body that is not herald's, or one
     * older than five minutes (a replay).
     *
     * @param string               $secret  webhook_secret (or the Pusher app's secret)
     * @param array<string,string> $headers the request's headers (any case)
     * @param string               $body    the raw body, exactly as received (php://input)
     * @param int|null             $nowMs   now in Unix ms (default: the clock)
     *
     * @return list<array<string,mixed>> the events: name, channel, and user_id, event, data, socket_id where they apply
     *
     * @throws HeraldException
     */
    public static function verify(string $secret, array $headers, string $body, ?int $nowMs = null): array
    {
        $headers = array_change_key_case($headers, CASE_LOWER);
        $expected = hash_hmac('sha256', $body, $secret);
        if (isset($headers['x-herald-signature'])) {
            $given = $headers['x-herald-signature'];
            $valid = str_starts_with($given, 'sha256=') && hash_equals($expected, strtolower(substr($given, 7)));
        } elseif (isset($headers['x-pusher-signature'])) {
            $valid = hash_equals($expected, strtolower($headers['x-pusher-signature']));
        } else {
            throw new HeraldException('webhook: no X-Herald-Signature or X-Pusher-Signature header');
        }
        if (!$valid) {
            throw new HeraldException('webhook: the signature does not match the body (wrong secret, or the body was changed)');
        }
        try {
            $decoded = json_decode($body, true, 16, JSON_THROW_ON_ERROR);
        } catch (\JsonException $error) {
            throw new HeraldException('webhook: the body is not JSON: ' . $error->getMessage());
        }
        if (!is_array($decoded) || !is_int($decoded['time_ms'] ?? null) || !is_array($decoded['events'] ?? null)) {
            throw new HeraldException('webhook: the body has no time_ms and events');
        }
        $nowMs ??= (int) floor(microtime(true) * 1000);
        if (abs($nowMs - $decoded['time_ms']) > self::MAX_AGE_MS) {
            throw new HeraldException('webhook: time_ms is more than five minutes from now (a replay?)');
        }
        return array_values($decoded['events']);
    }
}
