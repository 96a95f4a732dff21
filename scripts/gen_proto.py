"""Generate Python code, type stubs and gRPC stubs from proto/ into authz_service/gen/.

protoc writes ``from authz.v1 import x_pb2``; the generated package lives under
``authz_service.gen``, so imports are rewritten once here rather than putting a
second top-level package on sys.path.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
OUT = ROOT / "authz_service" / "gen"


def _plugin(name: str) -> str:
    """mypy-protobuf's plugin: beside this interpreter (a venv), else on PATH (pip's build env)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"-I{PROTO}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *files,
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    pattern = re.compile(r"^from authz\.v1 import", re.MULTILINE)
    for path in OUT.rglob("*.py*"):
        text = path.read_text()
        fixed = pattern.sub("from authz_service.gen.authz.v1 import", text)
        fixed = fixed.replace("import authz.v1.", "import authz_service.gen.authz.v1.")
        fixed = re.sub(r"(?<![\w.])authz\.v1\.(\w+_pb2)", r"authz_service.gen.authz.v1.\1", fixed)
        if fixed != text:
            path.write_text(fixed)
    for pkg in [OUT, *(p for p in OUT.rglob("*") if p.is_dir())]:
        (pkg / "__init__.py").touch()
    (OUT / "py.typed").touch()
    print(f"generated {len(files)} proto files into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
