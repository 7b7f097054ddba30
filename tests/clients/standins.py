#!/usr/bin/env python3
"""Stand-ins for the outside services quintet talks to, on one loopback HTTP port, so that the
client suites and the README walkthroughs can sign in and chat the way real users do:

- a GitHub-compatible identity provider (the registry's QUINTET_REGISTRY_IDENTITY_URL):
  `GET /github/token?login=NAME` hands out an OAuth token for NAME (as github.com would after
  its login page), `GET /user` answers for tokens it handed out and 401 for any other;
- an OpenID Connect issuer (the market's sign-in): `GET /jwks` publishes its RSA key,
  `GET /oidc/id-token?sub=..&email=..&name=..[&aud=..]` signs an RS256 ID token (as Google's
  OAuth Playground would);
- an OpenAI-compatible chat endpoint (QUINTET_MARKET_AI_URL = <base>/v1):
  `POST /v1/chat/completions` streams a fixed-shape answer as server-sent events.

Usage: standins.py --port-file FILE [--issuer URL] [--audience ID]
Writes the port it listens on into FILE once it serves. Needs the `cryptography` package.
"""

import argparse
import base64
import json
import os
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

KEY_ID = "standin-key-1"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


class State:
    def __init__(self, issuer, audience):
        self.issuer = issuer
        self.audience = audience
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.github_tokens = {}
        self.lock = threading.Lock()

    def jwks(self):
        numbers = self.key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": KEY_ID,
                    "n": b64url(int_bytes(numbers.n)),
                    "e": b64url(int_bytes(numbers.e)),
                }
            ]
        }

    def id_token(self, sub, email, name, audience):
        now = int(time.time())
        header = {"alg": "RS256", "kid": KEY_ID, "typ": "JWT"}
        claims = {
            "iss": self.issuer,
            "sub": sub,
            "aud": audience or self.audience,
            "iat": now,
            "exp": now + 3600,
            "email": email,
            "email_verified": True,
            "name": name,
        }
        signing_input = (
            b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        )
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url(signature)

    def github_token(self, login):
        token = "gho_" + secrets.token_hex(16)
        with self.lock:
            self.github_tokens[token] = login
        return token

    def github_user(self, token):
        with self.lock:
            return self.github_tokens.get(token)


def chat_answer(request):
    """The stand-in model answers by quoting the question and naming the datapod it was shown."""
    messages = request.get("messages", [])
    question = next(
        (m["content"] for m in reversed(messages) if m.get("role") == "user"), ""
    )
    context = " ".join(m.get("content", "") for m in messages if m.get("role") == "system")
    pieces = ["You asked: ", question]
    marker = "Title: "
    if marker in context:
        title = context.split(marker, 1)[1].splitlines()[0]
        pieces += [" (about ", title, ")"]
    return pieces


class Handler(BaseHTTPRequestHandler):
    state: State = None

    def log_message(self, fmt, *args):  # quiet: the suites print what matters
        pass

    def reply(self, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/health":
            self.reply(200, "ok", "text/plain")
        elif url.path == "/jwks":
            self.reply(200, json.dumps(self.state.jwks()), headers=[("cache-control", "max-age=300")])
        elif url.path == "/oidc/id-token":
            if not query.get("sub") or not query.get("email"):
                self.reply(400, "sub and email are required", "text/plain")
                return
            token = self.state.id_token(
                query["sub"], query["email"], query.get("name", query["sub"]), query.get("aud")
            )
            self.reply(200, token, "text/plain")
        elif url.path == "/github/token":
            if not query.get("login"):
                self.reply(400, "login is required", "text/plain")
                return
            self.reply(200, self.state.github_token(query["login"]), "text/plain")
        elif url.path == "/user":
            auth = self.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            login = self.state.github_user(token) if scheme.lower() in ("bearer", "token") else None
            if login is None:
                self.reply(401, json.dumps({"message": "Bad credentials"}))
                return
            self.reply(
                200,
                json.dumps(
                    {
                        "login": login,
                        "node_id": "U_standin_" + login,
                        "avatar_url": f"https://avatars.standin.test/{login}",
                    }
                ),
            )
        else:
            self.reply(404, "not found", "text/plain")

    def do_POST(self):
        url = urlparse(self.path)
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if url.path != "/v1/chat/completions":
            self.reply(404, "not found", "text/plain")
            return
        request = json.loads(body)
        if not request.get("stream"):
            self.reply(400, json.dumps({"error": "only streaming is served"}))
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.end_headers()
        pieces = chat_answer(request)
        for piece in pieces:
            event = {"choices": [{"index": 0, "delta": {"content": piece}}]}
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        usage = {"prompt_tokens": 11, "completion_tokens": len(pieces), "total_tokens": 11 + len(pieces)}
        self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--issuer", default="https://accounts.standin.test")
    parser.add_argument("--audience", default="quintet-client-tests")
    args = parser.parse_args()
    Handler.state = State(args.issuer, args.audience)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    # Renamed into place so that a reader never sees a half-written file.
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
