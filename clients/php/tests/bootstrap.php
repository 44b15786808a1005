<?php

// Loads Herald\ from src/ and Herald\Tests\ from tests/ (the mapping in
// composer.json), so that the tests run without `composer install`.

declare(strict_types=1);

spl_autoload_register(static function (string $class): void {
    $roots = ['Herald\\Tests\\' => __DIR__ . '/', 'Herald\\' => dirname(__DIR__) . '/src/'];
    foreach ($roots as $prefix => $directory) {
        if (str_starts_with($class, $prefix)) {
            $file = $directory . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }
            return;
        }
    }
});
