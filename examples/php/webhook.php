<?php
// A webhook receiver for herald: checks the signature, then handles each
// event once (herald delivers at least once; a repeat has the same
// X-Herald-Webhook-Id). Answer 2xx only once the event is handled: herald
// retries anything else for five minutes.
//
//   HERALD_WEBHOOK_SECRET=... php -S 127.0.0.1:9000 examples/php/webhook.php
//
// and in herald.toml:
//
//   webhook_secret = "..."            # the same secret
//   [namespaces.chat]
//   webhook_url = "http://127.0.0.1:9000/"
//
// (For a Pusher app, verify with the app's secret: herald signs its requests
// with X-Pusher-Signature as Pusher does.)

declare(strict_types=1);

require __DIR__ . '/../../clients/php/src/HeraldException.php';
require __DIR__ . '/../../clients/php/src/Webhook.php';

$secret = getenv('HERALD_WEBHOOK_SECRET') ?: '';
$body = file_get_contents('php://input') ?: '';
$headers = function_exists('getallheaders') ? getallheaders() : [];
try {
    $events = Herald\Webhook::verify($secret, $headers, $body);
} catch (Herald\HeraldException $error) {
    http_response_code(401);
    error_log($error->getMessage());
    exit;
}

// Drop repeats: here a file of ids seen; a real app uses its database.
$id = array_change_key_case($headers, CASE_LOWER)['x-herald-webhook-id'] ?? '';
$seen = getenv('HERALD_WEBHOOK_SEEN') ?: sys_get_temp_dir() . '/herald-webhooks-seen';
$handle = fopen($seen, 'c+');
flock($handle, LOCK_EX);
$ids = explode("\n", (string) stream_get_contents($handle));
if (!in_array($id, $ids, true)) {
    foreach ($events as $event) {
        // What your app does with it: mark a user online or offline, ...
        $line = json_encode(['id' => $id] + $event, JSON_UNESCAPED_SLASHES) . "\n";
        file_put_contents(getenv('HERALD_WEBHOOK_LOG') ?: 'php://stdout', $line, FILE_APPEND);
    }
    fwrite($handle, $id . "\n");
}
flock($handle, LOCK_UN);
fclose($handle);
http_response_code(204);
