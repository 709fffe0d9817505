"""The engine choice, resolved once: which backend runs the network, on which device, at which precision,
and what its model file holds (the int8 calibration set).

`resolve_engine` is the only place these are decided. It checks everything a user can get wrong before any
download or build (an unknown backend, a package that is not installed, a precision the backend lacks, a GPU
that is not there, int8 without calibration photos) and returns a frozen `EngineChoice`, the twin of
`ResolvedModel`: Classifier, create_backend, bench, eval, serve and batch receive it and never decide again.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Literal

from .calibration import CalibrationSet, calibration_set
from .errors import EngineError

log = logging.getLogger(__name__)

BACKENDS = ("openvino", "onnxruntime", "torch")  # fastest first on x86 CPUs (B7, 2 AVX-512 cores)
AUTO = "auto"
KINDS = ("torch", "onnxruntime", "openvino", AUTO)  # what a caller may ask for
DEVICE_TYPES = ("cpu", "cuda")
ALL_PRECISIONS = ("fp32", "bf16", "fp16", "int8")
FILE_PRECISIONS = ("fp32", "fp16", "int8")  # what a model *file* can hold; bf16 is a compute mode of an fp32 file
HINTS = ("THROUGHPUT", "LATENCY")  # OpenVINO's performance hints
# The precisions each backend runs, per device type (a backend absent for a device type does not run there).
PRECISIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "openvino": {"cpu": ("fp32", "bf16", "fp16", "int8")},
    "onnxruntime": {"cpu": ("fp32",)},
    "torch": {"cpu": ("fp32", "bf16"), "cuda": ("bf16", "fp16", "fp32")},
}
# The optional module each backend needs (torch is a core dependency).
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
CPU_BATCH_SIZE = 8     # images per engine call on CPUs: enough for every OpenVINO stream
CUDA_BATCH_SIZE = 64   # B7 bf16 on an H200: 522 img/s at 64 against 499 at 32 and 439 at 128 (eager)


@dataclass(frozen=True)
class Device:
    """Where the network runs: the CPU, or one CUDA GPU (`index`), with the name the machine gives it."""

    type: Literal["cpu", "cuda"] = "cpu"
    index: int = 0
    name: str = ""  # the GPU's name, e.g. 'NVIDIA H200'; '' for the CPU

    def __str__(self) -> str:
        return "cpu" if self.type == "cpu" else f"cuda:{self.index}"

    @property
    def is_cuda(self) -> bool:
        return self.type == "cuda"


CPU = Device()


@dataclass(frozen=True)
class EngineOptions:
    """How an engine runs, beyond what it computes; every default is the engine's own choice."""

    threads: int | None = None  # CPU threads for inference (default: one per core)
    streams: int | None = None  # OpenVINO CPU streams (default: what the hint picks)
    hint: str = "THROUGHPUT"  # OpenVINO's performance hint
    pin_threads: bool = True  # OpenVINO pins its streams to cores; off where several processes share a machine
    model_batch: int | None | Literal["auto"] = "auto"  # the exported model's batch (ONNX, IR); None: any
    compile: bool | None = None  # torch.compile (with CUDA graphs on a GPU); None: on for CUDA, off for CPUs
    batch_sizes: tuple[int, ...] = ()  # torch on CUDA: the batch shapes compiled, a call padded up to one


@dataclass(frozen=True)
class EngineChoice:
    """One engine, decided once: `backend` (never 'auto'), `device`, `precision` (never None), the int8
    `calibration` set its model file is quantised with, and `options`."""

    backend: str
    device: Device
    precision: str
    calibration: CalibrationSet | None = None
    options: EngineOptions = field(default_factory=EngineOptions)

    @property
    def compiled(self) -> bool:
        """Whether the torch backend runs torch.compile'd code (with CUDA graphs on a GPU)."""
        if self.backend != "torch":
            return False
        return self.device.is_cuda if self.options.compile is None else self.options.compile

    @property
    def batch_size(self) -> int:
        """Images per engine call a caller should use when it has no reason to pick another."""
        return CUDA_BATCH_SIZE if self.device.is_cuda else CPU_BATCH_SIZE

    def describe(self) -> dict[str, str]:
        """backend, precision, device (and the GPU's name): what every output names as the engine."""
        out = {"backend": self.backend, "precision": self.precision, "device": str(self.device)}
        if self.device.is_cuda:
            out["gpu"] = self.device.name
        return out


def graph_batch_sizes(batch_size: int | None) -> tuple[int, ...]:
    """The batch shapes a compiled GPU engine records for callers of `batch_size`: a full batch, and a
    small one for single photos and a stream's last images (each shape costs a compile the first time);
    none for no batch size (the engine's own defaults then)."""
    return tuple(sorted({min(8, batch_size), batch_size})) if batch_size else ()


def resolve_engine(backend: str | EngineChoice = AUTO, precision: str | None = None, *, device: str = AUTO,
                   calibration: str | os.PathLike[str] | CalibrationSet | None = None,
                   options: EngineOptions | None = None, local: bool = True) -> EngineChoice:
    """The engine for `backend` ('auto': the fastest installed for the device) on `device` ('auto': a CUDA GPU
    when PyTorch sees one and the backend runs there, else the CPU; 'cpu', 'cuda', 'cuda:N') at `precision`
    (None: the backend's default there). int8 needs `calibration`, a folder of photos (listed and hashed here);
    without it, the backend's default precision runs, with one warning.
    `local=False`: the engine runs on other machines (Ray actors), which check its GPU themselves
    (`on_this_machine`); here 'auto' then means the CPU and a GPU is taken to have bf16.
    An EngineChoice is returned as it is. Raises EngineError or MissingEngineError, naming what to change."""
    if isinstance(backend, EngineChoice):
        return backend
    options = options or EngineOptions()
    if backend not in KINDS:
        raise EngineError(f"unknown backend={backend}; choose one of: {', '.join(KINDS)}", params=("backend",))
    if precision is not None and precision not in ALL_PRECISIONS:
        raise EngineError(f"unknown precision={precision}; choose one of: {', '.join(ALL_PRECISIONS)}",
                          params=("precision",))
    where = resolve_device(device, backend, precision) if local else _declared_device(device, backend)
    kind = _pick_backend(backend, where, precision)
    precision = precision or (default_precision(kind, where) if local or not where.is_cuda else "bf16")
    if kind == "openvino" and precision == "bf16":
        inference_precision(precision, _openvino_capabilities())  # a CPU without bf16, before any build
    if options.streams is not None and kind != "openvino":
        raise EngineError(f"streams= is an OpenVINO setting; the {kind} backend has no streams", params=("streams",))
    if options.compile and kind != "torch":
        raise EngineError(f"compile= is a torch setting; the {kind} backend compiles its own model",
                          params=("compile",))
    calibrated = None
    if precision == "int8" and calibration is None:
        # An int8 model calibrated on photos that are not the user's would change answers unseen (Lite0-2 on
        # photos they never saw: 11-14 % of top-1s move): run the backend's default and say so instead.
        precision = default_precision(kind, where)
        log.warning("precision=int8 needs calibration=DIR, a few hundred photos like the ones you classify; "
                    "running %s (the %s default) instead", precision, kind,
                    extra={"params": ("precision", "calibration")})
    if precision == "int8":
        from .optional import require

        require("nncf")  # the quantizer, checked before the calibration photos are read
        calibrated = calibration if isinstance(calibration, CalibrationSet) else calibration_set(calibration)
    return EngineChoice(kind, where, precision, calibrated, options)


def on_this_machine(engine: EngineChoice) -> EngineChoice:
    """An engine chosen for other machines (resolve_engine(local=False)), with its device checked here: the
    GPU this process was given, and its name. Called where the engine runs (a Ray actor)."""
    device = resolve_device(str(engine.device), engine.backend, engine.precision)
    if device.is_cuda and engine.precision == "bf16":
        import torch

        if not torch.cuda.is_bf16_supported():
            raise EngineError(f"the GPU {device.name} has no bfloat16; use precision=fp16", params=("precision",))
    return EngineChoice(engine.backend, device, engine.precision, engine.calibration, engine.options)


def _declared_device(device: str, backend: str) -> Device:
    """A device named for other machines: its form is checked here, its presence where it runs."""
    text = str(device).strip().lower()
    if text in ("auto", "cpu"):
        return CPU
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise EngineError(f"unknown device={device}; choose auto, cpu, cuda or cuda:N", params=("device",))
    if backend in MODULES:
        raise EngineError(f"the {backend} backend runs on CPUs; use backend=torch for device={device}",
                          params=("backend", "device"))
    return Device("cuda", int(index or 0))


def resolve_device(device: str, backend: str = AUTO, precision: str | None = None) -> Device:
    """'auto', 'cpu', 'cuda' or 'cuda:N' -> a Device that is really there (EngineError otherwise). 'auto' is
    the first GPU when PyTorch sees one and `backend` runs `precision` there, else the CPU."""
    text = str(device).strip().lower()
    if text == "cpu":
        return CPU
    if text == AUTO:  # OpenVINO and ONNX Runtime run on CPUs here
        on_gpu = backend not in MODULES and (precision is None or precision in PRECISIONS["torch"]["cuda"])
        return _cuda_device(0) if on_gpu and cuda_available() else CPU
    named = _declared_device(device, backend)  # its form, and a backend that runs there
    _check_cuda(device)
    return _cuda_device(named.index)


def cuda_available() -> bool:
    """Whether PyTorch sees a usable CUDA GPU (False on a CPU-only build, without asking the driver)."""
    import torch

    return torch.version.cuda is not None and torch.cuda.is_available()


def _check_cuda(device: str) -> None:
    import torch

    if torch.version.cuda is None:
        raise EngineError(f"device={device}: this PyTorch ({torch.__version__}) is a CPU-only build; install "
                          f"PyTorch's CUDA build first (see the README's GPU section), or use device=cpu",
                          params=("device",))
    if not torch.cuda.is_available():
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = (f"CUDA_VISIBLE_DEVICES={hidden!r} hides them" if hidden is not None
               else "is the NVIDIA driver installed and the GPU visible to this process?")
        raise EngineError(f"device={device}: PyTorch (CUDA {torch.version.cuda} build) sees no GPU ({why}); "
                          f"or use device=cpu", params=("device",))


def _cuda_device(index: int) -> Device:
    import torch

    count = torch.cuda.device_count()
    if index >= count:
        raise EngineError(f"device=cuda:{index}: this machine has {count} GPU{'s' if count != 1 else ''} "
                          f"(cuda:0..cuda:{count - 1})", params=("device",))
    return Device("cuda", index, torch.cuda.get_device_name(index))


def _pick_backend(backend: str, device: Device, precision: str | None) -> str:
    """`backend`, checked (runs on `device` at `precision`, installed), or for 'auto' the fastest that does."""
    if backend == AUTO:
        runs = [k for k in BACKENDS if precision in PRECISIONS[k].get(device.type, ()) or
                (precision is None and device.type in PRECISIONS[k])]
        for kind in runs:
            if installed(kind):
                return kind
        if not runs:
            raise EngineError(f"no backend runs precision={precision} on {device}", params=("precision",))
        raise EngineError(f"no installed backend runs precision={precision} on {device}; it needs "
                          f"{' or '.join(runs)} (pip install 'effnet[{_extra(runs[0])}]')", params=("precision",))
    runs = PRECISIONS[backend].get(device.type, ())
    if precision is not None and precision not in runs:
        raise EngineError(f"the {backend} backend runs {', '.join(runs)} on {device.type}, not precision={precision}",
                          params=("precision",))
    require_backend(backend)
    return backend


def default_precision(backend: str, device: Device = CPU) -> str:
    """What a backend computes in when not told: on CPUs, OpenVINO's own choice (bf16 where the CPU has it,
    about 1.9x fp32 on B7 here) and fp32 elsewhere; on a GPU, bf16 (fp16 where the GPU lacks bf16)."""
    if device.is_cuda:
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if backend != "openvino":
        return "fp32"
    return "bf16" if "BF16" in _openvino_capabilities() else "fp32"


def _openvino_capabilities() -> list[str]:
    from .optional import require

    return require("openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def devices() -> dict:
    """Where this machine can run the network, as plain data (`effnet info`): the CPU and each CUDA GPU PyTorch
    sees, with its name (and for a GPU the precision it runs by default); and, without a GPU, why not."""
    import torch

    from .machine import cpu_model

    found: list[dict] = [{"device": "cpu", "name": cpu_model()}]
    no_gpu = None
    if not cuda_available():
        no_gpu = (f"no CUDA GPU: this PyTorch ({torch.__version__}) is a CPU-only build" if torch.version.cuda is None
                  else f"no CUDA GPU visible to PyTorch (CUDA {torch.version.cuda} build)")
    else:
        for index in range(torch.cuda.device_count()):
            device = _cuda_device(index)
            found.append({"device": str(device), "name": device.name, "precision": default_precision("torch", device)})
    return {"found": found, "no_gpu": no_gpu}


def installed(backend: str) -> bool:
    """Whether a backend's package can be imported (torch always can)."""
    from .optional import installed as module_installed

    return backend not in MODULES or module_installed(MODULES[backend])


def require_backend(backend: str) -> None:
    """MissingEngineError, naming the extra that installs it, when a backend's package is missing."""
    if backend in MODULES:
        from .optional import require

        require(MODULES[backend])


def available_backends(device: Device = CPU) -> list[str]:
    """Installed backends that run on `device`, fastest first."""
    return [k for k in BACKENDS if device.type in PRECISIONS[k] and installed(k)]


def _extra(backend: str) -> str:
    from .optional import EXTRAS

    return EXTRAS.get(MODULES.get(backend, backend), "all")


def inference_precision(precision: str, capabilities: list[str]) -> str:
    """The CPU plugin's INFERENCE_PRECISION_HINT for effnet's precision name.

    fp16 and int8 name how the IR stores weights; their remaining float math runs in f32 here
    (f16 only where the CPU computes in it). bf16 keeps fp32 weights and computes in bfloat16.
    """
    if precision == "bf16":
        if "BF16" not in capabilities:
            raise EngineError("this CPU has no bfloat16 support (OpenVINO CPU capabilities: "
                              f"{', '.join(capabilities)}); use precision=fp32 or int8", params=("precision",))
        return "bf16"
    if precision == "fp16" and "FP16" in capabilities:
        return "f16"
    return "f32"
