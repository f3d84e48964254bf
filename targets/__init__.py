"""Targets as data: one TOML file per board or ISA in this folder, merged onto its ``base``.

``get_target(name)`` returns a frozen :class:`Target`; code branches on ``Target.features`` and
``Target.family``, never on board names. Adding a board is adding a file (see ``rpi4.toml``).
``host`` is not a file: it is detected from the running CPU with llvmlite.
"""

from __future__ import annotations

import os
import platform
import shutil
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

from qcompiler.errors import TargetError

_DIR = os.path.dirname(os.path.abspath(__file__))
FAMILIES = ("x86", "arm", "riscv")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    family: str                      # x86 | arm | riscv: picks the schedules/ subpackage
    mtriple: str
    mcpu: str = "generic"
    mattr: Tuple[str, ...] = ()
    float_abi: Optional[str] = None  # "hard" for armv7 gnueabihf
    features: Tuple[str, ...] = ()   # popcnt, neon, dotprod, avx2, avx512, vnni, vpopcntdq, rvv, zbb
    vector_bits: int = 128
    os: str = "linux"                # linux | android
    cc: Tuple[str, ...] = ("cc",)    # C compiler (cross compiler for boards)
    cc_package: str = ""             # Debian package that provides cc
    cflags: Tuple[str, ...] = ()
    emulator: Tuple[str, ...] = ()   # command prefix to run a binary of this target on x86 hosts
    emulator_package: str = ""
    emulator_cpu: str = ""           # qemu -cpu model: the board's own core, so foreign instructions trap
    cores: int = 1
    docs: str = ""
    base: str = ""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise TargetError(f"target {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.os not in ("linux", "android"):
            raise TargetError(f"target {self.name!r}: os must be linux or android, got {self.os!r}")
        if self.vector_bits not in (0, 64, 128, 256, 512):
            raise TargetError(f"target {self.name!r}: vector_bits {self.vector_bits} is not 64..512")
        if len(self.mtriple.split("-")) != 4:
            # TVM hands the triple to LLVM unnormalized: "armv7a-linux-gnueabihf" parses as vendor
            # "linux", OS unknown, no environment, and LLVM then calls libgcc's __floatdisf with the
            # wrong float ABI (silently wrong numbers); Android triples would not mean Android.
            raise TargetError(f"target {self.name!r}: mtriple {self.mtriple!r} must have the four parts "
                              f"arch-vendor-os-environment, e.g. aarch64-unknown-linux-gnu")
        if self.float_abi not in (None, "hard", "soft"):
            raise TargetError(f"target {self.name!r}: float_abi must be 'hard' or 'soft', got {self.float_abi!r}")
        if not self.cc:
            raise TargetError(f"target {self.name!r}: cc (the C compiler command) is empty")
        if self.cores < 1:
            raise TargetError(f"target {self.name!r}: cores must be >= 1, got {self.cores}")
        if self.emulator_cpu and not self.emulator:
            raise TargetError(f"target {self.name!r}: emulator_cpu is set but there is no emulator")

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def arch(self) -> str:
        return self.mtriple.split("-")[0]

    def tvm_target(self):
        """The TVM target (0.27 takes targets in dict form only)."""
        import tvm

        spec = {"kind": "llvm", "mtriple": self.mtriple, "mcpu": self.mcpu}
        if self.mattr:
            spec["mattr"] = list(self.mattr)
        if self.float_abi:
            spec["mfloat-abi"] = self.float_abi
        if self.cores > 1:
            spec["num-cores"] = self.cores
        return tvm.target.Target(spec)

    @property
    def links_binaries(self) -> bool:
        """Can this machine link shared libraries and executables for the target?

        False for Android: that link needs the NDK's bionic libc, so an Android module is objects, a
        static archive and a header for the app's NDK build (the C parts are compiled with the Debian
        cross gcc, ``-c`` only).
        """
        return self.os == "linux"

    def runs_natively(self) -> bool:
        """Can the machine we run on execute this target's code directly?"""
        host = platform.machine().lower()
        arch = self.arch
        if arch == "x86_64" and host in ("x86_64", "amd64"):
            return _host_supports(self.features)
        return arch == host and self.os == "linux"

    def find_cc(self) -> str:
        """Path of the C compiler, or a TargetError naming the Debian package to install."""
        exe = shutil.which(self.cc[0])
        if exe is None:
            pkg = f" (apt-get install {self.cc_package})" if self.cc_package else ""
            raise TargetError(f"target {self.name!r} needs the C compiler {self.cc[0]!r}, which is not "
                              f"installed{pkg}")
        return exe

    def find_emulator(self) -> Optional[List[str]]:
        """Command prefix that runs a binary of this target here: None when it runs natively,
        else the emulator (qemu-user) command with the board's ``-cpu``; a TargetError when the
        target cannot run here at all (Android, AVX-512 on a CPU without it) or qemu is missing."""
        if self.runs_natively():
            return None
        if self.os == "android":
            raise TargetError(f"target {self.name!r} builds for Android, which cannot run on this machine: "
                              f"link the module's archive into an app with the NDK (see its README.md), or "
                              f"build the same model for the matching Linux target to test it under qemu")
        if not self.emulator:
            raise TargetError(f"target {self.name!r} cannot run on this machine (it lacks "
                              f"{', '.join(self.features) or 'the ISA'}) and has no emulator")
        if shutil.which(self.emulator[0]) is None:
            pkg = f" (apt-get install {self.emulator_package})" if self.emulator_package else ""
            raise TargetError(f"running target {self.name!r} here needs {self.emulator[0]!r}, which is "
                              f"not installed{pkg}")
        return list(self.emulator_command())

    def emulator_command(self) -> Tuple[str, ...]:
        """The emulator command prefix as configured (empty if none), ``-cpu`` included."""
        if not self.emulator:
            return ()
        cpu = ("-cpu", self.emulator_cpu) if self.emulator_cpu else ()
        return (self.emulator[0],) + cpu + tuple(self.emulator[1:])

    def summary(self) -> Dict[str, object]:
        return {"name": self.name, "family": self.family, "triple": self.mtriple, "mcpu": self.mcpu,
                "mattr": list(self.mattr), "features": list(self.features), "vector_bits": self.vector_bits,
                "os": self.os, "cores": self.cores, "cc": list(self.cc), "cflags": list(self.cflags),
                "emulator": list(self.emulator_command()), "description": self.description}


def _read(name: str) -> dict:
    path = os.path.join(_DIR, f"{name}.toml")
    if not os.path.isfile(path):
        raise TargetError(f"unknown target {name!r}; known targets: {', '.join(list_targets())}")
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise TargetError(f"target file {path}: {e}") from None
    base = data.get("base")
    if base:
        merged = _read(base)
        merged.pop("abstract", None)
        merged.update(data)
        data = merged
    return data


def list_targets() -> List[str]:
    names = sorted(f[:-5] for f in os.listdir(_DIR) if f.endswith(".toml"))
    concrete = []
    for n in names:
        with open(os.path.join(_DIR, f"{n}.toml"), "rb") as f:
            if not tomllib.load(f).get("abstract"):
                concrete.append(n)
    return ["host"] + concrete


@lru_cache(maxsize=None)
def get_target(name: str) -> Target:
    if isinstance(name, Target):
        return name
    if name == "host":
        return _host_target()
    data = _read(name)
    if data.pop("abstract", False):
        raise TargetError(f"{name!r} is a base description, not a target; known targets: "
                          f"{', '.join(list_targets())}")
    data.setdefault("name", name)
    fields = set(Target.__dataclass_fields__)
    unknown = set(data) - fields
    if unknown:
        raise TargetError(f"target file {name}.toml has unknown keys {sorted(unknown)}")
    for k in ("mattr", "features", "cc", "cflags", "emulator"):
        if k in data:
            data[k] = tuple(data[k])
    return Target(**data)


def resolve(target) -> Target:
    return target if isinstance(target, Target) else get_target(str(target))


@lru_cache(maxsize=1)
def _host_features() -> frozenset:
    import llvmlite.binding as llvm

    feats = llvm.get_host_cpu_features()
    return frozenset(k for k, on in feats.items() if on)


def _host_supports(features) -> bool:
    need = {"avx2": "avx2", "avx512": "avx512f", "vpopcntdq": "avx512vpopcntdq", "vnni": "avx512vnni",
            "popcnt": "popcnt"}
    have = _host_features()
    return all(need[f] in have for f in features if f in need)


# x86 SIMD features whose presence changes the kernels LLVM emits (LLVM feature names).
_X86_SIMD = ("sse4.2", "popcnt", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512dq",
             "avx512vl", "avx512vnni", "avx512vpopcntdq", "avx512bitalg", "avxvnni")


def _host_target() -> Target:
    import llvmlite.binding as llvm

    cpu = llvm.get_host_cpu_name()
    have = _host_features()
    arch = platform.machine().lower()
    if arch in ("x86_64", "amd64"):
        feats = [f for f, llvm_name in (("popcnt", "popcnt"), ("avx2", "avx2"), ("avx512", "avx512f"),
                                        ("vpopcntdq", "avx512vpopcntdq"), ("vnni", "avx512vnni"))
                 if llvm_name in have]
        vec = 512 if "avx512" in feats else (256 if "avx2" in feats else 128)
        # The CPU name alone would let LLVM assume every feature of that model; a VM may mask some
        # (often AVX-512), so state each SIMD feature that kernels depend on explicitly.
        mattr = tuple(("+" if f in have else "-") + f for f in _X86_SIMD)
        return Target(name="host", description=f"this machine ({cpu})", family="x86",
                      mtriple="x86_64-unknown-linux-gnu", mcpu=cpu, mattr=mattr, features=tuple(feats),
                      vector_bits=vec, cc=("cc",), cc_package="gcc", cflags=("-O2", "-fPIC"),
                      cores=os.cpu_count() or 1)
    if arch == "aarch64":
        feats = ["neon"] + (["dotprod"] if "dotprod" in have else [])
        return Target(name="host", description=f"this machine ({cpu})", family="arm",
                      mtriple="aarch64-unknown-linux-gnu", mcpu=cpu, mattr=("+neon",), features=tuple(feats),
                      cc=("cc",), cc_package="gcc", cflags=("-O2", "-fPIC"), cores=os.cpu_count() or 1)
    raise TargetError(f"host detection does not know architecture {arch!r}; pass a named target")
