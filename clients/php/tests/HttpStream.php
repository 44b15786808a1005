<?php

declare(strict_types=1);

namespace Herald\Tests;

use RuntimeException;

/**
 * A raw HTTP/1.1 connection to herald that stays open after the response
 * head: the base of the WebSocket and SSE clients of the tests. Every read
 * waits at most `TIMEOUT` seconds.
 */
abstract class HttpStream
{
    public const TIMEOUT = 5;

    /** @var resource */
    protected $socket;

    /** The response's status line, e.g. `HTTP/1.1 101 Switching Protocols`. */
    public readonly string $statusLine;

    /** The response's status code. */
    public readonly int $status;

    /** @var array<string, string> the response's headers, names in lower case */
    public readonly array $headers;

    /**
     * Sends a GET request for `$path` to the herald at `$url` with extra
     * header lines, and reads the response head.
     *
     * @param list<string> $headers
     */
    protected function __construct(string $url, string $path, array $headers)
    {
        $parts = parse_url($url);
        if (($parts['scheme'] ?? '') !== 'http' || !isset($parts['host'])) {
            throw new RuntimeException("the tests talk to herald over http://, got $url");
        }
        $host = $parts['host'] . ':' . ($parts['port'] ?? 80);
        $socket = stream_socket_client("tcp://$host", $errno, $error, self::TIMEOUT);
        if ($socket === false) {
            throw new RuntimeException("cannot connect to $host: $error");
        }
        stream_set_timeout($socket, self::TIMEOUT);
        $this->socket = $socket;
        $request = "GET $path HTTP/1.1\r\nHost: $host\r\n" . implode('', array_map(
            static fn (string $line): string => "$line\r\n",
            $headers,
        )) . "\r\n";
        $this->write($request);

        $this->statusLine = rtrim($this->line(), "\r\n");
        $this->status = (int) (explode(' ', $this->statusLine)[1] ?? 0);
        $fields = [];
        while (($line = rtrim($this->line(), "\r\n")) !== '') {
            [$name, $value] = array_map('trim', explode(':', $line, 2)) + [1 => ''];
            $fields[strtolower($name)] = $value;
        }
        $this->headers = $fields;
    }

    public function __destruct()
    {
        fclose($this->socket);
    }

    protected function write(string $bytes): void
    {
        while ($bytes !== '') {
            $written = fwrite($this->socket, $bytes);
            if ($written === false || $written === 0) {
                throw new RuntimeException('cannot write to herald');
            }
            $bytes = substr($bytes, $written);
        }
    }

    /** One line, with its line end. */
    protected function line(): string
    {
        $line = fgets($this->socket);
        if ($line === false) {
            $this->fail('a line');
        }
        return $line;
    }

    /** Exactly `$length` bytes. */
    protected function read(int $length): string
    {
        $bytes = '';
        while (strlen($bytes) < $length) {
            $chunk = fread($this->socket, $length - strlen($bytes));
            if ($chunk === false || $chunk === '') {
                $this->fail("$length bytes");
            }
            $bytes .= $chunk;
        }
        return $bytes;
    }

    private function fail(string $what): never
    {
        $meta = stream_get_meta_data($this->socket);
        $why = $meta['timed_out'] ? 'nothing came within ' . self::TIMEOUT . ' s' : 'the connection was closed';
        throw new RuntimeException("expected $what from herald, but $why");
    }
}
