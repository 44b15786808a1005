<?php
// Publishes one message to herald and prints the answer.
//
//     HERALD_URL=http://127.0.0.1:8080 HERALD_API_KEY=... \
//         php examples/php/publish.php news '{"title":"Hello"}'
//
// With HERALD_TOKEN_SECRET set it also prints a connection token for user 42.

declare(strict_types=1);

require __DIR__ . '/Herald.php';

$channel = $argv[1] ?? 'news';
try {
    $data = json_decode($argv[2] ?? '{"text":"hello from PHP"}', true, 512, JSON_THROW_ON_ERROR);
} catch (JsonException $error) {
    fwrite(STDERR, "publish.php: the data argument is not valid JSON: {$error->getMessage()}\n");
    exit(2);
}
$url = getenv('HERALD_URL') ?: 'http://127.0.0.1:8080';
$key = getenv('HERALD_API_KEY');
if ($key === false || trim($key) === '') {
    fwrite(STDERR, "publish.php: HERALD_API_KEY is not set: set it to herald's api_key (herald serve --dev prints one)\n");
    exit(2);
}

$herald = new Herald($url, $key);
try {
    $published = $herald->publish($channel, $data);
    echo json_encode(['published' => $published], JSON_UNESCAPED_SLASHES), "\n";
    $secret = getenv('HERALD_TOKEN_SECRET');
    if ($secret !== false && $secret !== '') {
        echo json_encode(['token' => Herald::token($secret, '42', 3600, ['private-42'])]), "\n";
    }
} catch (HeraldException $error) {
    fwrite(STDERR, "herald refused ({$error->status} {$error->errorCode}): {$error->getMessage()}\n");
    exit(1);
}
