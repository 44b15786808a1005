<?php

declare(strict_types=1);

namespace Herald\Tests;

use Herald\Client;
use Herald\HeraldException;
use Herald\Token;
use InvalidArgumentException;
use PHPUnit\Framework\TestCase;

/** Every call of Herald\Client against a live herald, watched from real subscribers. */
final class ClientTest extends TestCase
{
    public function testAPublicationReachesAWebSocketSubscriber(): void
    {
        $channel = Live::channel('ws');
        $subscriber = WebSocket::open(Live::url());
        self::assertSame(101, $subscriber->status, $subscriber->statusLine);
        self::assertSame('welcome', $subscriber->next()['op']);
        self::assertSame('subscribed', $subscriber->call(['op' => 'subscribe', 'channel' => $channel])['op']);

        $published = Live::client()->publish($channel, ['title' => 'from PHP', 'price' => 1.0, 'tags' => []]);

        self::assertSame(1, $published['offset']);
        self::assertIsString($published['epoch']);
        $push = $subscriber->next();
        self::assertSame('message', $push['op']);
        self::assertSame($channel, $push['channel']);
        self::assertSame(1, $push['offset']);
        // 1.0 stays a float on the wire (JSON_PRESERVE_ZERO_FRACTION).
        self::assertSame(['title' => 'from PHP', 'price' => 1.0, 'tags' => []], $push['data']);
    }

    public function testAPublicationReachesAnSseSubscriber(): void
    {
        $channel = Live::channel('sse');
        $stream = EventStream::open(Live::url(), '/sse?channel=' . rawurlencode($channel));
        self::assertSame(200, $stream->status, $stream->statusLine);
        self::assertSame('text/event-stream', $stream->headers['content-type'] ?? null);
        $subscribed = $stream->next();
        self::assertSame('subscribed', $subscribed['event']);

        Live::client()->publish($channel, 'hello, SSE');

        $message = $stream->next();
        self::assertSame('message', $message['event']);
        self::assertSame(['channel' => $channel, 'offset' => 1, 'data' => 'hello, SSE'], $message['data']);
    }

    public function testABroadcastPublishesToEveryChannelOrToNone(): void
    {
        $herald = Live::client();
        [$first, $second] = [Live::channel('broadcast-a'), Live::channel('broadcast-b')];

        $results = $herald->broadcast([$first, $second], ['n' => 1]);
        self::assertSame([$first, $second], array_column($results, 'channel'));
        self::assertSame([1, 1], array_column($results, 'offset'));

        foreach (['bad channel' => [400, 'bad_request'], 'nowhere:x' => [404, 'not_found']] as $bad => $expected) {
            try {
                $herald->broadcast([$first, $bad], ['n' => 2]);
                self::fail("a broadcast to \"$bad\" was accepted");
            } catch (HeraldException $error) {
                self::assertSame($expected, [$error->status, $error->errorCode], $error->getMessage());
            }
        }
        // Refused as a whole: the good channel got nothing either.
        self::assertSame(1, $herald->history($first)['offset']);
        self::assertCount(1, $herald->history($first)['publications']);
    }

    public function testUnsubscribeAndDisconnectCountTheUsersConnections(): void
    {
        $herald = Live::client();
        $user = Live::user();
        $channel = Live::channel('users');
        $token = Token::mint(Live::tokenSecret(), $user, 60);
        $connections = [];
        foreach ([1, 2] as $_) {
            $connection = WebSocket::open(Live::url(), '/ws?token=' . rawurlencode($token));
            self::assertSame(101, $connection->status, $connection->statusLine);
            self::assertSame($user, $connection->next()['user']);
            self::assertSame('subscribed', $connection->call(['op' => 'subscribe', 'channel' => $channel])['op']);
            $connections[] = $connection;
        }

        self::assertSame(2, $herald->unsubscribe($user, $channel));
        foreach ($connections as $connection) {
            $push = $connection->next();
            self::assertSame(['unsubscribed', $channel], [$push['op'], $push['channel']]);
        }
        self::assertSame(0, $herald->unsubscribe($user, $channel));

        self::assertSame(2, $herald->disconnect($user));
        foreach ($connections as $connection) {
            self::assertSame(4000, $connection->closeCode());
        }
        self::assertSame(0, $herald->disconnect(Live::user()));
    }

    public function testPresenceListsEachSubscribedConnection(): void
    {
        $user = Live::user();
        $channel = Live::channel('presence');
        $connection = WebSocket::open(Live::url(), '/ws?token=' . Token::mint(Live::tokenSecret(), $user, 60));
        $client = $connection->next()['client'];
        $connection->call(['op' => 'subscribe', 'channel' => $channel]);

        self::assertSame([['client' => $client, 'user' => $user]], Live::client()->presence($channel));
        self::assertSame([], Live::client()->presence(Live::channel('empty')));
    }

    public function testHistoryAllOfItOrFromAPosition(): void
    {
        $herald = Live::client();
        $channel = Live::channel('history');
        foreach (['one', 'two', 'three'] as $text) {
            $herald->publish($channel, ['text' => $text]);
        }

        $all = $herald->history($channel);
        self::assertSame($channel, $all['channel']);
        self::assertSame(3, $all['offset']);
        self::assertSame([1, 2, 3], array_column($all['publications'], 'offset'));
        self::assertSame(['text' => 'one'], $all['publications'][0]['data']);

        $after = $herald->history($channel, 1, $all['epoch'], 1);
        self::assertSame([['offset' => 2, 'data' => ['text' => 'two']]], $after['publications']);
    }

    public function testChannelsCountsSubscribersAndInfoDescribesTheNode(): void
    {
        $prefix = Live::channel('channels');
        $channel = "$prefix-x";
        $subscriber = WebSocket::open(Live::url());
        $subscriber->next();
        $subscriber->call(['op' => 'subscribe', 'channel' => $channel]);

        self::assertSame([['channel' => $channel, 'subscribers' => 1]], Live::client()->channels($prefix));

        $info = Live::client()->info();
        foreach (['node', 'version', 'uptime_secs', 'connections', 'shards', 'channels', 'engine', 'nodes'] as $key) {
            self::assertArrayHasKey($key, $info);
        }
        self::assertGreaterThanOrEqual(1, $info['connections']);
        self::assertIsString($info['version']);
    }

    public function testAWrongKeyIsAHeraldExceptionWith401(): void
    {
        try {
            (new Client(Live::url(), 'not-the-key-' . bin2hex(random_bytes(8))))->info();
            self::fail('a wrong key was accepted');
        } catch (HeraldException $error) {
            self::assertSame(401, $error->status);
            self::assertSame('unauthorized', $error->errorCode);
            self::assertStringStartsWith('herald refused /api/info (401): ', $error->getMessage());
        }
    }

    /** @return array<string, array{string|false|null}> */
    public static function missingKeys(): array
    {
        return ['empty' => [''], 'blank' => ['  '], 'unset (getenv)' => [false], 'null' => [null]];
    }

    /** @dataProvider missingKeys */
    public function testAMissingKeyIsRefusedBeforeAnythingIsSent(string|false|null $key): void
    {
        $this->expectException(InvalidArgumentException::class);
        $this->expectExceptionMessage('set HERALD_API_KEY');
        new Client(Live::closedUrl(), $key);
    }

    public function testAUrlThatIsNotHttpIsRefused(): void
    {
        $this->expectException(InvalidArgumentException::class);
        $this->expectExceptionMessage('the URL must start with http:// or https://, got "127.0.0.1:8080"');
        new Client('127.0.0.1:8080', 'some-key-0123456789');
    }

    public function testDataThatCannotBeJsonIsRefusedBeforeAnythingIsSent(): void
    {
        // Nothing listens there: a transport error would mean it tried to send.
        $herald = new Client(Live::closedUrl(), 'some-key-0123456789');
        foreach (["\xB1\x31" => 'Malformed UTF-8', 'NAN' => 'Inf and NaN'] as $name => $reason) {
            $data = $name === 'NAN' ? NAN : $name;
            try {
                $herald->publish('news', ['text' => $data]);
                self::fail('unencodable data was sent');
            } catch (HeraldException $error) {
                self::assertSame([0, 'bad_request'], [$error->status, $error->errorCode]);
                self::assertStringStartsWith('herald: the data cannot be encoded as JSON: ', $error->getMessage());
                self::assertStringContainsString($reason, $error->getMessage());
            }
        }
    }

    public function testATransportFailureIsOneHeraldException(): void
    {
        $url = Live::closedUrl();
        try {
            (new Client($url, 'some-key-0123456789', 2.0))->info();
            self::fail('a call to a closed port succeeded');
        } catch (HeraldException $error) {
            self::assertSame([0, 'unavailable'], [$error->status, $error->errorCode]);
            self::assertStringStartsWith("herald not reached at $url: ", $error->getMessage());
            self::assertStringNotContainsString("\n", $error->getMessage());
        }
    }
}
