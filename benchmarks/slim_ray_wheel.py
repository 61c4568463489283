"""Repack Ray's wheel without the parts `batch --ray` never loads, so it fits what travels to the GPU machine.

Ray's manylinux wheel is ~79 MB, over the 64 MiB that a device call carries; a third of it is the Java
workers' jars. This writes a copy without ``ray/jars`` (Java), ``ray/rllib`` and ``ray/llm``, their lines
dropped from the wheel's RECORD so pip installs it as it is (~45 MB).

    python benchmarks/slim_ray_wheel.py .whl/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
"""
from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

DROP = ("ray/jars/", "ray/rllib/", "ray/llm/")


def slim(wheel: Path) -> Path:
    out = wheel.with_name(wheel.name + ".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(DROP):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not line.startswith(DROP)).encode()
            dst.writestr(info, data)
    out.replace(wheel)  # same name: pip reads the name for its tags
    return wheel


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    path = slim(parser.parse_args().wheel)
    print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")
