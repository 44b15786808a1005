<?php

declare(strict_types=1);

namespace Herald\Tests;

/** A Server-Sent Events stream from `/sse`, read one event at a time. */
final class EventStream extends HttpStream
{
    /** Opens `$path` (e.g. `/sse?channel=news`); check `status` (200) before reading. */
    public static function open(string $url, string $path): self
    {
        return new self($url, $path, ['Accept: text/event-stream']);
    }

    /**
     * The next event, skipping comments (`: ping`) and `retry:`.
     *
     * @return array{event: string, data: mixed, id: string|null}
     */
    public function next(): array
    {
        while (true) {
            $event = 'message';
            $data = [];
            $id = null;
            while (($line = rtrim($this->line(), "\r\n")) !== '') {
                [$field, $value] = explode(':', $line, 2) + [1 => ''];
                $value = ltrim($value, ' ');
                match ($field) {
                    'event' => $event = $value,
                    'data' => $data[] = $value,
                    'id' => $id = $value,
                    default => null,
                };
            }
            if ($data !== []) {
                return [
                    'event' => $event,
                    'data' => json_decode(implode("\n", $data), true, 512, JSON_THROW_ON_ERROR),
                    'id' => $id,
                ];
            }
        }
    }
}
