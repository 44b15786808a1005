<?php

declare(strict_types=1);

namespace Herald\Tests;

use Herald\Client;
use PHPUnit\Framework\Assert;

/**
 * The herald the tests run against, from HERALD_URL, HERALD_API_KEY and
 * HERALD_TOKEN_SECRET. Channels are `demo:...`, the namespace that
 * `herald serve --dev` configures with history and presence, each with a
 * random suffix so that runs do not see each other's publications.
 */
final class Live
{
    public static function url(): string
    {
        return rtrim(self::env('HERALD_URL'), '/');
    }

    public static function apiKey(): string
    {
        return self::env('HERALD_API_KEY');
    }

    public static function tokenSecret(): string
    {
        return self::env('HERALD_TOKEN_SECRET');
    }

    public static function client(): Client
    {
        return new Client(self::url(), self::apiKey());
    }

    /** A channel name nobody else uses: `demo:$what-<random>`. */
    public static function channel(string $what): string
    {
        return "demo:$what-" . bin2hex(random_bytes(6));
    }

    /** A user id nobody else uses. */
    public static function user(): string
    {
        return 'php-' . bin2hex(random_bytes(6));
    }

    /** An http:// URL on 127.0.0.1 where nothing listens. */
    public static function closedUrl(): string
    {
        $server = stream_socket_server('tcp://127.0.0.1:0');
        Assert::assertNotFalse($server, 'cannot bind 127.0.0.1:0');
        $address = stream_socket_get_name($server, false);
        fclose($server);
        return "http://$address";
    }

    private static function env(string $name): string
    {
        $value = getenv($name);
        if ($value === false || $value === '') {
            Assert::fail(
                "set $name: these tests need a running herald (herald serve --dev prints its address, "
                    . 'api_key and token_secret; pass them as HERALD_URL, HERALD_API_KEY, HERALD_TOKEN_SECRET)',
            );
        }
        return $value;
    }
}
