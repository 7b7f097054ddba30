"""What every Python client test shares: stubs generated from proto/ with grpcio-tools (into a
temporary directory, at import time), one channel to the server under test, and helpers to read
the rich error details quintet attaches.

The server and its stand-ins are described by environment variables that scripts/test-clients
sets (QCT_ADDR, QCT_ADMIN_TOKEN, QCT_STANDINS, ...); without them the suite refuses to run
rather than guess.
"""

import atexit
import glob
import os
import shutil
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set: run these tests through scripts/test-clients")
    return value


ADDR = env("QCT_ADDR")
ADMIN_TOKEN = env("QCT_ADMIN_TOKEN")
STANDINS = env("QCT_STANDINS")
PROTO_DIR = env("QCT_PROTO_DIR")
BIN_DIR = env("QCT_BIN")
DATA_DIR = env("QCT_DATA_DIR")
ESCROW_ADDRESS = env("QCT_ESCROW_ADDRESS")
LEDGER_LISTEN = env("QCT_LEDGER_LISTEN")


def _generate_stubs():
    """Runs protoc (grpcio-tools) over every proto file, like a client project's build would."""
    from grpc_tools import protoc
    import grpc_tools

    out = os.environ.get("QCT_PY_GEN") or tempfile.mkdtemp(prefix="quintet-py-stubs-")
    if not os.environ.get("QCT_PY_GEN"):
        atexit.register(shutil.rmtree, out, True)
    os.makedirs(out, exist_ok=True)
    protos = sorted(glob.glob(os.path.join(PROTO_DIR, "quintet", "*", "v1", "*.proto")))
    if not protos:
        sys.exit(f"no proto files under {PROTO_DIR}")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("grpc_tools.protoc failed on proto/")
    sys.path.insert(0, out)


_generate_stubs()

# Imported after generation: these modules are the generated ones.
from quintet.admin.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402
from quintet.griot.v1 import griot_pb2, griot_pb2_grpc  # noqa: E402
from quintet.market.v1 import market_pb2, market_pb2_grpc  # noqa: E402
from quintet.pds.v1 import pds_pb2, pds_pb2_grpc  # noqa: E402
from quintet.registry.v1 import registry_pb2, registry_pb2_grpc  # noqa: E402
from quintet.store.v1 import store_pb2, store_pb2_grpc  # noqa: E402

__all__ = [
    "admin_pb2", "admin_pb2_grpc", "griot_pb2", "griot_pb2_grpc", "market_pb2",
    "market_pb2_grpc", "pds_pb2", "pds_pb2_grpc", "registry_pb2", "registry_pb2_grpc",
    "store_pb2", "store_pb2_grpc",
]

_channel = None


def channel():
    global _channel
    if _channel is None:
        _channel = grpc.insecure_channel(ADDR)
        grpc.channel_ready_future(_channel).result(timeout=10)
    return _channel


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


ADMIN = bearer(ADMIN_TOKEN)


def unique(prefix):
    """A name no other run or suite uses: the server is shared by the suites."""
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


def standin(path, **query):
    url = f"{STANDINS}{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def github_token(login):
    return standin("/github/token", login=login)


def id_token(sub, email, name, aud=None):
    query = {"sub": sub, "email": email, "name": name}
    if aud:
        query["aud"] = aud
    return standin("/oidc/id-token", **query)


def chunks(data, size):
    for at in range(0, len(data), size):
        yield data[at : at + size]


class Failure:
    """A failed call as a client sees it: code, message and the decoded rich details."""

    def __init__(self, error):
        self.code = error.code()
        self.message = error.details()
        self.error_info = None
        self.field_violations = []
        status = rpc_status.from_call(error)
        for detail in status.details if status else []:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                self.error_info = info
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                self.field_violations += [v.field for v in bad.field_violations]

    @property
    def reason(self):
        return self.error_info.reason if self.error_info else None

    def __repr__(self):
        return f"<{self.code.name} {self.message!r} reason={self.reason} fields={self.field_violations}>"


class ClientTest(unittest.TestCase):
    def fails(self, code, call, *args, **kwargs):
        """Runs `call`, which must fail with `code`; returns the Failure."""
        try:
            result = call(*args, **kwargs)
            # Server streams fail when read.
            if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
                list(result)
        except grpc.RpcError as error:
            failure = Failure(error)
            self.assertEqual(failure.code, code, failure)
            if failure.error_info is not None:
                self.assertEqual(failure.error_info.domain, "quintet", failure)
            return failure
        self.fail(f"expected {code.name}, the call succeeded")


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)
