"""Size of the deployment package `chalice package` builds, and what fills it.

    .venv/bin/python -m benchmarks.package_size [--stage dev] [--out DIR]

Runs ``chalice package --stage S`` offline (dummy region and credentials: it signs nothing and calls
no AWS API) and reports the zip's size against the 10 MB bar, a breakdown by top-level package
(compressed and raw), whether bytecode is shipped, the Lambda layers and runtime of the functions in
the generated SAM template. For comparison it also zips, in memory, what the Powertools layer brings
(aws_lambda_powertools, pydantic and their dependencies from this virtualenv): the size the zip would
have if requirements.txt bundled them instead of the layer.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BAR_BYTES = 10 * 1024 * 1024
# What the public Powertools v3 layer ships that the functions use (built as aws-lambda-powertools[all]).
LAYER_PACKAGES = ("aws_lambda_powertools", "pydantic", "pydantic_core", "typing_extensions", "jmespath",
                  "annotated_types", "typing_inspection")
_OFFLINE = {"AWS_DEFAULT_REGION": "us-west-2", "AWS_ACCESS_KEY_ID": "offline", "AWS_SECRET_ACCESS_KEY": "offline",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


@dataclass
class Package:
    zip_bytes: int
    compressed: Counter[str]
    raw: Counter[str]
    files: Counter[str]
    pyc_files: int
    layers: list[str]
    runtimes: list[str]
    functions: int


def chalice_package(stage: str, out: Path) -> Path:
    chalice = Path(sys.executable).with_name("chalice")
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN")}
    env.update(_OFFLINE)
    done = subprocess.run([str(chalice), "package", "--stage", stage, str(out)], cwd=ROOT, env=env,  # our venv
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chalice package failed:\n{done.stdout[-1000:]}\n{done.stderr[-2000:]}")
    return out


def top_level(name: str) -> str:
    first = name.split("/", 1)[0]
    return "*.dist-info" if first.endswith(".dist-info") else first


def inspect(out: Path) -> Package:
    archive = out / "deployment.zip"
    compressed: Counter[str] = Counter()
    raw: Counter[str] = Counter()
    files: Counter[str] = Counter()
    pyc = 0
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            key = top_level(info.filename)
            compressed[key] += info.compress_size
            raw[key] += info.file_size
            files[key] += 1
            pyc += info.filename.endswith(".pyc")
    template = json.loads((out / "sam.json").read_text())
    functions = [r["Properties"] for r in template.get("Resources", {}).values()
                 if r.get("Type") == "AWS::Serverless::Function"]
    layers = sorted({arn for f in functions for arn in f.get("Layers", [])})
    runtimes = sorted({str(f.get("Runtime")) for f in functions})
    return Package(archive.stat().st_size, compressed, raw, files, pyc, layers, runtimes, len(functions))


def bundled_size(packages: Sequence[str]) -> tuple[int, dict[str, int]]:
    """Deflated size of ``packages`` from this virtualenv (no bytecode): what bundling them would add."""
    sizes: dict[str, int] = {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name in packages:
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin is None:
                continue
            origin = Path(spec.origin)
            paths = [origin] if origin.name != "__init__.py" else [
                p for p in origin.parent.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
            before = buffer.tell()
            for path in paths:
                zipped.write(path, str(path.relative_to(origin.parent.parent if origin.name == "__init__.py"
                                                         else origin.parent)))
            sizes[name] = buffer.tell() - before
    return buffer.tell(), sizes


def megabytes(n: int) -> str:
    return f"{n / 1024 / 1024:.2f} MB"


def report(stage: str, package: Package) -> None:
    verdict = "within" if package.zip_bytes <= BAR_BYTES else "OVER"
    print(f"package size: chalice package --stage {stage} ({package.functions} functions, runtime "
          f"{', '.join(package.runtimes)})")
    print(f"  deployment.zip {megabytes(package.zip_bytes)} ({package.zip_bytes} bytes): {verdict} the 10 MB bar")
    print(f"  bytecode (.pyc) in the zip: {package.pyc_files} files")
    print("  by top-level entry (compressed / raw / files):")
    for name, size in package.compressed.most_common():
        print(f"    {size / 1024:8.1f} KB  {package.raw[name] / 1024:8.1f} KB  {package.files[name]:4d}  {name}")
    print(f"  layers: {', '.join(package.layers) or 'none'}")
    total, sizes = bundled_size(LAYER_PACKAGES)
    print(f"  the layer's packages, if bundled instead: +{megabytes(total)} deflated "
          f"({', '.join(f'{k} {v / 1024:.0f} KB' for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]))})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--out", type=Path, default=None, help="where to package (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jamsdr-package-") as tmp:
        out = chalice_package(args.stage, args.out or Path(tmp) / args.stage)
        package = inspect(out)
    report(args.stage, package)
    return 0


if __name__ == "__main__":
    sys.exit(main())
