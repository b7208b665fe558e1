"""Test credentials for the cloud hostings, all served by the mock upstream."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mock_cloud import MOCK_AWS_KEYS

AWS_KEY_ID, AWS_SECRET = next(iter(MOCK_AWS_KEYS.items()))


def write_service_account(path: Path, token_uri: str) -> str:
    """A Google service-account file with a fresh RSA key; google-auth signs
    its JWT grant with it and asks ``token_uri`` (the mock) for tokens."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "proj", "private_key_id": "kid-1",
        "private_key": pem, "client_email": "gandalf@proj.iam.gserviceaccount.com",
        "client_id": "1234", "token_uri": token_uri}))
    return str(path)
