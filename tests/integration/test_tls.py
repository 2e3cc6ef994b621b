"""TLS and mTLS by configuration: a service with a certificate serves TLS only, and with a client
CA it accepts only clients holding a certificate that CA signed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from amcsearch.launcher import SERVICES_ROOT
from amcsearch.processes import free_port, service_process, wait_until
from amcsearch.v1 import query_encoder_pb2, query_encoder_pb2_grpc

pytestmark = pytest.mark.integration


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=amcsearch-test-ca",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extra in (("server", ["-extfile", "san.ext"]), ("client", [])):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=amcsearch-{name}",
            cwd=d,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            *extra,
            cwd=d,
        )
    return d


def start_encoder(stack, pki: Path, tmp_path: Path, mtls: bool):
    env = {
        **stack.env,
        "QUERY_ENCODER_TLS_CERT_FILE": str(pki / "server.pem"),
        "QUERY_ENCODER_TLS_KEY_FILE": str(pki / "server.key"),
    }
    if mtls:
        env["QUERY_ENCODER_TLS_CLIENT_CA_FILE"] = str(pki / "ca.pem")
    process = service_process("query_encoder", "QUERY_ENCODER", free_port(), free_port(), env, tmp_path, SERVICES_ROOT)
    process.start()
    return process


def encode(channel: grpc.Channel) -> int:
    stub = query_encoder_pb2_grpc.QueryEncoderStub(channel)
    request = query_encoder_pb2.EncodeRequest(queries=[query_encoder_pb2.QueryInput(text="over tls")])
    return len(stub.Encode(request, timeout=10).embeddings)


def credentials(pki: Path, client_cert: bool) -> grpc.ChannelCredentials:
    read = lambda name: (pki / name).read_bytes()  # noqa: E731
    if client_cert:
        return grpc.ssl_channel_credentials(read("ca.pem"), read("client.key"), read("client.pem"))
    return grpc.ssl_channel_credentials(read("ca.pem"))


@pytest.mark.parametrize("mtls", [False, True])
def test_tls_and_mtls(tiny_stack, pki, tmp_path, mtls):
    process = start_encoder(tiny_stack, pki, tmp_path, mtls)
    address = process.endpoints["grpc"]
    try:

        def answers() -> bool:
            with grpc.secure_channel(address, credentials(pki, client_cert=True)) as channel:
                return encode(channel) == 1

        wait_until(answers, 60, "query_encoder over TLS", process, interval=0.5)
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as plaintext:
            encode(channel)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(address, credentials(pki, client_cert=False)) as channel:
            if mtls:
                with pytest.raises(grpc.RpcError) as no_cert:
                    encode(channel)
                assert no_cert.value.code() == grpc.StatusCode.UNAVAILABLE
            else:
                assert encode(channel) == 1
    finally:
        process.stop()
