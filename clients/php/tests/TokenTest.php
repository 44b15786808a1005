<?php

declare(strict_types=1);

namespace Herald\Tests;

use Herald\Token;
use InvalidArgumentException;
use PHPUnit\Framework\TestCase;

/** Connection tokens from Herald\Token, checked by a live herald and by decoding them. */
final class TokenTest extends TestCase
{
    public function testAMintedTokenOpensAConnectionAsItsUserWithItsGrants(): void
    {
        $user = Live::user();
        $private = 'private-' . bin2hex(random_bytes(4));
        $token = Token::mint(Live::tokenSecret(), $user, 60, ["$private-*"]);

        $connection = WebSocket::open(Live::url(), '/ws?token=' . rawurlencode($token));
        self::assertSame(101, $connection->status, $connection->statusLine);
        $welcome = $connection->next();
        self::assertSame(['welcome', $user], [$welcome['op'], $welcome['user']]);
        self::assertSame('subscribed', $connection->call(['op' => 'subscribe', 'channel' => "$private-room"])['op']);
        $refused = $connection->call(['op' => 'subscribe', 'channel' => 'private-not-granted']);
        self::assertSame('error', $refused['op']);

        // The same token opens an SSE stream on the user's own channel.
        $stream = EventStream::open(Live::url(), '/sse?channel=' . rawurlencode("notifications#$user")
            . '&token=' . rawurlencode($token));
        self::assertSame(200, $stream->status, $stream->statusLine);
    }

    public function testATokenSignedWithAnotherSecretOrExpiredIsRefused(): void
    {
        $forged = Token::mint(str_repeat('x', 32), Live::user(), 60);
        self::assertSame(401, WebSocket::open(Live::url(), "/ws?token=$forged")->status);

        $expired = Token::mint(Live::tokenSecret(), Live::user(), 60, [], time() - 3600);
        self::assertSame(401, WebSocket::open(Live::url(), "/ws?token=$expired")->status);
    }

    public function testTheTokenCarriesTheClaimsOfHeraldToken(): void
    {
        $secret = str_repeat('s', 32);
        $token = Token::mint($secret, 'u/42', 3600, ['private-a', 'team-*'], 1700000000);
        [$head, $body, $signature] = explode('.', $token);
        $decode = static fn (string $part): string => base64_decode(strtr($part, '-_', '+/'), true);

        self::assertSame('{"alg":"HS256","typ":"JWT"}', $decode($head));
        self::assertSame(
            '{"sub":"u/42","iat":1700000000,"exp":1700003600,"channels":["private-a","team-*"]}',
            $decode($body),
        );
        self::assertSame(hash_hmac('sha256', "$head.$body", $secret, true), $decode($signature));
        self::assertDoesNotMatchRegularExpression('/[=+\/]/', $token);

        $forever = Token::mint($secret, '42', 0, [], 1700000000);
        self::assertSame('{"sub":"42","iat":1700000000}', $decode(explode('.', $forever)[1]));
    }

    /** @return array<string, array{string, string, int, string}> */
    public static function badArguments(): array
    {
        return [
            'short secret' => [str_repeat('s', 31), '42', 60, 'at least 32 bytes'],
            'empty user' => [str_repeat('s', 32), '', 60, 'must not be empty'],
            'negative ttl' => [str_repeat('s', 32), '42', -1, 'got -1'],
            'user not UTF-8' => [str_repeat('s', 32), "\xB1", 60, 'not valid UTF-8'],
        ];
    }

    /** @dataProvider badArguments */
    public function testBadArgumentsAreRefused(string $secret, string $user, int $ttl, string $message): void
    {
        $this->expectException(InvalidArgumentException::class);
        $this->expectExceptionMessage($message);
        Token::mint($secret, $user, $ttl);
    }
}
