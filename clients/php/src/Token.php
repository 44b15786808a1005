<?php

declare(strict_types=1);

namespace Herald;

use InvalidArgumentException;

/**
 * Connection tokens: JWTs signed with HMAC-SHA256 and herald's `token_secret`,
 * with the claims `herald token` writes (`sub`, `iat`, `exp`, `channels`).
 */
final class Token
{
    /** The shortest token secret herald accepts, in bytes. */
    public const MIN_SECRET_BYTES = 32;

    /**
     * A connection token for a browser or app: it passes it as `?token=` or
     * `Authorization: Bearer`.
     *
     * @param string        $secret     herald's token_secret (at least 32 bytes)
     * @param string        $user       the user id (the `sub` claim); not empty
     * @param int           $ttlSeconds seconds until it expires; 0 for a token that never does
     * @param list<string>  $channels   private channels it grants (`private-x`, `$x`, or a prefix ending in `*`)
     * @param int|null      $now        the issue time as a Unix timestamp (default: now)
     *
     * @throws InvalidArgumentException for a short secret, an empty user or a negative ttl
     */
    public static function mint(
        string $secret,
        string $user,
        int $ttlSeconds = 3600,
        array $channels = [],
        ?int $now = null,
    ): string {
        if (strlen($secret) < self::MIN_SECRET_BYTES) {
            throw new InvalidArgumentException(sprintf(
                'the token secret must be at least %d bytes (herald refuses shorter ones); set HERALD_TOKEN_SECRET',
                self::MIN_SECRET_BYTES,
            ));
        }
        if ($user === '') {
            throw new InvalidArgumentException('the user of a token must not be empty (an empty user is anonymous)');
        }
        if ($ttlSeconds < 0) {
            throw new InvalidArgumentException("the ttl of a token must be 0 (never expires) or more, got $ttlSeconds");
        }
        $now ??= time();
        $claims = ['sub' => $user, 'iat' => $now];
        if ($ttlSeconds > 0) {
            $claims['exp'] = $now + $ttlSeconds;
        }
        if ($channels !== []) {
            $claims['channels'] = array_values($channels);
        }
        $flags = JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE;
        try {
            $body = json_encode($claims, $flags);
        } catch (\JsonException $error) {
            throw new InvalidArgumentException('the user or a channel of a token is not valid UTF-8: ' . $error->getMessage(), 0, $error);
        }
        $head = self::base64url('{"alg":"HS256","typ":"JWT"}');
        $body = self::base64url($body);
        $signature = self::base64url(hash_hmac('sha256', "$head.$body", $secret, true));
        return "$head.$body.$signature";
    }

    private static function base64url(string $bytes): string
    {
        return rtrim(strtr(base64_encode($bytes), '+/', '-_'), '=');
    }
}
