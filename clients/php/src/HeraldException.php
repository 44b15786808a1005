<?php

declare(strict_types=1);

namespace Herald;

use RuntimeException;
use Throwable;

/**
 * A server API call that failed.
 *
 * `status` is the HTTP status herald answered, or 0 when herald was not
 * reached or the call was refused before anything was sent; `errorCode` is
 * herald's error code (`bad_request`, `unauthorized`, `not_found`,
 * `limit_exceeded`, `unavailable`, ...).
 */
final class HeraldException extends RuntimeException
{
    /**
     * @param string         $message   one line saying what went wrong
     * @param int            $status    the HTTP status (0: nothing was answered)
     * @param string         $errorCode herald's error code
     * @param Throwable|null $previous  the underlying error, if any
     */
    public function __construct(
        string $message,
        public readonly int $status = 0,
        public readonly string $errorCode = 'unavailable',
        ?Throwable $previous = null,
    ) {
        parent::__construct($message, $status, $previous);
    }
}
