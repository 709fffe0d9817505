"""The machine a benchmark ran on: CPU model and the ISA flags the engines' kernels depend on, cores,
memory, load, library versions. Speed figures mean little without it."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

__all__ = ["ISA_FLAGS", "cores", "load_average", "machine_info"]

# CPU features that decide which kernels the engines pick (Linux /proc/cpuinfo names).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
LIBRARIES = ("effnet", "numpy", "pillow", "torch", "onnxruntime", "openvino")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpuinfo() -> tuple[str, set[str]]:
    """(CPU model name, ISA flags) from /proc/cpuinfo; platform's vaguer answer elsewhere."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    return _cpuinfo()[0]


def machine_info() -> dict:
    """CPU model, cores, the ISA flags that matter to the engines, memory, load, library versions."""
    model, flags = _cpuinfo()
    info: dict = {
        "cpu": model,
        "cores": cores(),
        "logical_cpus": os.cpu_count(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {lib: v for lib in LIBRARIES if (v := _version(lib)) is not None},
    }
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
        info["memory_gib"] = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    if "openvino" in sys.modules:  # only if already loaded: asking must not import an engine
        try:
            info["openvino_cpu_capabilities"] = sys.modules["openvino"].Core().get_property(
                "CPU", "OPTIMIZATION_CAPABILITIES")
        except Exception:  # noqa: BLE001 - a description, never a reason to fail a benchmark
            pass
    torch = sys.modules.get("torch")  # likewise: only if already loaded
    if torch is not None and torch.version.cuda is not None and torch.cuda.is_available():
        info["gpus"] = [{"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                         "multiprocessors": props.multi_processor_count}
                        for props in map(torch.cuda.get_device_properties, range(torch.cuda.device_count()))]
        info["cuda"] = torch.version.cuda
    return info


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
