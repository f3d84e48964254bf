"""The one place that knows how to compile, archive and link C/assembly for a target.

Everything target-dependent about building native code lives here: the compiler (``Target.find_cc``),
its flags (``Target.cflags``, the float ABI), the binutils that go with it, and the libraries a link
needs (libm for ``expf``, pthreads for the pool, libgcc for armv7's ``__aeabi_*`` helpers).

Builds are byte-reproducible: every command runs inside the build directory with relative paths,
``-ffile-prefix-map`` maps that directory to ``.``, ``ar`` runs in deterministic mode (``D``: zero
timestamps, uids and modes), and nothing embeds a date.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from ..errors import TargetError

log = logging.getLogger(__name__)

#: C dialect of the shim and the generated executor (C99 plus GNU ``__thread``/``__atomic``).
C_STD = "-std=gnu99"
#: Libraries a module links against; the static archive's users link them too (see the header).
LINK_LIBS = ("-lm", "-lpthread")


@dataclass(frozen=True)
class Toolchain:
    """Compiler driver and binutils for one target, resolved to paths on this machine."""

    target_name: str
    cc: str                          # compiler driver (gcc/clang), absolute path
    cflags: Tuple[str, ...]
    ar: str
    objcopy: str
    link_libs: Tuple[str, ...]
    links_binaries: bool             # False for Android: the app's NDK build does the final link

    # -- single steps; ``cwd`` is the build directory and every path is relative to it ---------------
    def compile(self, cwd: str, source: str, output: str, extra: Sequence[str] = ()) -> None:
        """Compile a C or assembly (``.S``/``.s``) file into an object."""
        flags = list(self.cflags) + [C_STD, "-fvisibility=hidden", f"-ffile-prefix-map={os.path.abspath(cwd)}=."]
        self._run(cwd, [self.cc] + flags + list(extra) + ["-c", source, "-o", output])

    def prelink(self, cwd: str, objects: Sequence[str], output: str, keep_global: Sequence[str]) -> None:
        """Merge objects into one relocatable object whose only global definitions are ``keep_global``.

        Kernels, shim and executor then resolve each other inside the object, and two modules can be
        linked into one program without clashing on the runtime's or the kernels' symbols.
        """
        self._run(cwd, [self.cc, "-r", "-nostdlib", "-o", output] + list(objects))
        keep = output + ".keep"
        with open(os.path.join(cwd, keep), "w") as f:
            f.write("".join(s + "\n" for s in keep_global))
        self._run(cwd, [self.objcopy, f"--keep-global-symbols={keep}", output])
        os.remove(os.path.join(cwd, keep))

    def archive(self, cwd: str, objects: Sequence[str], output: str) -> None:
        """A static library in deterministic mode (no timestamps, uids or modes)."""
        path = os.path.join(cwd, output)
        if os.path.exists(path):
            os.remove(path)
        self._run(cwd, [self.ar, "rcsD", output] + list(objects))

    def link_shared(self, cwd: str, objects: Sequence[str], output: str) -> None:
        """A shared library; exported symbols are those with default visibility."""
        self._require_linker("a shared library")
        self._run(cwd, [self.cc] + self._link_flags() + ["-shared", "-o", output] + list(objects)
                  + list(self.link_libs))

    def link_executable(self, cwd: str, objects: Sequence[str], output: str, libs: Sequence[str] = ()) -> None:
        self._require_linker("an executable")
        self._run(cwd, [self.cc] + self._link_flags() + ["-o", output] + list(objects) + list(libs)
                  + list(self.link_libs))

    # -- helpers -------------------------------------------------------------------------------------
    def _link_flags(self) -> List[str]:
        # cflags carry -march/-mfloat-abi style options the driver needs at link time too.
        return [f for f in self.cflags if not f.startswith(("-O", "-D", "-I", "-W"))] + ["-Wl,--build-id=sha1"]

    def _require_linker(self, what: str) -> None:
        if not self.links_binaries:
            raise TargetError(f"target {self.target_name!r} cannot link {what} on this machine (its final "
                              f"link belongs to the app's own toolchain); use the static archive and header")

    def _run(self, cwd: str, cmd: List[str]) -> None:
        log.debug("(cd %s && %s)", cwd, " ".join(cmd))
        env = dict(os.environ, LC_ALL="C", SOURCE_DATE_EPOCH="0")
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise TargetError(f"target {self.target_name!r}: command failed ({proc.returncode}): "
                              f"{' '.join(cmd)}\n{proc.stderr.strip()[-4000:]}")
        if proc.stderr.strip():
            log.debug("%s: %s", os.path.basename(cmd[0]), proc.stderr.strip())


def toolchain_for(target) -> Toolchain:
    """Resolve the compiler and binutils for ``target`` (a ``qcompiler.targets.Target``).

    Raises :class:`TargetError` naming the Debian package when something is missing.
    """
    cc = target.find_cc()
    cflags = list(target.cc[1:]) + list(target.cflags)
    if target.float_abi and not any(f.startswith("-mfloat-abi") for f in cflags):
        cflags.append(f"-mfloat-abi={target.float_abi}")
    ar = _binutil(target, cc, "ar")
    objcopy = _binutil(target, cc, "objcopy")
    libs = list(LINK_LIBS)
    if target.arch.startswith(("arm", "thumb")) and "gcc" in os.path.basename(cc):
        libs.append("-lgcc")      # __aeabi_* helpers and the unwinder personality armv7 kernels use
    links = getattr(target, "links_binaries", target.os == "linux")
    return Toolchain(target_name=target.name, cc=cc, cflags=tuple(cflags), ar=ar, objcopy=objcopy,
                     link_libs=tuple(libs), links_binaries=bool(links))


def _binutil(target, cc: str, tool: str) -> str:
    """The binutil that matches the compiler: ``<prefix>-<tool>`` next to ``<prefix>-gcc``, else the
    host's (``ar``/``objcopy`` handle any ELF when binutils is multi-target), else LLVM's."""
    base = os.path.basename(cc)
    candidates = []
    for suffix in ("-gcc", "-clang", "-cc"):
        if base.endswith(suffix):
            prefix = base[: -len(suffix)]
            candidates.append(os.path.join(os.path.dirname(cc), f"{prefix}-{tool}"))
            candidates.append(f"{prefix}-{tool}")
    if target.runs_natively() or not candidates:
        candidates += [tool, f"llvm-{tool}"]
    else:
        candidates.append(f"llvm-{tool}")
    for c in candidates:
        exe = shutil.which(c)
        if exe:
            return exe
    pkg = f" (apt-get install {target.cc_package})" if getattr(target, "cc_package", "") else ""
    raise TargetError(f"target {target.name!r} needs {candidates[0]!r} to build modules, which is not "
                      f"installed{pkg}")
