"""The host's MicroPython has what board code relies on."""

import subprocess

import pytest


@pytest.mark.parametrize("port", ["micropython64", "micropython32"])
def test_micropython_has_the_modules_board_code_needs(request: pytest.FixtureRequest,
                                                      port: str) -> None:
    micropython = request.getfixturevalue(port)
    probe = (
        "import hashlib, deflate, socket, tls, vfs, json, binascii\n"
        "h = hashlib.sha256(b'abc').digest()\n"
        "print(binascii.hexlify(h).decode(), hasattr(hashlib, 'sha512'), hasattr(vfs, 'VfsLfs2'))\n"
    )
    out = subprocess.run([micropython, "-c", probe], capture_output=True, text=True, check=True)
    digest, has_sha512, has_lfs2 = out.stdout.split()
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert has_sha512 == "False"
    assert has_lfs2 == "True"
