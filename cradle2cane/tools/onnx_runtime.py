"""Leave exactly one working ONNX runtime: the GPU build where CUDA is available, the CPU build
otherwise, and whatever working runtime the user already chose.

The runtimes (``onnxruntime``, ``onnxruntime-gpu``, ``onnxruntime-directml``, ...) all install the
same ``onnxruntime`` module: with two installed, the last one wins file by file and uninstalling
either breaks the other. insightface 2.x requires the CPU build by name, so it is installed with
``--no-deps`` (its other dependencies are this package's own). Run by ``install.py`` (ComfyUI
Manager runs that after ``requirements.txt``); standard library only, so it runs before anything
else is importable. The decision (:func:`decide`) is a pure function of what is installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

CPU = "onnxruntime"
GPU = "onnxruntime-gpu"
OTHER_BUILDS = ("onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-rocm", "onnxruntime-qnn",
                "onnxruntime-silicon", "onnxruntime-coreml")
RUNTIMES = (CPU, GPU, *OTHER_BUILDS)
INSIGHTFACE = "insightface>=0.7.3"


@dataclass(frozen=True)
class Environment:
    """What is installed: runtime distribution -> version, whether ``import onnxruntime`` works and
    which providers it offers, whether CUDA is usable, whether insightface is installed."""

    runtimes: dict[str, str]
    works: bool
    providers: tuple[str, ...] = ()
    cuda: bool = False
    insightface: bool = False


@dataclass
class Plan:
    """pip commands (argument lists after ``pip``), why, and the runtime to fall back to when a
    switch to the GPU build does not import."""

    reason: str
    commands: list[list[str]] = field(default_factory=list)
    fallback: list[list[str]] = field(default_factory=list)


def _pinned(name: str, version: str | None) -> str:
    return f"{name}=={version}" if version else name


def decide(env: Environment) -> Plan:
    wanted = GPU if env.cuda else CPU
    installed = {name: env.runtimes[name] for name in RUNTIMES if name in env.runtimes}
    if not installed:
        plan = Plan(f"no ONNX runtime installed: installing {wanted}", [["install", wanted]])
    elif len(installed) == 1:
        (name, version), = installed.items()
        if not env.works:
            plan = Plan(f"{name} {version} is installed but does not import: reinstalling it",
                        [["install", "--force-reinstall", "--no-deps", _pinned(name, version)]])
        elif name == CPU and env.cuda:
            plan = Plan(f"CUDA is available: replacing the CPU build {name} {version} with {GPU}",
                        [["uninstall", "-y", CPU], ["install", GPU]],
                        fallback=[["uninstall", "-y", GPU], ["install", "--force-reinstall", "--no-deps",
                                                              _pinned(CPU, version)]])
        else:
            plan = Plan(f"keeping the working {name} {version}")
    else:
        # Several share one module folder: keep the build the user chose (anything but the plain
        # CPU build, which insightface pulls in by name), reinstalled cleanly at its version.
        chosen = [n for n in installed if n != CPU]
        keep = next((n for n in chosen if n != GPU), None) or (GPU if GPU in chosen else CPU)
        names = ", ".join(f"{n} {v}" for n, v in installed.items())
        plan = Plan(f"several ONNX runtimes installed ({names}) overwrite each other: keeping {keep}",
                    [["uninstall", "-y", *installed], ["install", "--no-deps", _pinned(keep, installed[keep])]])
    if not env.insightface:
        plan.commands.append(["install", "--no-deps", INSIGHTFACE])
    return plan


# ----------------------------------------------------------------------------- the real environment


def _python(code: str, python: str) -> str | None:
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def inspect(python: str = sys.executable) -> Environment:
    """The environment of ``python``, each probe in a fresh process (a broken runtime can crash it)."""
    listing = _python("import json, importlib.metadata as m; print(json.dumps([[d.metadata['Name'], d.version] "
                      "for d in m.distributions()]))", python)
    installed = {_normalise(n): v for n, v in json.loads(listing or "[]") if n}
    providers = _python("import json, onnxruntime; print(json.dumps(onnxruntime.get_available_providers()))", python)
    cuda = _python("import torch; print(torch.cuda.is_available())", python)
    if cuda is None:  # no torch here: ask the driver
        try:
            cuda = str(subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=60).returncode == 0)
        except (OSError, subprocess.TimeoutExpired):
            cuda = "False"
    return Environment(runtimes={n: installed[n] for n in RUNTIMES if n in installed}, works=providers is not None,
                       providers=tuple(json.loads(providers or "[]")), cuda=cuda == "True",
                       insightface="insightface" in installed)


def run(plan: Plan, python: str = sys.executable, report: Callable[[str], None] = print,
        pip: Callable[[Sequence[str]], int] | None = None, check: Callable[[], Environment] | None = None) -> int:
    """Carry out ``plan``; if the result does not import, run its fallback. Returns 0 when one
    working runtime is left."""
    pip = pip or (lambda args: subprocess.run([python, "-m", "pip", *args]).returncode)
    check = check or (lambda: inspect(python))
    report(f"[cradle2cane] ONNX runtime: {plan.reason}")
    for command in plan.commands:
        report("[cradle2cane] pip " + " ".join(command))
        if pip(command) != 0:
            break
    result = check()
    if (not result.works or len(result.runtimes) != 1) and plan.fallback:
        report("[cradle2cane] the new runtime does not work here; going back")
        for command in plan.fallback:
            report("[cradle2cane] pip " + " ".join(command))
            pip(command)
        result = check()
    if result.works and len(result.runtimes) == 1:
        (name, version), = result.runtimes.items()
        report(f"[cradle2cane] ONNX runtime: {name} {version}, providers {', '.join(result.providers)}")
        return 0
    report(f"[cradle2cane] ONNX runtime still not right ({', '.join(result.runtimes) or 'none'} installed); "
           f"see the README's Install section")
    return 1


def main() -> int:
    return run(decide(inspect()))
