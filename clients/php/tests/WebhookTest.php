<?php

declare(strict_types=1);

namespace Herald\Tests;

use Herald\HeraldException;
use Herald\Webhook;
use PHPUnit\Framework\TestCase;

final class WebhookTest extends TestCase
{
    private const SECRET = '7ad3773142a6692b25b8';
    private const BODY = '{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"my-channel"}]}';
    private const NOW = 1327078148132;

    public function testPushersSignatureOfItsWorkedExample(): void
    {
        $events = Webhook::verify(self::SECRET, [
            'X-Pusher-Key' => '278d425bdf160c739803',
            'X-Pusher-Signature' => 'c19001ae3963ccb13bf618e5b16ba9848e7e74df0993aa0689168e341c6833cf',
        ], self::BODY, self::NOW);
        $this->assertSame([['name' => 'channel_occupied', 'channel' => 'my-channel']], $events);
    }

    public function testHeraldsSignature(): void
    {
        $signature = 'sha256=' . hash_hmac('sha256', self::BODY, self::SECRET);
        $events = Webhook::verify(self::SECRET, ['x-herald-signature' => $signature], self::BODY, self::NOW);
        $this->assertSame('my-channel', $events[0]['channel']);
    }

    /** @return array<string, array{array<string,string>, string, int}> */
    public static function refused(): array
    {
        $good = 'sha256=' . hash_hmac('sha256', self::BODY, self::SECRET);
        return [
            'no signature' => [[], self::BODY, self::NOW],
            'another secret' => [['X-Herald-Signature' => 'sha256=' . hash_hmac('sha256', self::BODY, 'other')], self::BODY, self::NOW],
            'a changed body' => [['X-Herald-Signature' => $good], str_replace('occupied', 'vacated', self::BODY), self::NOW],
            'no prefix' => [['X-Herald-Signature' => substr($good, 7)], self::BODY, self::NOW],
            'stale' => [['X-Herald-Signature' => $good], self::BODY, self::NOW + 300_001],
        ];
    }

    /**
     * @dataProvider refused
     * @param array<string,string> $headers
     */
    public function testRefusals(array $headers, string $body, int $now): void
    {
        $this->expectException(HeraldException::class);
        Webhook::verify(self::SECRET, $headers, $body, $now);
    }
}
