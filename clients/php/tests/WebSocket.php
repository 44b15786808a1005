<?php

declare(strict_types=1);

namespace Herald\Tests;

use RuntimeException;

/**
 * A minimal WebSocket client for `/ws`: JSON text messages, pings answered,
 * close codes read. Enough to watch what the server API does to a
 * subscriber.
 */
final class WebSocket extends HttpStream
{
    /** @var list<array<string, mixed>> messages read while waiting for a reply */
    private array $pending = [];
    private int $nextId = 0;

    /** Opens `$path` (e.g. `/ws?token=...`); check `status` (101) before using it. */
    public static function open(string $url, string $path = '/ws'): self
    {
        return new self($url, $path, [
            'Upgrade: websocket',
            'Connection: Upgrade',
            'Sec-WebSocket-Key: ' . base64_encode(random_bytes(16)),
            'Sec-WebSocket-Version: 13',
        ]);
    }

    /**
     * Sends a command with a fresh id and returns the reply with that id;
     * pushes that arrive first are kept for {@see next()}.
     *
     * @param array<string, mixed> $command
     *
     * @return array<string, mixed>
     */
    public function call(array $command): array
    {
        $command['id'] = ++$this->nextId;
        $this->sendFrame(0x1, json_encode($command, JSON_THROW_ON_ERROR));
        while (true) {
            $message = $this->receive();
            if (($message['id'] ?? null) === $command['id']) {
                return $message;
            }
            $this->pending[] = $message;
        }
    }

    /**
     * The next message herald pushed, leaving out `join` and `leave` (the
     * `demo` namespace announces who comes and goes).
     *
     * @return array<string, mixed>
     */
    public function next(): array
    {
        do {
            $message = array_shift($this->pending) ?? $this->receive();
        } while (in_array($message['op'] ?? null, ['join', 'leave'], true));
        return $message;
    }

    /** Reads until herald's close frame and returns its code. */
    public function closeCode(): int
    {
        while (true) {
            [$opcode, $payload] = $this->frame();
            if ($opcode === 0x8) {
                return strlen($payload) >= 2 ? unpack('n', $payload)[1] : 1005;
            }
        }
    }

    /** @return array<string, mixed> */
    private function receive(): array
    {
        while (true) {
            [$opcode, $payload] = $this->frame();
            if ($opcode === 0x1) {
                return json_decode($payload, true, 512, JSON_THROW_ON_ERROR);
            }
            if ($opcode === 0x8) {
                $code = strlen($payload) >= 2 ? unpack('n', $payload)[1] : 1005;
                throw new RuntimeException("herald closed the WebSocket with $code while a message was expected");
            }
        }
    }

    /**
     * The next frame (answering pings on the way).
     *
     * @return array{int, string} opcode and payload
     */
    private function frame(): array
    {
        while (true) {
            [$first, $second] = array_values(unpack('C2', $this->read(2)));
            $length = $second & 0x7F;
            if ($length === 126) {
                $length = unpack('n', $this->read(2))[1];
            } elseif ($length === 127) {
                $length = unpack('J', $this->read(8))[1];
            }
            $payload = $length > 0 ? $this->read($length) : '';
            $opcode = $first & 0x0F;
            if ($opcode === 0x9) {
                $this->sendFrame(0xA, $payload);
                continue;
            }
            return [$opcode, $payload];
        }
    }

    private function sendFrame(int $opcode, string $payload): void
    {
        $length = strlen($payload);
        $head = chr(0x80 | $opcode);
        if ($length < 126) {
            $head .= chr(0x80 | $length);
        } elseif ($length < 65536) {
            $head .= chr(0x80 | 126) . pack('n', $length);
        } else {
            $head .= chr(0x80 | 127) . pack('J', $length);
        }
        $mask = random_bytes(4);
        $masked = $payload ^ str_repeat($mask, intdiv($length, 4) + 1);
        $this->write($head . $mask . substr($masked, 0, $length));
    }
}
