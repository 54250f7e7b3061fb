"""Client-side connection options shared by the command-line tools (client, loadtest,
healthcheck): TLS (server CA, optional client certificate for mutual TLS) and the bearer
token a server started with --auth-token-file / $EMBSTACK_AUTH_TOKEN asks for.

    ap = argparse.ArgumentParser(); channels.add_arguments(ap); args = ap.parse_args()
    with channels.open_channel(args) as channel:
        stub.Score(request, timeout=5, metadata=channels.call_metadata(args))

Without --tls-ca the channel is plaintext. The token goes in per-call metadata
(`authorization: Bearer <token>`), so it also works over a plaintext channel to a
loopback address; send it over TLS anywhere else. The health service never needs it.
"""

from __future__ import annotations

import argparse
import os

import grpc

AUTH_TOKEN_ENV = "EMBSTACK_AUTH_TOKEN"


def add_arguments(ap: argparse.ArgumentParser, token: bool = True) -> None:
    """Adds --tls-ca, --tls-cert, --tls-key, --tls-server-name (and --token-file)."""
    ap.add_argument("--tls-ca", default=None, help="PEM CA bundle that signed the server's certificate; turns TLS on")
    ap.add_argument("--tls-cert", default=None, help="PEM client certificate chain (mutual TLS)")
    ap.add_argument("--tls-key", default=None, help="PEM client private key (mutual TLS)")
    ap.add_argument("--tls-server-name", default=None, help="name to check the server certificate against (default: the target host)")
    if token:
        ap.add_argument("--token-file", default=None, help=f"file holding the server's bearer token (or set ${AUTH_TOKEN_ENV})")


def read_token(path: str | None, env: str = AUTH_TOKEN_ENV) -> str | None:
    """The token in `path` (stripped), else $env, else None. Raises ValueError for an empty file."""
    if path:
        with open(path) as fh:
            token = fh.read().strip()
        if not token:
            raise ValueError(f"{path}: empty token file")
        return token
    return os.environ.get(env) or None


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as fh:
        return fh.read()


def open_channel(args: argparse.Namespace, options: list[tuple[str, object]] | tuple = ()) -> grpc.Channel:
    """A channel to args.target: TLS when --tls-ca is given, plaintext otherwise.

    Raises ValueError for a half-given client key pair, OSError for unreadable files.
    """
    options = list(options)
    ca = getattr(args, "tls_ca", None)
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if (cert is None) != (key is None):
        raise ValueError("give --tls-cert and --tls-key together")
    if ca is None:
        if cert is not None:
            raise ValueError("--tls-cert/--tls-key need --tls-ca")
        return grpc.insecure_channel(args.target, options=options)
    credentials = grpc.ssl_channel_credentials(root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert))
    if getattr(args, "tls_server_name", None):
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(args.target, credentials, options=options)


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...] | None:
    """Per-call metadata carrying the bearer token; None without one."""
    token = read_token(getattr(args, "token_file", None))
    return (("authorization", f"Bearer {token}"),) if token else None
