"""Generates the gRPC stubs from the repository's proto/ into the package while building it."""

import glob
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


class BuildWithStubs(build_py):
    """`build_py` that first runs protoc on proto/vidcascade/v1/*.proto."""

    def run(self):
        from grpc_tools import protoc

        files = sorted(glob.glob(os.path.join(PROTO, "vidcascade", "v1", "*.proto")))
        if not files:
            raise SystemExit(f"no .proto files under {PROTO}: build from the repository checkout")
        out = os.path.join(HERE, "src")
        include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        code = protoc.main(
            ["protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={out}",
             f"--grpc_python_out={out}", *files]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with {code}")
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
