// uws-server: a uWebSockets reference server speaking the benchmark subset
// of herald's protocol, exactly as bench/src/bin/herald-reference.rs does,
// for herald-bench's `uws` server. A comparison server only: herald never
// depends on it. Built by bench/uws/build.sh.
//
//   uws-server [--port N] [--api-key KEY]
//
// One event loop, one thread, uWS::App without SSL or compression.
//   /echo             WebSocket: echoes text and binary messages.
//   /ws               WebSocket: {"op":"subscribe","channel":"X","id":N}
//                     subscribes to X and answers
//                     {"op":"subscribed","id":N,"channel":"X","offset":O};
//                     {"op":"ping","id":N} answers {"op":"pong","id":N};
//                     anything else is ignored.
//   POST /api/publish `Authorization: apikey KEY`, body
//                     {"channel":"X","data":<JSON>}: publishes
//                     {"op":"message","channel":"X","offset":N,"data":<JSON>}
//                     to X's subscribers and answers 200 {"offset":N};
//                     401 for a wrong key, 400 for a bad body.
//   anything else     404.
// Prints `uws listening on 127.0.0.1:PORT` once listening.

#include "App.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

namespace {

// ---------------------------------------------------------------------------
// A small JSON reader: validates a whole document (as strictly as
// serde_json) and hands back the raw bytes of the top-level object's
// members. Bench-only, but safe on any input: bounded nesting, no reads
// past the end.

constexpr int MAX_DEPTH = 128; // serde_json's recursion limit

struct Reader {
    const char *p;
    const char *end;

    bool eof() const { return p >= end; }

    void whitespace() {
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
            p++;
        }
    }

    static int hex(char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    }

    bool hex4(unsigned *out) {
        if (end - p < 4) return false;
        unsigned value = 0;
        for (int i = 0; i < 4; i++) {
            int digit = hex(p[i]);
            if (digit < 0) return false;
            value = value * 16 + (unsigned) digit;
        }
        p += 4;
        *out = value;
        return true;
    }

    static void utf8(std::string *out, unsigned cp) {
        if (cp < 0x80) {
            out->push_back((char) cp);
        } else if (cp < 0x800) {
            out->push_back((char) (0xC0 | (cp >> 6)));
            out->push_back((char) (0x80 | (cp & 0x3F)));
        } else if (cp < 0x10000) {
            out->push_back((char) (0xE0 | (cp >> 12)));
            out->push_back((char) (0x80 | ((cp >> 6) & 0x3F)));
            out->push_back((char) (0x80 | (cp & 0x3F)));
        } else {
            out->push_back((char) (0xF0 | (cp >> 18)));
            out->push_back((char) (0x80 | ((cp >> 12) & 0x3F)));
            out->push_back((char) (0x80 | ((cp >> 6) & 0x3F)));
            out->push_back((char) (0x80 | (cp & 0x3F)));
        }
    }

    // A string at p (its opening quote); decoded into `out` when given.
    bool string(std::string *out) {
        if (eof() || *p != '"') return false;
        p++;
        while (p < end) {
            unsigned char c = (unsigned char) *p++;
            if (c == '"') return true;
            if (c < 0x20) return false;
            if (c != '\\') {
                if (out) out->push_back((char) c);
                continue;
            }
            if (eof()) return false;
            char e = *p++;
            char plain = 0;
            switch (e) {
            case '"': plain = '"'; break;
            case '\\': plain = '\\'; break;
            case '/': plain = '/'; break;
            case 'b': plain = '\b'; break;
            case 'f': plain = '\f'; break;
            case 'n': plain = '\n'; break;
            case 'r': plain = '\r'; break;
            case 't': plain = '\t'; break;
            case 'u': {
                unsigned cp;
                if (!hex4(&cp)) return false;
                if (cp >= 0xDC00 && cp <= 0xDFFF) return false; // lone trailing surrogate
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned low;
                    if (end - p < 2 || p[0] != '\\' || p[1] != 'u') return false;
                    p += 2;
                    if (!hex4(&low) || low < 0xDC00 || low > 0xDFFF) return false;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                }
                if (out) utf8(out, cp);
                continue;
            }
            default: return false;
            }
            if (out) out->push_back(plain);
        }
        return false;
    }

    bool digits() {
        const char *start = p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        return p > start;
    }

    bool number() {
        if (p < end && *p == '-') p++;
        if (eof()) return false;
        if (*p == '0') {
            p++;
        } else if (!digits()) {
            return false;
        }
        if (p < end && *p == '.') {
            p++;
            if (!digits()) return false;
        }
        if (p < end && (*p == 'e' || *p == 'E')) {
            p++;
            if (p < end && (*p == '+' || *p == '-')) p++;
            if (!digits()) return false;
        }
        return true;
    }

    bool literal(std::string_view word) {
        if ((size_t) (end - p) < word.size() || std::memcmp(p, word.data(), word.size()) != 0) {
            return false;
        }
        p += word.size();
        return true;
    }

    // Any value at p (no leading whitespace).
    bool value(int depth) {
        if (eof()) return false;
        switch (*p) {
        case '"': return string(nullptr);
        case 't': return literal("true");
        case 'f': return literal("false");
        case 'n': return literal("null");
        case '{':
        case '[': {
            if (depth >= MAX_DEPTH) return false;
            bool object = *p == '{';
            char close = object ? '}' : ']';
            p++;
            whitespace();
            if (p < end && *p == close) {
                p++;
                return true;
            }
            while (true) {
                if (object) {
                    if (!string(nullptr)) return false;
                    whitespace();
                    if (eof() || *p != ':') return false;
                    p++;
                    whitespace();
                }
                if (!value(depth + 1)) return false;
                whitespace();
                if (eof()) return false;
                if (*p == ',') {
                    p++;
                    whitespace();
                    continue;
                }
                if (*p == close) {
                    p++;
                    return true;
                }
                return false;
            }
        }
        default: return number();
        }
    }
};

// The members of a top-level JSON object this server reads: each the raw
// bytes of its value (empty when absent). A repeated key: the last wins, as
// in serde_json.
struct Fields {
    std::string_view op, channel, id, data;
};

bool parse_object(std::string_view text, Fields *fields) {
    Reader r{text.data(), text.data() + text.size()};
    r.whitespace();
    if (r.eof() || *r.p != '{') return false;
    r.p++;
    r.whitespace();
    if (!r.eof() && *r.p == '}') {
        r.p++;
    } else {
        while (true) {
            std::string key;
            if (!r.string(&key)) return false;
            r.whitespace();
            if (r.eof() || *r.p != ':') return false;
            r.p++;
            r.whitespace();
            const char *start = r.p;
            if (!r.value(1)) return false;
            std::string_view raw(start, (size_t) (r.p - start));
            if (key == "op") fields->op = raw;
            else if (key == "channel") fields->channel = raw;
            else if (key == "id") fields->id = raw;
            else if (key == "data") fields->data = raw;
            r.whitespace();
            if (r.eof()) return false;
            if (*r.p == ',') {
                r.p++;
                r.whitespace();
                continue;
            }
            if (*r.p == '}') {
                r.p++;
                break;
            }
            return false;
        }
    }
    r.whitespace();
    return r.eof();
}

// Whether `text` is one JSON value (of any type), whitespace around it.
bool valid_json(std::string_view text) {
    Reader r{text.data(), text.data() + text.size()};
    r.whitespace();
    if (!r.value(0)) return false;
    r.whitespace();
    return r.eof();
}

// The decoded text of a raw JSON string value; false if `raw` is not a string.
bool string_value(std::string_view raw, std::string *out) {
    if (raw.empty() || raw.front() != '"') return false;
    Reader r{raw.data(), raw.data() + raw.size()};
    return r.string(out) && r.eof();
}

// ---------------------------------------------------------------------------

struct Options {
    int port = 0;
    std::string api_key = "bench-key";
};

[[noreturn]] void usage(const char *problem) {
    std::fprintf(stderr, "uws-server: %s\nusage: uws-server [--port N] [--api-key KEY]\n", problem);
    std::exit(2);
}

Options parse_args(int argc, char **argv) {
    Options options;
    for (int i = 1; i < argc; i++) {
        std::string_view arg = argv[i];
        std::string_view value;
        std::string_view name = arg;
        if (size_t eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
            name = arg.substr(0, eq);
            value = arg.substr(eq + 1);
        } else if (arg == "--port" || arg == "--api-key") {
            if (i + 1 >= argc) usage("a value is missing");
            value = argv[++i];
        }
        if (name == "--port") {
            char *stop = nullptr;
            std::string text(value);
            long port = std::strtol(text.c_str(), &stop, 10);
            if (text.empty() || *stop || port < 0 || port > 65535) usage("bad --port");
            options.port = (int) port;
        } else if (name == "--api-key") {
            options.api_key = std::string(value);
        } else if (name == "--help" || name == "-h") {
            usage("a uWebSockets server for herald's benchmarks");
        } else {
            usage("unknown argument");
        }
    }
    return options;
}

struct PerSocket {};

// Channel offsets (publications so far), by channel. One thread: no locks.
std::unordered_map<std::string, uint64_t> offsets;

constexpr size_t MAX_BODY = 64 * 1024 * 1024;

uWS::App::WebSocketBehavior<PerSocket> behavior() {
    uWS::App::WebSocketBehavior<PerSocket> b;
    b.compression = uWS::DISABLED;
    b.maxPayloadLength = 16 * 1024 * 1024;
    b.idleTimeout = 0;
    b.maxBackpressure = 64 * 1024 * 1024;
    b.closeOnBackpressureLimit = false;
    return b;
}

void respond(uWS::HttpResponse<false> *res, std::string_view status, std::string_view body) {
    res->writeStatus(status)->writeHeader("Content-Type", "application/json")->end(body);
}

// A whole publish request's body; the answer.
void publish(uWS::App &app, uWS::HttpResponse<false> *res, std::string_view body) {
    Fields fields;
    bool utf8 = uWS::protocol::isValidUtf8((unsigned char *) body.data(), body.size());
    bool object = utf8 && parse_object(body, &fields);
    if (!object && !(utf8 && valid_json(body))) {
        respond(res, "400 Bad Request", R"({"error":"bad json"})");
        return;
    }
    std::string channel;
    if (!object || !string_value(fields.channel, &channel) || fields.data.empty()) {
        respond(res, "400 Bad Request", R"({"error":"channel and data"})");
        return;
    }
    uint64_t offset = ++offsets[channel];
    std::string number = std::to_string(offset);
    std::string message;
    message.reserve(64 + fields.channel.size() + fields.data.size());
    message.append(R"({"op":"message","channel":)");
    message.append(fields.channel);
    message.append(R"(,"offset":)");
    message.append(number);
    message.append(R"(,"data":)");
    message.append(fields.data);
    message.push_back('}');
    // No subscribers is not an error: the message is simply not kept.
    app.publish(channel, message, uWS::OpCode::TEXT);
    respond(res, "200 OK", R"({"offset":)" + number + "}");
}

// A `/ws` command; its answer, if any.
void command(uWS::WebSocket<false, true, PerSocket> *ws, std::string_view text) {
    Fields fields;
    if (!parse_object(text, &fields)) return;
    std::string op;
    if (!string_value(fields.op, &op)) return;
    std::string_view id = fields.id.empty() ? std::string_view("null") : fields.id;
    std::string reply;
    if (op == "subscribe") {
        std::string channel;
        if (!string_value(fields.channel, &channel)) return;
        ws->subscribe(channel);
        uint64_t offset = offsets.try_emplace(channel, 0).first->second;
        reply.append(R"({"op":"subscribed","id":)");
        reply.append(id);
        reply.append(R"(,"channel":)");
        reply.append(fields.channel);
        reply.append(R"(,"offset":)");
        reply.append(std::to_string(offset));
        reply.push_back('}');
    } else if (op == "ping") {
        reply.append(R"({"op":"pong","id":)");
        reply.append(id);
        reply.push_back('}');
    } else {
        return;
    }
    ws->send(reply, uWS::OpCode::TEXT);
}

} // namespace

int main(int argc, char **argv) {
    Options options = parse_args(argc, argv);
    const std::string expected = "apikey " + options.api_key;

    uWS::App app;

    auto echo = behavior();
    echo.message = [](auto *ws, std::string_view message, uWS::OpCode opCode) {
        if (opCode == uWS::OpCode::TEXT || opCode == uWS::OpCode::BINARY) {
            ws->send(message, opCode);
        }
    };
    app.ws<PerSocket>("/echo", std::move(echo));

    auto client = behavior();
    client.message = [](auto *ws, std::string_view message, uWS::OpCode opCode) {
        if (opCode == uWS::OpCode::TEXT) {
            command(ws, message);
        }
    };
    app.ws<PerSocket>("/ws", std::move(client));

    app.post("/api/publish", [&app, &expected](auto *res, auto *req) {
        bool authorized = req->getHeader("authorization") == expected;
        auto body = std::make_shared<std::string>();
        auto too_big = std::make_shared<bool>(false);
        res->onAborted([]() {});
        res->onData([res, &app, authorized, body, too_big](std::string_view chunk, bool last) {
            // The usual case, a body in one chunk, is not copied.
            if (last && body->empty() && !*too_big) {
                if (!authorized) {
                    respond(res, "401 Unauthorized", R"({"error":"unauthorized"})");
                } else {
                    publish(app, res, chunk);
                }
                return;
            }
            if (!*too_big) {
                if (body->size() + chunk.size() > MAX_BODY) {
                    *too_big = true;
                    body->clear();
                    body->shrink_to_fit();
                } else {
                    body->append(chunk);
                }
            }
            if (!last) return;
            if (!authorized) {
                respond(res, "401 Unauthorized", R"({"error":"unauthorized"})");
            } else if (*too_big) {
                respond(res, "413 Payload Too Large", R"({"error":"too large"})");
            } else {
                publish(app, res, *body);
            }
        });
    });

    app.any("/*", [](auto *res, auto * /*req*/) {
        res->writeStatus("404 Not Found")->end();
    });

    app.listen("127.0.0.1", options.port, [](us_listen_socket_t *listen_socket) {
        if (!listen_socket) {
            std::fprintf(stderr, "uws-server: cannot listen\n");
            std::exit(1);
        }
        int port = us_socket_local_port(0, (us_socket_t *) listen_socket);
        std::printf("uws listening on 127.0.0.1:%d\n", port);
        std::fflush(stdout);
    });

    app.run();
    return 0;
}
